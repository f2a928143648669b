#!/usr/bin/env bash
# One prepared check of a GPU backend on a machine with an NVIDIA GPU, in about 10 minutes from a
# cold build (docs/gpu.md):
#
#   tools/gpu-check.sh [cuda|wgpu]        (default: cuda)
#
#   1. builds the backend (release): the GPU tests (tests/gpu.rs) and four examples
#   2. the GPU tests: Qwen2 / Qwen-1 logits vs the references, cached vs uncached decode, training
#      steps and the alignment losses vs the CPU backend
#   3. prefill/decode speed of the Qwen2.5-0.5B shape (examples/model_speed.rs), f32 and bf16
#   4. training tokens/s and MFU of a 0.5B-shaped model in bf16 (examples/train_speed.rs)
#   5. a short `pretrain` (small preset) and `align` from it (the word-count task, default stages)
#
# and writes one markdown table (card, driver, each result) between the gpu-check markers of
# docs/gpu.md; the logs go to target/gpu-check/. It stops at once, with a message, when there is
# no GPU (no nvidia-smi, or it lists no card) or no driver library; every step runs under a
# timeout, so nothing hangs. A step that fails is marked in the table and the script exits 1
# after writing it.
#
# Environment:
#   PEAK_TFLOPS=N       the card's dense bf16 peak for MFU (default: from the card's name: H100
#                       SXM / H200 989, H100 PCIe 756, A100 312, L40S 362; else no MFU)
#   GPU_CHECK_QUICK=1   tiny sizes and no GPU required: a smoke test of this script itself
#                       (e.g. `tools/gpu-check.sh wgpu` on lavapipe, no NVIDIA card); `align`'s
#                       metric checks fail there by design (2 SFT steps do not halve the loss)
#   PROFILE=release     cargo profile (`dev` reuses a `tools/test.sh` build in quick mode)
#   FEATURES=...        cargo features (default: the backend's name; quick mode: collective,BACKEND
#                       as tools/test.sh builds them)
#   GPU_CHECK_DOC=path  where the table goes (default docs/gpu.md)
#   GPU_CHECK_BUDGET=s  the whole run's budget, build included (default 600; quick mode 3600): each
#                       step's timeout is cut to what is left, and steps past it are marked skipped
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

BACKEND="${1:-cuda}"
QUICK="${GPU_CHECK_QUICK:-0}"
PROFILE="${PROFILE:-release}"
DOC="${GPU_CHECK_DOC:-docs/gpu.md}"
LOGS="$ROOT/target/gpu-check"
die() { echo "gpu-check.sh: ERROR: $*" >&2; exit 2; }

case "$BACKEND" in
  cuda|wgpu) ;;
  -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
  *) die "unknown backend '$BACKEND' (expected cuda or wgpu)" ;;
esac
if [ "$QUICK" = 1 ]; then FEATURES="${FEATURES:-collective,$BACKEND}"; else FEATURES="${FEATURES:-$BACKEND}"; fi
START=$(date +%s)

# ---------------------------------------------------------------------------------------------
# 0. Is there a GPU? (seconds; before any build)
CARD="" DRIVER="" MEM=""
if command -v nvidia-smi >/dev/null 2>&1; then
  q="$(timeout --kill-after=5 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)"
  rc=$?
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && q="nvidia-smi did not answer within 20 s"
  if [ $rc -eq 0 ] && [ -n "$q" ] && ! grep -qi 'fail\|error\|no devices' <<<"$q"; then
    IFS=',' read -r CARD DRIVER MEM <<<"$(head -n1 <<<"$q")"
    CARD="$(xargs <<<"$CARD")" DRIVER="$(xargs <<<"$DRIVER")" MEM="$(xargs <<<"$MEM")"
  elif [ "$QUICK" != 1 ]; then
    die "nvidia-smi found no usable GPU: $q"
  fi
elif [ "$QUICK" != 1 ]; then
  die "no NVIDIA GPU here: nvidia-smi is not installed. Run this on a machine with an NVIDIA GPU and its
driver (GPU_CHECK_QUICK=1 smoke-tests the script itself with tiny sizes and no GPU)."
fi

