"""Makes tests/fixtures/sft/finetune_py.jsonl by running Qwen-1's own SFT preprocessing: the
`preprocess` function of `finetune.py` (GitHub QwenLM/Qwen, pinned commit, sha256-checked; not
vendored here) with Qwen-1's `QWenTokenizer` (tokenization_qwen.py from
tools/reference/get_qwen1_model_code.sh) on vocab/qwen.tiktoken, `pad_token_id = eod_id` as
`finetune.py`'s `train()` sets it.

    python3 -m venv .venv-sft && .venv-sft/bin/pip install -r tools/reference/requirements-sft.txt
    .venv-sft/bin/python tools/reference/sft_fixtures.py QWEN_CLONE QWEN1_CODE_DIR

QWEN_CLONE: a git clone of github.com/QwenLM/Qwen; QWEN1_CODE_DIR: the `dec2023` folder
get_qwen1_model_code.sh writes. `finetune.py` imports torch, deepspeed and peft at module level, so
only its `preprocess` function and its `IGNORE_TOKEN_ID` are taken out of the file (with `ast`) and
run; the `torch.tensor` calls at the end of `preprocess` get a stand-in that keeps the lists, and
`IGNORE_TOKEN_ID` (`LabelSmoother.ignore_index`) is read from the installed transformers' source.
Each conversation is preprocessed alone with a `max_len` far above its length; the padding
(`pad_token_id` ids with `IGNORE_TOKEN_ID` labels at the end) is cut off, as `tokenize --chat`
prints no padding. The conversation texts are lines of tests/fixtures/tokenizer/corpus.jsonl (real
text no one here wrote: CPython's CJK test files and more), with one decomposed (NFD) text, since
`QWenTokenizer` normalizes to NFC. Special-token strings are left out of the texts: `finetune.py`'s
tokenizer encodes them as special tokens (`allowed_special="all"`), this project keeps them text.
"""
import ast, hashlib, importlib.util, json, pathlib, subprocess, sys, unicodedata

QWEN_COMMIT = "2df8e8ac450fa185c421a08b0090ef81826caa6e"
FINETUNE_SHA256 = "029680371960c73c27710ed33db9d42ab4672ae7fcbbcb2d866dce5d0e8eed03"
TOKENIZATION_SHA256 = "c9bbb7710bacfaa323d48b8414643d8d7893d174f85f65e83fbc363de271b69a"

root = pathlib.Path(__file__).resolve().parents[2]
clone, code = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])

source = subprocess.run(["git", "-C", str(clone), "show", f"{QWEN_COMMIT}:finetune.py"],
                        check=True, capture_output=True).stdout
assert hashlib.sha256(source).hexdigest() == FINETUNE_SHA256, "finetune.py differs from the pinned one"
tok_src = (code / "tokenization_qwen.py").read_bytes()
assert hashlib.sha256(tok_src).hexdigest() == TOKENIZATION_SHA256, "tokenization_qwen.py differs"

# IGNORE_TOKEN_ID = LabelSmoother.ignore_index: the dataclass field's default in transformers.
import transformers
pt_utils = pathlib.Path(transformers.__file__).parent / "trainer_pt_utils.py"
ignore_index = None
for node in ast.walk(ast.parse(pt_utils.read_text())):
    if isinstance(node, ast.ClassDef) and node.name == "LabelSmoother":
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and getattr(item.target, "id", None) == "ignore_index":
                ignore_index = ast.literal_eval(item.value)
assert ignore_index == -100, ignore_index


class Tensor(list):
    """What `preprocess` does with torch: `torch.tensor(rows, dtype=...)` and `.ne(pad)`."""

    def ne(self, value):
        return [[x != value for x in row] for row in self]


class TorchStandIn:
    int = "int"

    @staticmethod
    def tensor(rows, dtype=None):
        return Tensor(rows)


tree = ast.parse(source)
preprocess_def = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "preprocess")
namespace = {"torch": TorchStandIn, "transformers": transformers, "Dict": dict, "IGNORE_TOKEN_ID": ignore_index}
exec(compile(ast.Module(body=[preprocess_def], type_ignores=[]), "finetune.py", "exec"), namespace)
preprocess = namespace["preprocess"]

spec = importlib.util.spec_from_file_location("tokenization_qwen", code / "tokenization_qwen.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
tokenizer = module.QWenTokenizer(vocab_file=str(root / "vocab/qwen.tiktoken"))
tokenizer.pad_token_id = tokenizer.eod_id  # finetune.py train()

texts = [json.loads(l)["text"] for l in (root / "tests/fixtures/tokenizer/corpus.jsonl").read_text(encoding="utf-8").split("\n") if l]
texts = [t for t in texts if t.strip() and "<|" not in t]
# A decomposed text (NFD): the tokenizer composes it first.
nfd = unicodedata.normalize("NFD", "Café, naïve résumé — Ångström")
assert nfd != unicodedata.normalize("NFC", nfd)

conversations = []
picks = [(0, 1), (8, 9), (20, 21), (30, 31, 32, 33), (40, 41), (60, 61, 62, 63, 64, 65), (100, 101), (200, 201),
         (400, 401, 402, 403), (800, 801), (1200, 1201), (1600, 1601)]
for pick in picks:
    turns = [texts[i % len(texts)] for i in pick]
    conversations.append([{"from": "user" if j % 2 == 0 else "assistant", "value": t} for j, t in enumerate(turns)])
conversations.append([{"from": "user", "value": nfd}, {"from": "assistant", "value": "ok"}])
# A user turn with no reply after it (the target masks it all but the markers).
conversations.append([{"from": "user", "value": texts[5]}, {"from": "assistant", "value": texts[6]},
                      {"from": "user", "value": texts[7]}])

out_dir = root / "tests/fixtures/sft"
out_dir.mkdir(parents=True, exist_ok=True)
rows = []
for conv in conversations:
    max_len = 16384
    d = preprocess([conv], tokenizer, max_len)
    ids, labels = list(d["input_ids"][0]), list(d["labels"][0])
    while ids and ids[-1] == tokenizer.pad_token_id and labels[-1] == ignore_index:
        ids.pop()
        labels.pop()
    assert len(ids) < max_len
    rows.append({"conversations": conv, "ids": ids, "labels": labels})
with open(out_dir / "finetune_py.jsonl", "w", encoding="utf-8", newline="\n") as f:
    for r in rows:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
print(f"{len(rows)} conversations preprocessed by finetune.py @ {QWEN_COMMIT[:12]} "
      f"({sum(len(r['ids']) for r in rows)} tokens, {sum(l != -100 for r in rows for l in r['labels'])} targets)")
