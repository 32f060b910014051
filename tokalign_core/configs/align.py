"""Alignment stage configs (METHOD.md section 4).

:class:`VecMapConfig` holds every parameter of the self-learning method of Artetxe et al.
(2018, "A robust self-learning method for fully unsupervised cross-lingual mappings of
word embeddings", ACL), with the paper's defaults: normalisation unit/center/unit, an
unsupervised initial dictionary over the 4,000 most frequent rows, self-learning over the
20,000 most frequent rows, CSLS with k = 10, stochastic dictionary induction (keep
probability 0.1, doubled after 50 iterations without an objective gain of 1e-6), and the
final whitening / orthogonal map / re-weighting (singular values ^ 0.5) / de-whitening.
The paper's schedule is the ``paper`` preset; the default schedule raises p after 5 stalled
iterations and stops once the dropout-free dictionary is (nearly) a fixed point
(``benchmarks/vecmap_convergence.md``: the same held-out P@1 in a fraction of the
iterations).

:class:`AlignConfig` chooses how the target -> source alignment is built: ``vecmap``
(TokAlign++), ``relative`` (the TokAlign conference method: relative representations over
300 seeded shared anchor tokens) or ``cosine`` (plain cosine, both sides in one space).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tokalign_core.configs.base import FrozenConfig

NormStep = Literal["unit", "center", "unitdim", "centeremb", "none"]


class VecMapConfig(FrozenConfig):
    """``normalize``: steps applied in order to both sides (unit rows, centred columns,
    unit-variance columns ``unitdim``, centred rows ``centeremb``). ``init``:
    ``unsupervised`` (sorted square-root similarities) or ``shared`` (seed dictionary from
    the shared tokens). ``init_size``: rows used by the unsupervised init. ``vocab_cutoff``:
    most frequent rows used in self-learning (the mapping is then applied to every row).
    ``csls_k``: neighbours in the CSLS hubness penalty (0 = plain cosine). ``direction``:
    dictionary induction ``forward`` (x -> z), ``backward`` or ``union``.
    ``keep_prob``/``stochastic_multiplier``/``stochastic_interval``/``threshold``: the
    stochastic schedule. ``stop_change``: once dropout is off (keep probability 1), stop
    when at most this fraction of the dictionary's pairs changed in an iteration (the
    dictionary is then a fixed point, or nearly); ``None``: only the paper's objective stall
    stops. ``max_iterations``: hard cap on self-learning iterations (the last one runs
    without dropout; the final step still runs). ``whiten``,
    ``src_reweight``/``trg_reweight`` (exponent of the singular values for x / z),
    ``src_dewhiten``/``trg_dewhiten`` (``none``, ``src`` or ``trg``: whose whitening to
    undo): the final step. ``candidates``: cosine candidates kept per row before the exact
    CSLS check (a speed knob; results are exact for any value). ``exact_max_keys``: while
    stochastic dropout is on, key sets up to this size use the exact two-pass retrieval
    (dropout defeats the candidate short lists; see ``tokalign_core.align.retrieval``); larger
    ones and dropout-free iterations use the one-pass candidate mode. ``dense_max_bytes``:
    with dropout, when the cutoff x cutoff float32 similarity matrix fits in this many bytes
    (default 2 GiB: the 20k cutoff's 1.6 GB does), it is computed once per iteration and
    stored, and both directions and both CSLS passes read it (one GEMM instead of two, one
    transpose instead of two); 0 turns this off (e.g. on a small GPU). Results are the same
    either way, only the speed differs.
    ``batch_size``: kept for compatibility; the retrieval runs on fixed 2048-row tiles
    (memory O(2048 x cutoff)) so it has no effect on results or memory.
    """

    normalize: tuple[NormStep, ...] = Field(
        ("unit", "center", "unit"), description="steps applied in order to both sides: unit "
        "rows, centred columns, unit-variance columns (unitdim), centred rows (centeremb)")
    # Seeded by default: on real text (benchmarks/alignment_quality.md, an English 8k BPE
    # -> Qwen2) the unsupervised init never locked on (held-out P@1 0.0%) while the
    # shared-token seed reached 46%; LLM vocabularies nearly always share thousands of
    # tokens. ``unsupervised`` stays selectable for vocabularies that share none.
    init: Literal["unsupervised", "shared"] = Field(
        "shared", description="VecMap initial dictionary: sorted square-root similarities "
        "(unsupervised), or the shared tokens")
    init_size: int = Field(4000, ge=2, description="rows of the unsupervised VecMap init")
    vocab_cutoff: int = Field(20000, ge=2, description="most frequent rows used by VecMap "
                              "self-learning (the mapping is then applied to every row)")
    csls_k: int = Field(10, ge=0, description="neighbours in VecMap's CSLS hubness penalty "
                        "(0 = plain cosine)")
    direction: Literal["forward", "backward", "union"] = Field(
        "union", description="dictionary induction: forward (x -> z), backward or union")
    keep_prob: float = Field(0.1, gt=0.0, le=1.0, description="stochastic dictionary "
                             "induction: initial keep probability")
    stochastic_multiplier: float = Field(2.0, gt=1.0, description="keep probability "
                                         "multiplier after a stall")
    # 5, not the paper's 50: on real vectors the dictionary settles long before 50
    # stalled iterations pass (benchmarks/vecmap_convergence.md).
    stochastic_interval: int = Field(5, ge=1, description="stalled iterations before the "
                                     "keep probability is raised (the paper: 50)")
    threshold: float = Field(1e-6, ge=0.0, description="objective gain below which an "
                             "iteration counts as stalled")
    stop_change: float | None = Field(
        0.001, ge=0.0, le=1.0, description="once dropout is off, stop when at most this "
        "fraction of the dictionary changed in an iteration (none: only the objective stall "
        "stops)")
    max_iterations: int = Field(1000, ge=1, description="cap on VecMap iterations")
    whiten: bool = Field(True, description="final step: whiten both sides")
    src_reweight: float = Field(0.5, ge=0.0, description="final step: exponent of the "
                                "singular values for the source side")
    trg_reweight: float = Field(0.5, ge=0.0, description="final step: exponent of the "
                                "singular values for the target side")
    src_dewhiten: Literal["none", "src", "trg"] = Field(
        "src", description="final step: whose whitening to undo on the source side")
    trg_dewhiten: Literal["none", "src", "trg"] = Field(
        "trg", description="final step: whose whitening to undo on the target side")
    candidates: int = Field(64, ge=1, description="cosine candidates kept per row before the "
                            "exact CSLS check (speed only; results are exact)")
    exact_max_keys: int = Field(32768, ge=0, description="with dropout on, key sets up to "
                                "this size use the exact two-pass retrieval")
    dense_max_bytes: int = Field(2 * 1024**3, ge=0, description="with dropout on, keep the "
                                 "cutoff x cutoff similarity matrix when it fits in this many "
                                 "bytes (0 = off; speed only)")
    batch_size: int = Field(4096, ge=1, description="kept for compatibility; retrieval runs "
                            "on fixed 2048-row tiles (no effect)")
    seed: int = Field(0, description="seed of VecMap's dropout")
    backend: Literal["auto", "numpy", "cupy"] = Field(
        "numpy", description="array backend; auto = cupy when a GPU is usable")

    @model_validator(mode="after")
    def _consistent(self) -> VecMapConfig:
        if not self.whiten and (self.src_dewhiten != "none" or self.trg_dewhiten != "none"):
            raise ValueError(
                "de-whitening needs whitening: set whiten=True, or src_dewhiten='none' and "
                "trg_dewhiten='none'"
            )
        if "none" in self.normalize and len(self.normalize) > 1:
            raise ValueError("normalize: 'none' cannot be combined with other steps")
        if self.candidates < self.csls_k:
            raise ValueError(
                f"candidates ({self.candidates}) must be >= csls_k ({self.csls_k}): the "
                "CSLS neighbour means are read from the candidate lists"
            )
        return self

    @classmethod
    def preset(cls, name: str) -> VecMapConfig:
        """``unsupervised`` (the paper's fully unsupervised init), ``shared`` (seeded by
        shared tokens: the default), ``paper`` (the paper's schedule: p doubled after 50
        stalled iterations, stopped only by a stall at p = 1), ``fast`` (tiny cutoffs and
        schedule, tests and demos)."""
        presets = {
            "unsupervised": {"init": "unsupervised"},
            "shared": {"init": "shared"},
            "paper": {"stochastic_interval": 50, "stop_change": None},
            "fast": {"init_size": 500, "vocab_cutoff": 2000, "stochastic_interval": 5,
                     "max_iterations": 200},
        }
        if name not in presets:
            raise ValueError(f"unknown VecMap preset {name!r}; choose {sorted(presets)}")
        return cls(**presets[name])


class AlignConfig(FrozenConfig):
    """``method``: ``vecmap`` (TokAlign++), ``relative`` (TokAlign) or ``cosine``.
    ``retrieval``: ``csls`` or ``cosine`` for the final target -> source choice; ``auto`` is
    CSLS for vecmap and cosine for the two baselines (as in their papers).
    ``csls_k``: CSLS neighbourhood. ``n_anchors``: shared anchor tokens of ``relative``
    (chosen with ``seed``). ``fallback``: for target tokens without a vector, the rarest
    piece with a vector of the token's source tokenization when known
    (``tokenization``) else a seeded random trained source row, or always ``random``.
    ``candidates``/``batch_size``: retrieval speed/memory knobs (results do not change).
    """

    method: Literal["vecmap", "relative", "cosine"] = Field(
        "vecmap", description="vecmap = TokAlign++, relative = TokAlign (anchors), cosine = no "
        "mapping, one shared space")
    retrieval: Literal["auto", "csls", "cosine"] = Field(
        "auto", description="final choice by CSLS or cosine; auto = CSLS for vecmap, cosine "
        "for the baselines")
    csls_k: int = Field(10, ge=1, description="CSLS neighbourhood size")
    n_anchors: int = Field(300, ge=1, description="shared anchor tokens of method relative")
    fallback: Literal["tokenization", "random"] = Field(
        "tokenization", description="targets without a vector: most frequent source token of "
        "their text, else seeded random; or always random")
    candidates: int = Field(64, ge=1, description="cosine candidates per row before the CSLS "
                            "check (speed only; results do not change)")
    batch_size: int = Field(4096, ge=1, description="similarity rows per batch: memory only, "
                            "results do not change")
    seed: int = Field(0, description="seed of VecMap's dropout, the anchors, the fallbacks "
                      "and the holdout split")
    vecmap: VecMapConfig = Field(VecMapConfig(), description="VecMap self-learning settings")

    @model_validator(mode="after")
    def _consistent(self) -> AlignConfig:
        if self.candidates < self.csls_k:
            raise ValueError(
                f"candidates ({self.candidates}) must be >= csls_k ({self.csls_k})"
            )
        return self

    def retrieval_method(self) -> Literal["csls", "cosine"]:
        """The retrieval actually used (``auto`` resolved by method)."""
        if self.retrieval != "auto":
            return self.retrieval
        return "csls" if self.method == "vecmap" else "cosine"

    @classmethod
    def preset(cls, name: str) -> AlignConfig:
        """``tokalign++`` (VecMap seeded by the shared tokens), ``tokalign++-shared`` (the
        same, explicit), ``tokalign++-unsupervised`` (VecMap, unsupervised init),
        ``tokalign`` (relative representations), ``cosine``, ``tiny`` (fast VecMap)."""
        presets = {
            "tokalign++": {},
            "tokalign++-shared": {"vecmap": VecMapConfig.preset("shared")},
            "tokalign++-unsupervised": {"vecmap": VecMapConfig.preset("unsupervised")},
            "tokalign": {"method": "relative"},
            "cosine": {"method": "cosine"},
            "tiny": {"vecmap": VecMapConfig.preset("fast")},
        }
        if name not in presets:
            raise ValueError(f"unknown alignment preset {name!r}; choose {sorted(presets)}")
        return cls(**presets[name])
