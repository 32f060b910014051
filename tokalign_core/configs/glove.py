"""GloVe stage config (Pennington et al. 2014, eq. 8; METHOD.md section 2.1).

Defaults are the paper's and the Stanford C tool's: 300 dimensions, f(x) = min(1,
(x/x_max)^alpha) with x_max 10 and alpha 0.75, AdaGrad with eta 0.05, 15 iterations,
vectors = word + context ("model 2"), gradient components clipped at 100.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tokalign_core.configs.base import FrozenConfig


class GloveConfig(FrozenConfig):
    """``dim``: vector size. ``x_max``/``alpha``: the weighting f(x) = min(1, (x/x_max)^alpha).
    ``eta``: AdaGrad learning rate. ``iterations``: passes over the nonzeros (each pass in a
    new seeded order). ``seed``: initialisation and shuffling (the C tool uses the clock).
    ``engine``: "numba" (the C tool's per-nonzero AdaGrad, CPU, Hogwild threads), "torch"
    (mini-batch AdaGrad, CPU or CUDA) or "auto" (numba on CPU, torch on CUDA).
    ``threads``: numba threads (None: numba's default, all cores); ignored by torch.
    ``deterministic``: numba only; schedule the nonzeros on a fixed grid of ``blocks`` x
    ``blocks`` conflict-free blocks (rows and columns by index mod ``blocks``; the blocks
    trained at once share no row), so the result is bit-reproducible for a seed whatever
    the thread count; on by default so that equal inputs give byte-identical vectors and
    alignments (cached reruns and audits depend on it). Off: Hogwild (lock-free races, as
    the C tool; somewhat faster), reproducible only with 1 thread.
    ``blocks``: the grid size; part of the schedule, so changing it changes the result (at
    least the number of threads, for load balance; 8 serves up to 8 cores).
    ``memory_budget_mb``: nonzeros resident at once (16 bytes each in float32, plus ~26
    bytes of shuffling work): past it they are split into random buckets streamed from disk
    at every pass, as the C tool streams its shuffled file. Memory is then the parameters
    (4 x n x (dim+1) x dtype) plus this budget, whatever the corpus. The budget sets the
    number of buckets, so it is part of the schedule too.
    ``batch_size``: torch only, nonzeros per mini-batch step (1 = the C tool's
    sequential algorithm). ``grad_clip``: clip each gradient component to
    [-grad_clip, grad_clip] (the C tool's 100). ``vectors``: "w+c" (model 2) or "w".
    ``device``: "auto" (CUDA when available), "cpu" or "cuda". ``dtype``: parameter dtype.
    """

    dim: int = Field(300, ge=1, le=8192, description="vector size")
    x_max: float = Field(10.0, gt=0, description="weighting cutoff x_max")
    alpha: float = Field(0.75, gt=0, description="weighting exponent")
    eta: float = Field(0.05, gt=0, description="AdaGrad learning rate")
    iterations: int = Field(15, ge=1, description="passes over the nonzeros")
    seed: int = Field(0, description="init and shuffling seed")
    engine: Literal["auto", "numba", "torch"] = Field(
        "auto", description="numba: per-nonzero AdaGrad on CPU (the C tool's algorithm); "
        "torch: mini-batch AdaGrad on CPU/CUDA; auto: numba on CPU, torch on CUDA")
    threads: int | None = Field(None, ge=1, le=1024,
                                description="numba threads (none: all cores)")
    deterministic: bool = Field(
        True, description="numba: conflict-free schedule on a fixed block grid, "
        "bit-reproducible for a seed whatever the thread count; off = Hogwild like the C tool "
        "(faster, not reproducible with >1 thread)")
    blocks: int = Field(8, ge=1, le=256, description="deterministic schedule: blocks x blocks "
                        "grid (part of the schedule: changing it changes the result)")
    memory_budget_mb: float = Field(
        256.0, gt=0, allow_inf_nan=False,
        description="nonzeros resident at once, MB; past it they stream from "
        "<artifact root>/.spill in random buckets")
    batch_size: int = Field(8192, ge=1, description="torch engine: nonzeros per AdaGrad step")
    grad_clip: float = Field(100.0, gt=0, description="clip each gradient component to "
                             "[-grad_clip, grad_clip] (the C tool's 100)")
    vectors: Literal["w+c", "w"] = Field("w+c", description="output vectors: word + context "
                                         "(model 2) or word only")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="torch device; auto = CUDA when available")
    dtype: Literal["float32", "float64"] = Field("float32", description="parameter dtype")

    @model_validator(mode="after")
    def _engine_fits_device(self) -> GloveConfig:
        if self.engine == "numba" and self.device == "cuda":
            raise ValueError("engine 'numba' runs on the CPU only; use engine 'torch' (or "
                             "'auto') with device 'cuda', or device 'cpu'")
        return self
