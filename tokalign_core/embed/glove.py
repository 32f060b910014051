"""GloVe training on a co-occurrence matrix (Pennington et al. 2014, eq. 8; METHOD.md 2.1).

Minimise  J = sum over nonzero X_ij of f(X_ij) (w_i . c_j + b_i + b'_j - log X_ij)^2  with
f(x) = min(1, (x / x_max)^alpha), by AdaGrad. The token vector is w + c ("model 2").

Two engines share the initialisation, the shuffling and the update rule (``engine`` in
:class:`GloveConfig`; "auto" = numba on CPU, torch on CUDA):

* **numba (CPU)**: the Stanford C tool's algorithm itself. Every nonzero is one AdaGrad
  update of w_i, c_j, b_i, b'_j; both gradients use the parameters of before the update;
  the accumulators start at 1 and hold the squared *eta-scaled* gradients; the step is
  ``eta*g / sqrt(accumulator before the step)`` with every vector gradient component
  clipped at ``grad_clip`` (bias gradients unclipped, as in the paper's AdaGrad and the 2014
  C tool); a non-finite residual skips the update (counted, as the C tool does
  silently). The nonzeros sit on a fixed grid of B x B blocks (``blocks``; rows and
  columns grouped by index mod B, block (r, r+s mod B) in stratum s, as DSGD, Gemulla et
  al. 2011), each stratum split into random buckets that fit ``memory_budget_mb`` (held in
  memory or streamed from disk at every pass, as the C tool streams its shuffled file;
  see :class:`Buckets`). ``deterministic=True`` (default) trains the B blocks of a bucket
  in parallel, each block in sequence: they share no row, so threads never race and the
  result is bit-reproducible for a seed **whatever the thread count**. Off: **Hogwild**
  as the C tool, threads take contiguous parts of a bucket's order and update shared rows
  without locks (timing-dependent with >1 thread).
* **torch (CPU or CUDA)**: mini-batch AdaGrad. Each step takes ``batch_size`` nonzeros,
  computes their residuals with the parameters of before the step, and scatter-adds each
  entry's step and squared gradient. A row seen k times in one batch gets its k steps all
  scaled by the accumulator of before the batch (the C tool grows it between them); with
  ``batch_size=1`` this is exactly the deterministic numba engine (same buckets, same
  order, same init).

Both are **seeded**: initialisation (uniform in [-0.5, 0.5] / dim, as the C tool, biases
included), the buckets, and the order (buckets in a fresh order, each bucket freshly
permuted, at every iteration) come from ``numpy.random.default_rng(seed)``; the C tool
seeds from the clock and shuffles once.
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

from tokalign_core.configs.glove import GloveConfig
from tokalign_core.store.artifacts import (
    ArtifactRef,
    ArtifactStore,
    folder_digest,
    input_dir,
    read_meta,
)

log = logging.getLogger(__name__)

Callback = Callable[[int, float], None]



@dataclass
class GloveResult:
    """vectors: float32 [n, dim] (w + c or w); word/context: float32 [n, dim];
    costs: mean 0.5*f*diff^2 per iteration; seconds: wall time per iteration;
    skipped: updates skipped per iteration for a non-finite residual (numba engine);
    engine: "numba" or "torch"; threads: threads used (they do not change the result in
    the deterministic schedule); buckets: number of buckets of the nonzeros; spilled:
    whether they were streamed from disk."""

    vectors: np.ndarray
    word: np.ndarray
    context: np.ndarray
    costs: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    engine: str = "torch"
    threads: int = 1
    buckets: int = 1
    spilled: bool = False


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when usable else 'cpu'; an explicit 'cuda' without a GPU is an error."""
    from tokalign_core.runtime.backend import torch_cuda_available, torch_device

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


