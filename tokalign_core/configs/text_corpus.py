"""Config of the machine-text corpus builder (:mod:`tokalign_core.data.textsources`)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from tokalign_core.configs.base import FrozenConfig


class TextCorpusConfig(FrozenConfig):
    """How to turn the machine's text into a benchmark corpus."""

    seed: int = 0
    max_doc_chars: int = Field(20_000, ge=500, description="longest document (characters)")
    min_doc_chars: int = Field(200, ge=1, description="shorter chunks are dropped")
    max_bytes_per_group: int = Field(
        16_000_000, ge=1, description="cap of UTF-8 bytes per (lang, domain) training file")
    eval_bytes: int = Field(
        200_000, ge=0, description="held-out UTF-8 bytes per language (or code language)")
    min_group_bytes: int = Field(
        50_000, ge=0, description="(lang, domain) groups with less text are left out")
    langs: tuple[str, ...] | None = Field(
        None, description="keep only these labels (ISO codes and python/c/java); None = all")
    sources: tuple[str, ...] = ("man", "help", "doc", "code")

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = set(v) - {"man", "help", "doc", "code"}
        if bad:
            raise ValueError(
                f"unknown text sources {sorted(bad)}; choose from man, help, doc, code")
        return v

    @model_validator(mode="after")
    def _min_below_max(self) -> TextCorpusConfig:
        if self.min_doc_chars > self.max_doc_chars:
            raise ValueError(
                f"min_doc_chars={self.min_doc_chars} exceeds max_doc_chars={self.max_doc_chars}")
        return self
