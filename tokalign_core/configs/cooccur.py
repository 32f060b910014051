"""Co-occurrence stage config (METHOD.md section 2.1; GloVe, Pennington et al. 2014, sec. 4.2).

Defaults follow the paper and the Stanford GloVe ``cooccur`` tool: symmetric window of 15
tokens, each pair weighted 1/distance, vocabulary of the tokens seen at least 5 times.
"""

from __future__ import annotations

import math
from functools import reduce
from typing import Literal

from pydantic import Field, model_validator

from tokalign_core.configs.base import FrozenConfig

# Exact counting accumulates int64 multiples of 1/lcm(1..window); the lcm must leave room
# for at least this many tokens of counts (checked again against the real corpus size).
MIN_EXACT_TOKENS = 10_000_000
INT64_MAX = 2**63 - 1


def window_lcm(window: int) -> int:
    """lcm(1, ..., window): every weight 1/d (d <= window) is an integer multiple of 1/lcm."""
    return reduce(math.lcm, range(1, window + 1), 1)


def max_exact_tokens(window: int) -> int:
    """Most tokens whose integer-scaled counts cannot overflow int64.

    Each token adds at most ``2 * sum_d lcm/d`` to the grand total (both directions of the
    symmetric matrix), so no single entry can exceed ``n_tokens`` times that.
    """
    lcm = window_lcm(window)
    per_token = 2 * sum(lcm // d for d in range(1, window + 1))
    return INT64_MAX // per_token


def largest_exact_window() -> int:
    """The largest window whose exact sums leave room for :data:`MIN_EXACT_TOKENS` tokens."""
    w = 1
    while max_exact_tokens(w + 1) >= MIN_EXACT_TOKENS:
        w += 1
    return w


class CooccurConfig(FrozenConfig):
    """``window``: symmetric context size (tokens each side); pairs at distance d add 1/d.
    ``min_count``: keep token ids seen at least this often (counts.npy of the tokens artifact).
    ``max_vocab``: keep at most this many of the most frequent ids (None: no cap).
    ``skip_rare``: drop the positions of discarded ids before windowing, as the GloVe C tool
    does (False: they keep their place and only their pairs are dropped).
    ``dense_table_mb``: size of the dense int64 table for frequent pairs (rank product below a
    bound, the C tool's scheme); the rest go through the sparse pair buffer.
    ``buffer_pairs``: sparse pairs buffered before they are sorted and summed (memory bound).
    ``value_dtype``: dtype of the saved CSR values (sums are exact before this cast).
    ``memory_budget_mb``: memory for the counts of one shard and for the final merge: past
    it the sorted runs are spilled to disk and merged streaming (same result, exactly).
    The default, 2 GB, is half the Stanford tool's demo setting (``-memory 4.0``) and counts
    ~10M tokens of real text without spilling; 1B tokens then spill in ~20-40 runs.
    """

    window: int = Field(15, ge=1, le=64, description="context tokens each side; a pair at "
                        "distance d adds 1/d")
    min_count: int = Field(5, ge=1, description="keep token ids seen at least this often")
    max_vocab: int | None = Field(None, ge=1, description="keep at most this many of the most "
                                  "frequent ids (none: all)")
    skip_rare: bool = Field(True, description="drop the positions of discarded ids before "
                            "windowing, as the GloVe C tool (--keep-rare-positions: they keep "
                            "their place, only their pairs are dropped)")
    dense_table_mb: float = Field(128.0, ge=0.0, description="dense table for frequent pairs, "
                                  "MB")
    buffer_pairs: int = Field(4_000_000, ge=64, description="sparse pairs buffered before a "
                              "flush")
    value_dtype: Literal["float32", "float64"] = Field(
        "float64", description="dtype of the saved values (sums are exact before this cast)")
    memory_budget_mb: float = Field(
        2048.0, gt=0, allow_inf_nan=False,
        description="memory for one shard's counts and for the merge, MB; past it sorted runs "
        "spill to <artifact root>/.spill")

    @model_validator(mode="after")
    def _exact_sums_fit(self) -> CooccurConfig:
        if max_exact_tokens(self.window) < MIN_EXACT_TOKENS:
            raise ValueError(
                f"window {self.window} is too large for exact integer sums: lcm(1..{self.window})"
                f" = {window_lcm(self.window)} leaves room for only "
                f"{max_exact_tokens(self.window)} tokens; use a window of at most "
                f"{largest_exact_window()}"
            )
        if self.buffer_pairs < 4 * self.window:
            raise ValueError(
                f"buffer_pairs {self.buffer_pairs} must hold at least 4 windows "
                f"({4 * self.window} pairs for window {self.window})"
            )
        fixed = 3 * self.dense_table_mb + self.buffer_pairs * 8 / 2**20
        if self.memory_budget_mb <= fixed:
            raise ValueError(
                f"memory_budget_mb {self.memory_budget_mb} leaves no room for the sorted runs "
                f"after the dense table (3 x dense_table_mb {self.dense_table_mb}) and the pair "
                f"buffer ({self.buffer_pairs} pairs); raise it above {fixed:.1f} "
                "or lower dense_table_mb / buffer_pairs"
            )
        return self
