#!/usr/bin/env python3
"""End-to-end check of the `serve` example with the official OpenAI Python client (pinned in
requirements-openai.txt; `bash tools/reference/make_openai_venv.sh` installs it into .venv-openai).

    .venv-openai/bin/python tools/reference/serve_e2e.py --model DIR [--bin target/release/examples]
    .venv-openai/bin/python tools/reference/serve_e2e.py --random-model /tmp/rand   # no checkpoint at hand

`--random-model DIR` first writes a small random-weight Qwen2 folder there (hidden 32, one layer,
the vocabulary and `tokenizer.json` of vocab/, greedy `generation_config.json`) and checks on it.

Starts `serve --port 0` on DIR and checks, for a few prompts:
- greedy chat replies, whole and streamed, are identical to what the `chat` example prints for the
  same message (the same ChatML rendering, default system prompt, stop ids and token budget);
- 16 concurrent streamed requests each get exactly the text they get alone (nothing lost or mixed);
- usage adds up, finish reasons are `stop` or `length`.
Exits non-zero on the first difference.
"""

import argparse
import array
import concurrent.futures
import json
import os
import random
import shutil
import struct
import subprocess
import sys

import openai

PROMPTS = [
    "Hello!",
    "Write a haiku about the sea.",
    "What is 2 + 2?",
    "Capitalise: hello world",
    "Tell me about <|im_end|> tokens.",
    "List three colours.",
    "Translate 'good morning' to French.",
    "Why is the sky blue?",
]


def write_random_model(out, tokenizer_json, hidden=32, inter=64, heads=2, seed=0):
    """A Qwen2 folder with random weights (std 0.2, norms 1), written as f32 safetensors by hand."""
    os.makedirs(out, exist_ok=True)
    with open(tokenizer_json, encoding="utf-8") as f:
        tok = json.load(f)
    vocab = 1 + max([*tok["model"]["vocab"].values(), *(t["id"] for t in tok.get("added_tokens", []))])
    rng = random.Random(seed)
    shapes = {"model.embed_tokens.weight": [vocab, hidden], "lm_head.weight": [vocab, hidden], "model.norm.weight": [hidden]}
    layer = "model.layers.0."
    for name, shape in [
        ("input_layernorm.weight", [hidden]), ("post_attention_layernorm.weight", [hidden]),
        ("self_attn.q_proj.weight", [hidden, hidden]), ("self_attn.q_proj.bias", [hidden]),
        ("self_attn.k_proj.weight", [hidden, hidden]), ("self_attn.k_proj.bias", [hidden]),
        ("self_attn.v_proj.weight", [hidden, hidden]), ("self_attn.v_proj.bias", [hidden]),
        ("self_attn.o_proj.weight", [hidden, hidden]),
        ("mlp.gate_proj.weight", [inter, hidden]), ("mlp.up_proj.weight", [inter, hidden]),
        ("mlp.down_proj.weight", [hidden, inter]),
    ]:
        shapes[layer + name] = shape
    header, blobs, offset = {}, [], 0
    for name in sorted(shapes):
        n = 1
        for d in shapes[name]:
            n *= d
        values = array.array("f", [1.0] * n if "norm" in name else (rng.gauss(0.0, 0.2) for _ in range(n)))
        blob = values.tobytes()
        header[name] = {"dtype": "F32", "shape": shapes[name], "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(os.path.join(out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)
    config = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": inter, "num_hidden_layers": 1, "num_attention_heads": heads,
        "num_key_value_heads": heads, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "float32",
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": [151643, 151645], "do_sample": False}, f)
    shutil.copy(tokenizer_json, os.path.join(out, "tokenizer.json"))


def chat_example(bin_dir, model, message, max_tokens):
    """The `chat` example's reply to one message (piped stdin: one message per line)."""
    out = subprocess.run(
        [os.path.join(bin_dir, "chat"), "--model", model, "--max-new-tokens", str(max_tokens), "--temperature", "0"],
        input=message + "\n",
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.endswith("\n"), out.stdout
    return out.stdout[:-1]


def start_server(bin_dir, model, max_batch):
    proc = subprocess.Popen(
        [os.path.join(bin_dir, "serve"), "--model", model, "--port", "0", "--max-batch", str(max_batch)],
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stderr.readline()
    if not line.startswith("listening on "):
        proc.kill()
        sys.exit(f"serve did not start: {line}")
    return proc, line.split("listening on ", 1)[1].strip()


def streamed(client, model, message, max_tokens):
    text, finish, usage = [], None, None
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": message}],
        temperature=0,
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                text.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    return "".join(text), finish, usage


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--random-model", help="write a random model folder here and check on it")
    ap.add_argument("--tokenizer-json", default="vocab/tokenizer.json")
    ap.add_argument("--bin", default="target/release/examples")
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args()
    if args.random_model:
        write_random_model(args.random_model, args.tokenizer_json)
        args.model = args.random_model
    if not args.model:
        sys.exit("--model DIR or --random-model DIR")

    proc, base = start_server(args.bin, args.model, 16)
    try:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused")
        model = client.models.list().data[0].id
        alone = {}
        for p in PROMPTS:
            want = chat_example(args.bin, args.model, p, args.max_tokens)
            r = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": p}], temperature=0, max_tokens=args.max_tokens
            )
            got = r.choices[0].message.content
            assert got == want, f"{p!r}: server {got!r} != chat example {want!r}"
            assert r.choices[0].finish_reason in ("stop", "length"), r
            assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage
            text, finish, usage = streamed(client, model, p, args.max_tokens)
            assert text == want, f"{p!r}: streamed {text!r} != {want!r}"
            assert (finish, usage.completion_tokens) == (r.choices[0].finish_reason, r.usage.completion_tokens)
            alone[p] = want
        print(f"greedy: {len(PROMPTS)} prompts, whole and streamed, identical to the chat example")

        jobs = [PROMPTS[i % len(PROMPTS)] for i in range(16)]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda p: streamed(client, model, p, args.max_tokens)[0], jobs))
        for p, got in zip(jobs, results):
            assert got == alone[p], f"concurrent {p!r}: {got!r} != alone {alone[p]!r}"
        print("16 concurrent streams: each identical to its reply alone")
    finally:
        proc.terminate()
        code = proc.wait(timeout=60)
    assert code == 0, f"serve exited with {code} on SIGTERM"
    print("serve exited cleanly on SIGTERM")


if __name__ == "__main__":
    main()
