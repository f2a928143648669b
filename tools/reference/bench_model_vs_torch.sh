#!/usr/bin/env bash
# Prefill/decode tokens/s and peak memory: qwen-rs (examples/model_speed.rs, CPU backend by default)
# and PyTorch (tools/reference/bench_torch.py) on the same Qwen2.5-0.5B shape, one after the other in
# one run, then the ratios. Needs .venv-model (tools/reference/make_model_venvs.sh).
# Extra arguments go to both (e.g. --layers 4 for a quick look); FEATURES=cuda selects a GPU backend.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
threads=$(nproc)
cargo build -q --release --example model_speed ${FEATURES:+--no-default-features --features "$FEATURES"}
ours=$(target/release/examples/model_speed "$@")
theirs=$(.venv-model/bin/python tools/reference/bench_torch.py --threads "$threads" "$@")
echo "$ours"
echo "$theirs"
python3 - "$ours" "$theirs" <<'PY'
import json, sys
o, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for k in ("prefill_tokens_per_s", "decode_tokens_per_s"):
    print(f"{k}: qwen-rs {o[k]:.2f}, pytorch {t[k]:.2f}, ratio {o[k] / t[k]:.2f}x")
print(f"peak RSS MB: qwen-rs {o['peak_rss_mb']:.0f}, pytorch {t['peak_rss_mb']:.0f}, ratio {o['peak_rss_mb'] / t['peak_rss_mb']:.2f}")
PY
