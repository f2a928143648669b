#!/usr/bin/env python3
"""LoRA reference fixtures from PEFT itself (tests/fixtures/lora/), and a check of adapters we write.

Nothing here runs in CI: the Rust tests read only the committed files. Environment (pinned):
`tools/reference/requirements-peft.txt` (peft 0.21.2 on the model venv's torch 2.15.0 and
transformers 5.24.0), made with `bash tools/reference/make_model_venvs.sh peft` (.venv-peft).

    .venv-peft/bin/python tools/reference/peft_fixtures.py            # write tests/fixtures/lora/
    .venv-peft/bin/python tools/reference/peft_fixtures.py --check DIR # PEFT loads an adapter we saved

Default mode, on the committed tiny Qwen2 checkpoint tests/fixtures/model/qwen2_gqa (float32, CPU):
`get_peft_model` with LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05, all seven projections,
task_type CAUSAL_LM), A as PEFT initialises it under torch.manual_seed(1234), B drawn N(0, 0.2) under
torch.manual_seed(5678) (PEFT's B is zero, which would make the adapter invisible); `save_pretrained`
writes `adapter/` (adapter_config.json + adapter_model.safetensors, PEFT's names); then the logits of
the PEFT model (eval mode) and of `merge_and_unload()` on three id rows go to `reference.safetensors`
(`input_ids.{i}` int64 [L], `peft_logits.{i}` / `merged_logits.{i}` f32 [L, vocab]) and the environment
to `reference.json`. `base_model_name_or_path` is the fixture path relative to the repo root.

`--check DIR`: DIR holds an adapter written by `QwenModel::save_adapter` (adapter/ with the two files)
and `logits.safetensors` (`input_ids.{i}`, `logits.{i}`: our logits with that adapter on the base
named by DIR/base.txt, a path relative to the repo root); PEFT loads the adapter with
`PeftModel.from_pretrained` and the max |logit difference| is printed (with how far the adapter moves
the base's logits, so that a vacuous adapter is seen).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch a model hub
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BASE = "tests/fixtures/model/qwen2_gqa"
OUT = ROOT / "tests" / "fixtures" / "lora"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ROWS = [
    [1, 17, 200, 3, 45, 99, 250, 7, 7, 128, 64, 31],
    [5, 4, 3, 2, 1],
    [255, 0, 13, 160, 42, 42, 42, 9, 88, 101, 222, 17, 190, 6, 73, 12, 150, 2, 3, 4],
]


def load_base(path: str):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    return model


@torch.no_grad()
def logits_of(model, rows):
    return [model(torch.tensor([r], dtype=torch.long)).logits[0].float().contiguous() for r in rows]


def make():
    os.chdir(ROOT)  # base_model_name_or_path is then the relative path
    OUT.mkdir(parents=True, exist_ok=True)
    base = load_base(BASE)
    config = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.05, target_modules=TARGETS, task_type="CAUSAL_LM", bias="none"
    )
    torch.manual_seed(1234)
    model = get_peft_model(base, config)
    gen = torch.Generator().manual_seed(5678)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    model.eval()
    model.save_pretrained(OUT / "adapter")
    peft_logits = logits_of(model, ROWS)
    merged = model.merge_and_unload()
    merged_logits = logits_of(merged, ROWS)
    tensors = {}
    for i, r in enumerate(ROWS):
        tensors[f"input_ids.{i}"] = torch.tensor(r, dtype=torch.long)
        tensors[f"peft_logits.{i}"] = peft_logits[i]
        tensors[f"merged_logits.{i}"] = merged_logits[i]
    save_file(tensors, str(OUT / "reference.safetensors"))
    base_logits = logits_of(load_base(BASE), ROWS)
    effect = max((a - b).abs().max().item() for a, b in zip(peft_logits, base_logits))
    meta = {
        "base": BASE,
        "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.05, "target_modules": TARGETS},
        "seeds": {"get_peft_model": 1234, "lora_B": 5678, "lora_B_std": 0.2},
        "rows": len(ROWS),
        "max_abs_logit_change_from_base": effect,
        "max_abs_peft_minus_merged": max((a - b).abs().max().item() for a, b in zip(peft_logits, merged_logits)),
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
    }
    (OUT / "reference.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2))


def check(dir_: Path):
    os.chdir(ROOT)
    base_path = (dir_ / "base.txt").read_text().strip()
    base = load_base(base_path)
    model = PeftModel.from_pretrained(load_base(base_path), str(dir_ / "adapter"))
    model.eval()
    worst = effect = 0.0
    with safe_open(str(dir_ / "logits.safetensors"), "pt") as f:
        n = len([k for k in f.keys() if k.startswith("input_ids.")])
        for i in range(n):
            ids = f.get_tensor(f"input_ids.{i}").tolist()
            ours = f.get_tensor(f"logits.{i}")
            theirs = logits_of(model, [ids])[0]
            worst = max(worst, (ours - theirs).abs().max().item())
            effect = max(effect, (theirs - logits_of(base, [ids])[0]).abs().max().item())
    result = {"adapter": str(dir_ / "adapter"), "base": base_path, "rows": n, "max_abs_logit_diff": worst}
    result["max_abs_logit_change_from_base"] = effect  # what the adapter does: the check means something
    print(json.dumps(result))
    return 0 if worst <= 1e-5 else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", type=Path, help="a folder with adapter/, logits.safetensors and base.txt")
    args = ap.parse_args()
    if args.check:
        sys.exit(check(args.check.resolve()))
    make()


if __name__ == "__main__":
    main()
