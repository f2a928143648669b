#!/usr/bin/env bash
# The whole test suite: fetch the real vocabularies (sha256-checked, no-op when present), then run
# every test of the workspace on the CPU. This is what CI runs (.ci/run).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash tools/setup.sh
cargo test --workspace --locked --features collective
