"""InitConfig: how the adapted model's embedding rows are initialised (METHOD.md section 6).

``method="aligned"`` copies, for every target id t, the source rows ``alignment.source_ids[t]``
(TokAlign / TokAlign++ or any other alignment). The other methods are the baselines of the
papers: ``random`` (shared tokens reused, others N(0, source std)), ``random-permutation``,
``mean``, ``multivariate`` (normal with the source rows' mean and covariance) and ``fvt``
(mean of the source rows of the target token's source tokenization).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tokalign_core.configs.base import FrozenConfig

InitMethod = Literal["aligned", "random", "random-permutation", "mean", "multivariate", "fvt"]
INIT_METHODS: tuple[str, ...] = (
    "aligned", "random", "random-permutation", "mean", "multivariate", "fvt"
)


class InitConfig(FrozenConfig):
    """Initialisation of a source causal LM for a target tokenizer."""

    method: InitMethod = Field(
        "aligned", description="aligned (copy from an alignment) or a baseline"
    )
    fallback: Literal["fvt", "copy", "mean"] = Field(
        "fvt",
        description="aligned only: rows of provenance FALLBACK (no vector) get the FVT mean "
        "of their source tokenization (fvt), the alignment's own source row (copy) or the "
        "mean source row (mean)",
    )
    gate_quantile: float | None = Field(
        0.9, ge=0.0, le=1.0,
        description="aligned only: retrieved rows (provenance ALIGNED) scored below this "
        "quantile of the retrieved rows' scores get the FVT mean of their source tokenization "
        "instead; 0.9 keeps the 10% most confident (benchmarks/bakeoff_real.md: on "
        "SmolLM2-135M -> Qwen2 it beat copying every row on validation and test documents). "
        "None or 0 = copy every aligned row",
    )
    min_score: float | None = Field(
        None,
        description="aligned only: rows the alignment retrieved (provenance ALIGNED) with a "
        "score below this get the FVT mean of their source tokenization instead (gating by "
        "the alignment's confidence); None = copy every aligned row",
    )
    calibrate_head: bool | None = Field(
        None,
        description="LM-head calibration (tokalign_core.model.calibrate): head rows from each "
        "target token's first source piece plus a log-frequency logit bias from the target "
        "corpus counts, folded into the weights (a tied head is untied). None = on for "
        "method aligned when the target tokens artifact is given, off for the baselines "
        "(kept as the papers define them); true = required (any method: an ablation for "
        "baselines); false = off",
    )
    calibration_passes: int = Field(
        0, ge=0,
        description="calibration: passes fitting the logit bias to the corpus's target "
        "unigram distribution on the model's own predictions after the count formula "
        "(0 = the formula only: chosen on validation documents, benchmarks/bakeoff_real.md; "
        "fitting helped English and code but hurt Russian and Japanese)",
    )
    calibration_blocks: int = Field(
        48, ge=1, description="calibration: document openings sampled from the tokens artifact"
    )
    calibration_block_len: int = Field(
        512, ge=16, description="calibration: tokens per sampled document opening"
    )
    calibration_alpha: float = Field(
        0.5, gt=0, description="calibration: additive smoothing of the target token counts"
    )
    calibration_floor: float = Field(
        -12.0, lt=0, description="calibration: lowest logit bias (tokens the source cannot spell)"
    )
    reuse_shared: bool = Field(
        True,
        description="statistical baselines (random, random-permutation, mean, multivariate): "
        "copy the source row of tokens both vocabularies share (same bytes / same role)",
    )
    pad_to_multiple_of: int = Field(
        64, ge=1, description="embedding rows = len(target tokenizer) rounded up to this"
    )
    random_std: float | None = Field(
        None, gt=0, description="std of the random baseline; None = the source rows' std"
    )
    seed: int = Field(0, description="seed of every random choice (baselines, FVT fallback)")
    trust_remote_code: bool = Field(
        False, description="allow models/tokenizers whose config needs custom code"
    )

    @model_validator(mode="after")
    def _check(self) -> InitConfig:
        if self.min_score is not None and self.method != "aligned":
            raise ValueError(
                f"min_score only applies to method='aligned' (got method={self.method!r}); "
                "drop min_score"
            )
        if self.random_std is not None and self.method != "random":
            raise ValueError(
                f"random_std only applies to method='random' (got method={self.method!r}); "
                "drop random_std"
            )
        return self

    @classmethod
    def tokalign(cls) -> InitConfig:
        """The papers' setting: copy aligned rows, pad to a multiple of 64."""
        return cls(method="aligned")
