"""Tokenize stage config: one tokenizer over every corpus shard and the held-out split.

METHOD.md section 1: the same documents are tokenized with both tokenizers, and whether BOS
/ EOS were added is recorded explicitly. The reference code calls ``tokenizer(text)``, which
adds BOS for Gemma / LLaMA3 (their post-processor prepends it) and never EOS; ``add_bos=None``
reproduces that per tokenizer, ``add_eos`` defaults to False.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from tokalign_core.configs.base import FrozenConfig, absolute_local_path


class TokenizeConfig(FrozenConfig):
    """``tokenizer``: a spec for :func:`tokalign_core.vocab.tokenizers.load_tokenizer` (hub id,
    folder, tokenizer.json, ``*.tiktoken`` rank file or ``builtin:qwen2``).
    ``add_bos``: None = what the tokenizer's own ``tokenizer(text)`` does; True/False force.
    ``add_eos``: append the tokenizer's EOS to every document (never by default).
    ``batch_size``: documents per ``encode_batch`` call (memory vs. call overhead).
    """

    tokenizer: str = Field(..., description="hub id, tokenizer folder, tokenizer.json, "
                           "*.tiktoken rank file or builtin:qwen2")
    add_bos: bool | None = Field(None, description="prepend BOS: auto (none) = as "
                                 "tokenizer(text) does")
    add_eos: bool = Field(False, description="append EOS to every document")
    batch_size: int = Field(1024, ge=1, le=1_000_000,
                            description="documents per encode_batch call")
    trust_remote_code: bool = Field(False, description="allow a hub tokenizer's custom "
                                    "Python code")

    @field_validator("tokenizer")
    @classmethod
    def _spec_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError(
                "tokenizer spec is empty; give a hub id, a folder, a tokenizer.json, "
                "a *.tiktoken file or builtin:qwen2"
            )
        return absolute_local_path(v.strip())
