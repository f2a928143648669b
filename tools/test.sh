#!/usr/bin/env bash
# The whole test suite: fetch the real vocabularies (sha256-checked, no-op when present), then run
# every test of the workspace on the CPU. This is what CI runs (.ci/run).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash tools/setup.sh
cargo test --workspace --locked --features collective

# --- GPU backends without a GPU (docs/gpu.md) ---
# burn's wgpu backend on Mesa's lavapipe (installed by tools/setup.sh): tests/gpu.rs against the
# references and the CPU backend. Then every target must still compile with CUDA (no GPU needed).
cargo test --workspace --locked --features collective,wgpu --test gpu
cargo check --workspace --locked --all-targets --features collective,cuda
