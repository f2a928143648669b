#!/usr/bin/env python3
"""GGUF fixtures written and dequantized by llama.cpp's own Python package, gguf-py (gguf==0.19.0,
numpy only), for the Rust GGUF reader (crates/model/src/gguf.rs). Run from the repository root:

    python3 -m venv .venv-gguf && .venv-gguf/bin/pip install -r tools/reference/requirements-gguf.txt
    .venv-gguf/bin/python tools/reference/gguf_fixtures.py

Writes tests/fixtures/gguf/:

- quants.gguf: seeded f32 arrays quantized by `gguf.quants.quantize` to F32, F16, BF16, Q8_0, Q4_0,
  Q4_1, Q5_0 and Q5_1 (gguf-py quantizes these), and seeded raw blocks of Q2_K, Q3_K, Q4_K, Q5_K and
  Q6_K (gguf-py 0.19.0 only dequantizes those; its quantize raises NotImplementedError) with finite f16 scales. Next to each
  tensor `NAME` is `NAME.expected`: `gguf.quants.dequantize` of it, as F32. The Rust
  dequantization must equal it bit for bit.
- {qwen2_gqa,qwen2_tied}.{f32,f16,q8_0}.gguf: the committed tiny Qwen2 checkpoints
  tests/fixtures/model/{qwen2_gqa,qwen2_tied} (whose transformers logits are in their
  reference.safetensors) written with GGUFWriter under
  llama.cpp's tensor names and metadata keys as llama.cpp's convert_hf_to_gguf.py writes them for a
  Qwen2ForCausalLM: 2-D `.weight` tensors at the file type (F16, or Q8_0 through
  `gguf.quants.quantize`), 1-D tensors (norms, biases) as F32; GGUF dims reversed (ne[0] innermost).
  The tokenizer metadata (`gpt2` model, `qwen2` pre-tokenizer) holds the first 256 entries of Qwen2's
  vocabulary (vocab/tokenizer.json ids 0..255, the single bytes) — the fixture's vocabulary size —
  and one merge (Qwen2's first, "Ġ Ġ") whose result is not in that vocabulary.
- qwen3_tied_bias_yarn.f32.gguf: the Qwen3 fixture (q/k norms, biases on q/k/v/o, tied, YaRN
  factor 4) with the `qwen3.*` keys and `rope.scaling.*` as the converter writes them.
- llama_cpp_logits.gguf (only when llama-cpp-python==0.3.36 is installed in the venv: it builds
  llama.cpp from source, ~10+ min): llama.cpp's own logits for the three qwen2_tied files on the
  fixture's reference inputs (tensors `qwen2_tied.{f32,f16,q8_0}.logits.{i}`, `[len, vocab]`;
  llama.cpp cannot load qwen2_gqa, whose head_dim is not n_embd / n_head), evaluated
  with `Llama(logits_all=True, n_threads=2, type_k=type_v=F32)` on the CPU.
- qwen2_vocab.gguf (only when vocab/tokenizer.json exists; git-ignored: ~7 MB): a vocabulary-only
  GGUF of the real Qwen2 tokenizer written as convert_hf_to_gguf.py's `_set_vocab_gpt2` does
  (tokens by id, added special tokens CONTROL, other added tokens USER_DEFINED, merges "a b"), with
  the committed Qwen2.5 chat template (tests/fixtures/chat_template/templates/qwen2.5.jinja).
"""

import hashlib
import json
import struct
import sys
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T
from gguf import quants

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "gguf"
MODELS = ROOT / "tests" / "fixtures" / "model"
# qwen2_gqa: GQA 4/2 with head_dim 24 != 64/4 (llama.cpp cannot load it: its qwen2 graph takes
# head_dim = n_embd / n_head); qwen2_tied: GQA 4/2, head_dim 16, tied embeddings (llama.cpp loads it).
CASES = ("qwen2_gqa", "qwen2_tied")
# Qwen3 with tied embeddings, biases on q/k/v/o and YaRN (factor 4 over 16 positions), F32 only.
QWEN3_CASE = "qwen3_tied_bias_yarn"


