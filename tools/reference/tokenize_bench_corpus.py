"""Writes the JSON Lines corpus `bench_tokenize_process.sh` times: `{"text": ...}` per line.

The texts: every paragraph of the pretraining corpus (corpus/, tools/setup.sh: docutils and Sphinx
documentation) and every text of the tokenizer parity corpus (tests/fixtures/tokenizer/corpus.jsonl:
prose in ~35 languages, CJK, code, man pages, Unicode data, digits, emoji, CRLF), in that order,
repeated until the file reaches `--mb` megabytes. Deterministic; stdlib only.
"""

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def texts():
    for path in sorted((ROOT / "corpus").rglob("*")):
        if path.suffix in (".txt", ".rst") and "licenses" not in path.parts:
            for para in path.read_text(encoding="utf-8", errors="replace").split("\n\n"):
                if para.strip():
                    yield para
    with open(ROOT / "tests/fixtures/tokenizer/corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["text"]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mb", type=float, default=16.0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    all_texts = list(texts())
    want, size = int(args.mb * 1e6), 0
    with open(args.out, "w", encoding="utf-8") as f:
        while size < want:
            for t in all_texts:
                line = json.dumps({"text": t}, ensure_ascii=False) + "\n"
                f.write(line)
                size += len(line.encode("utf-8"))
                if size >= want:
                    break


if __name__ == "__main__":
    main()
