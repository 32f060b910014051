"""GloVe training on a co-occurrence matrix (Pennington et al. 2014, eq. 8; METHOD.md 2.1).

Minimise  J = sum over nonzero X_ij of f(X_ij) (w_i . c_j + b_i + b'_j - log X_ij)^2  with
f(x) = min(1, (x / x_max)^alpha), by AdaGrad. The token vector is w + c ("model 2").

Two engines share the initialisation, the shuffling and the update rule (``engine`` in
:class:`GloveConfig`; "auto" = numba on CPU, torch on CUDA):

* **numba (CPU)**: the Stanford C tool's algorithm itself. Every nonzero is one AdaGrad
  update of w_i, c_j, b_i, b'_j; both gradients use the parameters of before the update; the
  accumulators start at 1 and hold the squared *eta-scaled* gradients; the step is ``eta*g /
  sqrt(accumulator before the step)`` with every vector gradient component clipped at
  ``grad_clip`` (bias gradients unclipped, as in the paper's AdaGrad and the 2014 C tool;
  today's C tool also drops eta from the bias step); a non-finite residual skips the update
  (counted, as the C tool does silently). Threads run **Hogwild** as the C tool: each takes
  a contiguous part of the shuffled order and updates shared rows without locks, so with >1
  thread the result depends on timing (not reproducible). With 1 thread the run is exactly
  reproducible for a seed. ``deterministic=True`` instead splits each pass into T strata of
  T blocks (T = threads; rows and columns grouped by index mod T, block (r, r+s mod T) in
  stratum s, as DSGD, Gemulla et al. 2011): blocks of one stratum share no row, so threads
  never race and the result is bit-reproducible for a seed and thread count.
* **torch (CPU or CUDA)**: mini-batch AdaGrad. Each step takes ``batch_size`` nonzeros,
  computes their residuals with the parameters of before the step, and scatter-adds each
  entry's step and squared gradient. A row seen k times in one batch gets its k steps all
  scaled by the accumulator of before the batch (the C tool grows it between them); with
  ``batch_size=1`` this is exactly the numba engine with 1 thread (same order, same init).

Both are **seeded**: initialisation (uniform in [-0.5, 0.5] / dim, as the C tool, biases
included) and the order of the nonzeros, reshuffled at every iteration, come from
``numpy.random.default_rng(seed)``; the C tool seeds from the clock and shuffles once.
**Cost** is reported per iteration as the C tool does: the mean over nonzeros of
0.5 * f * diff^2, each term computed just before its own update.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from tokalign_core.artifacts import ArtifactRef, ArtifactStore
from tokalign_core.configs.glove import GloveConfig

log = logging.getLogger(__name__)

Callback = Callable[[int, float], None]

STEP_NNZ = 1 << 20  # nonzeros per numba kernel call between progress-bar updates (Hogwild)


@dataclass
class GloveResult:
    """vectors: float32 [n, dim] (w + c or w); word/context: float32 [n, dim];
    costs: mean 0.5*f*diff^2 per iteration; seconds: wall time per iteration;
    skipped: updates skipped per iteration for a non-finite residual (numba engine);
    engine: "numba" or "torch"."""

    vectors: np.ndarray
    word: np.ndarray
    context: np.ndarray
    costs: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    engine: str = "torch"


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when usable else 'cpu'; an explicit 'cuda' without a GPU is an error."""
    from tokalign_core.backend import torch_cuda_available, torch_device

    if name == "auto":
        return torch_device("auto")
    if name == "cuda" and not torch_cuda_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA GPU; use --device cpu")
    return name


def resolve_engine(config: GloveConfig) -> tuple[str, str]:
    """(engine, device): "auto" picks numba on CPU and torch on CUDA.

    Only an explicit or auto device that resolves to CUDA touches torch; a CPU run with
    engine "numba"/"auto" and device "cpu" never imports it.
    """
    if config.engine == "numba":
        return "numba", "cpu"
    if config.engine == "auto" and config.device == "cpu":
        return "numba", "cpu"
    device = resolve_device(config.device)
    if config.engine == "auto":
        return ("torch" if device == "cuda" else "numba"), device
    return "torch", device


def _check_matrix(cooc: sp.spmatrix) -> sp.coo_matrix:
    if not sp.issparse(cooc) or cooc.shape[0] != cooc.shape[1]:
        raise ValueError(f"GloVe needs a square sparse co-occurrence matrix, got "
                         f"{type(cooc).__name__} {getattr(cooc, 'shape', None)}")
    coo = sp.coo_matrix(cooc)
    coo.sum_duplicates()
    keep = coo.data > 0
    if not keep.any():
        raise ValueError("the co-occurrence matrix has no positive entries: nothing to train on")
    if not np.all(np.isfinite(coo.data[keep])):
        raise ValueError("the co-occurrence matrix has non-finite entries")
    return sp.coo_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=coo.shape)


