"""tiktoken's side of `bench_tokenize_process.sh`: the `tokenize` example's job in Python.

Reads JSON Lines `{"text": ...}` from stdin and writes `{"ids":[...]}` per line, in order, exactly
as `cargo run --release --example tokenize -- --vocab vocab/qwen.tiktoken` does (ordinary
encoding, compact JSON): the whole process, interpreter start, vocabulary load, JSON in and out,
with tiktoken's Rust core encoding each batch on every core (`encode_ordinary_batch`).
"""

import argparse
import json
import os
import sys

import qwen_tiktoken


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vocab", required=True, help="qwen.tiktoken")
    ap.add_argument("--batch", type=int, default=4096, help="lines per encode_ordinary_batch call")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    enc = qwen_tiktoken.encoding(args.vocab)
    out = sys.stdout
    batch = []

    def flush():
        for ids in enc.encode_ordinary_batch(batch, num_threads=args.threads):
            out.write('{"ids":[' + ",".join(map(str, ids)) + "]}\n")
        batch.clear()

    for line in sys.stdin:
        batch.append(json.loads(line)["text"])
        if len(batch) == args.batch:
            flush()
    flush()


if __name__ == "__main__":
    main()
