#!/usr/bin/env bash
# Extract Qwen-1's modeling code (NOT vendored in this repo) from local git clones of two public
# GitHub mirrors of the Hugging Face model repos, at pinned commits, and check the sha256 pins:
#   DEC_CLONE: a clone of GitHub zhangningboo/Qwen-7B      (Qwen/Qwen-7B, Dec-2023 code)
#   AUG_CLONE: a clone of GitHub undefdev/Qwen-7B-Chat     (Qwen/Qwen-7B-Chat, Aug-2023 code)
# Usage: tools/reference/get_qwen1_model_code.sh DEC_CLONE AUG_CLONE OUT_DIR
# Writes OUT_DIR/dec2023/ and OUT_DIR/aug2023/ (modeling_qwen.py, configuration_qwen.py,
# qwen_generation_utils.py) for `model_fixtures.py qwen1 --qwen1-code OUT_DIR/dec2023
# --qwen1-aug-code OUT_DIR/aug2023`. Keep OUT_DIR outside the repository.
set -euo pipefail
[ $# -eq 3 ] || { sed -n '2,10p' "$0"; exit 2; }
DEC_CLONE=$1 AUG_CLONE=$2 OUT=$3
DEC_COMMIT=ffe04dd57f85293043ba999a2c0daa788d6182e9
AUG_COMMIT=04df5dd57b94b9ed20498ee42063ea9e164f98b3
mkdir -p "$OUT/dec2023" "$OUT/aug2023"
for f in modeling_qwen.py configuration_qwen.py qwen_generation_utils.py; do
  git -C "$DEC_CLONE" show "$DEC_COMMIT:$f" > "$OUT/dec2023/$f"
  git -C "$AUG_CLONE" show "$AUG_COMMIT:$f" > "$OUT/aug2023/$f"
done
# Qwen-1's tokenizer, for tools/reference/check_chatml_with_qwen1.py
git -C "$DEC_CLONE" show "$DEC_COMMIT:tokenization_qwen.py" > "$OUT/dec2023/tokenization_qwen.py"
( cd "$OUT" && sha256sum -c - ) <<'SUMS'
7482892d33418bdd543d1ce61e5c8b5b1bd49bd85ff26be185fb3521b73daac7  dec2023/modeling_qwen.py
74626181ddd5c9c40accdbb93fc45007cb2278179a32504f32bd82ffb4336e2c  dec2023/configuration_qwen.py
f223e0f1bb987fdb93b7cf80e046d96e9e910650103ef2f136eb04887324de34  dec2023/qwen_generation_utils.py
c9bbb7710bacfaa323d48b8414643d8d7893d174f85f65e83fbc363de271b69a  dec2023/tokenization_qwen.py
a6db24b00c69bbc21a7eac8236b7349706888005edb0f3dd39e08c383f133194  aug2023/modeling_qwen.py
8243a8b7aaf1d82827eb60b9337cbfba15ba795a56b582a1d921835bc9e8ddcc  aug2023/configuration_qwen.py
5e820b80d7e27ab2186f09d948c1993eb946aa98a2c8288d3d26f46db9f4ca80  aug2023/qwen_generation_utils.py
SUMS
