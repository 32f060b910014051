"""The learning-rate schedule of every training run (adaptation stages and toy pretraining).

Linear warm-up then cosine decay, as a multiplier of the peak rate at optimizer step ``s``
(0-based) of a run of ``steps`` steps with ``W`` warm-up steps:

* ``(s + 1) / W`` for ``s < W``;
* ``m + (1 - m) * (1 + cos(pi * (s - W) / (steps - W))) / 2`` after, ``m`` = ``min_ratio``.
"""

from __future__ import annotations

import math


def warmup_cosine(step: int, steps: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier of optimizer step ``step`` (0-based) with ``warmup`` warm-up steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def cosine_factor(step: int, steps: int, warmup_ratio: float, min_ratio: float) -> float:
    """LR multiplier of optimizer step ``step`` (0-based) in a stage of ``steps`` steps
    whose first ``round(warmup_ratio * steps)`` steps warm up."""
    return warmup_cosine(step, steps, int(round(warmup_ratio * steps)), min_ratio)
