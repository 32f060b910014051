"""The one markdown table builder (summaries, Prefect artifacts, model cards) and how its
cells print numbers. Column names are the caller's, model names a key's
:attr:`~tokalign_core.evaluate.results.ModelKey.label`: rows are plain dicts built where a
table is printed."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any


def cell(value: Any) -> str:
    """``20710.0 -> '20710'`` (counts come back from JSON as floats), ``0.13662 -> '0.1366'``
    (4 significant digits), anything else as ``str``."""
    if isinstance(value, float):
        if value.is_integer() and 1000 <= abs(value) < 1e12:
            return str(int(value))
        return f"{value:.4g}"
    return str(value)


def rounded(value: Any) -> Any:
    """A number for a structured table (Prefect's table artifact): floats to 4 significant
    digits (counts stay whole), NaN/inf -> None (an empty cell, not the string "NaN")."""
    if not isinstance(value, float):
        return value
    if not math.isfinite(value):
        return None
    if value.is_integer():
        return int(value)
    return float(f"{value:.4g}")


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
                   fmt: Callable[[Any], str] = cell) -> str:
    """A GitHub markdown table of ``rows`` (dicts; ``columns`` default to the first row's
    keys, a missing cell is empty), each value printed by ``fmt``; ``(no rows)`` when empty."""
    if not rows:
        return "(no rows)"
    cols = list(columns or rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