def _check_matrix(cooc: sp.spmatrix) -> sp.csr_matrix:
    """The matrix as canonical CSR (duplicates summed); raises ValueError when it is not
    square or sparse, or has non-finite entries."""
    if not sp.issparse(cooc) or cooc.shape[0] != cooc.shape[1]:
        raise ValueError(f"GloVe needs a square sparse co-occurrence matrix, got "
                         f"{type(cooc).__name__} {getattr(cooc, 'shape', None)}")
    csr = sp.csr_matrix(cooc)
    csr.sum_duplicates()
    return csr


def _data(x: np.ndarray, config: GloveConfig) -> tuple[np.ndarray, np.ndarray]:
    """(log X float64 [m], f(X) float64 [m]) of positive values x [m]."""
    x = x.astype(np.float64)
    return np.log(x), np.minimum(1.0, (x / config.x_max) ** config.alpha)


def _initial_params(n: int, dim: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """The C tool's init, uniform in [-0.5, 0.5] / dim for vectors and biases.

    Returns float64 word [n, dim+1] and context [n, dim+1]; the last column is the bias.
    """
    word = (rng.random((n, dim + 1)) - 0.5) / dim
    context = (rng.random((n, dim + 1)) - 0.5) / dim
    return word, context


# ---------------------------------------------------------------------------------------
# The nonzeros: a fixed block grid of random buckets, in memory or streamed from disk
# ---------------------------------------------------------------------------------------

# Bytes per nonzero while a bucket is trained on: the record plus its permutation (int64),
# block key (int16), stable argsort (int64) and visiting order (int64).
WORK_BYTES = 26
# Bytes per nonzero while the buckets are built: COO row/col, value, log x and f(x) in
# float64, the record, bucket id, argsort and the sorted records.
BUILD_BYTES = 72
# Spill the buckets to disk when their records take more than this fraction of the budget
# (the rest is the working memory of one bucket and of the build).
SPILL_FRACTION = 0.5


def record_dtype(dtype: str | np.dtype) -> np.dtype:
    """One nonzero as the C tool's record: int32 row i, int32 column j, log X_ij, f(X_ij)
    (16 bytes in float32)."""
    return np.dtype([("i", "<i4"), ("j", "<i4"), ("logx", dtype), ("fx", dtype)])


@dataclass
class CsrSource:
    """A CSR matrix read piece by piece: ``indptr`` int64 [n+1] in memory, ``indices`` and
    ``data`` [nnz] as arrays or :class:`~tokalign_core.store.npzstream.Member` (read from disk)."""

    n: int
    indptr: np.ndarray
    indices: Any
    data: Any

    @classmethod
    def from_matrix(cls, csr: sp.csr_matrix) -> CsrSource:
        return cls(csr.shape[0], csr.indptr.astype(np.int64), csr.indices, csr.data)

    @classmethod
    def from_npz(cls, path: str | Path) -> CsrSource:
        """The ``cooc.npz`` of a cooccur artifact, without loading its nonzeros."""
        from tokalign_core.store.npzstream import member

        fmt = np.load(path, allow_pickle=False)["format"].item()
        fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
        shape = tuple(int(v) for v in np.load(path, allow_pickle=False)["shape"])
        if fmt != "csr" or len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"{path}: GloVe needs a square CSR co-occurrence matrix, got "
                             f"{fmt} {shape}; rerun `tokalign cooccur`")
        indptr = member(path, "indptr.npy").read().astype(np.int64)
        return cls(shape[0], indptr, member(path, "indices.npy"), member(path, "data.npy"))

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def _slice(self, array: Any, lo: int, hi: int) -> np.ndarray:
        return array[lo:hi] if isinstance(array, np.ndarray) else array.read(lo, hi)

    def chunks(self, max_entries: int):
        """(rows int32 [m], cols int32 [m], values [m]) over row ranges of <= max_entries
        entries (one longer row is a chunk of its own)."""
        r0 = 0
        while r0 < self.n:
            target = self.indptr[r0] + max(max_entries, 1)
            r1 = max(int(np.searchsorted(self.indptr, target, side="right")) - 1, r0 + 1)
            r1 = min(r1, self.n)
            lo, hi = int(self.indptr[r0]), int(self.indptr[r1])
            rows = np.repeat(np.arange(r0, r1, dtype=np.int32), np.diff(self.indptr[r0:r1 + 1]))
            yield (rows, self._slice(self.indices, lo, hi).astype(np.int32, copy=False),
                   self._slice(self.data, lo, hi))
            r0 = r1


