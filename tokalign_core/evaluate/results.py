"""Typed results of :func:`tokalign_core.evaluate.perplexity.evaluate_model`.

Small frozen dataclasses instead of nested dicts: what a group or a model measured is a
field, not a string key. ``to_dict()`` gives the JSON shape the CLI writes, the stage tasks
cache and MLflow logs (unchanged from the dicts these classes replace: metrics a group
does not have are left out, not set to null); ``from_dict()`` reads it back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
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
