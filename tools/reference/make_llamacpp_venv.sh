#!/usr/bin/env bash
# Create .venv-llamacpp at the repo root (git-ignored) with llama-cpp-python (compiled here for this
# CPU: GGML_NATIVE=ON, or its features without AMX, see below), gguf-py and numpy, pinned in
# requirements-llamacpp.txt. Idempotent.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv-llamacpp/bin/python ]; then
  "$PY" -m venv .venv-llamacpp
fi
# On a CPU that reports AMX, GGML_NATIVE=ON builds llama.cpp's AMX path, which takes Q8_0 matmuls;
# under this workplace's VMs its first `ldtilecfg` is a general protection fault (the Q8_0 bench
# crashed on 2026-12-07). There, the same CPU's features are named one by one, without AMX.
native="-DGGML_NATIVE=ON"
if grep -qw amx_tile /proc/cpuinfo 2>/dev/null; then
  native="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
  native+=" -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON"
  native+=" -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 CMAKE_ARGS="${CMAKE_ARGS:-$native}"
.venv-llamacpp/bin/python -m pip install --quiet --no-input --progress-bar off \
  -r tools/reference/requirements-llamacpp.txt </dev/null
.venv-llamacpp/bin/python -c 'import llama_cpp, gguf; print("venv ok: llama_cpp", llama_cpp.__version__)'
