#!/usr/bin/env bash
# Regenerate tests/fixtures/model/ (all cases) and re-check them with the independent implementation.
# Needs the venvs (tools/reference/make_model_venvs.sh) and the Qwen-1 code directories
# (tools/reference/get_qwen1_model_code.sh): QWEN1_CODE=.../dec2023 QWEN1_AUG_CODE=.../aug2023.
# CPU only; about a minute. The README in tests/fixtures/model/ is maintained by hand.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
: "${QWEN1_CODE:?set QWEN1_CODE to the Dec-2023 Qwen-1 code dir}"
: "${QWEN1_AUG_CODE:?set QWEN1_AUG_CODE to the Aug-2023 Qwen-1 code dir}"
export CUDA_VISIBLE_DEVICES=""
.venv-model/bin/python tools/reference/model_fixtures.py qwen2 "$@"
.venv-model/bin/python tools/reference/model_fixtures.py qwen3 "$@"
.venv-qwen1/bin/python tools/reference/model_fixtures.py qwen1 --qwen1-code "$QWEN1_CODE" --qwen1-aug-code "$QWEN1_AUG_CODE" "$@"
.venv-model/bin/python tools/reference/model_fixtures.py verify
du -sh tests/fixtures/model
