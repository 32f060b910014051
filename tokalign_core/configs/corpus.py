"""Corpus stage config: text sources, mixing ratios, budget, sharding and the input policy.

TokAlign (METHOD.md section 1) tokenizes one mixed corpus (paper: 40% multilingual, 30% code,
30% math, ~1B tokens) with both tokenizers and keeps a held-out split (reference: 5%).

Budget: the mix is measured in **UTF-8 bytes**, the only size known before a tokenizer is
chosen. ``token_budget`` is converted to bytes with ``bytes_per_token`` (default 4.0, about
what a 32k-50k byte-level BPE gives on English and code; CJK text has fewer tokens per byte,
so the actual token count of a multilingual mix will differ; the tokens artifact records
the real count). ``byte_budget`` sets bytes directly; at most one of the two may be given.
Without a budget every source is read in full and ratios must be left at 1.0.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from tokalign_core.configs.base import FrozenConfig, absolute_local_path

SourceFormat = Literal["auto", "jsonl", "parquet", "text", "dataset"]
TextUnit = Literal["line", "paragraph", "file"]


class SourceSpec(FrozenConfig):
    """One text source.

    ``path``: a file, a folder (searched recursively for ``*.jsonl[.gz]``, ``*.parquet``,
    ``*.txt[.gz]``), a glob (``data/**/*.jsonl``), a ``datasets`` folder saved with
    ``save_to_disk``, or ``hf:<name>`` for a hub dataset (streamed, needs network).
    ``format="auto"`` decides from the path; set it to force one reader for every file.
    ``text_field``: the column / JSON key holding the document text.
    ``ratio``: relative share of the byte budget (normalised over all sources).
    ``text_unit``: what one document is in a plain-text file: a ``line`` (the reference
    code's and GloVe's one-document-per-line convention), a blank-line separated
    ``paragraph``, or the whole ``file``.
    ``dataset_config`` / ``split``: passed to ``datasets.load_dataset`` (and ``split``
    selects from a saved ``DatasetDict``).
    """

    path: str = Field(..., description="a file, folder, glob or hf:<dataset>")
    format: SourceFormat = Field("auto", description="reader; auto: from the file suffix")
    text_field: str = Field("text", description="column / JSON key holding the text")
    ratio: float = Field(1.0, gt=0, description="mixing ratio (needs a budget)")
    text_unit: TextUnit = Field("line", description="what one document is in plain-text "
                                "files")
    dataset_config: str | None = Field(None, description="datasets.load_dataset config name")
    split: str = Field("train", description="dataset split")

    @field_validator("path")
    @classmethod
    def _path_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("source path is empty; give a file, folder, glob or hf:<name>")
        return absolute_local_path(v)


class CorpusConfig(FrozenConfig):
    """Mix ``sources`` up to a budget, split into ``n_shards`` + a held-out split.

    Held-out membership and document order come from a seeded hash of each document's
    text, so they do not depend on ``n_shards`` (nor on the source order of equal texts).
    ``max_doc_chars``: longer documents are split at a line, then a space boundary.
    """

    sources: tuple[SourceSpec, ...] = Field(..., description="the text sources")
    token_budget: int | None = Field(None, gt=0, description="size of the mix in tokens, "
                                     "converted to bytes with bytes_per_token (none: "
                                     "everything)")
    byte_budget: int | None = Field(None, gt=0, description="size of the mix in UTF-8 bytes "
                                    "(none: everything)")
    bytes_per_token: float = Field(4.0, gt=0, description="bytes per token used to turn "
                                   "token_budget into bytes")
    n_shards: int = Field(8, ge=1, le=100_000, description="number of training shards")
    heldout_fraction: float = Field(0.05, ge=0.0, lt=1.0,
                                    description="fraction of documents held out")
    seed: int = Field(0, description="seed of the held-out draw and the document order")
    max_doc_chars: int = Field(1_000_000, ge=64, description="documents longer than this are "
                               "split")
    min_doc_chars: int = Field(1, ge=1, description="documents shorter than this are dropped")

    @model_validator(mode="after")
    def _check(self) -> CorpusConfig:
        if not self.sources:
            raise ValueError("CorpusConfig needs at least one source")
        if self.token_budget is not None and self.byte_budget is not None:
            raise ValueError("give token_budget or byte_budget, not both")
        if self.budget_bytes is None and any(s.ratio != 1.0 for s in self.sources):
            raise ValueError(
                "source ratios only apply with a budget: set token_budget (or byte_budget) "
                "or leave every ratio at 1.0 to take all of every source"
            )
        return self

    @property
    def budget_bytes(self) -> int | None:
        """The byte budget of the whole mix (held-out split included), or None for all."""
        if self.byte_budget is not None:
            return self.byte_budget
        if self.token_budget is not None:
            return int(round(self.token_budget * self.bytes_per_token))
        return None

    def quotas(self) -> list[int | None]:
        """Byte quota of each source: budget x ratio / sum(ratios) (None: no limit)."""
        total = self.budget_bytes
        if total is None:
            return [None] * len(self.sources)
        norm = sum(s.ratio for s in self.sources)
        return [int(round(total * s.ratio / norm)) for s in self.sources]
