"""Typed results of :func:`tokalign_core.evaluate.perplexity.evaluate_model`, and the
:class:`ModelKey` that says which model a result belongs to.

Small frozen dataclasses instead of nested dicts: what a group or a model measured is a
field, not a string key. ``to_dict()`` gives the JSON shape the CLI writes, the stage tasks
cache and MLflow logs (unchanged from the dicts these classes replace: metrics a group
does not have are left out, not set to null); ``from_dict()`` reads it back.

Flows key the models they build and their results by :class:`ModelKey` (``ModelKey("fvt",
Stage.INIT)``), never by the text a table shows; :attr:`ModelKey.label` is the one place a
key becomes that text ("fvt (init)").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

# Metrics that need the model's NLL (absent for groups outside ``score_groups``).
NLL_KEYS = ("n_scored", "nll", "ppl", "norm_ppl", "bits_per_byte")


def _present(obj: Any) -> dict[str, Any]:
    """The fields of a dataclass that are set (None = not measured), in field order."""
    return {f.name: getattr(obj, f.name) for f in fields(obj) if getattr(obj, f.name) is not None}


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True)
class GroupMetrics:
    """One text group of one model. Counts are sums over the group's documents; the NLL
    metrics (:data:`NLL_KEYS`) are None when the group was not scored (compression only)."""

    n_docs: int
    n_bytes: int
    n_tokens: int
    n_ref_tokens: int
    n_scored: int | None = None
    nll: float | None = None
    ppl: float | None = None
    norm_ppl: float | None = None
    bits_per_byte: float | None = None
    tokens_per_byte: float = 0.0
    ref_tokens_per_byte: float = 0.0
    length_change: float = math.nan

    @property
    def scored(self) -> bool:
        return self.nll is not None

    def to_dict(self) -> dict[str, float | int]:
        return _present(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroupMetrics:
        return cls(**_known(cls, data))


@dataclass(frozen=True)
class MeanMetrics:
    """Unweighted means over groups: NLL metrics over the scored groups, compression over
    every group (None: no group has the metric)."""

    norm_ppl: float | None = None
    bits_per_byte: float | None = None
    ppl: float | None = None
    tokens_per_byte: float | None = None
    length_change: float | None = None

    def to_dict(self) -> dict[str, float]:
        return _present(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MeanMetrics:
        return cls(**_known(cls, data))


@dataclass(frozen=True)
class EvalResult:
    """Every group of one model, their means, which groups were scored (in the
    configured order) and the evaluation config (its JSON form)."""

    groups: dict[str, GroupMetrics]
    macro: MeanMetrics = MeanMetrics()
    scored_groups: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape: ``{"groups": {label: {metric: value}}, "macro": {...},
        "scored_groups": [...], "config": {...}}``."""
        return {"groups": {g: m.to_dict() for g, m in self.groups.items()},
                "macro": self.macro.to_dict(), "scored_groups": list(self.scored_groups),
                "config": dict(self.config)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        """Read :meth:`to_dict`'s shape (other top-level keys, e.g. the provenance the CLI
        adds, are ignored)."""
        groups = {g: GroupMetrics.from_dict(m) for g, m in data.get("groups", {}).items()}
        return cls(groups=groups, macro=MeanMetrics.from_dict(data.get("macro") or {}),
                   scored_groups=tuple(data.get("scored_groups", groups)),
                   config=dict(data.get("config") or {}))


class Stage(str, Enum):
    """How far along the pipeline a model is."""

    OWN = "own tokenizer"  # the source model before any change, with its own tokenizer
    INIT = "init"  # the target vocabulary just initialised (the alignment or a baseline)
    ADAPTED = "adapted"  # after the two-stage adaptation
    DISTILLED = "distilled"  # after token-level distillation from a teacher


@dataclass(frozen=True)
class ModelKey:
    """Which model a result belongs to. ``model`` is the line it comes from ("source", an
    initialisation method such as "aligned" or "fvt", or "student", the shallower copy of
    the adapted model), ``stage`` how far along it is; a key without a stage is a name a
    user gave (the evaluate form's), shown as it is.

    Flows key models and results by it; :attr:`label` is what tables, MLflow names, model
    folders, cards and the demo show."""

    model: str
    stage: Stage | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"a model key needs a non-empty model name, got {self.model!r}")
        if self.stage is not None and self.stage not in tuple(Stage):
            raise ValueError(f"unknown model stage {self.stage!r}; use one of "
                             f"{[s.value for s in Stage]} (or none for a name of your own)")
        if self.stage is not None:
            object.__setattr__(self, "stage", Stage(self.stage))

    @classmethod
    def init(cls, method: str) -> ModelKey:
        """The model just initialised by ``method`` ("aligned", "fvt", ...)."""
        return cls(method, Stage.INIT)

    @property
    def label(self) -> str:
        """``"aligned (init)"``, ``"source (own tokenizer)"``, a user's name as given; the
        adapted model distilled from an outside teacher is plain ``"distilled"`` (the name
        its folder, metrics and cards have always had)."""
        if self.stage is None:
            return self.model
        if self == DISTILLED:
            return "distilled"
        return f"{self.model} ({self.stage.value})"


# The keys of the models a pipeline run builds besides the initialisations
# (:meth:`ModelKey.init`).
SOURCE = ModelKey("source", Stage.OWN)  # the reference every initialisation tries to keep
ADAPTED = ModelKey("aligned", Stage.ADAPTED)
DISTILLED = ModelKey("aligned", Stage.DISTILLED)  # the adapted model, from a teacher
STUDENT_INIT = ModelKey("student", Stage.INIT)  # a shallower copy of the adapted model
STUDENT_DISTILLED = ModelKey("student", Stage.DISTILLED)  # that copy, the adapted model taught
