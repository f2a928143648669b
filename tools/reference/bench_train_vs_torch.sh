#!/usr/bin/env bash
# Training tokens/s: qwen-rs (examples/train_speed.rs, Autodiff<selected backend>) and PyTorch
# (tools/reference/bench_train_torch.py) on the same shape and step, one after the other, then the ratio.
# Needs .venv-model (tools/reference/make_model_venvs.sh). Extra arguments go to both.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
cargo build -q --release --example train_speed ${FEATURES:+--no-default-features --features "$FEATURES"}
ours=$(target/release/examples/train_speed "$@")
theirs=$(.venv-model/bin/python tools/reference/bench_train_torch.py --threads "$(nproc)" "$@")
echo "$ours"
echo "$theirs"
python3 - "$ours" "$theirs" <<'PY'
import json, sys
o, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"train tokens/s: qwen-rs {o['train_tokens_per_s']:.0f}, pytorch {t['train_tokens_per_s']:.0f}, ratio {o['train_tokens_per_s'] / t['train_tokens_per_s']:.2f}x")
PY
