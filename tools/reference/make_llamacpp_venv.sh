#!/usr/bin/env bash
# Create .venv-llamacpp at the repo root (git-ignored) with llama-cpp-python (compiled here for this
# CPU: GGML_NATIVE=ON), gguf-py and numpy, pinned in requirements-llamacpp.txt. Idempotent.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv-llamacpp/bin/python ]; then
  "$PY" -m venv .venv-llamacpp
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON}"
.venv-llamacpp/bin/python -m pip install --quiet --no-input --progress-bar off \
  -r tools/reference/requirements-llamacpp.txt </dev/null
.venv-llamacpp/bin/python -c 'import llama_cpp, gguf; print("venv ok: llama_cpp", llama_cpp.__version__)'
