#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for SECONDS each (default 60), one after the other, and
# prints the executions each made. Exits non-zero on any crash, hang (-timeout) or oversized
# allocation (-rss_limit_mb / -malloc_limit_mb). Needs the nightly toolchain and cargo-fuzz.
#
#   tools/fuzz.sh SECONDS [TARGET...]
#   FUZZ_RUNS=10000000 tools/fuzz.sh 3600 encode    # stop at 10 million executions or an hour
#   FUZZ_SANITIZER=none tools/fuzz.sh 3600           # no AddressSanitizer: 2-4x the executions/s
#   FUZZ_SEED=1 tools/fuzz.sh 30                     # libFuzzer's -seed: the same inputs each run
#
# The default build has AddressSanitizer, which also enforces -malloc_limit_mb (one allocation over
# 512 MiB is a failure); without a sanitizer that limit is not checked (libFuzzer needs the
# sanitizer's malloc hooks), only -rss_limit_mb. The long campaign of docs/reliability.md ran
# without one for speed (no unsafe code of ours reads fuzzed bytes); CI's smoke run uses ASan.
#
# The corpus grows in fuzz/corpus/<target> (git-ignored), seeded from fuzz/seeds/<target>
# (committed); a crashing input is left in fuzz/artifacts/<target>.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_EACH="${1:-60}"
shift || true
cd "$ROOT/fuzz"
# The fuzz crate resolves the workspace's pinned versions (its own lock file is not committed).
[ -f Cargo.lock ] || cp "$ROOT/Cargo.lock" Cargo.lock
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  mapfile -t TARGETS < <(cargo +nightly fuzz list)
fi
# Release with debug assertions and overflow checks (cargo-fuzz's default), AddressSanitizer unless
# FUZZ_SANITIZER says otherwise (each sanitizer builds in its own target folder).
SANITIZER="${FUZZ_SANITIZER:-address}"
FUZZ_ARGS=(-s "$SANITIZER")
[ "$SANITIZER" = address ] || FUZZ_ARGS+=(--target-dir "target/sanitizer-$SANITIZER")
cargo +nightly fuzz build "${FUZZ_ARGS[@]}"
status=0
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t"
  log="$(mktemp)"
  start="$(date +%s)"
  # -max_len: inputs up to 16 KiB; -timeout: one input taking 30 s is a hang (generous, for a
  # loaded 2-core machine); -rss_limit_mb and -malloc_limit_mb: a process over 2 GiB, or one
  # allocation over 512 MiB, is a failure.
  if cargo +nightly fuzz run "${FUZZ_ARGS[@]}" "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$SECONDS_EACH" -max_len=16384 -timeout=30 -rss_limit_mb=2048 -malloc_limit_mb=512 \
      ${FUZZ_RUNS:+-runs=$FUZZ_RUNS} ${FUZZ_SEED:+-seed=$FUZZ_SEED} -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
    status=1
    grep -E "ERROR|panicked|Test unit written|SUMMARY" "$log" | head -20 || true
  fi
  execs="$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' | tail -1 || true)"
  printf '%-22s %12s execs in %ss: %s\n' "$t" "${execs:-?}" "$(($(date +%s) - start))" "$result"
  rm -f "$log"
done
exit $status