class Buckets:
    """The nonzeros as records grouped by a fixed block grid and random buckets.

    Rows and columns are grouped by index mod B (``blocks``); block (r, (r+s) mod B) belongs
    to stratum s, so the B blocks of a stratum share no row and no column (DSGD, Gemulla et
    al. 2011) and can be trained in parallel without races. Each stratum is split into K
    random buckets (every nonzero draws its bucket from the seeded generator: an external
    shuffle), K chosen so that one bucket fits the memory budget. Buckets live in memory or,
    past half the budget, as files under ``folder`` (streamed back at every pass). The grid
    never depends on the thread count, so neither does the result.
    """

    def __init__(self, blocks: int, n_buckets: int, record: np.dtype, folder: Path | None):
        self.blocks, self.k, self.record, self.folder = blocks, n_buckets, record, folder
        self.sizes = np.zeros(blocks * n_buckets, dtype=np.int64)
        self._memory: list[list[np.ndarray]] = [[] for _ in range(blocks * n_buckets)]

    def __len__(self) -> int:
        return self.sizes.size

    def _file(self, b: int) -> Path:
        assert self.folder is not None
        return self.folder / f"bucket-{b:06d}.rec"

    def add(self, records: np.ndarray, bucket: np.ndarray) -> None:
        """Append records [m] to their buckets (bucket int64 [m])."""
        order = np.argsort(bucket, kind="stable")
        records, counts = records[order], np.bincount(bucket, minlength=len(self))
        ends = np.cumsum(counts)
        for b in np.flatnonzero(counts):
            part = records[ends[b] - counts[b]:ends[b]]
            if self.folder is None:
                self._memory[b].append(part)
            else:
                with self._file(b).open("ab") as fh:
                    part.tofile(fh)
        self.sizes += counts

    def read(self, b: int) -> np.ndarray:
        """The records [sizes[b]] of bucket b, in their stored order."""
        if self.folder is None:
            parts = self._memory[b]
            if len(parts) > 1:
                self._memory[b] = parts = [np.concatenate(parts)]
            return parts[0] if parts else np.empty(0, self.record)
        if self.sizes[b] == 0:
            return np.empty(0, self.record)
        return np.fromfile(self._file(b), dtype=self.record)

    def visits(self, rng: np.random.Generator, by_block: bool, threads: int):
        """One pass: (records, order int64 [m], bounds int64 [P+1]) per bucket, buckets in a
        fresh seeded order and each bucket's nonzeros in a fresh seeded permutation.

        by_block: order sorted by block (stable, so random within a block), bounds the B
        block boundaries (part p is block p); else bounds split the order into ``threads``
        equal parts (Hogwild).
        """
        for b in rng.permutation(len(self)):
            if self.sizes[b] == 0:
                continue
            rec = self.read(int(b))
            perm = rng.permutation(rec.size)
            if not by_block:
                yield rec, perm, np.linspace(0, rec.size, threads + 1).astype(np.int64)
                continue
            key = (rec["i"][perm] % self.blocks).astype(np.int16)
            order = perm[np.argsort(key, kind="stable")]
            sizes = np.bincount(key, minlength=self.blocks)
            yield rec, order, np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)


