#!/usr/bin/env python3
"""Tiny random-weight Qwen checkpoints + reference logits / greedy generations.

Writes tests/fixtures/model/<case>/ for the Rust model crate's parity tests. Nothing here runs in
CI: the tests only read the committed fixtures. Two families, two interpreters:

  qwen2  -- transformers 5.x `Qwen2ForCausalLM` (eager attention, float32); run with .venv-model
  qwen1  -- Qwen-1's own `modeling_qwen.py` (Qwen/Qwen-7B, Dec-2023 revision; plus the Aug-2023
            revision for the old config keys) on transformers 4.36.2; run with .venv-qwen1.
            The modeling code is NOT part of this repo: pass its directory with --qwen1-code
            (and --qwen1-aug-code); the sha256 of each file is checked against the pins below.

    bash tools/reference/make_model_venvs.sh
    tools/reference/get_qwen1_model_code.sh DEC_CLONE AUG_CLONE /tmp/qwen1-code
    QWEN1_CODE=/tmp/qwen1-code/dec2023 QWEN1_AUG_CODE=/tmp/qwen1-code/aug2023 \
        tools/reference/regen_model_fixtures.sh
  or step by step:
    .venv-model/bin/python tools/reference/model_fixtures.py qwen2 [--only CASE ...]
    .venv-qwen1/bin/python tools/reference/model_fixtures.py qwen1 \
        --qwen1-code DIR_DEC2023 --qwen1-aug-code DIR_AUG2023
    .venv-model/bin/python tools/reference/model_fixtures.py verify   # independent re-implementation

Per case: config.json (as the reference saved it, except where a case says otherwise),
generation_config.json when written, weights (model.safetensors or shards + index),
reference.safetensors (input_ids.{i} int64 [L], logits.{i} f32 [L, vocab], greedy.* tensors) and
reference.json. Everything is deterministic for fixed package versions (fixed seeds, CPU, fp32).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import os
import platform
import re
import shutil
import sys
import types
from pathlib import Path

sys.dont_write_bytecode = True  # never write __pycache__ into the (external) Qwen-1 code dirs
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch a model hub
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT_ROOT = ROOT / "tests" / "fixtures" / "model"

VOCAB = 256
MAX_NEW_TOKENS = 12
WEIGHT_STD = 0.15  # matrices and embeddings
BIAS_STD = 0.1
NORM_STD = 0.1  # RMSNorm weights are 1 + N(0, NORM_STD)

# Qwen-1 modeling code provenance (files are NOT vendored; see README).
QWEN1_DEC = {
    "label": "Qwen/Qwen-7B modeling code, Dec-2023 revision",
    "repo": "GitHub zhangningboo/Qwen-7B (git mirror of the Hugging Face Qwen/Qwen-7B repo, full history)",
    "commit": "ffe04dd57f85293043ba999a2c0daa788d6182e9",
    "file_commit": "d4efd21e866b9cb3466cb65b963933f5e98016d1",
    "file_commit_note": "last commit touching modeling_qwen.py: 2023-12-07 'update modeling_qwen.py' by yangapku",
    "sha256": {
        "modeling_qwen.py": "7482892d33418bdd543d1ce61e5c8b5b1bd49bd85ff26be185fb3521b73daac7",
        "configuration_qwen.py": "74626181ddd5c9c40accdbb93fc45007cb2278179a32504f32bd82ffb4336e2c",
        "qwen_generation_utils.py": "f223e0f1bb987fdb93b7cf80e046d96e9e910650103ef2f136eb04887324de34",
    },
}
QWEN1_AUG = {
    "label": "Qwen/Qwen-7B-Chat modeling code, Aug-2023 revision (Aug-4-2023, n_embd/n_layer/... keys)",
    "repo": "GitHub undefdev/Qwen-7B-Chat (git mirror of the Hugging Face Qwen/Qwen-7B-Chat repo, Aug-2023 history)",
    "commit": "04df5dd57b94b9ed20498ee42063ea9e164f98b3",
    "file_commit": "04df5dd57b94b9ed20498ee42063ea9e164f98b3",
    "file_commit_note": "2023-08-04 'update config and streaming generation' (last Aug-2023 change to modeling/config)",
    "sha256": {
        "modeling_qwen.py": "a6db24b00c69bbc21a7eac8236b7349706888005edb0f3dd39e08c383f133194",
        "configuration_qwen.py": "8243a8b7aaf1d82827eb60b9337cbfba15ba795a56b582a1d921835bc9e8ddcc",
        "qwen_generation_utils.py": "5e820b80d7e27ab2186f09d948c1993eb946aa98a2c8288d3d26f46db9f4ca80",
    },
}


# ----------------------------------------------------------------------------------------------
# shared helpers


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def init_weights(model: torch.nn.Module, seed: int) -> None:
    """Large-ish random weights so logits vary clearly (the HF default std 0.02 is far too flat)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied parameters are listed once
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if name.endswith(".bias"):
                p.copy_(noise * BIAS_STD)
            elif p.ndim == 1:
                p.copy_(1.0 + noise * NORM_STD)
            else:
                p.copy_(noise * WEIGHT_STD)


def make_inputs(seed: int, lengths: list[int]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g, dtype=torch.int64) for n in lengths]


def weight_files(case_dir: Path) -> list[str]:
    return sorted(p.name for p in case_dir.glob("*.safetensors") if p.name != "reference.safetensors")


def checkpoint_tensors(case_dir: Path) -> dict[str, tuple[str, list[int], str]]:
    out = {}
    for fname in weight_files(case_dir):
        with safe_open(case_dir / fname, framework="pt") as f:
            for k in f.keys():
                sl = f.get_slice(k)
                out[k] = (str(sl.get_dtype()), list(sl.get_shape()), fname)
    return out


def dump_json(doc) -> str:
    """json.dumps(indent=2) with lists of numbers kept on one line."""
    text = json.dumps(doc, indent=2)
    return re.sub(r"\[\s*([-0-9.eE,\s]+?)\s*\]", lambda m: "[" + ", ".join(m.group(1).split()).replace(",,", ",") + "]",
                  text) + "\n"


def write_reference(case_dir: Path, inputs, logits, greedy: dict, meta: dict, extra=None) -> None:
    tensors = dict(extra or {})
    for i, (ids, lg) in enumerate(zip(inputs, logits)):
        assert ids.dtype == torch.int64 and ids.ndim == 1
        assert lg.dtype == torch.float32 and lg.shape == (ids.shape[0], VOCAB), lg.shape
        tensors[f"input_ids.{i}"] = ids.contiguous()
        tensors[f"logits.{i}"] = lg.contiguous()
    tensors["greedy.prompt"] = greedy["prompt"].contiguous()
    tensors["greedy.tokens"] = greedy["tokens"].contiguous()
    tensors["greedy.cached_logits"] = greedy["cached_logits"].contiguous()
    tensors["greedy.full_tokens"] = greedy["full_tokens"].contiguous()
    tensors["greedy.full_logits"] = greedy["full_logits"].contiguous()
    save_file(tensors, str(case_dir / "reference.safetensors"), metadata={"format": "pt"})
    cached_vs_full = (greedy["cached_logits"] - greedy["full_logits"]).abs().max().item()
    doc = {
        "case": case_dir.name,
        "reference": meta["reference"],
        "torch": torch.__version__.split("+")[0],
        "dtype_on_disk": meta["dtype_on_disk"],
        "weights": weight_files(case_dir),
        "inputs": len(inputs),
        "input_lengths": [int(x.shape[0]) for x in inputs],
        "seeds": meta["seeds"],
        "greedy": {
            "prompt": greedy["prompt"].tolist(),
            "max_new_tokens": MAX_NEW_TOKENS,
            "tokens": greedy["tokens"].tolist(),
            "full_recompute_tokens": greedy["full_tokens"].tolist(),
            "method": meta["greedy_method"],
        },
        "cached_equals_full": bool(torch.equal(greedy["tokens"], greedy["full_tokens"])),
        "max_abs_diff_cached_vs_full_logits": float(f"{cached_vs_full:.3g}"),
        "config_highlights": meta["highlights"],
        "notes": meta["notes"],
        "tensors": {
            "input_ids.{i}": "int64 [L_i] prompt i",
            "logits.{i}": "float32 [L_i, vocab] model(input_ids) without KV cache, eval mode",
            "greedy.prompt": "int64 [P]",
            "greedy.tokens": f"int64 [{MAX_NEW_TOKENS}] greedy tokens with the reference's KV-cached decode",
            "greedy.cached_logits": f"float32 [{MAX_NEW_TOKENS}, vocab] logits that chose each cached token "
            "(row 0 = last prefill position)",
            "greedy.full_tokens": f"int64 [{MAX_NEW_TOKENS}] greedy tokens re-running the full sequence each step (no cache)",
            "greedy.full_logits": f"float32 [{MAX_NEW_TOKENS}, vocab] last-position logits of each full recompute",
        },
    }
    (case_dir / "reference.json").write_text(dump_json(doc))
    print(
        f"  {case_dir.name}: inputs {doc['input_lengths']} greedy {doc['greedy']['tokens']} "
        f"cached==full {doc['cached_equals_full']} (max|dlogit| {cached_vs_full:.3g}); "
        f"logit std {torch.cat(logits).std().item():.3f}"
    )