def quants_file() -> None:
    rng = np.random.default_rng(20240613)
    w = gguf.GGUFWriter(str(OUT / "quants.gguf"), arch="quants")
    w.add_string("fixture.generator", "tools/reference/gguf_fixtures.py")
    base = rng.standard_normal((4, 256)).astype(np.float32)
    base[0, :32] = 0.0  # an all-zero block (scale 0)
    base[1, :8] *= 1000.0  # large values
    base[2, 32:64] = np.linspace(-1e-3, 1e-3, 32, dtype=np.float32)  # small values
    for qtype in (T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1):
        data = quants.quantize(base, qtype)
        name = qtype.name.lower()
        w.add_tensor(name, data, raw_dtype=qtype)
        w.add_tensor(name + ".expected", quants.dequantize(data, qtype).astype(np.float32))
    # A Q8_0 tensor whose rows are one block wide, three rows.
    odd = (rng.standard_normal((3, 32)) * 0.05).astype(np.float32)
    data = quants.quantize(odd, T.Q8_0)
    w.add_tensor("q8_0_rows", data, raw_dtype=T.Q8_0)
    w.add_tensor("q8_0_rows.expected", quants.dequantize(data, T.Q8_0).astype(np.float32))
    # K-quants: raw blocks (4 rows of 2 superblocks), with finite positive f16 scales.
    for qtype, scale_at in ((T.Q2_K, (80, 82)), (T.Q3_K, (108,)), (T.Q4_K, (0, 2)), (T.Q5_K, (0, 2)), (T.Q6_K, (208,))):
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, size=(8, size), dtype=np.uint8)
        for off in scale_at:
            s = rng.uniform(1e-3, 5e-2, size=8).astype(np.float16)
            raw[:, off : off + 2] = s.view(np.uint8).reshape(8, 2)
        data = raw.reshape(4, 2 * size)
        name = qtype.name.lower()
        w.add_tensor(name, data, raw_dtype=qtype)
        w.add_tensor(name + ".expected", quants.dequantize(data, qtype).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", (name, info["dtype"])
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + a : 8 + n + b], dtype=np.float32).reshape(info["shape"])
    return out


# HF Qwen2 name -> llama.cpp name (gguf-py's tensor_mapping / constants: MODEL_TENSOR names).
LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf: str) -> str:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    parts = hf.split(".")
    assert parts[:2] == ["model", "layers"], hf
    layer, rest = parts[2], ".".join(parts[3:-1])
    return f"blk.{layer}.{LAYER_NAMES[rest]}.{parts[-1]}"


def byte_tokens(n: int) -> list[str]:
    vocab = ROOT / "vocab" / "tokenizer.json"
    if vocab.exists():
        v = json.loads(vocab.read_text())["model"]["vocab"]
        by_id = {i: s for s, i in v.items()}
        return [by_id[i] for i in range(n)]
    raise SystemExit("vocab/tokenizer.json is needed (the Qwen2 vocabulary)")