def build_buckets(source: CsrSource, config: GloveConfig, rng: np.random.Generator,
                  folder: Path | None) -> Buckets:
    """Records of the positive nonzeros of ``source`` in a :class:`Buckets` grid.

    Reads at most a budget's worth of nonzeros at a time; spills to ``folder`` (must exist)
    when the records take more than half the budget. Raises ValueError on non-finite values
    or when no value is positive.
    """
    record = record_dtype(config.dtype)
    budget = int(config.memory_budget_mb * 2**20)
    nnz, blocks = source.nnz, config.blocks
    cap = max(budget // (record.itemsize + WORK_BYTES), 1)  # nonzeros per bucket
    k = max(1, math.ceil(1.25 * nnz / (blocks * cap)))  # 25% room: buckets are random
    spill = folder if nnz * record.itemsize > SPILL_FRACTION * budget else None
    store = Buckets(blocks, k, record, spill)
    for rows, cols, x in source.chunks(max(budget // BUILD_BYTES, 1)):
        if not np.all(np.isfinite(x)):
            raise ValueError("the co-occurrence matrix has non-finite entries")
        keep = x > 0
        rows, cols, x = rows[keep], cols[keep], x[keep]
        rec = np.empty(x.size, dtype=record)
        rec["i"], rec["j"] = rows, cols
        rec["logx"], rec["fx"] = _data(x, config)
        stratum = ((cols % blocks - rows % blocks) % blocks).astype(np.int64)
        bucket = stratum * k + (rng.integers(0, k, x.size) if k > 1 else 0)
        store.add(rec, bucket)
    if store.sizes.sum() == 0:
        raise ValueError("the co-occurrence matrix has no positive entries: nothing to train on")
    return store


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
    """Parameters and AdaGrad accumulators of one run for the numba engine (numpy); the
    nonzeros come from a :class:`Buckets` grid, one bucket at a time."""

    def __init__(self, n: int, buckets: Buckets, config: GloveConfig,
                 rng: np.random.Generator, word: np.ndarray, context: np.ndarray):
        self.kernel = _numba_pass()
        self.cfg, self.rng, self.buckets = config, rng, buckets
        self.threads = _threads(config)
        dtype = np.dtype(config.dtype)
        self.w, self.c = word.astype(dtype), context.astype(dtype)
        self.hw, self.hc = np.ones_like(self.w), np.ones_like(self.c)
        self.skipped = 0

    def iteration(self, progress: bool = False) -> float:
        """One pass over all nonzeros in a fresh seeded order; returns the C tool's cost.

        Deterministic: per bucket, its B blocks run in parallel (prange), each block in
        sequence; blocks share no row, so the result is the same for any thread count, and
        per-block costs are summed in a fixed order. Else Hogwild: ``threads`` contiguous
        parts of the bucket's permutation race on shared rows.
        """
        import numba
        from tqdm.auto import tqdm

        nnz = int(self.buckets.sizes.sum())
        parts = max(self.cfg.blocks, self.threads)
        cost = np.zeros(parts, dtype=np.float64)
        bad = np.zeros(parts, dtype=np.int64)
        eta = self.w.dtype.type(self.cfg.eta)
        clip = self.w.dtype.type(self.cfg.grad_clip)
        previous = numba.get_num_threads()
        numba.set_num_threads(self.threads)
        try:
            with tqdm(total=nnz, disable=not progress, leave=False, desc="glove nonzeros",
                      unit="nz", unit_scale=True) as bar:
                for rec, order, bounds in self.buckets.visits(self.rng, self.cfg.deterministic,
                                                              self.threads):
                    self.kernel(order, bounds, rec["i"], rec["j"], rec["logx"], rec["fx"],
                                self.w, self.c, self.hw, self.hc, eta, clip, cost, bad)
                    bar.update(order.size)
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

    def __init__(self, n: int, buckets: Buckets, config: GloveConfig,
                 rng: np.random.Generator, word: np.ndarray, context: np.ndarray, device: str):
        import torch

        self.torch, self.cfg, self.device, self.rng = torch, config, device, rng
        self.buckets, self.dtype = buckets, getattr(torch, config.dtype)
        dim = config.dim
        w = np.concatenate([word, np.ones((n, 1))], axis=1)  # [w, b, 1]
        c = np.concatenate([context[:, :dim], np.ones((n, 1)), context[:, dim:]], axis=1)
        self.w = torch.as_tensor(w, dtype=self.dtype, device=device)
        self.c = torch.as_tensor(c, dtype=self.dtype, device=device)
        self.hw, self.hc = torch.ones_like(self.w), torch.ones_like(self.c)
        self.dim = dim
        self.skipped = 0

    def _tensors(self, rec: np.ndarray, order: np.ndarray) -> tuple[Any, ...]:
        """(i, j, log x, f) of a bucket's records in ``order``, on the device. int64
        indices: torch's CPU gathers/scatters are ~2x faster with them than int32."""
        torch, dev = self.torch, self.device
        picked = rec[order]
        return (torch.as_tensor(picked["i"].astype(np.int64), device=dev),
                torch.as_tensor(picked["j"].astype(np.int64), device=dev),
                torch.as_tensor(picked["logx"], dtype=self.dtype, device=dev),
                torch.as_tensor(picked["fx"], dtype=self.dtype, device=dev))

    def iteration(self, progress: bool = False) -> float:
        """One pass over all nonzeros in the numba engine's deterministic order (bucket by
        bucket, block by block); returns the C tool's cost."""
        from tqdm.auto import tqdm

        torch = self.torch
        nnz = int(self.buckets.sizes.sum())
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        bs = self.cfg.batch_size
        with tqdm(total=nnz, disable=not progress, leave=False, desc="glove nonzeros",
                  unit="nz", unit_scale=True) as bar:
            for rec, order, _ in self.buckets.visits(self.rng, True, 1):
                i, j, logx, fx = self._tensors(rec, order)
                for start in range(0, order.size, bs):
                    part = slice(start, start + bs)
                    total += self.step(i[part], j[part], logx[part], fx[part])
                bar.update(order.size)
        return float(total) / nnz

    def step(self, i: Any, j: Any, logx: Any, fx: Any) -> Any:
        """One mini-batch AdaGrad update on nonzeros (i, j) [b]; returns their summed cost."""
        wi, cj = self.w.index_select(0, i), self.c.index_select(0, j)
        diff = (wi * cj).sum(1) - logx
        fdiff = fx * diff
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


def _make_trainer(source: CsrSource, config: GloveConfig, folder: Path
                  ) -> tuple[Any, str]:
    """The trainer of the configured engine, its nonzeros in a :class:`Buckets` grid
    (spilled under ``folder`` past the budget); "auto" falls back to torch (logged) without
    numba. The seeded generator draws the init, then the buckets, then each pass's order."""
    engine, device = resolve_engine(config)
    if engine == "numba":
        try:
            _numba_pass()
        except ImportError:
            if config.engine == "numba":
                raise ImportError("engine 'numba' needs numba: `pip install numba`, or set "
                                  "engine 'torch'") from None
            log.warning("glove: numba is not installed; falling back to the torch engine "
                        "(mini-batch AdaGrad, batch_size %d)", config.batch_size)
            engine = "torch"
    rng = np.random.default_rng(config.seed)
    word, context = _initial_params(source.n, config.dim, rng)
    buckets = build_buckets(source, config, rng, folder)
    if engine == "numba":
        return _NumbaTrainer(source.n, buckets, config, rng, word, context), "numba"
    return _TorchTrainer(source.n, buckets, config, rng, word, context, device), "torch"


def _used_threads(trainer: Any) -> int:
    """Threads the run used (numba's, or torch's intra-op pool)."""
    if isinstance(trainer, _NumbaTrainer):
        return trainer.threads
    return int(trainer.torch.get_num_threads())


def _no_grad() -> Any:
    """torch.no_grad() when torch is already imported (torch engine), else a no-op."""
    import contextlib
    import sys

    torch = sys.modules.get("torch")
    return torch.no_grad() if torch is not None else contextlib.nullcontext()


def train_glove(
    cooc: sp.spmatrix | CsrSource,
    config: GloveConfig = GloveConfig(),
    callback: Callback | None = None,
    logger: Any = None,
    progress: bool = True,
    workdir: str | Path | None = None,
) -> GloveResult:
    """Train GloVe vectors on a symmetric co-occurrence matrix.

    cooc: scipy sparse [n, n] (float; only positive entries are used), or a
    :class:`CsrSource` read piece by piece (e.g. a cooccur artifact's ``cooc.npz``: then
    memory holds the parameters plus ``config.memory_budget_mb`` of nonzeros, whatever the
    corpus). Spilled buckets go to a temporary folder under ``workdir`` (default:
    ``<system temp>/tokalign-spill``), deleted at the end (or swept after a kill).
    ``callback(it, cost)`` and
    ``logger.log({"glove/cost": ..., "glove/seconds": ...}, step=it)`` run after every
    iteration (1-based). Returns :class:`GloveResult` with float32 vectors [n, dim].
    """
    import tempfile

    from tokalign_core.store.spill import spill_folder

    source = cooc if isinstance(cooc, CsrSource) else CsrSource.from_matrix(_check_matrix(cooc))
    root = Path(workdir) if workdir is not None else Path(tempfile.gettempdir()) / "tokalign-spill"
    with spill_folder(root, "glove-") as folder:
        return _train(source, config, callback, logger, progress, folder)


def _train(source: CsrSource, config: GloveConfig, callback: Callback | None, logger: Any,
           progress: bool, folder: Path) -> GloveResult:
    from tqdm.auto import tqdm

    trainer, engine = _make_trainer(source, config, folder)
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
    buckets = trainer.buckets
    return GloveResult(vectors=vectors, word=word, context=context, costs=costs,
                       seconds=seconds, skipped=skipped, engine=engine,
                       threads=_used_threads(trainer), buckets=len(buckets),
                       spilled=buckets.folder is not None)


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
    float32 [n, dim], ``token_ids.npy`` int64 [n], ``meta.json`` with the cost history and
    the threads used). The nonzeros are streamed from ``cooc.npz`` (never loaded whole);
    spilled buckets live under ``<store root>/.spill`` while training."""
    from tokalign_core.store.inputs import reading

    folder = input_dir(cooccur, "cooccur", ["cooc.npz", "token_ids.npy"])
    fix = f"delete {folder} and rerun `tokalign cooccur`"
    with reading(folder / "token_ids.npy", fix):
        token_ids = np.load(folder / "token_ids.npy", allow_pickle=False)
    cmeta = read_meta(folder)
    with reading(folder / "cooc.npz", fix):
        source = CsrSource.from_npz(folder / "cooc.npz")
    if source.n != token_ids.size:
        raise ValueError(f"cooccur artifact {folder}: matrix of {source.n} rows does not match "
                         f"{token_ids.size} token ids; delete it and rerun `tokalign cooccur`")
    result = train_glove(source, config, callback=callback, logger=logger, progress=progress,
                         workdir=store.root / ".spill")
    meta = {
        "stage": "glove",
        "source": "glove",
        "config": config.model_dump(mode="json"),
        "config_digest": config.digest(),
        "engine": result.engine,
        "device": resolve_engine(config)[1],
        "skipped_updates": result.skipped,
        "cooccur_artifact": str(folder),
        "cooccur_sha256": folder_digest(folder, "cooccur"),
        "tokenizer": cmeta.get("tokenizer"),
        "tokenizer_digest": cmeta.get("tokenizer_digest"),
        "n": int(token_ids.size),
        "dim": config.dim,
        "nnz": source.nnz,
        "threads": result.threads,
        "buckets": result.buckets,
        "spilled": result.spilled,
        "costs": result.costs,
        "seconds_per_iteration": result.seconds,
    }
    with store.writer("embeddings", meta) as w:
        np.save(w.path("vectors.npy"), result.vectors.astype(np.float32), allow_pickle=False)
        np.save(w.path("token_ids.npy"), token_ids.astype(np.int64), allow_pickle=False)
    return w.ref
