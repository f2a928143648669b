"""Qwen-1's tiktoken encoding, as Qwen-1's tokenization_qwen.py builds it: qwen.tiktoken's ranks,
its PAT_STR (digits split one by one) and the 208 special tokens after the 151,643 ranks.

Imported by tokenizer_fixtures.py (the parity fixtures) and tiktoken_process.py (the whole-process
benchmark); it imports only tiktoken, so the benchmark's start-up is tiktoken's own.
"""

import tiktoken
from tiktoken.load import load_tiktoken_bpe

# Copied verbatim from docs (qwen-reference.md) == Qwen-1 tokenization_qwen.py PAT_STR.
PAT_STR = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
EXTRAS = [f"<|extra_{i}|>" for i in range(205)]
SPECIAL_TOKENS = {t: 151643 + i for i, t in enumerate([ENDOFTEXT, IM_START, IM_END] + EXTRAS)}
assert len(SPECIAL_TOKENS) == 208 and SPECIAL_TOKENS["<|extra_204|>"] == 151850


def encoding(vocab_path) -> tiktoken.Encoding:
    """The encoding from a qwen.tiktoken file (n_vocab 151,851)."""
    return tiktoken.Encoding(
        name="qwen",
        pat_str=PAT_STR,
        mergeable_ranks=load_tiktoken_bpe(str(vocab_path)),
        special_tokens=SPECIAL_TOKENS,
    )
