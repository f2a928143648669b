"""Chat-template fixtures: real Qwen templates rendered by transformers' `apply_chat_template`.

The templates are the ones llama.cpp keeps for its own template tests (Qwen2.5-7B-Instruct,
Qwen3-0.6B, QwQ-32B, copied there from the models' tokenizer_config.json), taken from the pinned
llama-cpp-python sdist on PyPI (sha256-checked, the archive and every template file), never from a
model hub. Each case renders a conversation with transformers (pinned in requirements-model.txt;
torch is not needed) and tokenizes the rendered text with the HF tokenizer of `vocab/tokenizer.json`
(`tools/setup.sh`; the Qwen2/Qwen3 vocabulary, `<think>` = 151667), as `apply_chat_template(...,
tokenize=True)` does. Output: tests/fixtures/chat_template/{templates/*.jinja, cases.jsonl, environment.jsonl}.

    python3 -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install transformers==5.24.0 tokenizers==0.23.3 \
        huggingface-hub==2.4.0 jinja2==3.1.6
    /tmp/tvenv/bin/python tools/reference/chat_template_fixtures.py [--sdist llama_cpp_python-0.3.36.tar.gz]
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile

import transformers
from transformers import PreTrainedTokenizerFast

SDIST = "llama_cpp_python-0.3.36.tar.gz"
SDIST_URL = ("https://files.pythonhosted.org/packages/ec/e9/"
             "e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/" + SDIST)
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
PREFIX = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/templates/"
TEMPLATES = {
    # fixture name: (file in the sdist, its sha256)
    "qwen2.5": ("Qwen-Qwen2.5-7B-Instruct.jinja", "cd8e9439f0570856fd70470bf8889ebd8b5d1107207f67a5efb46e342330527f"),
    "qwen3": ("Qwen-Qwen3-0.6B.jinja", "87a2728cb8dc9fe424d624542f6060ec05a1d285ebbec578bb078900e33396b5"),
    "qwq": ("Qwen-QwQ-32B.jinja", "5ed15374ce53e19a7798710736a2c9fe41c79f7385e8421a2080d6575a80ef1b"),
}

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "chat_template")

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name, e.g. Zürich"},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}

SYSTEM = {"role": "system", "content": "You are terse."}
CASES = [
    # (name, templates, messages, options)
    ("user_only", ["qwen2.5", "qwen3", "qwq"], [{"role": "user", "content": "Hello!"}], {}),
    ("system_user", ["qwen2.5", "qwen3", "qwq"], [SYSTEM, {"role": "user", "content": "Name a prime."}], {}),
    ("no_generation_prompt", ["qwen2.5", "qwen3"],
     [SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
     {"add_generation_prompt": False}),
    ("multi_turn", ["qwen2.5", "qwen3", "qwq"],
     [SYSTEM, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
      {"role": "user", "content": "Times 3?"}, {"role": "assistant", "content": "12"},
      {"role": "user", "content": "Über alles: 数字 ½ — and emoji 🙂?"}], {}),
    ("thinking_off", ["qwen3", "qwq"], [SYSTEM, {"role": "user", "content": "Quick: 7*6?"}],
     {"enable_thinking": False}),
    ("thinking_on", ["qwen3", "qwq"], [SYSTEM, {"role": "user", "content": "Quick: 7*6?"}],
     {"enable_thinking": True}),
    ("history_think_stripped", ["qwen3", "qwq"],
     [{"role": "user", "content": "7*6?"},
      {"role": "assistant", "content": "<think>\nSix sevens.\n</think>\n\n42"},
      {"role": "user", "content": "And 6*9?"}], {"enable_thinking": False}),
    ("reasoning_content_last_turn", ["qwen3"],
     [{"role": "user", "content": "7*6?"},
      {"role": "assistant", "content": "42", "reasoning_content": "Six sevens."}],
     {"add_generation_prompt": False}),
    ("tools", ["qwen2.5", "qwen3", "qwq"],
     [SYSTEM, {"role": "user", "content": "Weather in Zürich?"},
      {"role": "assistant", "content": "",
       "tool_calls": [{"type": "function", "function": {"name": "get_weather",
                                                        "arguments": {"city": "Zürich", "unit": "celsius"}}}]},
      {"role": "tool", "content": "{\"temp\": 21}"},
      {"role": "tool", "content": "{\"sky\": \"clear\"}"}],
     {"tools": [WEATHER]}),
    ("tools_default_system", ["qwen2.5"], [{"role": "user", "content": "Weather?"}], {"tools": [WEATHER]}),
    ("whitespace", ["qwen2.5", "qwen3"],
     [{"role": "user", "content": "  leading spaces\n\n\ttabs and trailing  \n"}], {}),
]


# The environment itself, on templates of our own: transformers' `tojson` keyword arguments, Python
# string methods, loop controls, raise_exception. Rendered with transformers' own compiled template.
ENV_CASES = [
    ("{{ x | tojson }}", {"x": {"b": [1, 2.5, None, True], "a": "é\"\n<>&'"}}),
    ("{{ x | tojson(indent=2) }}", {"x": {"b": [1, {"c": []}], "a": {}}}),
    ("{{ x | tojson(indent=2, sort_keys=true) }}", {"x": {"b": [1, {"d": 1, "c": 2}], "a": "z"}}),
    ("{{ x | tojson(separators=(',', ':')) }}", {"x": {"b": [1, 2], "a": "z"}}),
    ("{{ s.split('</think>')[-1].lstrip('\\n') }}|{{ s.startswith('<think>') }}|{{ s.strip('\\n<') }}",
     {"s": "<think>\nhm\n</think>\n\nanswer"}),
    ("{% for m in ms %}{% if m == 3 %}{% break %}{% endif %}{{ m }},{% endfor %}", {"ms": [1, 2, 3, 4]}),
    ("{% for m in ms[::-1] %}{{ loop.index0 }}{{ m }}\n{% endfor %}", {"ms": ["a", "b"]}),
    ("{{ t }} {{ f }} {{ n }} {{ undefined_name }}.", {"t": True, "f": False, "n": None}),
    ("  {% if true %}\n    kept\n  {% endif %}\n", {}),
    ("{{ d.get('k', 'none') }} {{ d.get('x', 'none') }} {% for k, v in d.items() %}{{ k }}={{ v }} {% endfor %}",
     {"d": {"z": 1, "k": 2}}),
]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def fetch_sdist(path):
    if path is None:
        tmp = tempfile.mkdtemp()
        # pip download of an sdist would build its metadata (cmake); the file itself is enough.
        subprocess.run(["curl", "-sSfL", "-o", os.path.join(tmp, SDIST), SDIST_URL], check=True)
        path = os.path.join(tmp, SDIST)
    got = sha256(path)
    if got != SDIST_SHA256:
        sys.exit(f"{path}: sha256 {got}, expected {SDIST_SHA256}")
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sdist", help="the llama-cpp-python 0.3.36 sdist (else pip downloads it)")
    args = ap.parse_args()
    assert transformers.__version__ == "5.24.0", transformers.__version__
    sdist = fetch_sdist(args.sdist)

    os.makedirs(os.path.join(OUT, "templates"), exist_ok=True)
    templates = {}
    with tarfile.open(sdist) as tar:
        for name, (member, want) in TEMPLATES.items():
            data = tar.extractfile(PREFIX + member).read()
            got = hashlib.sha256(data).hexdigest()
            if got != want:
                sys.exit(f"{member}: sha256 {got}, expected {want}")
            templates[name] = data.decode("utf-8")
            with open(os.path.join(OUT, "templates", f"{name}.jinja"), "wb") as f:
                f.write(data)
            print(f"{name}: {member} (sha256 {got})")

    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(ROOT, "vocab", "tokenizer.json"))
    lines = []
    for case, names, messages, options in CASES:
        for name in names:
            tok.chat_template = templates[name]
            kwargs = dict(options)
            add_generation_prompt = kwargs.pop("add_generation_prompt", True)
            tools = kwargs.pop("tools", None)
            text = tok.apply_chat_template(messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                           tokenize=False, **kwargs)
            # What apply_chat_template(tokenize=True) runs on the rendered text.
            ids = tok(text, add_special_tokens=False)["input_ids"]
            lines.append({"case": case, "template": name, "messages": messages,
                          "add_generation_prompt": add_generation_prompt, "tools": tools,
                          "kwargs": kwargs, "text": text, "ids": ids})
    from transformers.utils.chat_template_utils import _compile_jinja_template

    env_lines = [{"template": t, "vars": v, "text": _compile_jinja_template(t).render(**v)} for t, v in ENV_CASES]
    with open(os.path.join(OUT, "environment.jsonl"), "w", encoding="utf-8") as f:
        for line in env_lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    with open(os.path.join(OUT, "cases.jsonl"), "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    print(f"{len(lines)} cases -> {OUT}/cases.jsonl")


if __name__ == "__main__":
    main()
