#!/usr/bin/env bash
# qwen-rs against PyTorch on the same shapes, one after the other in one run, then the ratios.
#
#   bench_vs_torch.sh model [ARGS]   prefill/decode tokens/s and peak RSS of a Qwen2.5-0.5B shape:
#                                    examples/model_speed.rs vs tools/reference/bench_torch.py
#   bench_vs_torch.sh train [ARGS]   training tokens/s (forward, loss, backward, clip, AdamW) of the
#                                    pretraining issue's tiny config: examples/train_speed.rs vs
#                                    tools/reference/bench_train_torch.py
#
# ARGS go to both sides (e.g. `model --layers 4` for a quick look, `train --steps 20`).
# FEATURES=cuda (or wgpu) selects a GPU backend for qwen-rs. Needs .venv-model
# (tools/reference/make_model_venvs.sh); both sides use every core (`nproc` threads).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
kind="${1:-}"
case "$kind" in
  model) example=model_speed; torch_script=tools/reference/bench_torch.py ;;
  train) example=train_speed; torch_script=tools/reference/bench_train_torch.py ;;
  *) echo "usage: $0 model|train [ARGS...]" >&2; exit 2 ;;
esac
shift
cargo build -q --release --example "$example" ${FEATURES:+--no-default-features --features "$FEATURES"}
ours=$(target/release/examples/"$example" "$@")
theirs=$(.venv-model/bin/python "$torch_script" --threads "$(nproc)" "$@")
echo "$ours"
echo "$theirs"
python3 - "$ours" "$theirs" <<'PY'
import json, sys
o, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for k in sorted(set(o) & set(t)):
    if k.endswith("_per_s"):
        print(f"{k}: qwen-rs {o[k]:.2f}, pytorch {t[k]:.2f}, ratio {o[k] / t[k]:.2f}x")
    elif k == "peak_rss_mb":
        print(f"peak RSS MB: qwen-rs {o[k]:.0f}, pytorch {t[k]:.0f}, ratio {o[k] / t[k]:.2f}")
PY