if [ "$BACKEND" = cuda ]; then
  # burn-cuda loads libcuda (the driver) and libnvrtc (kernels are compiled at run time) with
  # dlopen; find them now rather than as a panic in the middle of a test.
  ldconfig -p 2>/dev/null | grep -q 'libcuda\.so' || [ -e /usr/lib/x86_64-linux-gnu/libcuda.so.1 ] \
    || die "libcuda.so (the NVIDIA driver library) is not installed"
  if ! ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so'; then
    nvrtc="$(ls -d ${CUDA_PATH:-/nonexistent}/lib64/libnvrtc.so* /usr/local/cuda*/lib64/libnvrtc.so* \
      /usr/local/cuda*/targets/*/lib/libnvrtc.so* \
      /usr/local/lib/python3*/dist-packages/nvidia/*/lib/libnvrtc.so* \
      /usr/lib/python3/dist-packages/nvidia/*/lib/libnvrtc.so* 2>/dev/null | head -n1)"
    [ -z "$nvrtc" ] && nvrtc="$(python3 - 2>/dev/null <<'EOF'
import glob, site
for d in site.getsitepackages() + [site.getusersitepackages()]:
    for f in glob.glob(d + "/nvidia/**/libnvrtc.so*", recursive=True):
        print(f); raise SystemExit
EOF
)"
    [ -n "$nvrtc" ] || die "libnvrtc.so (CUDA's run-time compiler, needed by burn-cuda) not found: install the
CUDA toolkit or the nvidia-cuda-nvrtc wheel, or put its folder on LD_LIBRARY_PATH"
    export LD_LIBRARY_PATH="$(dirname "$nvrtc")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "gpu-check: libnvrtc from $(dirname "$nvrtc")"
  fi
else
  compgen -G '/usr/share/vulkan/icd.d/*.json' >/dev/null || compgen -G '/etc/vulkan/icd.d/*.json' >/dev/null \
    || [ -n "${VK_ICD_FILENAMES:-}${VK_DRIVER_FILES:-}" ] \
    || die "no Vulkan driver (ICD) found: wgpu needs one (NVIDIA's, or lavapipe via tools/setup.sh)"
fi
command -v cargo >/dev/null 2>&1 || die "cargo is not installed (https://rustup.rs): the script builds the backend"
[ -d corpus/docutils ] || bash tools/setup.sh >/dev/null || die "tools/setup.sh failed (it fetches the pretraining corpus)"

if [ -z "$CARD" ]; then CARD="(no NVIDIA GPU: quick smoke test)"; DRIVER="-"; MEM="-"; fi
if [ -z "${PEAK_TFLOPS:-}" ]; then
  case "$CARD" in
    *H100*PCIe*) PEAK_TFLOPS=756 ;;
    *H100*|*H200*|*GH200*) PEAK_TFLOPS=989 ;;
    *A100*) PEAK_TFLOPS=312 ;;
    *L40S*) PEAK_TFLOPS=362 ;;
    *) PEAK_TFLOPS="" ;;
  esac
fi
mkdir -p "$LOGS"
echo "gpu-check: $BACKEND on $CARD (driver $DRIVER, $MEM), profile $PROFILE, features $FEATURES"

# Sizes: the real ones, or tiny ones for the smoke test.
if [ "$QUICK" = 1 ]; then
  SPEED_ARGS=(--layers 1 --prefill 8 --decode 2 --reps 1)
  TRAIN_ARGS=(--hidden 64 --layers 1 --heads 2 --kv-heads 1 --intermediate 128 --vocab 512 --seq 16 --batch 1 --steps 1 --tied)
  PRETRAIN_ARGS=(--config tiny --steps 4 --seq-len 32 --batch 2 --vocab-size 300 --eval-every 2 --save-every 4 --min-ppl-drop 0)
  ALIGN_ARGS=(--sft-steps 2 --pmp-steps 1 --rm-steps 1 --ppo-steps 0 --dpo-steps 0 --grpo-steps 0 --batch 2 --mistake-prompts 8 --no-checks)
  T_TEST=1800 T_STEP=900 BUDGET="${GPU_CHECK_BUDGET:-3600}"
