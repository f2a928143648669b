#!/usr/bin/env bash
# Create the two git-ignored venvs used by tools/reference/model_fixtures.py (never by CI):
#   .venv-model  transformers 5.x + torch (Qwen2 fixtures, `verify`)   <- requirements-model.txt
#   .venv-qwen1  transformers 4.36.2 + torch 2.1.2 (Qwen-1's own code) <- requirements-model-qwen1.txt
#   .venv-peft   .venv-model's pins + peft 0.21.2 (peft_fixtures.py)   <- requirements-peft.txt (only with `peft`)
#   .venv-trl    .venv-model's pins + trl (tools/reference/trl_fixtures.py) <- requirements-trl.txt
# Idempotent; runnable from any cwd. PyPI only (torch's PyPI wheels pull several GB of CUDA wheels).
# Override the base interpreter (Python 3.11) with PYTHON=...; pass `model`, `qwen1`, `peft` or `trl` to build one.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
which="${1:-all}"
build() {  # venv requirements
  if [ ! -x "$1/bin/python" ]; then
    "$PY" -m venv "$1"
  fi
  "$1/bin/python" -m pip install --quiet --no-input --progress-bar off -r "$2" </dev/null
  "$1/bin/python" -c 'import torch, transformers; print("'"$1"' ok: torch", torch.__version__, "transformers", transformers.__version__)'
}
if [ "$which" = all ] || [ "$which" = model ]; then
  build .venv-model tools/reference/requirements-model.txt
fi
if [ "$which" = all ] || [ "$which" = qwen1 ]; then
  build .venv-qwen1 tools/reference/requirements-model-qwen1.txt
fi
if [ "$which" = peft ]; then
  build .venv-peft tools/reference/requirements-peft.txt
fi
if [ "$which" = all ] || [ "$which" = trl ]; then
  build .venv-trl tools/reference/requirements-trl.txt
  .venv-trl/bin/python -c 'import trl; print(".venv-trl ok: trl", trl.__version__)'
  # trl 1.x dropped PPO: trl_fixtures.py reads PPOTrainer out of the 0.29.1 wheel (sha256-checked there).
  .venv-trl/bin/python -m pip download --quiet --no-deps --no-input --progress-bar off trl==0.29.1 -d .venv-trl/ppo-wheel </dev/null
fi
