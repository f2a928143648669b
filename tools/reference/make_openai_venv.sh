#!/usr/bin/env bash
# Create .venv-openai at the repo root (git-ignored) with the pinned OpenAI client for serve_e2e.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv-openai/bin/python ]; then
  "$PY" -m venv .venv-openai
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
.venv-openai/bin/python -m pip install --quiet --no-input --progress-bar off \
  -r tools/reference/requirements-openai.txt </dev/null
.venv-openai/bin/python -c 'import openai; print("venv ok: openai", openai.__version__)'