def model_file(case: str, ftype: str) -> None:
    model = MODELS / case
    config = json.loads((model / "config.json").read_text())
    tensors = read_safetensors(model / "model.safetensors")
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[ftype]
    arch = config["model_type"]
    assert arch in ("qwen2", "qwen3"), arch
    w = gguf.GGUFWriter(str(OUT / f"{case}.{ftype}.gguf"), arch=arch)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(case)
    w.add_block_count(config["num_hidden_layers"])
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config["num_key_value_heads"])
    w.add_rope_freq_base(config.get("rope_parameters", {}).get("rope_theta", config.get("rope_theta")))
    scaling = config.get("rope_scaling") or {}
    if scaling.get("type", scaling.get("rope_type")) == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(scaling["factor"])
        w.add_rope_scaling_orig_ctx_len(scaling["original_max_position_embeddings"])
    else:
        assert not scaling, scaling
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    if "head_dim" in config:  # as convert_hf_to_gguf.py: only when the config names it
        w.add_key_length(config["head_dim"])
        w.add_value_length(config["head_dim"])
    w.add_file_type(file_type)
    if ftype == "q8_0":
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    n_vocab = config["vocab_size"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(byte_tokens(n_vocab))
    w.add_token_types([gguf.TokenType.NORMAL] * n_vocab)
    # llama.cpp requires merges for a gpt2 tokenizer and gguf-py cannot write an empty array: Qwen2's
    # first merge, whose result ("ĠĠ", id 256) is not in this 256-token vocabulary.
    w.add_token_merges(["\u0120 \u0120"])
    w.add_eos_token_id(n_vocab - 1)
    for hf in sorted(tensors):
        data = tensors[hf]
        name = gguf_name(hf)
        qtype = T.F32
        if name.endswith(".weight") and data.ndim >= 2 and ftype != "f32":
            qtype = T.F16 if ftype == "f16" else T.Q8_0
        w.add_tensor(name, quants.quantize(data, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def vocab_file() -> None:
    vocab = ROOT / "vocab" / "tokenizer.json"
    if not vocab.exists():
        print("no vocab/tokenizer.json: skipping qwen2_vocab.gguf")
        return
    tj = json.loads(vocab.read_text())
    added = {t["id"]: t for t in tj["added_tokens"]}
    by_id = {i: s for s, i in tj["model"]["vocab"].items()}
    n = max(max(by_id), max(added)) + 1
    tokens, types = [], []
    for i in range(n):
        if i in added:
            tokens.append(added[i]["content"])
            types.append(gguf.TokenType.CONTROL if added[i]["special"] else gguf.TokenType.USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    out = ROOT / "target" / "gguf-fixtures"
    out.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(out / "qwen2_vocab.gguf"), arch="qwen2")
    w.add_type(gguf.GGUFType.MODEL)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(added_id(added, "<|endoftext|>"))
    w.add_pad_token_id(added_id(added, "<|endoftext|>"))
    w.add_bos_token_id(added_id(added, "<|endoftext|>"))
    w.add_chat_template((ROOT / "tests" / "fixtures" / "chat_template" / "templates" / "qwen2.5.jinja").read_text())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def read_reference_inputs(case: str) -> list[np.ndarray]:
    raw = (MODELS / case / "reference.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    out = []
    for i in range(json.loads((MODELS / case / "reference.json").read_text())["inputs"]):
        info = header[f"input_ids.{i}"]
        assert info["dtype"] == "I64"
        a, b = info["data_offsets"]
        out.append(np.frombuffer(raw[8 + n + a : 8 + n + b], dtype=np.int64))
    return out


def llama_cpp_logits() -> None:
    try:
        import llama_cpp
    except ImportError:
        print("llama-cpp-python not installed: skipping llama_cpp_logits.gguf")
        return
    from importlib.metadata import version

    if version("llama-cpp-python") != "0.3.36":
        sys.exit(f"llama-cpp-python {version('llama-cpp-python')} installed, the fixtures pin 0.3.36")
    w = gguf.GGUFWriter(str(OUT / "llama_cpp_logits.gguf"), arch="reference")
    w.add_string("reference.llama_cpp_python", "0.3.36")
    w.add_string("reference.llama_cpp_system_info", llama_cpp.llama_print_system_info().decode())
    case = "qwen2_tied"
    inputs = read_reference_inputs(case)
    for ftype in ("f32", "f16", "q8_0"):
        llm = llama_cpp.Llama(str(OUT / f"{case}.{ftype}.gguf"), n_ctx=256, n_batch=256, n_threads=2,
                              n_threads_batch=2, logits_all=True, verbose=False,
                              type_k=0, type_v=0)  # an f32 KV cache (llama.cpp's default is f16)
        for i, ids in enumerate(inputs):
            llm.reset()
            llm.eval([int(t) for t in ids])
            logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
            w.add_tensor(f"{case}.{ftype}.logits.{i}", logits)
        del llm
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def added_id(added: dict, content: str) -> int:
    return next(i for i, t in added.items() if t["content"] == content)


def main() -> None:
    from importlib.metadata import version

    if version("gguf") != "0.19.0":
        sys.exit(f"gguf {version('gguf')} installed, the fixtures pin gguf==0.19.0")
    OUT.mkdir(parents=True, exist_ok=True)
    quants_file()
    for case in CASES:
        for ftype in ("f32", "f16", "q8_0"):
            model_file(case, ftype)
    model_file(QWEN3_CASE, "f32")
    llama_cpp_logits()
    vocab_file()
    for p in sorted(OUT.glob("*.gguf")):
        print(f"{p.relative_to(ROOT)}  {p.stat().st_size} bytes  sha256 {hashlib.sha256(p.read_bytes()).hexdigest()[:16]}")


if __name__ == "__main__":
    main()
