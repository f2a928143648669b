#!/usr/bin/env python3
"""A Qwen2 checkpoint of a given shape with random weights (config.json + model.safetensors), made
with the standard library only, for measuring memory and speed at real sizes without downloading a
model. The default shape is Qwen2.5-0.5B's (hidden 896, 24 layers, 14/2 heads, intermediate 4864,
vocab 151936, tied embeddings, q/k/v biases).

    python3 tools/random_checkpoint.py OUT_DIR [--layers N] [--seed S]
    cp vocab/tokenizer.json OUT_DIR/      # the Qwen2 vocabulary (tools/setup.sh fetches it)

Weights are N(0, 0.02) (norm weights 1), drawn once as a block of 2^20 values and tiled, so
writing 2 GB takes seconds; the values are random enough for memory and speed, not for quality.
"""

import argparse
import array
import json
import os
import random
import struct


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--hidden", type=int, default=896)
    p.add_argument("--intermediate", type=int, default=4864)
    p.add_argument("--heads", type=int, default=14)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    h, i, hd = a.hidden, a.intermediate, a.hidden // a.heads
    kv = a.kv_heads * hd
    shapes = {"model.embed_tokens.weight": [a.vocab, h], "model.norm.weight": [h]}
    for n in range(a.layers):
        pre = f"model.layers.{n}."
        shapes.update({
            pre + "input_layernorm.weight": [h],
            pre + "post_attention_layernorm.weight": [h],
            pre + "self_attn.q_proj.weight": [h, h],
            pre + "self_attn.q_proj.bias": [h],
            pre + "self_attn.k_proj.weight": [kv, h],
            pre + "self_attn.k_proj.bias": [kv],
            pre + "self_attn.v_proj.weight": [kv, h],
            pre + "self_attn.v_proj.bias": [kv],
            pre + "self_attn.o_proj.weight": [h, h],
            pre + "mlp.gate_proj.weight": [i, h],
            pre + "mlp.up_proj.weight": [i, h],
            pre + "mlp.down_proj.weight": [h, i],
        })
    rng = random.Random(a.seed)
    block = array.array("f", (rng.gauss(0.0, 0.02) for _ in range(1 << 20))).tobytes()
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = 1
        for d in shape:
            n *= d
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + 4 * n]}
        offset += 4 * n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for name, shape in shapes.items():
            n = 4
            for d in shape:
                n *= d
            if name.endswith("norm.weight"):
                f.write(array.array("f", [1.0]).tobytes() * (n // 4))
                continue
            start = rng.randrange(len(block) // 4) * 4
            data = (block[start:] + block) * (n // len(block) + 1)
            f.write(data[:n])
    config = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": h,
        "intermediate_size": i, "num_hidden_layers": a.layers, "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads, "vocab_size": a.vocab, "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True, "hidden_act": "silu",
        "torch_dtype": "float32", "bos_token_id": 151643, "eos_token_id": 151645,
    }
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    print(f"wrote {a.out}: {offset // 4:,} parameters")


if __name__ == "__main__":
    main()