def fresh_dir(case: str) -> Path:
    d = OUT_ROOT / case
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


def top2_margin(logits: torch.Tensor) -> float:
    t = logits.topk(2, dim=-1).values
    return (t[..., 0] - t[..., 1]).min().item()


MIN_GREEDY_MARGIN = 5e-3  # top-1 minus top-2 logit at every greedy step (errors allowed are 1e-4)


def choose_prompt(greedy_fn, base_seed: int, prompt_len: int, want_divergence: bool = False):
    """Try prompt seeds base_seed, base_seed+1, ... until the greedy runs are robust.

    Accept a prompt when every greedy step (cached and full recompute) has a top-1/top-2 logit gap
    >= MIN_GREEDY_MARGIN (so an implementation within 1e-4 must pick the same tokens), the cached run
    produces >= 4 distinct tokens, and, where asked, the cached and full-recompute tokens differ.
    """
    best = None
    for k in range(200):
        seed = base_seed + k
        prompt = make_inputs(seed, [prompt_len])[0]
        res = greedy_fn(prompt)
        if res is None:  # the prompt is unusable (e.g. an MoE router near a tie)
            continue
        tokens, cached_logits, full_tokens, full_logits = res
        margin = min(top2_margin(cached_logits), top2_margin(full_logits))
        ok = (margin >= MIN_GREEDY_MARGIN and len(set(tokens.tolist())) >= 4
              and (not want_divergence or not torch.equal(tokens, full_tokens)))
        if ok:
            return seed, prompt, res, margin
        if best is None or margin > best[3]:
            best = (seed, prompt, res, margin)
    print(f"WARNING: no prompt met the criteria; using seed {best[0]} (margin {best[3]:.2e})")
    return best


# ----------------------------------------------------------------------------------------------
# Qwen2 (transformers 5.x)

QWEN2_BASE = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    use_sliding_window=False,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
)

QWEN2_CASES = [
    dict(
        name="qwen2_mha",
        seed=101,
        cfg={},
        lengths=[1, 9, 31, 64],
        prompt_len=8,
        notes="Plain MHA (num_key_value_heads == num_attention_heads), untied lm_head, default RoPE theta 1e4.",
    ),
    dict(
        name="qwen2_gqa",
        seed=102,
        cfg=dict(num_key_value_heads=2, head_dim=24),
        lengths=[5, 20, 47],
        prompt_len=8,
        notes="GQA 4 query heads / 2 KV heads, explicit head_dim 24 != hidden/heads (64/4 = 16): "
        "q_proj [96, 64], k_proj/v_proj [48, 64], o_proj [64, 96]; RoPE dim = head_dim = 24. "
        "transformers 5 Qwen2 honours config.head_dim (getattr(config, 'head_dim', hidden // heads)).",
    ),
    dict(
        name="qwen2_tied",
        seed=103,
        cfg=dict(num_key_value_heads=2, tie_word_embeddings=True),
        lengths=[7, 33],
        prompt_len=8,
        notes="tie_word_embeddings true: the checkpoint has NO lm_head.weight; logits = h @ embed_tokens.weight^T.",
    ),
    dict(
        name="qwen2_sliding",
        seed=104,
        cfg=dict(num_hidden_layers=3, use_sliding_window=True, sliding_window=6, max_window_layers=1),
        lengths=[5, 6, 7, 29],
        prompt_len=10,
        notes="use_sliding_window true, sliding_window 6, max_window_layers 1, 3 layers: layer 0 full causal, "
        "layers 1 and 2 sliding (layer_types written by transformers 5). Mask (transformers masking_utils): "
        "key j visible to query i iff j <= i and j > i - sliding_window, i.e. each token sees itself plus "
        "the 5 previous tokens (6 keys counting itself). Inputs of length 5/6 are identical to full attention; "
        "7 and 29 exercise the window. The cached decode (DynamicCache with sliding layers) gives the same "
        "logits as full recompute.",
    ),
    dict(
        name="qwen2_dynamic_rope",
        seed=105,
        cfg=dict(max_position_embeddings=16, rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}),
        lengths=[12, 24, 33, 40],
        prompt_len=10,
        dynamic=True,
        notes="rope_type dynamic, factor 2, max_position_embeddings 16. logits.{i}: a FRESH model per input "
        "(the HF rotary module is stateful, see README); for a sequence of length L the whole sequence uses "
        "base' = theta * ((factor * max(L, mpe) / mpe) - (factor - 1)) ** (dim / (dim - 2)) (computed by HF in float32 "
        "tensors), so L <= 16 is plain RoPE. Greedy: prompt 10 + 12 tokens crosses mpe. Cached decode "
        "(HF generate): each decode step at position p recomputes inv_freq for seq_len = p + 1 (> mpe) and "
        "rotates ONLY the new query/key with it; keys already in the cache keep the frequencies they were "
        "written with. Full recompute re-rotates everything with the current length. So greedy.cached_logits "
        "differ from greedy.full_logits from the step whose position crosses mpe.",
    ),
    dict(
        name="qwen2_legacy_keys",
        seed=106,
        cfg=dict(
            num_key_value_heads=2,
            use_sliding_window=False,
            sliding_window=4,
            max_window_layers=1,
            bos_token_id=250,
            eos_token_id=251,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        ),
        lengths=[6, 21, 40],
        prompt_len=8,
        legacy=True,
        legacy_sliding_window=4,
        notes="config.json rewritten to the transformers-4.x key set real Qwen2/2.5 checkpoints use: rope_theta "
        "(1e6, as Qwen2.5), rope_scaling null, torch_dtype, no rope_parameters/layer_types/dtype. Like real "
        "Qwen2.5 configs it carries sliding_window (4 here) with use_sliding_window false: the window must be "
        "IGNORED (logits are full causal attention). Logits come from transformers 5 loading this legacy "
        "config.json (checked equal to the model built from the 5.x-style config). bos/eos 250/251 are "
        "ignored by the greedy runs (12 tokens always).",
    ),
    dict(
        name="qwen2_legacy_yarn",
        seed=110,
        cfg=dict(
            num_key_value_heads=2,
            max_position_embeddings=64,
            use_sliding_window=False,
            max_window_layers=2,
            bos_token_id=250,
            eos_token_id=251,
            rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                             "rope_theta": 1000000.0},
        ),
        lengths=[10, 40],
        prompt_len=10,
        legacy=True,
        legacy_sliding_window=64,
        notes="Legacy-key config with a 4.x-style rope_scaling dict {\"type\": \"yarn\", \"factor\": 4.0, "
        "\"original_max_position_embeddings\": 16} (the form Qwen2.5 model cards tell users to add; note "
        "\"type\", not \"rope_type\"), rope_theta 1e6, max_position_embeddings 64, GQA 4/2. Logits from "
        "transformers 5 reading this legacy config.json (checked equal to the 5.x-style config). With theta 1e6 "
        "and head_dim 16 the yarn correction range is [0, 1] as in qwen2_yarn. attention_factor 0.1*ln(4)+1.",
    ),
    dict(
        name="qwen2_yarn",
        seed=107,
        cfg=dict(
            max_position_embeddings=64,
            rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "rope_theta": 10000.0},
        ),
        lengths=[10, 30, 60],
        prompt_len=10,
        notes="rope_type yarn, factor 4, original_max_position_embeddings 16, max_position_embeddings 64 "
        "(HF defaults beta_fast 32, beta_slow 1, truncate true, attention_factor = 0.1*ln(4)+1 = 1.1386 "
        "multiplying cos AND sin). Static (not length dependent): cached decode == full recompute. "
        "With head_dim 16, theta 1e4, orig 16 the correction range is [0, 1] (floor/ceil), so the ramp "
        "mask is 0 for dim pair 0 and 1 from pair 1 on: pair 0 keeps the extrapolated (original) "
        "frequency, all other pairs are interpolated (divided by 4).",
    ),
    dict(
        name="qwen2_bf16_sharded",
        seed=108,
        cfg=dict(num_key_value_heads=2),
        lengths=[8, 25],
        prompt_len=8,
        save_dtype=torch.bfloat16,
        max_shard_size="100KB",
        notes="Weights stored as bfloat16, sharded (model-0000k-of-0000n.safetensors + "
        "model.safetensors.index.json). Reference logits: transformers loads the bf16 files with "
        "dtype=float32, i.e. bf16-rounded weights upcast to f32, then runs in f32.",
    ),
    dict(
        name="qwen2_f16",
        seed=109,
        cfg=dict(num_key_value_heads=2),
        lengths=[8, 25],
        prompt_len=8,
        save_dtype=torch.float16,
        notes="Weights stored as float16 in one model.safetensors; logits from the f16-rounded weights upcast to f32.",
    ),
]