else
  SPEED_ARGS=(--layers 24 --prefill 128 --decode 32 --reps 2)
  # Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads / 2 KV heads, intermediate 4864, vocab
  # 151936, tied), sequences of 512.
  TRAIN_ARGS=(--hidden 896 --layers 24 --heads 14 --kv-heads 2 --intermediate 4864 --vocab 151936 --tied --seq 512 --batch 8 --steps 5)
  PRETRAIN_ARGS=(--config small --steps 300 --eval-every 100 --save-every 300 --min-ppl-drop 2)
  ALIGN_ARGS=()
  T_TEST=240 T_STEP=200 BUDGET="${GPU_CHECK_BUDGET:-600}"
fi
[ -n "$PEAK_TFLOPS" ] && TRAIN_ARGS+=(--peak-tflops "$PEAK_TFLOPS")

ROWS=() FAILED=0
row() { ROWS+=("| $1 | $2 |"); echo "gpu-check: $1: $2"; }
# run NAME LIMIT CMD...: runs CMD with a timeout, its output in $LOGS/NAME.log; sets SECS, and
# MSG to why it failed.
run() {
  local name="$1" limit="$2"; shift 2
  local t0=$(date +%s) left=$(( BUDGET - ($(date +%s) - START) ))
  MSG="skipped: the ${BUDGET} s budget is spent"
  [ "$left" -lt 20 ] && return 1
  [ "$left" -lt "$limit" ] && limit=$left
  echo "gpu-check: $name (limit ${limit} s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  SECS=$(( $(date +%s) - t0 ))
  MSG=""
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then MSG="timed out after ${limit} s"; return 1; fi
  if [ $rc -ne 0 ]; then
    # The error line (anyhow's `Error:`, a panic, a test failure), else the last line.
    local why; why="$(grep -E '^Error:|panicked at|^error|^---- |FAILED' "$LOGS/$name.log" | head -n3 | tr '\n' ' ')"
    [ -n "$why" ] || why="$(grep -v '^[[:space:]]*$' "$LOGS/$name.log" | tail -n1)"
    MSG="exit $rc after ${SECS} s: $(cut -c1-200 <<<"$why" | tr '|' '/')"
    return 1
  fi
}
json() { python3 -c 'import json,sys; d=json.loads([l for l in open(sys.argv[1]) if l.startswith("{")][-1]); print(eval(sys.argv[2], {}, d))' "$@"; }

# ---------------------------------------------------------------------------------------------
# 1. Build (one cargo profile and feature set for everything that runs).
CARGO=(cargo --locked)
[ "$PROFILE" = release ] && PFLAG=(--release) || PFLAG=(--profile "$PROFILE")
EXAMPLES=(--example model_speed --example train_speed --example pretrain --example align)
t0=$(date +%s)
if ! "${CARGO[@]}" build "${PFLAG[@]}" --workspace --features "$FEATURES" "${EXAMPLES[@]}" >"$LOGS/build.log" 2>&1 \
  || ! "${CARGO[@]}" test "${PFLAG[@]}" --workspace --features "$FEATURES" --test gpu --no-run >>"$LOGS/build.log" 2>&1; then
  tail -n 30 "$LOGS/build.log" >&2
  die "the build failed (log: $LOGS/build.log)"
fi
BUILD_SECS=$(( $(date +%s) - t0 ))
DIR="target/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")/examples"
row "build ($PROFILE, --features $FEATURES; $(nproc) CPUs)" "${BUILD_SECS} s"

# 2. The GPU tests (no cargo rebuild: same flags as the build).
if run tests "$T_TEST" "${CARGO[@]}" test "${PFLAG[@]}" --workspace --features "$FEATURES" --test gpu -- --test-threads 1 --nocapture; then
  passed=$(grep -o '[0-9]* passed' "$LOGS/tests.log" | tail -n1)
  worst=$(grep -o 'max |logit error| [0-9.e+-]*' "$LOGS/tests.log" | awk '{print $4}' | sort -g | tail -n1)
  row "tests/gpu.rs (parity, KV cache, training and alignment vs CPU)" "$passed in ${SECS} s; worst logit error vs the references $worst"
