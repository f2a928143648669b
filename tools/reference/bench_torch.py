"""PyTorch peer for `examples/model_speed.rs`: the same Qwen2.5-0.5B shape (random weights, tied,
float32, eager attention) in transformers, same thread count, same prompt and decode length.
Prints one JSON line. Run through tools/reference/bench_vs_torch.sh model."""
import argparse, json, resource, time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--layers", type=int, default=24)
p.add_argument("--prefill", type=int, default=128)
p.add_argument("--decode", type=int, default=32)
p.add_argument("--reps", type=int, default=3)
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
cfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=a.layers,
                  num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6,
                  rope_theta=1000000.0, tie_word_embeddings=True, attn_implementation="eager")
model = Qwen2ForCausalLM(cfg).float().eval()
prompt = torch.tensor([[(i * 7919 + 13) % 151000 for i in range(a.prefill)]])
best_prefill = best_decode = float("inf")
with torch.inference_mode():
    for _ in range(a.reps):
        t = time.perf_counter()
        out = model(prompt, use_cache=True)
        past = out.past_key_values
        best_prefill = min(best_prefill, time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(a.decode):
            out = model(torch.tensor([[(i * 31) % 151000]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
        best_decode = min(best_decode, time.perf_counter() - t)
print(json.dumps({
    "impl": f"pytorch {torch.__version__} transformers", "layers": a.layers,
    "prefill_tokens_per_s": a.prefill / best_prefill, "decode_tokens_per_s": a.decode / best_decode,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
}))