def _data(coo: sp.coo_matrix, config: GloveConfig) -> tuple[np.ndarray, np.ndarray]:
    """(log X float64 [nnz], f(X) float64 [nnz]) of the nonzeros."""
    x = coo.data.astype(np.float64)
    return np.log(x), np.minimum(1.0, (x / config.x_max) ** config.alpha)


def _initial_params(n: int, dim: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """The C tool's init, uniform in [-0.5, 0.5] / dim for vectors and biases.

    Returns float64 word [n, dim+1] and context [n, dim+1]; the last column is the bias.
    """
    word = (rng.random((n, dim + 1)) - 0.5) / dim
    context = (rng.random((n, dim + 1)) - 0.5) / dim
    return word, context


def _order(rng: np.random.Generator, nnz: int) -> np.ndarray:
    """A fresh random order of the nonzeros: int32 (int64 past 2^31) [nnz]."""
    perm = rng.permutation(nnz)
    return perm.astype(np.int32) if nnz < 2**31 else perm


# ---------------------------------------------------------------------------------------
# numba engine: the C tool's per-nonzero AdaGrad
# ---------------------------------------------------------------------------------------


def _adagrad_pass_py(order, bounds, rows, cols, logx, fx, w, c, hw, hc, eta, clip, cost,
                     bad):
    """Per-nonzero AdaGrad over ``order[bounds[r]:bounds[r+1]]``, one block r per thread.

    order: int [m] nonzero indices; bounds: int64 [T+1]; rows/cols: int32 [nnz];
    logx/fx: float [nnz]; w, c, hw, hc: float [n, dim+1] (last column the bias; one dtype
    with eta and clip), updated in place; cost float64 [T] and bad int64 [T] accumulate
    per block. Blocks run in parallel (prange) and share rows unless the caller made them
    disjoint.
    """
    for r in _prange(bounds.shape[0] - 1):
        dim = w.shape[1] - 1
        total = 0.0
        skipped = 0
        for k in range(bounds[r], bounds[r + 1]):
            e = order[k]
            i = rows[e]
            j = cols[e]
            wi = w[i]
            cj = c[j]
            dot = eta - eta  # zero in the parameter dtype: float32 stays float32 (SIMD)
            for b in range(dim):
                dot += wi[b] * cj[b]
            diff = dot + wi[dim] + cj[dim] - logx[e]
            if not np.isfinite(diff):
                skipped += 1
                continue
            fdiff = fx[e] * diff
            total += 0.5 * fdiff * diff
            hwi = hw[i]
            hcj = hc[j]
            for b in range(dim):
                # both gradients from the parameters of before this update
                g1 = min(max(fdiff * cj[b], -clip), clip) * eta
                g2 = min(max(fdiff * wi[b], -clip), clip) * eta
                wi[b] -= g1 / np.sqrt(hwi[b])
                cj[b] -= g2 / np.sqrt(hcj[b])
                hwi[b] += g1 * g1
                hcj[b] += g2 * g2
            # Both biases have gradient fdiff; unclipped, as in the paper's update (the
            # 2014 C tool); the clip guards the vector products only.
            g = fdiff * eta
            wi[dim] -= g / np.sqrt(hwi[dim])
            cj[dim] -= g / np.sqrt(hcj[dim])
            hwi[dim] += g * g
            hcj[dim] += g * g
        cost[r] += total
        bad[r] += skipped


_prange = range  # replaced by numba.prange in the compiled kernel


def _numba_pass() -> Callable[..., Any]:
    """The compiled kernel (cached on disk). Raises ImportError without numba."""
    global _COMPILED
    if _COMPILED is None:
        import numba

        globals()["_prange"] = numba.prange
        # No 'nnan'/'ninf' fast-math flags: the non-finite check must survive.
        flags = {"contract", "reassoc", "arcp", "nsz"}
        _COMPILED = numba.njit(parallel=True, cache=True, nogil=True,
                               fastmath=flags)(_adagrad_pass_py)
    return _COMPILED


_COMPILED: Any = None


def _threads(config: GloveConfig) -> int:
    """Numba threads to use: the config's, capped by what numba was started with."""
    import numba

    most = numba.config.NUMBA_NUM_THREADS
    if config.threads is not None and config.threads > most:
        log.warning("glove: %d threads requested, numba has %d (NUMBA_NUM_THREADS); using %d",
                    config.threads, most, most)
    return min(config.threads or most, most)


class _NumbaTrainer:
    """Parameters, AdaGrad accumulators and data of one run for the numba engine (numpy)."""

    def __init__(self, coo: sp.coo_matrix, config: GloveConfig, rng: np.random.Generator):
        self.kernel = _numba_pass()
        self.cfg, self.rng = config, rng
        self.threads = _threads(config)
        self.rows = coo.row.astype(np.int32)
        self.cols = coo.col.astype(np.int32)
        dtype = np.dtype(config.dtype)
        # data in the parameter dtype so the float32 kernel never converts per element
        self.logx, self.fx = (a.astype(dtype) for a in _data(coo, config))
        word, context = _initial_params(coo.shape[0], config.dim, rng)
        self.w, self.c = word.astype(dtype), context.astype(dtype)
        self.hw, self.hc = np.ones_like(self.w), np.ones_like(self.c)
        self.skipped = 0

    def _schedule(self, order: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Kernel calls of one pass: (order slice, block bounds int64 [T+1]) each."""
        t, m = self.threads, order.size
        if self.cfg.deterministic and t > 1:
            return self._strata(order, t)
        calls = []
        for start in range(0, m, STEP_NNZ):
            part = order[start:start + STEP_NNZ]
            calls.append((part, np.linspace(0, part.size, t + 1).astype(np.int64)))
        return calls

    def _strata(self, order: np.ndarray, t: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Conflict-free schedule: stratum s holds blocks (r, (r+s) % t) of rows % t and
        cols % t, kept in shuffled order inside each block (stable radix sort on int16)."""
        rb = self.rows[order] % t
        s = (self.cols[order] % t - rb) % t
        key = (s * t + rb).astype(np.int16)
        sorted_order = order[np.argsort(key, kind="stable")]
        sizes = np.bincount(key, minlength=t * t)
        ends = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        calls = []
        for stratum in range(t):
            lo, hi = ends[stratum * t], ends[(stratum + 1) * t]
            calls.append((sorted_order[lo:hi], ends[stratum * t:(stratum + 1) * t + 1] - lo))
        return calls

    def iteration(self, progress: bool = False) -> float:
        """One pass over all nonzeros in a fresh seeded order; returns the C tool's cost."""
        import numba
        from tqdm.auto import tqdm

        nnz = self.rows.size
        cost = np.zeros(self.threads, dtype=np.float64)
        bad = np.zeros(self.threads, dtype=np.int64)
        eta = self.w.dtype.type(self.cfg.eta)
        clip = self.w.dtype.type(self.cfg.grad_clip)
        previous = numba.get_num_threads()
        numba.set_num_threads(self.threads)
        try:
            with tqdm(total=nnz, disable=not progress, leave=False, desc="glove nonzeros",
                      unit="nz", unit_scale=True) as bar:
                for part, bounds in self._schedule(_order(self.rng, nnz)):
                    self.kernel(part, bounds, self.rows, self.cols, self.logx, self.fx,
                                self.w, self.c, self.hw, self.hc, eta, clip, cost, bad)
                    bar.update(part.size)
        finally:
            numba.set_num_threads(previous)
        self.skipped = int(bad.sum())
        return float(cost.sum()) / nnz

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(word, context) float32 [n, dim] (bias columns dropped)."""
        dim = self.cfg.dim
        return (np.ascontiguousarray(self.w[:, :dim], dtype=np.float32),
                np.ascontiguousarray(self.c[:, :dim], dtype=np.float32))


# ---------------------------------------------------------------------------------------
# torch engine: mini-batch AdaGrad (CPU or CUDA)
# ---------------------------------------------------------------------------------------


class _TorchTrainer:
    """Parameters, AdaGrad accumulators and the data of one GloVe run (torch tensors).

    Biases ride along as extra columns so one gather/scatter serves vector and bias:
    ``w`` is [n, dim+2] = [w_i, b_i, 1] and ``c`` is [n, dim+2] = [c_j, 1, b'_j], hence
    w_i . c_j + b_i + b'_j is one dot product. The constant columns get zero gradient.
    """

    def __init__(self, coo: sp.coo_matrix, config: GloveConfig, rng: np.random.Generator,
                 device: str):
        import torch

        self.torch, self.cfg, self.device, self.rng = torch, config, device, rng
        dtype = getattr(torch, config.dtype)
        n, dim = coo.shape[0], config.dim
        # int64 indices: torch's CPU gathers/scatters are ~2x faster with them than int32.
        self.rows = torch.as_tensor(coo.row.astype(np.int64), device=device)
        self.cols = torch.as_tensor(coo.col.astype(np.int64), device=device)
        logx, fx = _data(coo, config)
        self.logx = torch.as_tensor(logx, dtype=dtype, device=device)
        self.fx = torch.as_tensor(fx, dtype=dtype, device=device)
        word, context = _initial_params(n, dim, rng)
        w = np.concatenate([word, np.ones((n, 1))], axis=1)  # [w, b, 1]
        c = np.concatenate([context[:, :dim], np.ones((n, 1)), context[:, dim:]], axis=1)
        self.w = torch.as_tensor(w, dtype=dtype, device=device)
        self.c = torch.as_tensor(c, dtype=dtype, device=device)
        self.hw, self.hc = torch.ones_like(self.w), torch.ones_like(self.c)
        self.dim = dim
        self.skipped = 0

    def iteration(self, progress: bool = False) -> float:
        """One pass over all nonzeros in a fresh seeded order; returns the C tool's cost."""
        from tqdm.auto import tqdm

        torch = self.torch
        nnz = self.rows.numel()
        perm = torch.as_tensor(_order(self.rng, nnz).astype(np.int64), device=self.device)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        bs = self.cfg.batch_size
        for start in tqdm(range(0, nnz, bs), disable=not progress, leave=False,
                          desc="glove batches", unit="batch"):
            total += self.step(perm[start:start + bs])
        return float(total) / nnz

    def step(self, sel: Any) -> Any:
        """One mini-batch AdaGrad update on the nonzeros ``sel``; returns their summed cost."""
        i, j = self.rows[sel], self.cols[sel]
        wi, cj = self.w.index_select(0, i), self.c.index_select(0, j)
        diff = (wi * cj).sum(1) - self.logx[sel]
        fdiff = self.fx[sel] * diff
        cost = 0.5 * (fdiff * diff).sum(dtype=self.torch.float64)
        clip, eta = self.cfg.grad_clip, self.cfg.eta
        g = fdiff.unsqueeze(1)
        # Both gradients use the parameters from before this step.
        gw = (g * cj).clamp_(-clip, clip).mul_(eta)
        gc = (g * wi).clamp_(-clip, clip).mul_(eta)
        gw[:, self.dim + 1] = 0.0  # the constant-1 column of w
        gc[:, self.dim] = 0.0  # the constant-1 column of c
        gw[:, self.dim] = gc[:, self.dim + 1] = fdiff * eta  # biases: unclipped (as numba)
        self._adagrad(self.w, self.hw, i, gw)
        self._adagrad(self.c, self.hc, j, gc)
        return cost

    @staticmethod
    def _adagrad(param: Any, accum: Any, idx: Any, grad: Any) -> None:
        """Per-entry AdaGrad with the accumulators of before the batch (rows may repeat):
        param[idx] -= grad / sqrt(accum[idx]); accum[idx] += grad^2 (scatter-added)."""
        param.index_add_(0, idx, grad / accum.index_select(0, idx).sqrt_(), alpha=-1.0)
        accum.index_add_(0, idx, grad.mul_(grad))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(word, context) float32 [n, dim] on the host (bias columns dropped)."""
        w = self.w[:, : self.dim].detach().cpu().to(self.torch.float32).numpy()
        c = self.c[:, : self.dim].detach().cpu().to(self.torch.float32).numpy()
        return np.ascontiguousarray(w), np.ascontiguousarray(c)


# ---------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------


def _make_trainer(coo: sp.coo_matrix, config: GloveConfig) -> tuple[Any, str]:
    """The trainer of the configured engine; "auto" falls back to torch (logged) without
    numba."""
    engine, device = resolve_engine(config)
    rng = np.random.default_rng(config.seed)
    if engine == "numba":
        try:
            return _NumbaTrainer(coo, config, rng), "numba"
        except ImportError:
            if config.engine == "numba":
                raise ImportError("engine 'numba' needs numba: `pip install numba`, or set "
                                  "engine 'torch'") from None
            log.warning("glove: numba is not installed; falling back to the torch engine "
                        "(mini-batch AdaGrad, batch_size %d)", config.batch_size)
    return _TorchTrainer(coo, config, rng, device), "torch"


def _no_grad() -> Any:
    """torch.no_grad() when torch is already imported (torch engine), else a no-op."""
    import contextlib
    import sys

    torch = sys.modules.get("torch")
    return torch.no_grad() if torch is not None else contextlib.nullcontext()


def train_glove(
    cooc: sp.spmatrix,
    config: GloveConfig = GloveConfig(),
    callback: Callback | None = None,
    logger: Any = None,
    progress: bool = True,
) -> GloveResult:
    """Train GloVe vectors on a symmetric co-occurrence matrix.

    cooc: scipy sparse [n, n] (float; only positive entries are used). ``callback(it, cost)``
    and ``logger.log({"glove/cost": ..., "glove/seconds": ...}, step=it)`` run after every
    iteration (1-based). Returns :class:`GloveResult` with float32 vectors [n, dim].
    """
    from tqdm.auto import tqdm

    coo = _check_matrix(cooc)
    trainer, engine = _make_trainer(coo, config)
    costs, seconds, skipped = [], [], []
    bar = tqdm(range(1, config.iterations + 1), disable=not progress, desc=f"glove {engine}",
               unit="it")
    with _no_grad():
        for it in bar:
            t0 = time.perf_counter()
            cost = trainer.iteration(progress=progress)
            if not math.isfinite(cost):
                raise FloatingPointError(f"GloVe cost became {cost} at iteration {it}; "
                                         "lower eta or check the co-occurrence values")
            costs.append(cost)
            seconds.append(time.perf_counter() - t0)
            skipped.append(trainer.skipped)
            if trainer.skipped:
                log.warning("glove iteration %d: %d updates skipped (non-finite residual)",
                            it, trainer.skipped)
            bar.set_postfix(cost=f"{cost:.6f}")
            _report(it, cost, seconds[-1], callback, logger)
    word, context = trainer.result()
    vectors = word + context if config.vectors == "w+c" else word.copy()
    return GloveResult(vectors=vectors, word=word, context=context, costs=costs,
                       seconds=seconds, skipped=skipped, engine=engine)


def _report(it: int, cost: float, secs: float, callback: Callback | None, logger: Any) -> None:
    log.info("glove iteration %d: cost %.6f (%.1f s)", it, cost, secs)
    if callback is not None:
        callback(it, cost)
    if logger is not None:
        logger.log({"glove/cost": cost, "glove/seconds": secs}, step=it)


def build_glove(
    cooccur: ArtifactRef | str | Path,
    config: GloveConfig,
    store: ArtifactStore,
    callback: Callback | None = None,
    logger: Any = None,
    progress: bool = True,
) -> ArtifactRef:
    """Train on a cooccur artifact and write an **embeddings** artifact (``vectors.npy``
    float32 [n, dim], ``token_ids.npy`` int64 [n], ``meta.json`` with the cost history)."""
    from tokalign_core.cooccur import _read_manifest_digest, load_cooccur

    cooc, token_ids, cmeta = load_cooccur(cooccur)
    result = train_glove(cooc, config, callback=callback, logger=logger, progress=progress)
    folder = Path(cooccur.path if isinstance(cooccur, ArtifactRef) else cooccur)
    meta = {
        "stage": "glove",
        "source": "glove",
        "config": config.model_dump(mode="json"),
        "config_digest": config.digest(),
        "engine": result.engine,
        "device": resolve_engine(config)[1],
        "skipped_updates": result.skipped,
        "cooccur_artifact": str(folder),
        "cooccur_sha256": _read_manifest_digest(folder),
        "tokenizer": cmeta.get("tokenizer"),
        "tokenizer_digest": cmeta.get("tokenizer_digest"),
        "n": int(token_ids.size),
        "dim": config.dim,
        "nnz": int(cooc.nnz),
        "costs": result.costs,
        "seconds_per_iteration": result.seconds,
    }
    with store.writer("embeddings", meta) as w:
        np.save(w.path("vectors.npy"), result.vectors.astype(np.float32), allow_pickle=False)
        np.save(w.path("token_ids.npy"), token_ids.astype(np.int64), allow_pickle=False)
    return w.ref


def load_embeddings(ref: ArtifactRef | str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(vectors float32 [n, d], token_ids int64 [n], meta) of an embeddings artifact."""
    from tokalign_core.cooccur import _artifact_dir, _read_json

    folder = _artifact_dir(ref, "embeddings", ["vectors.npy", "token_ids.npy"])
    vectors = np.load(folder / "vectors.npy", allow_pickle=False)
    token_ids = np.load(folder / "token_ids.npy", allow_pickle=False)
    return vectors, token_ids, _read_json(folder / "meta.json")