def qwen2_reference_string(cls: str = "Qwen2ForCausalLM") -> str:
    import transformers

    return f"transformers {transformers.__version__} {cls} (eager attention, float32, CPU)"


def legacy_config(cfg: dict, sliding_window, family: str = "qwen2") -> dict:
    """Rewrite a transformers-5 config dict into the 4.x key set of real Hub checkpoints (Qwen2/2.5,
    Qwen3, Qwen3-MoE's `num_experts`)."""
    if "num_local_experts" in cfg:
        cfg["num_experts"] = cfg.pop("num_local_experts")
    rp = cfg.pop("rope_parameters")
    cfg["sliding_window"] = sliding_window  # 5.x writes null when use_sliding_window is false; 4.x kept it
    if cfg.get("pad_token_id") is None:
        cfg.pop("pad_token_id", None)
    cfg.pop("layer_types", None)
    dtype = cfg.pop("dtype", "float32")
    out = {"architectures": cfg.pop("architectures", ["Qwen2ForCausalLM"])}
    out.update(cfg)
    out["rope_theta"] = rp["rope_theta"]
    scaling = {k: v for k, v in rp.items() if k not in ("rope_theta", "rope_type")}
    if rp.get("rope_type", "default") != "default":
        scaling = {"type": rp["rope_type"], **scaling}
        out["rope_scaling"] = scaling
    else:
        out["rope_scaling"] = None
    out["torch_dtype"] = dtype
    if family == "qwen2":
        out["use_mrope"] = False
    out["transformers_version"] = "4.43.1" if family in ("qwen2", "qwen2_moe") else "4.51.0"
    return dict(sorted(out.items()))


def hf_classes(family: str):
    """(config class, causal-LM class) of an HF-layout family."""
    import transformers as tf

    return {
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
        "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM),
        "qwen3_moe": (tf.Qwen3MoeConfig, tf.Qwen3MoeForCausalLM),
        "qwen2_moe": (tf.Qwen2MoeConfig, tf.Qwen2MoeForCausalLM),
    }[family]


def router_margin(model, ids: torch.Tensor) -> float | None:
    """Smallest gap between the k-th and (k+1)-th router probability over every token and sparse
    layer (None for a dense model): an implementation within 1e-5 routes each token as the
    reference does only when this is clearly above that."""
    gates = [m for n, m in model.named_modules() if n.endswith("mlp.gate") and hasattr(m, "top_k")]
    if not gates:
        return None
    margins = []

    def hook(mod, args, out):
        probs = torch.softmax(out[0].float(), dim=-1)
        top = probs.topk(mod.top_k + 1 if mod.top_k < probs.shape[-1] else mod.top_k, dim=-1).values
        if top.shape[-1] > mod.top_k:
            margins.append((top[:, mod.top_k - 1] - top[:, mod.top_k]).min().item())

    handles = [g.register_forward_hook(hook) for g in gates]
    with torch.no_grad():
        model(input_ids=ids[None], use_cache=False)
    for h in handles:
        h.remove()
    return min(margins) if margins else None


MIN_ROUTER_MARGIN = 2e-3