else
  row "tests/gpu.rs" "**FAIL** $MSG"; FAILED=1
fi

# 3. Prefill/decode, f32 and bf16.
for prec in f32 bf16; do
  extra=(); [ $prec = bf16 ] && extra=(--bf16)
  if run "model_speed_$prec" "$T_STEP" "$DIR/model_speed" "${SPEED_ARGS[@]}" "${extra[@]}"; then
    row "0.5B-shape inference, $prec (prefill ${SPEED_ARGS[3]} tokens, decode ${SPEED_ARGS[5]})" \
      "$(json "$LOGS/model_speed_$prec.log" '"prefill %.0f tokens/s, decode %.1f tokens/s" % (prefill_tokens_per_s, decode_tokens_per_s)')"
  else
    row "0.5B-shape inference, $prec" "**FAIL** $MSG"; FAILED=1
  fi
done

# 4. Training throughput, bf16.
if run train_speed "$T_STEP" "$DIR/train_speed" "${TRAIN_ARGS[@]}" --bf16; then
  row "training, bf16 matmuls (${TRAIN_ARGS[*]})" \
    "$(json "$LOGS/train_speed.log" '"%.0f tokens/s, %.1f model TFLOP/s, MFU %s, %d parameters" % (train_tokens_per_s, model_tflops_per_s, "-" if mfu is None else "%.1f%%" % (100 * mfu), parameters)')"
else
  row "training, bf16" "**FAIL** $MSG"; FAILED=1
fi

# 5. Short end-to-end runs.
rm -rf "$LOGS/pretrain" "$LOGS/align"
if run pretrain "$T_STEP" "$DIR/pretrain" "${PRETRAIN_ARGS[@]}" --out "$LOGS/pretrain"; then
  row "pretrain ${PRETRAIN_ARGS[*]}" "${SECS} s; $(grep -o 'held-out perplexity: .*' "$LOGS/pretrain.log" | tail -n1)"
else
  row "pretrain" "**FAIL** $MSG"; FAILED=1
fi
if run align "$T_STEP" "$DIR/align" "${ALIGN_ARGS[@]}" --pretrained "$LOGS/pretrain" --out "$LOGS/align"; then
  row "align (SFT, reward model, PPO, DPO, GRPO${ALIGN_ARGS[*]:+: ${ALIGN_ARGS[*]}})" "${SECS} s; $(grep -o 'done in .*' "$LOGS/align.log" | tail -n1)"
else
  row "align" "**FAIL** $MSG"; FAILED=1
fi

# ---------------------------------------------------------------------------------------------
# The table, between the markers of $DOC (the rest of the file is kept).
TOTAL=$(( $(date +%s) - START ))
TABLE="$LOGS/table.md"
{
  echo "<!-- gpu-check:begin (written by tools/gpu-check.sh; do not edit by hand) -->"
  echo "\`tools/gpu-check.sh $BACKEND\` on $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'): **$CARD**, driver $DRIVER, $MEM; total ${TOTAL} s."
  echo
  echo "| step | result |"
  echo "|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo "<!-- gpu-check:end -->"
} >"$TABLE"
if [ "$QUICK" = 1 ] && [ -z "${GPU_CHECK_DOC:-}" ]; then
  echo "gpu-check: quick mode: table left in $TABLE (docs/gpu.md not touched)"
else
  python3 - "$DOC" "$TABLE" <<'EOF'
import re, sys
doc, table = sys.argv[1], open(sys.argv[2]).read().rstrip("\n")
try:
    text = open(doc).read()
except FileNotFoundError:
    text = "# GPU backends\n\n"
pat = re.compile(r"<!-- gpu-check:begin.*?<!-- gpu-check:end -->", re.S)
text = pat.sub(lambda _: table, text) if pat.search(text) else text.rstrip("\n") + "\n\n" + table + "\n"
open(doc, "w").write(text)
EOF
  echo "gpu-check: table written to $DOC"
fi
cat "$TABLE"
echo "gpu-check: total ${TOTAL} s"
exit $FAILED
