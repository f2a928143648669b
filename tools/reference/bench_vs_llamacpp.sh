#!/usr/bin/env bash
# qwen-rs against llama.cpp on the same GGUF files, per weight dtype, one after the other.
#
#   bench_vs_llamacpp.sh [DTYPES] [ARGS]
#
# DTYPES: a comma list of f32,f32_burn,f16,bf16,q8_0 (default: all five). f32 is what `generate`,
# `chat` and `serve` run for f32 on the CPU (model_speed --dtype f32_packed: HF's row order, our
# kernel at decode, gemm on the weights' own bytes at prefill); f32_burn is the same file as burn
# tensors (model_speed --dtype f32: what training loads, burn's matmul), llama.cpp running it again.
# ARGS (e.g. `--reps 5 --decode 64`) go to both sides. The GGUF files (a random
# Qwen2.5-0.5B-shaped Qwen2 checkpoint, see tools/reference/bench_llamacpp.py) are written once to
# target/bench-gguf/ with gguf-py. Each dtype: examples/model_speed.rs --model FILE --dtype D
# --last-only (our packed kernel for f32/bf16/f16/q8_0, burn's f32 matmul for f32_burn; GGUF
# tensors kept as stored), then llama.cpp on the same file
# (llama-cpp-python, the same thread count, prompt and decode ids). Prints both JSON lines and the
# ratios: decode and prefill tokens/s, peak RSS, GB/s of weights read per decoded token.
# FEATURES (e.g. `collective`) go to the cargo build. Needs .venv-llamacpp
# (tools/reference/make_llamacpp_venv.sh). Threads: THREADS, default `nproc`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
dtypes="f32,f32_burn,f16,bf16,q8_0"
if [[ "${1:-}" =~ ^[a-z0-9_,]+$ ]]; then dtypes="$1"; shift; fi
py=.venv-llamacpp/bin/python
out="${CARGO_TARGET_DIR:-target}/bench-gguf"
"$py" tools/reference/bench_llamacpp.py write "$out"
cargo build -q --release --locked --example model_speed ${FEATURES:+--features "$FEATURES"}
bin="${CARGO_TARGET_DIR:-target}/release/examples/model_speed"
threads=${THREADS:-$(nproc)}
for d in ${dtypes//,/ }; do
  case "$d" in
    f32 | f32_packed) d=f32; ours_dtype=f32_packed ;;
    f32_burn) ours_dtype=f32 ;;
    *) ours_dtype=$d ;;
  esac
  file="$out/qwen0.5b.${d%_burn}.gguf"
  ours=$(RAYON_NUM_THREADS=$threads "$bin" --model "$file" --dtype "$ours_dtype" --last-only "$@")
  theirs=$("$py" tools/reference/bench_llamacpp.py run "$file" --threads "$threads" "$@")
  echo "$ours"
  echo "$theirs"
  python3 - "$d" "$ours" "$theirs" <<'PY'
import json, sys
d, o, t = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
for k in ("decode_tokens_per_s", "prefill_tokens_per_s", "decode_weight_gb_per_s"):
    print(f"{d} {k}: qwen-rs {o[k]:.2f}, llama.cpp {t[k]:.2f}, ratio {o[k] / t[k]:.2f}x")
print(f"{d} peak RSS MB: qwen-rs {o['peak_rss_mb']:.0f}, llama.cpp {t['peak_rss_mb']:.0f}, "
      f"ratio {o['peak_rss_mb'] / t['peak_rss_mb']:.2f}")
PY
done
