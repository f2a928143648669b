"""Checks tests/fixtures/tokenizer/chatml.jsonl against Qwen-1's own code: `QWenTokenizer`
(tokenization_qwen.py) on vocab/qwen.tiktoken and `make_context` (qwen_generation_utils.py), loaded
from a folder made by tools/reference/get_qwen1_model_code.sh (not vendored here).

    .venv-qwen1/bin/python tools/reference/check_chatml_with_qwen1.py QWEN1_CODE_DIR
"""
import importlib.util, json, pathlib, sys

code = pathlib.Path(sys.argv[1])
root = pathlib.Path(__file__).resolve().parents[2]


def load(name):
    spec = importlib.util.spec_from_file_location(name, code / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tok = load("tokenization_qwen").QWenTokenizer(vocab_file=str(root / "vocab/qwen.tiktoken"))
make_context = load("qwen_generation_utils").make_context
cases = [json.loads(l) for l in (root / "tests/fixtures/tokenizer/chatml.jsonl").read_text().splitlines()]
for i, c in enumerate(cases):
    history = [tuple(t) for t in c["history"]]
    raw, ids = make_context(tok, c["query"], history=history, system=c["system"],
                            max_window_size=c["max_window_size"], chat_format="chatml")
    assert raw == c["raw_text"], f"case {i}: raw_text differs"
    assert ids == c["ids"], f"case {i}: ids differ"
print(f"{len(cases)} ChatML fixtures identical to Qwen-1's make_context + QWenTokenizer")
