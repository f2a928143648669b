"""Checks that checkpoints written by this crate load in the reference implementation and give the
reference's logits: for each fixture case given, `cargo run --example convert` re-saves it, then
transformers (Qwen2, Qwen3, Qwen3-MoE, Qwen2-MoE cases) loads the re-saved folder and its logits are compared with the fixture's.

    .venv-model/bin/python tools/reference/check_saved_loads.py tests/fixtures/model/qwen[23]_*
"""
import json, pathlib, subprocess, sys, tempfile

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

root = pathlib.Path(__file__).resolve().parents[2]
worst = 0.0
for case in map(pathlib.Path, sys.argv[1:]):
    cfg = json.loads((case / "config.json").read_text())
    if cfg.get("model_type") not in ("qwen2", "qwen3", "qwen3_moe", "qwen2_moe"):
        print(f"{case.name}: skipped (Qwen-1 does not load in transformers without remote code)")
        continue
    with tempfile.TemporaryDirectory() as out:
        # MoE cases are re-saved in the sharded layout, the rest as one file.
        shard = ["--max-shard-size", "100KB"] if cfg["model_type"].endswith("_moe") else []
        subprocess.run(["cargo", "run", "-q", "--release", "--example", "convert", "--", "--model", str(case), "--out", out,
                        *shard], cwd=root, check=True)
        model = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32, attn_implementation="eager").eval()
        ref = load_file(str(case / "reference.safetensors"))
        n = json.loads((case / "reference.json").read_text())["inputs"]
        with torch.no_grad():
            for i in range(n):
                got = model(ref[f"input_ids.{i}"][None]).logits[0]
                d = (got - ref[f"logits.{i}"]).abs().max().item()
                worst = max(worst, d)
        print(f"{case.name}: transformers loads the re-saved checkpoint; max |logit diff| vs fixture {d:.2e}")
print(f"worst {worst:.2e}")
sys.exit(0 if worst <= 1e-4 else 1)