def run_qwen2(only: set[str] | None, cases=None) -> None:
    import transformers
    from transformers import GenerationConfig

    assert transformers.__version__.startswith("5."), "run the HF families with .venv-model (transformers 5.x)"
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    for case in QWEN2_CASES if cases is None else cases:
        if only and case["name"] not in only:
            continue
        family = case.get("family", "qwen2")
        ConfigClass, ModelClass = hf_classes(family)
        d = fresh_dir(case["name"])
        kwargs = {**QWEN2_BASE, **case.get("base", {}), **case["cfg"]}
        config = ConfigClass(**kwargs)
        torch.manual_seed(case["seed"])
        model = ModelClass(config)
        init_weights(model, case["seed"])
        save_dtype = case.get("save_dtype", torch.float32)
        model = model.to(save_dtype)
        save_kw = {}
        if "max_shard_size" in case:
            save_kw["max_shard_size"] = case["max_shard_size"]
        model.save_pretrained(d, safe_serialization=True, **save_kw)
        modern_cfg = json.loads((d / "config.json").read_text())

        def load():
            m = ModelClass.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
            return m.eval()

        if case.get("legacy"):
            ref_model = load()  # model as described by the transformers-5 config, for the equality check
            legacy = legacy_config(dict(modern_cfg), case["legacy_sliding_window"], family)
            (d / "config.json").write_text(json.dumps(legacy, indent=2) + "\n")
        # The newer families carry the other key style too (checked below to give identical logits).
        alt_name = None
        if family != "qwen2":
            if case.get("legacy"):
                alt_name, alt = "config.transformers5.json", modern_cfg
            else:
                alt_name, alt = "config.hub.json", legacy_config(dict(modern_cfg), modern_cfg.get("sliding_window"), family)
            (d / alt_name).write_text(json.dumps(alt, indent=2) + "\n")
        # checkpoint sanity
        names = checkpoint_tensors(d)
        if config.tie_word_embeddings:
            assert "lm_head.weight" not in names, "tied checkpoint must not contain lm_head.weight"
        else:
            assert "lm_head.weight" in names
        want_dtype = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}[save_dtype]
        assert all(v[0] == want_dtype for v in names.values()), names
        if "max_shard_size" in case:
            assert (d / "model.safetensors.index.json").exists() and len(weight_files(d)) >= 2

        inputs = make_inputs(case["seed"] + 1000, case["lengths"])
        extra_tensors, extra_meta = {}, {}
        if family.endswith("_moe"):
            # Inputs whose routing is robust: re-draw until every top-k choice is clear.
            m = load()
            for k in range(200):
                inputs = make_inputs(case["seed"] + 1000 + k, case["lengths"])
                margin = min(router_margin(m, ids) for ids in inputs)
                if margin >= MIN_ROUTER_MARGIN:
                    break
            else:
                raise SystemExit(f"{case['name']}: no inputs with router margin >= {MIN_ROUTER_MARGIN}")
            extra_meta["min_router_margin"] = round(margin, 5)
            extra_meta["input_seed"] = case["seed"] + 1000 + k
            # The training loss with the load-balancing term, as transformers computes it.
            ids = inputs[-1]
            out = m(input_ids=ids[None], labels=ids[None], output_router_logits=True, use_cache=False)
            extra_tensors["train.input_ids"] = ids.clone()
            extra_tensors["train.loss"] = out.loss.detach().float().reshape(1)
            extra_tensors["train.aux_loss"] = out.aux_loss.detach().float().reshape(1)
            extra_meta["train"] = {
                "input": "input_ids = labels = the last input; output_router_logits=True",
                "loss": out.loss.item(), "aux_loss": out.aux_loss.item(),
                "router_aux_loss_coef": config.router_aux_loss_coef,
            }
        logits = []
        with torch.no_grad():
            for ids in inputs:
                m = load()  # fresh model per input: HF dynamic RoPE keeps state across calls
                lg = m(input_ids=ids[None], use_cache=False).logits[0].float()
                logits.append(lg)
                if case.get("legacy"):
                    lg2 = ref_model(input_ids=ids[None], use_cache=False).logits[0].float()
                    assert torch.equal(lg, lg2), (lg - lg2).abs().max()
        if alt_name:
            import tempfile
            with tempfile.TemporaryDirectory() as tmp:
                for f in d.iterdir():
                    shutil.copy(f, Path(tmp) / f.name)
                shutil.copy(d / alt_name, Path(tmp) / "config.json")
                alt_model = ModelClass.from_pretrained(tmp, dtype=torch.float32, attn_implementation="eager").eval()
                with torch.no_grad():
                    for ids, lg in zip(inputs, logits):
                        lg2 = alt_model(input_ids=ids[None], use_cache=False).logits[0].float()
                        assert torch.equal(lg, lg2), f"{alt_name}: {(lg - lg2).abs().max()}"
            extra_meta["other_key_style"] = f"{alt_name} (transformers gives identical logits with it)"

        def greedy(prompt):
            if family.endswith("_moe"):
                # every prefix that greedy decoding will run must route clearly
                with torch.no_grad():
                    m0 = load()
                    s2 = prompt.clone()
                    for _ in range(MAX_NEW_TOKENS):
                        lg = m0(input_ids=s2[None], use_cache=False).logits[0, -1]
                        s2 = torch.cat([s2, lg.argmax()[None]])
                    if (router_margin(m0, s2) or 1.0) < MIN_ROUTER_MARGIN:
                        return None
            with torch.no_grad():
                # greedy, KV-cached (the reference's generate)
                m = load()
                gcfg = GenerationConfig(
                    do_sample=False, max_new_tokens=MAX_NEW_TOKENS, min_new_tokens=MAX_NEW_TOKENS, use_cache=True,
                    eos_token_id=None, pad_token_id=0, bos_token_id=None,
                )
                out = m.generate(
                    prompt[None], generation_config=gcfg, output_logits=True, return_dict_in_generate=True,
                    attention_mask=torch.ones(1, prompt.shape[0], dtype=torch.int64),
                )
                tokens = out.sequences[0, prompt.shape[0]:].clone()
                cached_logits = torch.stack([x[0].float() for x in out.logits])
                assert tokens.shape[0] == MAX_NEW_TOKENS
                assert torch.equal(cached_logits.argmax(-1), tokens)
                # greedy, full recompute of the whole sequence at every step (fresh model each step)
                seq = prompt.clone()
                full_tokens, full_logits = [], []
                for _ in range(MAX_NEW_TOKENS):
                    m = load()
                    lg = m(input_ids=seq[None], use_cache=False).logits[0, -1].float()
                    t = lg.argmax()
                    full_tokens.append(t)
                    full_logits.append(lg)
                    seq = torch.cat([seq, t[None]])
            return tokens, cached_logits, torch.stack(full_tokens).to(torch.int64), torch.stack(full_logits)

        prompt_seed, prompt, (tokens, cached_logits, full_tokens, full_logits), margin = choose_prompt(
            greedy, case["seed"] + 2000, case["prompt_len"], want_divergence=case.get("dynamic", False))
        rp = config.rope_parameters
        highlights = {
            "hidden_size": config.hidden_size,
            "num_hidden_layers": config.num_hidden_layers,
            "num_attention_heads": config.num_attention_heads,
            "num_key_value_heads": config.num_key_value_heads,
            "head_dim": getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
            "intermediate_size": config.intermediate_size,
            "vocab_size": config.vocab_size,
            "max_position_embeddings": config.max_position_embeddings,
            "tie_word_embeddings": config.tie_word_embeddings,
            "rope": rp,
            "use_sliding_window": config.use_sliding_window,
            "sliding_window": modern_cfg.get("sliding_window"),
            "layer_types": modern_cfg.get("layer_types"),
            "config_keys": "legacy (rope_theta/rope_scaling/torch_dtype)" if case.get("legacy")
            else "transformers 5 (rope_parameters/layer_types/dtype)",
            "min_greedy_top2_margin": round(margin, 4),
            **{k: modern_cfg.get(k) for k in case.get("highlight_keys", [])},
            **extra_meta,
        }
        meta = dict(
            reference=qwen2_reference_string(ModelClass.__name__),
            dtype_on_disk={torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[save_dtype],
            seeds={"weights": case["seed"], "inputs": case["seed"] + 1000, "greedy_prompt": prompt_seed},
            greedy_method="transformers generate(do_sample=False, use_cache=True, DynamicCache, eos disabled, "
            "min_new_tokens=max_new_tokens); full recompute = argmax of model(seq).logits[-1] with a fresh model per step",
            highlights=highlights,
            notes=case["notes"],
        )
        write_reference(d, inputs, logits, dict(prompt=prompt, tokens=tokens, cached_logits=cached_logits,
                                                full_tokens=full_tokens, full_logits=full_logits), meta,
                        extra_tensors)


# ----------------------------------------------------------------------------------------------
# Qwen3, Qwen3-MoE, Qwen2-MoE (transformers 5.x): the same runner as Qwen2

MOE_BASE = dict(num_hidden_layers=3, moe_intermediate_size=32, num_experts_per_tok=2, router_aux_loss_coef=0.02)

QWEN3_CASES = [
    dict(
        name="qwen3_gqa",
        family="qwen3",
        seed=301,
        cfg=dict(num_hidden_layers=3, num_key_value_heads=2, head_dim=24, use_sliding_window=True, sliding_window=6,
                 max_window_layers=1),
        lengths=[5, 20, 47],
        prompt_len=8,
        highlight_keys=["attention_bias", "head_dim"],
        notes="Qwen3ForCausalLM: q_norm/k_norm (RMSNorm over head_dim 24, weights 1 + N(0, 0.1)) after q_proj/k_proj, "
        "before RoPE; GQA 4/2 with head_dim 24 != 64/4; attention_bias false (no q/k/v/o biases); untied head; "
        "sliding window 6 on layers >= max_window_layers 1 (layer_types as transformers 5 writes them).",
    ),
    dict(
        name="qwen3_tied_bias_yarn",
        family="qwen3",
        seed=302,
        cfg=dict(num_key_value_heads=2, head_dim=16, tie_word_embeddings=True, attention_bias=True,
                 max_position_embeddings=64,
                 rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                                  "rope_theta": 1000000.0}),
        lengths=[10, 40],
        prompt_len=10,
        legacy=True,
        legacy_sliding_window=None,
        highlight_keys=["attention_bias", "head_dim"],
        notes="Qwen3 with the Hub key set (rope_theta 1e6 + rope_scaling {type: yarn, factor 4, original 16}, "
        "torch_dtype, no layer_types/rope_parameters): tied embeddings (no lm_head.weight), attention_bias true "
        "(biases on q/k/v AND o_proj, as Qwen3Attention has them).",
    ),
    dict(
        name="qwen3_moe",
        family="qwen3_moe",
        seed=303,
        base=MOE_BASE,
        cfg=dict(num_key_value_heads=2, head_dim=24, num_experts=6, mlp_only_layers=[0], norm_topk_prob=True),
        lengths=[6, 23, 40],
        prompt_len=8,
        highlight_keys=["num_local_experts", "num_experts_per_tok", "moe_intermediate_size", "mlp_only_layers",
                        "decoder_sparse_step", "norm_topk_prob", "router_aux_loss_coef"],
        notes="Qwen3MoeForCausalLM, transformers-5 keys (num_local_experts, rope_parameters, dtype): layer 0 dense "
        "(mlp_only_layers [0], intermediate 128), layers 1-2 sparse: router mlp.gate [6, 64], 6 experts of width 32 "
        "(mlp.experts.E.gate/up/down_proj), top-2, norm_topk_prob true (the chosen probabilities renormalised). "
        "Inputs redrawn until every token's 2nd and 3rd router probabilities differ by >= 2e-3. train.*: loss and "
        "aux_loss of model(ids, labels=ids, output_router_logits=True) (router_aux_loss_coef 0.02).",
    ),
    dict(
        name="qwen3_moe_hub_keys",
        family="qwen3_moe",
        seed=304,
        base=MOE_BASE,
        cfg=dict(num_hidden_layers=4, num_key_value_heads=2, head_dim=16, num_experts=8, decoder_sparse_step=2,
                 norm_topk_prob=False, num_experts_per_tok=3, tie_word_embeddings=True),
        lengths=[9, 30],
        prompt_len=8,
        legacy=True,
        legacy_sliding_window=None,
        highlight_keys=["num_experts", "num_experts_per_tok", "decoder_sparse_step", "norm_topk_prob"],
        notes="Qwen3-MoE with the Hub key set (num_experts, rope_theta, rope_scaling null, torch_dtype): 4 layers, "
        "decoder_sparse_step 2 (layers 1 and 3 sparse, 0 and 2 dense), 8 experts top-3 without renormalisation, "
        "tied embeddings.",
    ),
    dict(
        name="qwen2_moe",
        family="qwen2_moe",
        seed=305,
        base=MOE_BASE,
        cfg=dict(num_key_value_heads=2, num_experts=4, shared_expert_intermediate_size=48, mlp_only_layers=[1]),
        lengths=[7, 26, 40],
        prompt_len=8,
        save_dtype=torch.bfloat16,
        max_shard_size="100KB",
        legacy=True,
        legacy_sliding_window=4096,
        highlight_keys=["num_experts", "shared_expert_intermediate_size", "mlp_only_layers", "qkv_bias"],
        notes="Qwen2MoeForCausalLM, Hub key set (rope_theta, torch_dtype, sliding_window 4096 with use_sliding_window "
        "false), bf16 weights in shards with an index: layers 0 and 2 sparse (4 experts top-2, width 32) plus the "
        "shared expert (width 48) scaled by sigmoid(mlp.shared_expert_gate(x)); layer 1 dense (mlp_only_layers [1]); "
        "q/k/v biases (qkv_bias true), none on o_proj. train.*: as qwen3_moe.",
    ),
]


