#!/usr/bin/env bash
# The `tokenize` example as a whole process against tiktoken driven from Python, in one run.
#
# Both read the same JSON Lines corpus (`{"text": ...}` per line; tokenize_bench_corpus.py: the
# pretraining documents and the tokenizer parity corpus, repeated to MB megabytes) on stdin and
# write `{"ids":[...]}` per line to stdout; the outputs are compared byte for byte before timing.
# Timed: the whole process (start, vocabulary load, JSON in and out, encoding on every core),
# alternating ours and theirs, RUNS times each; also each side on empty input (start + load).
#
#   bash tools/reference/bench_tokenize_process.sh      MB=16 RUNS=5 by default
#
# Needs vocab/qwen.tiktoken and corpus/ (tools/setup.sh) and .venv (tools/reference/make_venv.sh:
# tiktoken 0.14.0). FEATURES=... builds the example with those cargo features.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
MB="${MB:-16}" RUNS="${RUNS:-5}"
[ -x .venv/bin/python ] || bash tools/reference/make_venv.sh
cargo build -q --release --locked --example tokenize ${FEATURES:+--features "$FEATURES"}
target="${CARGO_TARGET_DIR:-target}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 tools/reference/tokenize_bench_corpus.py --mb "$MB" --out "$tmp/corpus.jsonl"
python3 - "$tmp" "$RUNS" "$target/release/examples/tokenize" <<'PY'
import os, statistics, subprocess, sys, time
tmp, runs, exe = sys.argv[1], int(sys.argv[2]), sys.argv[3]
corpus = os.path.join(tmp, "corpus.jsonl")
contenders = {
    "qwen-rs tokenize": [exe, "--vocab", "vocab/qwen.tiktoken"],
    "tiktoken (Python)": [".venv/bin/python", "tools/reference/tiktoken_process.py", "--vocab", "vocab/qwen.tiktoken"],
}

def run(cmd, src, dst=os.devnull):
    with open(src, "rb") as i, open(dst, "wb") as o:
        t = time.perf_counter()
        subprocess.run(cmd, stdin=i, stdout=o, check=True)
        return time.perf_counter() - t

outs = []
for name, cmd in contenders.items():
    out = os.path.join(tmp, f"{len(outs)}.jsonl")
    run(cmd, corpus, out)
    outs.append(open(out, "rb").read())
assert outs[0] == outs[1], "the two outputs differ"
mb = os.path.getsize(corpus) / 1e6
lines = outs[0].count(b"\n")
print(f"corpus {mb:.1f} MB, {lines} lines, identical outputs ({len(outs[0]) / 1e6:.1f} MB); {os.cpu_count()} cores, {runs} runs each")
full = {n: [] for n in contenders}
empty = {n: [] for n in contenders}
for _ in range(runs):
    for name, cmd in contenders.items():
        full[name].append(run(cmd, corpus))
        empty[name].append(run(cmd, os.devnull))
for name in contenders:
    f, e = full[name], empty[name]
    print(f"{name:>18}: whole process min {min(f):.3f} s, median {statistics.median(f):.3f} s ({mb / min(f):.1f} MB/s); "
          f"empty input (start + vocabulary) min {min(e):.3f} s")
ours, theirs = (min(full[n]) for n in contenders)
mo, mt = (statistics.median(full[n]) for n in contenders)
print(f"ratio (tiktoken time / ours): {theirs / ours:.2f}x on the min, {mt / mo:.2f}x on the median")
PY
