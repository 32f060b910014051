"""GloVe stage config (Pennington et al. 2014, eq. 8; METHOD.md section 2.1).

Defaults are the paper's and the Stanford C tool's: 300 dimensions, f(x) = min(1,
(x/x_max)^alpha) with x_max 10 and alpha 0.75, AdaGrad with eta 0.05, 15 iterations,
vectors = word + context ("model 2"), gradient components clipped at 100.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tokalign_core.config import FrozenConfig


class GloveConfig(FrozenConfig):
    """``dim``: vector size. ``x_max``/``alpha``: the weighting f(x) = min(1, (x/x_max)^alpha).
    ``eta``: AdaGrad learning rate. ``iterations``: passes over the nonzeros (each pass in a
    new seeded order). ``seed``: initialisation and shuffling (the C tool uses the clock).
    ``batch_size``: nonzeros per mini-batch step (the C tool updates after every entry;
    smaller is closer to it, larger is faster). ``grad_clip``: clip each gradient component
    to [-grad_clip, grad_clip] (the C tool's 100). ``vectors``: "w+c" (model 2) or "w".
    ``device``: "auto" (CUDA when available), "cpu" or "cuda". ``dtype``: parameter dtype.
    """

    dim: int = Field(300, ge=1, le=8192)
    x_max: float = Field(10.0, gt=0)
    alpha: float = Field(0.75, gt=0)
    eta: float = Field(0.05, gt=0)
    iterations: int = Field(15, ge=1)
    seed: int = 0
    batch_size: int = Field(8192, ge=1)
    grad_clip: float = Field(100.0, gt=0)
    vectors: Literal["w+c", "w"] = "w+c"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "float64"] = "float32"