# ----------------------------------------------------------------------------------------------
# Qwen-1 (its own modeling code on transformers 4.x)

QWEN1_BASE = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    kv_channels=16,
    intermediate_size=256,  # MLP width = intermediate_size // 2 = 128
    max_position_embeddings=256,
    seq_length=32,
    rotary_emb_base=10000,
    rotary_pct=1.0,
    layer_norm_epsilon=1e-6,
    no_bias=True,
    tie_word_embeddings=False,
    use_dynamic_ntk=False,
    use_logn_attn=False,
    use_flash_attn="auto",  # as in the released configs; CPU -> fp32 -> flash attention off
    bf16=False,
    fp16=False,
    fp32=False,
    bos_token_id=None,
    eos_token_id=None,
)

QWEN1_CASES = [
    dict(
        name="qwen1_plain",
        seed=201,
        cfg=dict(seq_length=32),
        lengths=[6, 20, 45],
        prompt_len=8,
        notes="use_dynamic_ntk false, use_logn_attn false, seq_length 32: plain RoPE (base 1e4, NeoX rotate_half) "
        "at every length, including 45 > seq_length.",
    ),
    dict(
        name="qwen1_dynamic_ntk",
        seed=202,
        cfg=dict(seq_length=16, use_dynamic_ntk=True),
        lengths=[12, 24, 40, 70],
        prompt_len=12,
        notes="use_dynamic_ntk true, use_logn_attn false, seq_length 16. Without cache alpha comes from the "
        "full length L: 12 -> 1, 24 -> 3, 40 -> 7, 70 -> 15; base' = 1e4 * alpha ** (16/14). Greedy: "
        "prompt 12 (alpha 1); the cached decode keeps alpha 1 for every step (Qwen-1 stores the prefill "
        "alpha in rotary_emb._ntk_alpha_cached_list and reuses it whenever past_key_values is given), "
        "while full recompute switches to alpha 3 once the sequence exceeds 16 tokens.",
    ),
    dict(
        name="qwen1_ntk_logn",
        seed=203,
        cfg=dict(seq_length=16, use_dynamic_ntk=True, use_logn_attn=True),
        lengths=[12, 24, 40, 70],
        prompt_len=28,
        notes="use_dynamic_ntk true, use_logn_attn true, seq_length 16; alphas as qwen1_dynamic_ntk. LogN: when "
        "the key length exceeds 16, the query at absolute position p (0-based) is multiplied by "
        "log(p+1)/log(16) if p+1 > 16 else 1 (after RoPE, before q.k). Greedy: prompt 28 (alpha 3); cached "
        "decode keeps alpha 3 (LogN applied per absolute position as usual), full recompute uses alpha 7 from "
        "33 tokens on.",
    ),
]

QWEN1_AUG_CASE = dict(
    name="qwen1_aug2023_keys",
    seed=204,
    lengths=[12, 24, 40],
    prompt_len=12,
)


def load_code_package(pkg: str, code_dir: Path, pins: dict, allow_mismatch: bool):
    for fname, want in pins["sha256"].items():
        p = code_dir / fname
        if not p.is_file():
            sys.exit(f"{p} missing (see tests/fixtures/model/README.md for where to get it)")
        got = sha256_file(p)
        if got != want:
            msg = f"{p}: sha256 {got} != pinned {want}"
            if not allow_mismatch:
                sys.exit(msg + " (use --allow-sha-mismatch to proceed anyway)")
            print("WARNING:", msg)
    mod = types.ModuleType(pkg)
    mod.__path__ = [str(code_dir)]
    sys.modules[pkg] = mod
    cfg_mod = importlib.import_module(f"{pkg}.configuration_qwen")
    modeling = importlib.import_module(f"{pkg}.modeling_qwen")
    return cfg_mod, modeling


def qwen1_forward_logits(model, ids: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids[None], use_cache=False, return_dict=True)
    return out.logits[0].float()


def qwen1_greedy(model, prompt: torch.Tensor):
    """Cached greedy with the model's own tuple KV cache, then a full-recompute greedy.

    The cached run is done first and completely: Qwen-1 keeps the prefill NTK alpha as model state
    (rotary_emb._ntk_alpha_cached_list), so interleaving other no-cache forwards would change it.
    """
    with torch.no_grad():
        out = model(input_ids=prompt[None], use_cache=True, return_dict=True)
        past = out.past_key_values
        lg = out.logits[0, -1].float()
        tokens, cached_logits = [], []
        for _ in range(MAX_NEW_TOKENS):
            t = lg.argmax()
            tokens.append(t)
            cached_logits.append(lg)
            out = model(input_ids=t.view(1, 1), past_key_values=past, use_cache=True, return_dict=True)
            past = out.past_key_values
            lg = out.logits[0, -1].float()
        seq = prompt.clone()
        full_tokens, full_logits = [], []
        for _ in range(MAX_NEW_TOKENS):
            lg = model(input_ids=seq[None], use_cache=False, return_dict=True).logits[0, -1].float()
            t = lg.argmax()
            full_tokens.append(t)
            full_logits.append(lg)
            seq = torch.cat([seq, t[None]])
    return (torch.stack(tokens).to(torch.int64), torch.stack(cached_logits),
            torch.stack(full_tokens).to(torch.int64), torch.stack(full_logits))


def qwen1_generate_check(model, prompt: torch.Tensor, tokens: torch.Tensor) -> str:
    """Cross-check the manual cached loop against Qwen-1's own generate() (HF 4.36 greedy search)."""
    from transformers import GenerationConfig

    # eos/pad = an id outside the vocabulary, so it can never be generated (no min_new_tokens: its
    # logits processor would index that id).
    gcfg = GenerationConfig(do_sample=False, max_new_tokens=MAX_NEW_TOKENS,
                            eos_token_id=VOCAB + 7, pad_token_id=VOCAB + 7, use_cache=True)
    with torch.no_grad():
        seqs = model.generate(prompt[None], generation_config=gcfg)
    gen = seqs[0, prompt.shape[0]:]
    if not torch.equal(gen, tokens):
        raise AssertionError(f"Qwen-1 generate() {gen.tolist()} != manual cached loop {tokens.tolist()}")
    return "equal"


def qwen1_ref_string(pins: dict, version_tag: str) -> str:
    import transformers

    return (f"Qwen-1 modeling_qwen.py ({version_tag}) sha256 {pins['sha256']['modeling_qwen.py']} "
            f"on transformers {transformers.__version__}, float32, CPU, no flash-attn")


