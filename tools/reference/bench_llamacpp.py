"""llama.cpp peer for `examples/model_speed.rs --model FILE.gguf`, and the writer of the GGUF files
both sides read. Run through tools/reference/bench_vs_llamacpp.sh.

  bench_llamacpp.py write OUT_DIR [--layers N]   writes OUT_DIR/qwen0.5b.{f32,f16,bf16,q8_0}.gguf
      (skips existing files): a Qwen2.5-0.5B-shaped Qwen2 checkpoint (hidden 896, 14/2 heads,
      intermediate 4864, vocab 151936, tied, q/k/v biases), random normal weights (std 0.02,
      seed 0, norms at 1), 2-D weights at the file type through gguf-py's `quants.quantize`
      (1-D tensors F32), under llama.cpp's names and qwen2 metadata as convert_hf_to_gguf.py
      writes them. The vocabulary is placeholder strings (ids are fed directly; no text is
      tokenized).
  bench_llamacpp.py run FILE.gguf [--prefill 128 --decode 32 --reps 3 --threads 2]
      prefill (`eval` of the prompt; logits of the last position only) and decode (`eval` of one
      token at a time) tokens/s, best of `reps`, and peak RSS, as one JSON line. Prompt and decode
      ids as model_speed.rs picks them.
"""
import argparse, json, resource, sys, time
from pathlib import Path

import numpy as np

p = argparse.ArgumentParser()
p.add_argument("cmd", choices=["write", "run"])
p.add_argument("path")
p.add_argument("--layers", type=int, default=24)
p.add_argument("--prefill", type=int, default=128)
p.add_argument("--decode", type=int, default=32)
p.add_argument("--reps", type=int, default=3)
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()

VOCAB, HIDDEN, FF, HEADS, KV_HEADS = 151936, 896, 4864, 14, 2
HEAD_DIM = HIDDEN // HEADS


def write(out: Path) -> None:
    import gguf
    from gguf import GGMLQuantizationType as T
    from gguf import quants

    out.mkdir(parents=True, exist_ok=True)
    if all((out / f"qwen0.5b.{f}.gguf").exists() for f in ("f32", "f16", "bf16", "q8_0")):
        return
    rng = np.random.default_rng(0)
    normal = lambda *shape: (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)
    # HF-shaped tensors, [d_out, d_in] for weights, under llama.cpp's names.
    tensors = {"token_embd.weight": normal(VOCAB, HIDDEN), "output_norm.weight": np.ones(HIDDEN, np.float32)}
    for i in range(a.layers):
        b = f"blk.{i}"
        tensors[f"{b}.attn_norm.weight"] = np.ones(HIDDEN, np.float32)
        tensors[f"{b}.ffn_norm.weight"] = np.ones(HIDDEN, np.float32)
        for name, rows, cols in (("attn_q", HEADS * HEAD_DIM, HIDDEN), ("attn_k", KV_HEADS * HEAD_DIM, HIDDEN),
                                 ("attn_v", KV_HEADS * HEAD_DIM, HIDDEN)):
            tensors[f"{b}.{name}.weight"] = normal(rows, cols)
            tensors[f"{b}.{name}.bias"] = normal(rows)
        tensors[f"{b}.attn_output.weight"] = normal(HIDDEN, HEADS * HEAD_DIM)
        tensors[f"{b}.ffn_gate.weight"] = normal(FF, HIDDEN)
        tensors[f"{b}.ffn_up.weight"] = normal(FF, HIDDEN)
        tensors[f"{b}.ffn_down.weight"] = normal(HIDDEN, FF)
    # Placeholder vocabulary: unique strings, one merge (llama.cpp requires merges for gpt2).
    tokens = [f"<t{i}>" for i in range(VOCAB)]
    for ftype, qtype, lft in (("f32", T.F32, gguf.LlamaFileType.ALL_F32), ("f16", T.F16, gguf.LlamaFileType.MOSTLY_F16),
                              ("bf16", T.BF16, gguf.LlamaFileType.MOSTLY_BF16),
                              ("q8_0", T.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0)):
        path = out / f"qwen0.5b.{ftype}.gguf"
        if path.exists():
            continue
        w = gguf.GGUFWriter(str(path) + ".tmp", arch="qwen2")
        w.add_type(gguf.GGUFType.MODEL)
        w.add_name("qwen0.5b-random")
        w.add_block_count(a.layers)
        w.add_context_length(32768)
        w.add_embedding_length(HIDDEN)
        w.add_feed_forward_length(FF)
        w.add_head_count(HEADS)
        w.add_head_count_kv(KV_HEADS)
        w.add_rope_freq_base(1000000.0)
        w.add_layer_norm_rms_eps(1e-6)
        w.add_file_type(lft)
        if qtype == T.Q8_0:
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2")
        w.add_token_list(tokens)
        w.add_token_types([gguf.TokenType.NORMAL] * VOCAB)
        w.add_token_merges(["<t0> <t1>"])
        w.add_eos_token_id(VOCAB - 1)
        for name, data in tensors.items():
            q = qtype if data.ndim == 2 else T.F32
            w.add_tensor(name, quants.quantize(data, q), raw_dtype=q)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        Path(str(path) + ".tmp").rename(path)
        print(f"wrote {path}", file=sys.stderr)


def run(path: Path) -> None:
    import gguf
    from llama_cpp import Llama

    reader = gguf.GGUFReader(str(path))
    # Every tensor but the norms is read once per decoded token (the tied embedding as the head).
    weight_bytes = int(sum(int(t.n_bytes) for t in reader.tensors))
    del reader
    llm = Llama(model_path=str(path), n_threads=a.threads, n_threads_batch=a.threads, n_ctx=a.prefill + a.decode + 8,
                n_batch=max(512, a.prefill), logits_all=False, verbose=False)
    prompt = [(i * 7919 + 13) % 151000 for i in range(a.prefill)]
    best_prefill = best_decode = float("inf")
    for _ in range(a.reps):
        llm.reset()
        t = time.perf_counter()
        llm.eval(prompt)
        best_prefill = min(best_prefill, time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(a.decode):
            llm.eval([(i * 31) % 151000])
        best_decode = min(best_decode, time.perf_counter() - t)
    import llama_cpp
    print(json.dumps({
        "impl": f"llama.cpp (llama-cpp-python {llama_cpp.__version__})", "file": path.name,
        "prefill_tokens_per_s": a.prefill / best_prefill, "decode_tokens_per_s": a.decode / best_decode,
        "weight_bytes": weight_bytes, "decode_weight_gb_per_s": weight_bytes * a.decode / best_decode / 1e9,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }))


if a.cmd == "write":
    write(Path(a.path))
else:
    run(Path(a.path))
