"""PyTorch peer for examples/train_speed.rs: the same model shape (transformers Qwen2ForCausalLM,
f32, attention through SDPA as transformers defaults to; QWEN_TORCH_ATTN=eager for the plain one),
batch, sequence, AdamW(0.9, 0.95, eps 1e-8, wd 0.1), global-norm clipping at 1.0; same thread
count. Prints one JSON line. Run through tools/reference/bench_vs_torch.sh train."""
import argparse, json, os, time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

p = argparse.ArgumentParser()
for k, v in dict(hidden=256, layers=4, heads=4, intermediate=688, vocab=32000, seq=256, batch=4, steps=10, threads=2).items():
    p.add_argument(f"--{k}", type=int, default=v)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
cfg = Qwen2Config(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate, num_hidden_layers=a.layers,
                  num_attention_heads=a.heads, num_key_value_heads=a.heads, max_position_embeddings=4096,
                  tie_word_embeddings=False, attn_implementation=os.environ.get("QWEN_TORCH_ATTN", "sdpa"))
model = Qwen2ForCausalLM(cfg).float().train()
opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
n = a.batch * a.seq


def batch(step):
    ids = torch.tensor([(i * 7919 + step * 104729) % a.vocab for i in range(n + 1)])
    return ids[:n].view(a.batch, a.seq), ids[1:].view(a.batch, a.seq)


def step(s):
    x, y = batch(s)
    logits = model(x).logits
    loss = torch.nn.functional.cross_entropy(logits.view(-1, a.vocab), y.reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


for s in range(2):
    step(s)
t = time.perf_counter()
for s in range(a.steps):
    loss = step(s + 2)
secs = time.perf_counter() - t
print(json.dumps({"impl": f"pytorch {torch.__version__} ({cfg._attn_implementation})", "train_tokens_per_s": n * a.steps / secs,
                  "step_ms": 1e3 * secs / a.steps, "last_loss": loss}))
