#!/usr/bin/env bash
# Create .venv at the repo root (git-ignored) with the pinned reference tokenizers.
# Idempotent; runnable from any cwd.  Override the base interpreter with PYTHON=...
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
.venv/bin/python -m pip install --quiet --no-input --progress-bar off \
  -r tools/reference/requirements.txt </dev/null
.venv/bin/python -c 'import tiktoken, tokenizers; print("venv ok: tiktoken", tiktoken.__version__, "tokenizers", tokenizers.__version__)'