def qwen1_highlights(cfg, extra=None) -> dict:
    h = {
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "kv_channels": cfg.kv_channels,
        "vocab_size": cfg.vocab_size,
        "seq_length": cfg.seq_length,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rotary_emb_base": cfg.rotary_emb_base,
        "use_dynamic_ntk": cfg.use_dynamic_ntk,
        "use_logn_attn": cfg.use_logn_attn,
        "no_bias": cfg.no_bias,
    }
    if extra:
        h.update(extra)
    return h


def ntk_alpha(L: int, S: int) -> int:
    return max(2 ** math.ceil(math.log(L / S, 2) + 1) - 1, 1)


def run_qwen1(only, code_dir: Path, aug_dir: Path | None, allow_mismatch: bool) -> None:
    import transformers

    assert transformers.__version__.startswith("4."), "run the qwen1 family with .venv-qwen1 (transformers 4.36.2)"
    assert not torch.cuda.is_available() or os.environ.get("CUDA_VISIBLE_DEVICES") == "", \
        "run on CPU (CUDA_VISIBLE_DEVICES='') so Qwen-1 auto-selects fp32 and no flash-attn"
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    cfg_mod, modeling = load_code_package("qwen1_dec2023", code_dir, QWEN1_DEC, allow_mismatch)

    for case in QWEN1_CASES:
        if only and case["name"] not in only:
            continue
        d = fresh_dir(case["name"])
        config = cfg_mod.QWenConfig(**{**QWEN1_BASE, **case["cfg"]})
        pristine = config.to_dict()
        torch.manual_seed(case["seed"])
        model = modeling.QWenLMHeadModel(config)
        init_weights(model, case["seed"])
        model.save_pretrained(d, safe_serialization=True)
        saved_cfg = json.loads((d / "config.json").read_text())
        # QWenLMHeadModel.__init__ mutates its config (fp32 -> true, use_flash_attn -> false on CPU).
        # Re-save the config as the user wrote it (the released configs keep fp32 false, use_flash_attn
        # "auto"), with the architectures/auto_map entries real checkpoints have.
        pristine_cfg = cfg_mod.QWenConfig.from_dict(pristine)
        pristine_cfg.architectures = ["QWenLMHeadModel"]
        pristine_cfg.auto_map = {"AutoConfig": "configuration_qwen.QWenConfig",
                                 "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"}
        pristine_cfg.save_pretrained(d)
        names = checkpoint_tensors(d)
        assert "transformer.h.0.attn.c_attn.bias" in names and "lm_head.weight" in names, sorted(names)
        mutated = {k: saved_cfg.get(k) for k in ("fp32", "use_flash_attn")}

        model = modeling.QWenLMHeadModel.from_pretrained(d).eval()
        assert model.config.fp32 and not model.config.use_flash_attn
        inputs = make_inputs(case["seed"] + 1000, case["lengths"])
        with torch.no_grad():
            logits = [qwen1_forward_logits(model, ids) for ids in inputs]
        prompt_seed, prompt, (tokens, cached_logits, full_tokens, full_logits), margin = choose_prompt(
            lambda pr: qwen1_greedy(modeling.QWenLMHeadModel.from_pretrained(d).eval(), pr),
            case["seed"] + 2000, case["prompt_len"], want_divergence=config.use_dynamic_ntk)
        gen_check = qwen1_generate_check(modeling.QWenLMHeadModel.from_pretrained(d).eval(), prompt, tokens)
        S = config.seq_length
        alphas = {L: (ntk_alpha(L, S) if config.use_dynamic_ntk else 1) for L in case["lengths"]}
        meta = dict(
            reference=qwen1_ref_string(QWEN1_DEC, "Dec-2023"),
            dtype_on_disk="float32",
            seeds={"weights": case["seed"], "inputs": case["seed"] + 1000, "greedy_prompt": prompt_seed},
            greedy_method="manual greedy loop with the model's own tuple KV cache (prefill, then 1 token/step "
            f"with past_key_values); cross-checked equal to Qwen-1 generate() with a plain GenerationConfig "
            f"(eos/pad = {VOCAB + 7}, never produced): {gen_check}. Full recompute = argmax of model(seq) each step.",
            highlights=qwen1_highlights(config, {
                "ntk_alpha_by_input_length": alphas if config.use_dynamic_ntk else None,
                "min_greedy_top2_margin": round(margin, 4),
                "config_json": "re-saved un-mutated config (fp32 false, use_flash_attn auto); the model's own "
                f"save_pretrained wrote {mutated} after __init__ auto-selected CPU precision",
            }),
            notes=case["notes"],
        )
        write_reference(d, inputs, logits, dict(prompt=prompt, tokens=tokens, cached_logits=cached_logits,
                                                full_tokens=full_tokens, full_logits=full_logits), meta,
                        extra_tensors)

    if (only and QWEN1_AUG_CASE["name"] not in only) or aug_dir is None:
        if aug_dir is None:
            print("  (no --qwen1-aug-code: skipping qwen1_aug2023_keys)")
        return
    run_qwen1_aug(cfg_mod, modeling, aug_dir, allow_mismatch)


def run_qwen1_aug(dec_cfg_mod, dec_modeling, aug_dir: Path, allow_mismatch: bool) -> None:
    case = QWEN1_AUG_CASE
    aug_cfg_mod, aug_modeling = load_code_package("qwen1_aug2023", aug_dir, QWEN1_AUG, allow_mismatch)
    d = fresh_dir(case["name"])
    # Key set of the released Aug-2023 Qwen-7B(-Chat) config.json, with tiny values.
    aug_kwargs = dict(
        activation="swiglu",
        apply_residual_connection_post_layernorm=False,
        architectures=["QWenLMHeadModel"],
        auto_map={"AutoConfig": "configuration_qwen.QWenConfig", "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
        attn_pdrop=0.0,
        bf16=False,
        fp16=False,
        fp32=False,
        bias_dropout_fusion=True,
        bos_token_id=None,
        embd_pdrop=0.0,
        eos_token_id=None,
        ffn_hidden_size=256,
        initializer_range=0.02,
        kv_channels=16,
        layer_norm_epsilon=1e-6,
        n_embd=64,
        n_head=4,
        n_layer=2,
        n_positions=256,
        no_bias=True,
        onnx_safe=None,
        padded_vocab_size=VOCAB,
        params_dtype="torch.float32",
        pos_emb="rotary",
        resid_pdrop=0.1,
        rotary_emb_base=10000,
        rotary_pct=1.0,
        scale_attn_weights=True,
        seq_length=16,
        tokenizer_type="QWenTokenizer",
        use_cache=True,
        use_flash_attn="auto",
        vocab_size=VOCAB,
        use_dynamic_ntk=True,
        use_logn_attn=True,
    )
    config = aug_cfg_mod.QWenConfig(**aug_kwargs)
    config.save_pretrained(d)
    torch.manual_seed(case["seed"])
    model = aug_modeling.QWenLMHeadModel(aug_cfg_mod.QWenConfig.from_pretrained(d))
    init_weights(model, case["seed"])
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
    names = checkpoint_tensors(d)
    assert set(names) == set(state), (sorted(names), sorted(state))
    assert "transformer.wte.weight" in names and "transformer.h.0.attn.c_attn.bias" in names

    model = aug_modeling.QWenLMHeadModel.from_pretrained(d).eval()
    inputs = make_inputs(case["seed"] + 1000, case["lengths"])
    with torch.no_grad():
        logits = [qwen1_forward_logits(model, ids) for ids in inputs]
    prompt_seed, prompt, (tokens, cached_logits, full_tokens, full_logits), margin = choose_prompt(
        lambda pr: qwen1_greedy(aug_modeling.QWenLMHeadModel.from_pretrained(d).eval(), pr),
        case["seed"] + 2000, case["prompt_len"], want_divergence=True)

    # The same weights under the Dec-2023 code with the Dec-2023 key names must give the same numbers.
    dec_cfg = dec_cfg_mod.QWenConfig(**{**QWEN1_BASE, "seq_length": 16, "use_dynamic_ntk": True, "use_logn_attn": True})
    dec_model = dec_modeling.QWenLMHeadModel(dec_cfg)
    missing, unexpected = dec_model.load_state_dict(state, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    dec_model.eval()
    with torch.no_grad():
        diffs = [(qwen1_forward_logits(dec_model, ids) - lg).abs().max().item() for ids, lg in zip(inputs, logits)]
    dec_tokens, dec_cached, _, _ = qwen1_greedy(dec_model, prompt)
    max_diff = max(diffs)
    assert max_diff < 1e-4 and torch.equal(dec_tokens, tokens), (diffs, dec_tokens, tokens)
    S = 16
    meta = dict(
        reference=qwen1_ref_string(QWEN1_AUG, "Aug-2023"),
        dtype_on_disk="float32",
        seeds={"weights": case["seed"], "inputs": case["seed"] + 1000, "greedy_prompt": prompt_seed},
        greedy_method="manual greedy loop with the model's own tuple KV cache (the Aug-2023 code keeps the prefill "
        "alpha per attention layer in self._ntk_cached); full recompute = argmax of model(seq) each step",
        highlights=qwen1_highlights(config, {
            "config_keys": "Aug-2023: n_embd, n_layer, n_head, n_positions, ffn_hidden_size, padded_vocab_size "
            "(+ vocab_size for lm_head), seq_length, params_dtype, pos_emb",
            "ntk_alpha_by_input_length": {L: ntk_alpha(L, S) for L in case["lengths"]},
            "min_greedy_top2_margin": round(margin, 4),
            **{k: modern_cfg.get(k) for k in case.get("highlight_keys", [])},
            **extra_meta,
        }),
        notes="Config with the Aug-2023 key names, written by the Aug-2023 configuration_qwen.QWenConfig "
        "(attribute_map hidden_size->n_embd, num_attention_heads->n_head, max_position_embeddings->n_positions, "
        "num_hidden_layers->n_layer; MLP width ffn_hidden_size // 2; embedding rows padded_vocab_size, "
        "lm_head rows vocab_size). Logits and greedy tokens from the Aug-2023 modeling code itself "
        f"(Qwen-7B-Chat Aug-4-2023 revision). Cross-check: the Dec-2023 code with Dec-2023 keys on the same "
        f"weights gives max |dlogit| {max_diff:.2e} and identical greedy tokens. Aug-2023 code differences "
        "that do not change results here: logn applied whenever use_logn_attn (factor is 1 up to seq_length "
        "anyway), causal mask from a fixed n_positions x n_positions buffer (so inputs must be <= n_positions), "
        "per-layer rotary module. Weights saved with safetensors.torch.save_file(model.state_dict()) "
        "(the Aug code predates safe_serialization).",
    )
    write_reference(d, inputs, logits, dict(prompt=prompt, tokens=tokens, cached_logits=cached_logits,
                                            full_tokens=full_tokens, full_logits=full_logits), meta)


# ----------------------------------------------------------------------------------------------
# verify: an independent plain-torch re-implementation that reads ONLY the fixture files (config.json,
# weights, reference.safetensors) and re-derives every number. It documents, executably, the semantics
# the Rust implementation has to match (config keys of both styles, RoPE variants and their cached-decode
# behaviour, sliding window, Qwen-1 NTK alpha / LogN). Computes in float64 to show that a straightforward
# implementation lands well inside 1e-4.


def _load_weights(case_dir: Path) -> dict[str, torch.Tensor]:
    w = {}
    for fname in weight_files(case_dir):
        with safe_open(case_dir / fname, framework="pt") as f:
            for k in f.keys():
                w[k] = f.get_tensor(k).to(torch.float64)
    return w


def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rotate(x, pos, inv_freq, scale=1.0):
    """NeoX rotate_half RoPE. x [T, H, D]; pos [T]; inv_freq [D/2]."""
    f = pos[:, None].to(torch.float64) * inv_freq[None, :]
    emb = torch.cat([f, f], -1)
    cos, sin = (emb.cos() * scale)[:, None, :], (emb.sin() * scale)[:, None, :]
    h = x.shape[-1] // 2
    rot = torch.cat([-x[..., h:], x[..., :h]], -1)
    return x * cos + rot * sin


def _attend(q, k, v, q_pos, k_pos, window=None):
    """q [T, H, D], k/v [S, KVH, D] (already rotated), causal (+ optional sliding window)."""
    rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)
    scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(q.shape[-1])
    allowed = k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        allowed &= k_pos[None, :] > q_pos[:, None] - window
    scores = scores.masked_fill(~allowed[None], float("-inf"))
    return torch.einsum("hts,shd->thd", scores.softmax(-1), v)


class Qwen2Ref:
    def __init__(self, case_dir: Path):
        c = json.loads((case_dir / "config.json").read_text())
        self.c, self.w = c, _load_weights(case_dir)
        self.H, self.KVH = c["num_attention_heads"], c["num_key_value_heads"]
        self.D = c.get("head_dim") or c["hidden_size"] // self.H
        self.L, self.eps, self.mpe = c["num_hidden_layers"], c["rms_norm_eps"], c["max_position_embeddings"]
        # RoPE: transformers-5 `rope_parameters` or legacy `rope_theta` + `rope_scaling` ("type" or "rope_type")
        rp = c.get("rope_parameters") or {}
        sc = c.get("rope_scaling") or {}
        self.theta = float(rp.get("rope_theta", c.get("rope_theta", 10000.0)))
        self.rope = dict(sc, **rp)
        self.rope_type = self.rope.get("rope_type", self.rope.get("type", "default"))
        # sliding window: only when use_sliding_window, only layers >= max_window_layers
        self.window = [None] * self.L
        if c.get("use_sliding_window"):
            self.window = [c["sliding_window"] if i >= c["max_window_layers"] else None for i in range(self.L)]
        if "layer_types" in c:
            lt = [c["sliding_window"] if t == "sliding_attention" else None for t in c["layer_types"]]
            assert lt == self.window, (lt, self.window)
        self.lm_head = self.w.get("lm_head.weight", self.w["model.embed_tokens.weight"])

    def inv_freq(self, seq_len: int):
        d, base = self.D, self.theta
        idx = torch.arange(0, d, 2, dtype=torch.float64) / d
        if self.rope_type == "default":
            return 1.0 / base ** idx, 1.0
        if self.rope_type == "dynamic":
            f = self.rope["factor"]
            L = max(seq_len, self.mpe)
            base = base * ((f * L / self.mpe) - (f - 1)) ** (d / (d - 2))
            return 1.0 / base ** idx, 1.0
        if self.rope_type == "yarn":
            f, orig = self.rope["factor"], self.rope.get("original_max_position_embeddings", self.mpe)
            bf, bs = self.rope.get("beta_fast") or 32, self.rope.get("beta_slow") or 1

            def corr(rot):
                return d * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))

            low, high = max(math.floor(corr(bf)), 0), min(math.ceil(corr(bs)), d - 1)
            if low == high:
                high += 0.001
            ramp = ((torch.arange(d // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
            extra = 1 - ramp  # 1 -> keep original frequency, 0 -> interpolate (divide by factor)
            pos_freqs = base ** idx
            inv = (1 / (f * pos_freqs)) * (1 - extra) + (1 / pos_freqs) * extra
            return inv, 0.1 * math.log(f) + 1.0 if f > 1 else 1.0
        raise ValueError(self.rope_type)

    def forward(self, ids, cache=None, state=None):
        """ids: new tokens. cache: per-layer (k_rot, v, pos) lists, extended in place.

        RoPE frequencies for this call come from the total length after it (HF dynamic: seq_len = last
        position + 1; growing only, which is all a single greedy run does); tokens already in the cache keep
        the rotation they were stored with.
        """
        w, T = self.w, ids.shape[0]
        start = cache[0][2][-1].item() + 1 if cache and cache[0][2].numel() else 0
        pos = torch.arange(start, start + T)
        inv, scale = self.inv_freq(start + T)
        x = w["model.embed_tokens.weight"][ids]
        for i in range(self.L):
            p = f"model.layers.{i}."
            h = _rms(x, w[p + "input_layernorm.weight"], self.eps)
            q = (h @ w[p + "self_attn.q_proj.weight"].T + w[p + "self_attn.q_proj.bias"]).view(T, self.H, self.D)
            k = (h @ w[p + "self_attn.k_proj.weight"].T + w[p + "self_attn.k_proj.bias"]).view(T, self.KVH, self.D)
            v = (h @ w[p + "self_attn.v_proj.weight"].T + w[p + "self_attn.v_proj.bias"]).view(T, self.KVH, self.D)
            q, k = _rotate(q, pos, inv, scale), _rotate(k, pos, inv, scale)
            if cache is not None:
                if len(cache) <= i:
                    cache.append((k[:0], v[:0], pos[:0]))
                pk, pv, pp = cache[i]
                k, v, kpos = torch.cat([pk, k]), torch.cat([pv, v]), torch.cat([pp, pos])
                cache[i] = (k, v, kpos)
            else:
                kpos = pos
            a = _attend(q, k, v, pos, kpos, self.window[i]).reshape(T, self.H * self.D)
            x = x + a @ w[p + "self_attn.o_proj.weight"].T
            h = _rms(x, w[p + "post_attention_layernorm.weight"], self.eps)
            g = h @ w[p + "mlp.gate_proj.weight"].T
            u = h @ w[p + "mlp.up_proj.weight"].T
            x = x + (torch.nn.functional.silu(g) * u) @ w[p + "mlp.down_proj.weight"].T
        return _rms(x, w["model.norm.weight"], self.eps) @ self.lm_head.T


class Qwen1Ref:
    """Qwen-1 (Dec-2023 or Aug-2023 key names)."""

    def __init__(self, case_dir: Path):
        c = json.loads((case_dir / "config.json").read_text())
        self.c, self.w = c, _load_weights(case_dir)
        self.E = c.get("hidden_size", c.get("n_embd"))
        self.H = c.get("num_attention_heads", c.get("n_head"))
        self.L = c.get("num_hidden_layers", c.get("n_layer"))
        self.D = c["kv_channels"]
        assert self.D * self.H == self.E
        self.S, self.eps, self.base = c["seq_length"], c["layer_norm_epsilon"], float(c["rotary_emb_base"])
        self.rot_dim = int(self.D * c.get("rotary_pct", 1.0))
        self.ntk, self.logn = c["use_dynamic_ntk"], c["use_logn_attn"]

    def alpha(self, L):
        return ntk_alpha(L, self.S) if self.ntk else 1

    def forward(self, ids, cache=None, state=None):
        """cache: per-layer (k_rot, v) lists; state['alpha'] is fixed by the prefill (forward without past)."""
        w, T = self.w, ids.shape[0]
        start = cache[0][0].shape[0] if cache else 0
        if start == 0:
            alpha = self.alpha(T)
            if state is not None:
                state["alpha"] = alpha
        else:
            alpha = state["alpha"]  # decode reuses the prefill alpha
        pos = torch.arange(start, start + T)
        d = self.rot_dim
        base = self.base * alpha ** (d / (d - 2))
        inv = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
        kv_len = start + T
        if self.logn and kv_len > self.S:
            logn = torch.tensor([math.log(p + 1) / math.log(self.S) if p + 1 > self.S else 1.0 for p in pos.tolist()],
                                dtype=torch.float64)[:, None, None]
        else:
            logn = None
        x = w["transformer.wte.weight"][ids]
        for i in range(self.L):
            p = f"transformer.h.{i}."
            h = _rms(x, w[p + "ln_1.weight"], self.eps)
            qkv = h @ w[p + "attn.c_attn.weight"].T + w[p + "attn.c_attn.bias"]
            q, k, v = (t.reshape(T, self.H, self.D) for t in qkv.split(self.E, dim=-1))
            q = torch.cat([_rotate(q[..., :d], pos, inv), q[..., d:]], -1)
            k = torch.cat([_rotate(k[..., :d], pos, inv), k[..., d:]], -1)
            if logn is not None:
                q = q * logn
            if cache is not None:
                if len(cache) <= i:
                    cache.append((k[:0], v[:0]))
                k, v = torch.cat([cache[i][0], k]), torch.cat([cache[i][1], v])
                cache[i] = (k, v)
            a = _attend(q, k, v, pos, torch.arange(k.shape[0])).reshape(T, self.E)
            x = x + a @ w[p + "attn.c_proj.weight"].T
            h = _rms(x, w[p + "ln_2.weight"], self.eps)
            a1, a2 = h @ w[p + "mlp.w1.weight"].T, h @ w[p + "mlp.w2.weight"].T
            x = x + (a1 * torch.nn.functional.silu(a2)) @ w[p + "mlp.c_proj.weight"].T
        return _rms(x, w["transformer.ln_f.weight"], self.eps) @ w["lm_head.weight"].T


def verify(only) -> bool:
    ok_all = True
    for case_dir in sorted(p for p in OUT_ROOT.iterdir() if (p / "reference.json").exists()):
        if only and case_dir.name not in only:
            continue
        meta = json.loads((case_dir / "reference.json").read_text())
        ref = {}
        with safe_open(case_dir / "reference.safetensors", framework="pt") as f:
            for k in f.keys():
                ref[k] = f.get_tensor(k)
        if meta["reference"].split()[2] not in ("QWenLMHeadModel", "Qwen2ForCausalLM") and not case_dir.name.startswith("qwen1"):
            print(f"  skip {case_dir.name}: no independent implementation of {meta['reference'].split()[2]}")
            continue
        model = Qwen1Ref(case_dir) if case_dir.name.startswith("qwen1") else Qwen2Ref(case_dir)
        err = 0.0
        for i in range(meta["inputs"]):
            got = model.forward(ref[f"input_ids.{i}"])
            err = max(err, (got - ref[f"logits.{i}"].double()).abs().max().item())
        # cached greedy
        prompt = ref["greedy.prompt"]
        cache, state = [], {}
        lg = model.forward(prompt, cache, state)[-1]
        toks, clog = [], []
        for _ in range(MAX_NEW_TOKENS):
            t = lg.argmax()
            toks.append(t.item())
            clog.append(lg)
            lg = model.forward(t.view(1), cache, state)[-1]
        cerr = (torch.stack(clog) - ref["greedy.cached_logits"].double()).abs().max().item()
        # full-recompute greedy
        seq, ftoks, flog = prompt.clone(), [], []
        for _ in range(MAX_NEW_TOKENS):
            lg = model.forward(seq)[-1]
            t = lg.argmax()
            ftoks.append(t.item())
            flog.append(lg)
            seq = torch.cat([seq, t.view(1)])
        ferr = (torch.stack(flog) - ref["greedy.full_logits"].double()).abs().max().item()
        ok = (err <= 1e-4 and cerr <= 1e-4 and ferr <= 1e-4 and toks == meta["greedy"]["tokens"]
              and ftoks == meta["greedy"]["full_recompute_tokens"])
        ok_all &= ok
        print(f"  {'ok  ' if ok else 'FAIL'} {case_dir.name:22s} max|dlogit| inputs {err:.2e} cached {cerr:.2e} "
              f"full {ferr:.2e}; greedy cached {'==' if toks == meta['greedy']['tokens'] else '!='} "
              f"full {'==' if ftoks == meta['greedy']['full_recompute_tokens'] else '!='}")
    return ok_all


# ----------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("family", choices=["qwen2", "qwen3", "qwen1", "verify"],
                    help="qwen3 covers Qwen3, Qwen3-MoE and Qwen2-MoE")
    ap.add_argument("--only", nargs="*", help="case names to (re)generate")
    ap.add_argument("--qwen1-code", type=Path, default=os.environ.get("QWEN1_CODE"),
                    help="dir with Qwen-7B Dec-2023 modeling_qwen.py, configuration_qwen.py, "
                    "qwen_generation_utils.py (env QWEN1_CODE)")
    ap.add_argument("--qwen1-aug-code", type=Path, default=os.environ.get("QWEN1_AUG_CODE"),
                    help="dir with the Aug-2023 files (env QWEN1_AUG_CODE)")
    ap.add_argument("--allow-sha-mismatch", action="store_true")
    args = ap.parse_args()
    only = set(args.only) if args.only else None
    torch.use_deterministic_algorithms(True)
    print(f"python {platform.python_version()}, out {OUT_ROOT}")
    if args.family == "verify":
        sys.exit(0 if verify(only) else 1)
    if args.family == "qwen2":
        run_qwen2(only)
    elif args.family == "qwen3":
        run_qwen2(only, QWEN3_CASES)
    else:
        if args.qwen1_code is None:
            sys.exit("--qwen1-code DIR (or QWEN1_CODE) is required")
        run_qwen1(only, Path(args.qwen1_code), Path(args.qwen1_aug_code) if args.qwen1_aug_code else None,
                  args.allow_sha_mismatch)


if __name__ == "__main__":
    main()
