"""Batched nearest-neighbour retrieval: cosine and CSLS (Conneau, Lample et al. 2018,
"Word translation without parallel data", eq. 6).

    csls(x, z) = 2 cos(x, z) - r_T(x) - r_S(z)

where r_T(x) is the mean cosine of x to its k nearest neighbours among the keys and r_S(z)
the mean cosine of z to its k nearest neighbours among the queries (k = 10). The penalty
removes hubs: keys that are close to everything.

Memory is O(tile_rows x n_keys): the dense n_queries x n_keys matrix is never built. Two
modes, both exact (ties go to the lowest index):

- **candidates** (large key sets, e.g. a 256k x 50k full-vocabulary retrieval): ONE pass
  over the similarity blocks keeps, for every query, its ``candidates`` best keys by
  cosine (hence r_T) and, streamed over the blocks, for every key its best queries (hence
  r_S and the reverse direction). CSLS is then evaluated on the candidates only; a
  candidate is provably the exact argmax when its score beats the best score any
  non-candidate could reach (2 c_K - r_T(x) - min r_S, c_K the K-th best cosine). Rows
  that fail the check (rare without dropout) are recomputed over the full key set.
- **exact** (key sets up to ``exact_max_keys``, e.g. VecMap's 20k self-learning
  vocabulary, where stochastic dropout makes the candidate proof fail for most rows): a
  first pass gives r_T and r_S; a second pass computes the CSLS blocks themselves (the
  penalties are folded into the GEMM: [x, 1, -r_T/2] . [z, -r_S/2, 1] = csls/2) and keeps
  the top-M scores of every row and, streamed, of every column. The dropout mask is only
  evaluated on those M entries: the first kept one is the argmax over all kept entries.
  M is chosen from the keep probability so that "none of the M kept" has probability
  1e-4; such rows (and boundary ties) are recomputed over the full row.
- **dense** (dropout on and the n_queries x n_keys float32 matrix fits in
  ``dense_max_bytes``, e.g. VecMap's 20k x 20k = 1.6 GB): ONE GEMM pass stores the cosine
  matrix; the neighbour means and both masked CSLS argmaxes are then read from it (the
  backward direction through tiled transposes), so the GEMM and the transposes run once
  per call instead of once per pass. Top-M lists and the lazy mask as in exact mode.

Determinism: the GEMM always runs on tiles of ``tile_rows`` rows (default
:data:`GEMM_ROWS`; the last one zero-padded, so every call has the same shape) through
torch's kernels (MKL on CPU: a tile row's result does not depend on the other rows of the
tile), so every value is bitwise the same whatever rows are recomputed, and whatever the
tile size (a memory knob: tested bitwise for tiles of 64 rows and more; BLAS may take
other kernels, rounded differently, for products of only a few rows). NumPy inputs run
on torch CPU tensors (zero-copy); CuPy inputs run on torch CUDA tensors via the CUDA array
interface and come back as CuPy arrays.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from tokalign_core.runtime.backend import array_namespace

# Rows per GEMM call (default ``tile_rows``): large enough to amortise the per-tile Python
# and kernel-launch overhead (2048 x 50k float32 = 410 MB).
GEMM_ROWS = 2048

# Probability that none of a row's M best entries survives the dropout mask (the row is
# then recomputed over the full row): sets M from the keep probability.
LAZY_MISS = 1e-4

# Key sets up to this size use the exact two-pass mode (see the module docstring).
EXACT_MAX_KEYS = 32768

# With dropout, a query x key cosine matrix up to this size is stored (dense mode).
DENSE_MAX_BYTES = 2 * 1024**3

# keep(query_rows int [b], key_ids int [b, m]) -> bool [b, m]: stochastic dropout.
KeepFn = Callable[[Any, Any], Any]

Mode = Literal["auto", "exact", "candidates", "dense"]


def normalize_rows(x: Any) -> Any:
    """float32 copy of ``x`` [n, d] with unit L2 rows (all-zero rows stay zero)."""
    xp = array_namespace(x)
    x = xp.asarray(x, dtype=xp.float32)
    norms = xp.sqrt((x * x).sum(axis=1, keepdims=True))
    return x / xp.where(norms > 0, norms, 1).astype(xp.float32)


# ------------------------------------------------------------------ torch bridge


def _t(a: Any) -> Any:
    """float/int array (NumPy or CuPy) -> torch tensor sharing memory when possible."""
    import torch

    if isinstance(a, torch.Tensor):
        return a
    if isinstance(a, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(a))
    return torch.as_tensor(a, device="cuda")  # CuPy: __cuda_array_interface__


def _back(t: Any, xp: Any) -> Any:
    """torch tensor -> array of namespace ``xp`` (NumPy or CuPy)."""
    if xp is np:
        return t.cpu().numpy()
    return xp.asarray(t)


def _keep_mask(keep_fn: KeepFn, rows: Any, cols: Any, xp: Any) -> Any:
    """Evaluate ``keep_fn`` (written for NumPy/CuPy arrays) on torch ``rows`` [b] and
    ``cols`` [b, m]; returns a torch bool tensor [b, m]."""
    import torch

    mask = keep_fn(_back(rows, xp), _back(cols, xp))
    return _t(xp.ascontiguousarray(mask)).to(torch.bool)


# ------------------------------------------------------------------------ blocks


def _blocks(queries: Any, keys: Any, tile: int) -> Iterator[tuple[int, int, Any]]:
    """Similarity blocks ``queries @ keys.T`` on ``tile``-row tiles (zero-padded).

    ``queries`` [n_q, d], ``keys`` [n_k, d] float32 torch tensors. Yields (start, stop,
    block float32 [stop - start, n_k]); ``block`` is a view of a reused buffer, valid only
    until the next iteration. Buffers are allocated once (fresh 400 MB allocations per
    tile cost more in page faults than the arithmetic on them)."""
    import torch

    n_q, d = queries.shape
    buf = torch.zeros((tile, d), dtype=torch.float32, device=queries.device)
    out = torch.empty((tile, keys.shape[0]), dtype=torch.float32, device=queries.device)
    kt = keys.T  # a view: the GEMM reads the transpose
    for start in range(0, n_q, tile):
        stop = min(start + tile, n_q)
        buf[: stop - start] = queries[start:stop]
        buf[stop - start:] = 0
        torch.mm(buf, kt, out=out)
        yield start, stop, out[: stop - start]


def _augment(x: Any, *cols: Any) -> Any:
    """``x`` [n, d] with extra columns appended (each [n]): float32 [n, d + len(cols)]."""
    import torch

    return torch.cat([x, *(c.to(torch.float32)[:, None] for c in cols)], dim=1).contiguous()


class _ColumnTopK:
    """Running ``k`` best rows of every column of the streamed blocks (the queries' view
    from the keys). ``vals`` float32 [n_cols, k] (unsorted), ``idx`` int64 [n_cols, k]."""

    def __init__(self, n_cols: int, k: int, device: Any):
        import torch

        self.k = k
        self.vals = torch.full((n_cols, k), -math.inf, dtype=torch.float32, device=device)
        self.idx = torch.full((n_cols, k), -1, dtype=torch.int64, device=device)

    def update(self, block: Any, row0: int) -> None:
        """Merge ``block`` [t, n_cols] (rows ``row0 .. row0 + t``). Only columns with an
        entry above their current k-th best are touched: after the first blocks of a long
        scan that is a few columns, so the merge costs one column-max pass."""
        import torch

        worst = self.vals.amin(dim=1)
        cols = torch.nonzero(block.amax(dim=0) > worst).squeeze(1)
        if cols.numel() == 0:
            return
        if 2 * cols.numel() > block.shape[1]:  # most columns: one transposing copy
            sub = block.T.contiguous()
            if cols.numel() < block.shape[1]:
                sub = sub.index_select(0, cols)
        else:  # few columns: gather them, then transpose the small result
            sub = block.index_select(1, cols).T.contiguous()  # [c, t]
        new_vals, new_pos = torch.topk(sub, min(self.k, sub.shape[1]), dim=1, sorted=False)
        # Running entries first: on equal values topk keeps the earlier (lower) query ids.
        all_vals = torch.cat([self.vals[cols], new_vals], dim=1)
        all_idx = torch.cat([self.idx[cols], new_pos + row0], dim=1)
        top_vals, pos = torch.topk(all_vals, self.k, dim=1, sorted=False)
        self.vals[cols] = top_vals
        self.idx[cols] = all_idx.gather(1, pos)

    def sorted(self) -> tuple[Any, Any]:
        """(vals, idx) sorted by value descending, ties by index ascending."""
        return _sort_desc_t(self.vals, self.idx)


def _sort_desc_t(vals: Any, idx: Any) -> tuple[Any, Any]:
    """Reorder each row of torch ``vals``/``idx`` [n, k] by value descending, ties by index
    ascending (deterministic)."""
    import torch

    by_idx = torch.sort(idx, dim=1, stable=True).indices
    vals, idx = vals.gather(1, by_idx), idx.gather(1, by_idx)
    by_val = torch.sort(vals, dim=1, descending=True, stable=True).indices
    return vals.gather(1, by_val), idx.gather(1, by_val)


def _row_topk(block: Any, k: int) -> tuple[Any, Any]:
    import torch

    return torch.topk(block, min(k, block.shape[1]), dim=1, sorted=True)


# ------------------------------------------------------------------ public helpers


def topk_desc(a: Any, k: int) -> tuple[Any, Any]:
    """Per row, the ``k`` largest values of ``a`` [b, n] and their columns, sorted by value
    descending then column ascending. Returns (float32 [b, k], int64 [b, k])."""
    xp = array_namespace(a)
    k = min(k, a.shape[1])
    if xp is np:
        import torch

        vals, idx = torch.topk(torch.from_numpy(np.ascontiguousarray(a)), k, dim=1)
        vals, idx = vals.numpy(), idx.numpy().astype(np.int64)
    else:
        idx = xp.argpartition(-a, k - 1, axis=1)[:, :k].astype(xp.int64)
        vals = xp.take_along_axis(a, idx, axis=1)
    return sort_desc(vals, idx)


def sort_desc(vals: Any, idx: Any) -> tuple[Any, Any]:
    """Reorder each row by value descending, ties by index ascending (deterministic)."""
    xp = array_namespace(vals)
    by_idx = xp.argsort(idx, axis=1, kind="stable")
    vals, idx = xp.take_along_axis(vals, by_idx, 1), xp.take_along_axis(idx, by_idx, 1)
    by_val = xp.argsort(-vals, axis=1, kind="stable")
    return xp.take_along_axis(vals, by_val, 1), xp.take_along_axis(idx, by_val, 1)


@dataclass
class Scan:
    """One pass over the similarity rows of queries x keys.

    - ``row_vals`` float32 [n_q, Kr], ``row_idx`` int64 [n_q, Kr]: each query's best keys
    - ``col_vals`` float32 [n_k, Kc], ``col_idx`` int64 [n_k, Kc]: each key's best queries
    Both sorted by value descending, ties to the lower index.
    """

    row_vals: Any
    row_idx: Any
    col_vals: Any
    col_idx: Any


def _scan_t(queries: Any, keys: Any, row_k: int, col_k: int, progress: bool,
            desc: str, tile: int) -> Scan:
    """:func:`scan` on torch tensors; returns torch tensors (rows sorted by value)."""
    import torch
    from tqdm.auto import tqdm

    n_q, n_k = queries.shape[0], keys.shape[0]
    row_k, col_k = min(row_k, n_k), min(max(col_k, 1), n_q)
    row_vals = torch.empty((n_q, row_k), dtype=torch.float32, device=queries.device)
    row_idx = torch.empty((n_q, row_k), dtype=torch.int64, device=queries.device)
    cols = _ColumnTopK(n_k, col_k, queries.device)
    bar = tqdm(total=n_q, desc=desc, disable=not progress, unit="row")
    for start, stop, block in _blocks(queries, keys, tile):
        row_vals[start:stop], row_idx[start:stop] = _row_topk(block, row_k)
        cols.update(block, start)
        bar.update(stop - start)
    bar.close()
    col_vals, col_idx = cols.sorted()
    return Scan(row_vals, row_idx, col_vals, col_idx)


def scan(queries: Any, keys: Any, row_k: int, col_k: int, progress: bool = False,
         desc: str = "similarity scan", tile_rows: int = GEMM_ROWS) -> Scan:
    """Top ``row_k`` keys of every query and top ``col_k`` queries of every key, by dot
    product, in one pass. Inputs float32 [n_q, d] and [n_k, d] (unit rows for cosine).
    Memory O(tile_rows x n_k); the values do not depend on ``tile_rows``."""
    _check_tile(tile_rows)
    xp = array_namespace(queries)
    q = _t(xp.ascontiguousarray(queries, dtype=xp.float32))
    k = _t(xp.ascontiguousarray(keys, dtype=xp.float32))
    sc = _scan_t(q, k, row_k, col_k, progress, desc, tile_rows)
    return Scan(*(_back(a, xp) for a in (sc.row_vals, sc.row_idx, sc.col_vals, sc.col_idx)))


def _check_tile(tile_rows: int) -> None:
    if isinstance(tile_rows, bool) or not isinstance(tile_rows, int) or tile_rows < 1:
        raise ValueError(f"tile_rows must be a positive integer, got {tile_rows!r}")


def neighbour_means(vals: Any, k: int) -> Any:
    """r(x): mean of the ``k`` best similarities per row of sorted ``vals`` [n, K>=k]
    (NumPy, CuPy or torch; float64 accumulation, float32 result)."""
    import torch

    k = min(k, vals.shape[1])
    if isinstance(vals, torch.Tensor):
        return vals[:, :k].double().mean(dim=1).to(torch.float32)
    xp = array_namespace(vals)
    return vals[:, :k].astype(xp.float64).mean(axis=1).astype(xp.float32)


@dataclass
class Retrieval:
    """Best key for every query.

    - ``indices`` int64 [n_q]: chosen key row
    - ``scores`` float32 [n_q]: its CSLS (or cosine) score
    - ``best_cos`` float32 [n_q]: the best plain cosine of the query (VecMap's objective)
    - ``r_queries`` float32 [n_q], ``r_keys`` float32 [n_k]: CSLS neighbour means
      (zeros for cosine retrieval)
    - ``n_recomputed``: queries whose short list could not settle the answer and were
      recomputed over all keys
    - ``mode``: ``exact`` or ``candidates`` (see the module docstring)
    """

    indices: Any
    scores: Any
    best_cos: Any
    r_queries: Any
    r_keys: Any
    n_recomputed: int
    mode: str = "candidates"


# ------------------------------------------------------------------ choosing


def _choose(score: Any, idx: Any, bound: Any | None, keep: Any | None) -> tuple[Any, Any, Any]:
    """Best of each row's short list and whether it is provably the argmax over all keys.

    ``score`` float [n, M] (any order), ``idx`` int64 [n, M] their key ids, ``bound``
    float [n] (no key outside the list scores above it; None when the list holds every
    key), ``keep`` bool [n, M] or None. Returns (index int64 [n], score float32 [n],
    settled bool [n]); ties go to the lowest key id."""
    import torch

    if keep is not None:
        score = score.masked_fill(~keep, -math.inf)
    best = score.amax(dim=1)
    big = torch.iinfo(torch.int64).max
    choice = torch.where(score == best[:, None], idx, big).amin(dim=1)
    settled = torch.isfinite(best)
    if bound is not None:  # strict: an outside key equal to the best could have a lower id
        settled &= best > bound
    return choice, best.to(torch.float32), settled


def _recompute(rows: Any, q_aug: Any, k_aug: Any, scale: float, keep_fn: KeepFn | None,
               xp: Any, tile: int) -> tuple[Any, Any]:
    """Exact argmax over all keys for the query rows ``rows`` int64 [m] (ties -> lowest
    index). ``q_aug`` [n_q, d'] / ``k_aug`` [n_k, d']: the score space (score = scale x
    dot product). Returns (index int64 [m], score float32 [m])."""
    import torch

    choice = torch.empty(rows.shape[0], dtype=torch.int64, device=q_aug.device)
    best = torch.empty(rows.shape[0], dtype=torch.float32, device=q_aug.device)
    all_keys = torch.arange(k_aug.shape[0], device=q_aug.device)
    for start, stop, block in _blocks(q_aug[rows], k_aug, tile):
        s = block * scale
        if keep_fn is not None:
            part = rows[start:stop]
            keep = _keep_mask(keep_fn, part, all_keys.expand(stop - start, -1), xp)
            s = s.masked_fill(~keep, -math.inf)
        vals, arg = s.max(dim=1)  # torch returns the first maximal index
        choice[start:stop], best[start:stop] = arg, vals
    return choice, best


def _settle(choice: Any, score: Any, settled: Any, q_aug: Any, k_aug: Any, scale: float,
            keep_fn: KeepFn | None, xp: Any, tile: int) -> int:
    """Recompute, in place, the rows whose short list did not settle the answer."""
    import torch

    redo = torch.nonzero(~settled).squeeze(1)
    if redo.numel():
        choice[redo], score[redo] = _recompute(redo, q_aug, k_aug, scale, keep_fn, xp,
                                                    tile)
    return int(redo.numel())


def lazy_list_size(keep_fn: KeepFn | None, n_keys: int) -> int:
    """Short-list length M for the exact mode: with keep probability p, P(none of M kept)
    = (1 - p)^M <= LAZY_MISS. Without a mask 2 (top-1 must beat the runner-up strictly);
    an opaque mask without a ``keep_prob`` attribute gets 128."""
    p = getattr(keep_fn, "keep_prob", None) if keep_fn is not None else 1.0
    if p is None:
        m = 128
    elif p >= 1.0:
        m = 2
    else:
        m = math.ceil(math.log(LAZY_MISS) / math.log1p(-p))
    return max(1, min(m, n_keys))


# ------------------------------------------------------------------------ modes


def _candidate_mode(x: Any, z: Any, csls: bool, k: int, candidates: int, backward: bool,
                    keep_fwd: KeepFn | None, keep_bwd: KeepFn | None, xp: Any,
                    progress: bool, tile: int) -> tuple[tuple, tuple | None]:
    """One similarity pass + CSLS on cosine candidates (see the module docstring).
    Returns ((choice, score, best_cos, r_x, r_z, n_redo), same for backward or None)."""
    import torch

    n_cand = max(candidates, k)  # the neighbour means are read from the candidate lists
    need_col = n_cand if backward else (k if csls else 1)
    sc = _scan_t(x, z, n_cand, need_col, progress, "similarity scan", tile)
    if csls:
        r_x, r_z = neighbour_means(sc.row_vals, k), neighbour_means(sc.col_vals, k)
    else:
        r_x = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
        r_z = torch.zeros(z.shape[0], dtype=torch.float32, device=x.device)
    space = _space(x, z, r_x, r_z, csls)

    def one(vals: Any, idx: Any, r_q: Any, r_k: Any, keep_fn: KeepFn | None,
            q_aug: Any, k_aug: Any) -> tuple:
        if csls:
            score = 2 * vals - r_q[:, None] - r_k[idx]
            bound = 2 * vals[:, -1] - r_q - r_k.min()
        else:
            score, bound = vals, vals[:, -1]
        if vals.shape[1] >= r_k.shape[0]:
            bound = None  # the candidates are every key
        rows = torch.arange(vals.shape[0], device=vals.device)
        keep = _keep_mask(keep_fn, rows, idx, xp) if keep_fn is not None else None
        choice, best, settled = _choose(score, idx, bound, keep)
        n = _settle(choice, best, settled, q_aug, k_aug, space[2], keep_fn, xp, tile)
        return choice, best, vals[:, 0].clone(), r_q, r_k, n

    fwd = one(sc.row_vals, sc.row_idx, r_x, r_z, keep_fwd, space[0], space[1])
    if not backward:
        return fwd, None
    return fwd, one(sc.col_vals, sc.col_idx, r_z, r_x, keep_bwd, space[1], space[0])


def _space(x: Any, z: Any, r_x: Any, r_z: Any, csls: bool) -> tuple[Any, Any, float]:
    """The score space: (x', z', scale) with score(i, j) = scale * x'_i . z'_j.

    CSLS folds its penalties into the GEMM: [x, 1, -r_x/2] . [z, -r_z/2, 1] = csls / 2,
    so the argmax in either direction is an argmax of one dot-product block."""
    if not csls:
        return x, z, 1.0
    one_x = x.new_ones(x.shape[0])
    one_z = z.new_ones(z.shape[0])
    return _augment(x, one_x, -r_x / 2), _augment(z, -r_z / 2, one_z), 2.0


def _exact_mode(x: Any, z: Any, csls: bool, k: int, backward: bool,
                keep_fwd: KeepFn | None, keep_bwd: KeepFn | None, xp: Any,
                progress: bool, tile: int) -> tuple[tuple, tuple | None]:
    """Pass 1 for r_T / r_S (CSLS only), pass 2 over the score blocks with row and column
    top-M lists and the dropout mask evaluated lazily on them (module docstring)."""
    import torch
    from tqdm.auto import tqdm

    n_x, n_z = x.shape[0], z.shape[0]
    if csls:
        sc = _scan_t(x, z, k, k, progress, "neighbour means", tile)
        r_x, r_z = neighbour_means(sc.row_vals, k), neighbour_means(sc.col_vals, k)
        cos_x, cos_z = sc.row_vals[:, 0].clone(), sc.col_vals[:, 0].clone()
    else:
        r_x = torch.zeros(n_x, dtype=torch.float32, device=x.device)
        r_z = torch.zeros(n_z, dtype=torch.float32, device=x.device)
        cos_x = cos_z = None  # the score blocks are the cosines: read from the lists
    xa, za, scale = _space(x, z, r_x, r_z, csls)
    m_f, m_b = lazy_list_size(keep_fwd, n_z), lazy_list_size(keep_bwd, n_x)
    row_vals = torch.empty((n_x, m_f), dtype=torch.float32, device=x.device)
    row_idx = torch.empty((n_x, m_f), dtype=torch.int64, device=x.device)
    cols = _ColumnTopK(n_z, m_b, x.device) if backward else None
    bar = tqdm(total=n_x, desc="csls scan", disable=not progress, unit="row")
    for start, stop, block in _blocks(xa, za, tile):
        row_vals[start:stop], row_idx[start:stop] = _row_topk(block, m_f)
        if cols is not None:
            cols.update(block, start)
        bar.update(stop - start)
    bar.close()

    def one(vals: Any, idx: Any, keep_fn: KeepFn | None, best_cos: Any, r_q: Any,
            r_k: Any, q_aug: Any, k_aug: Any) -> tuple:
        n_keys = k_aug.shape[0]
        bound = None if vals.shape[1] >= n_keys else scale * vals.amin(dim=1)
        rows = torch.arange(vals.shape[0], device=vals.device)
        keep = _keep_mask(keep_fn, rows, idx, xp) if keep_fn is not None else None
        choice, best, settled = _choose(scale * vals, idx, bound, keep)
        n = _settle(choice, best, settled, q_aug, k_aug, scale, keep_fn, xp, tile)
        if best_cos is None:  # cosine: the list's top entry is the best cosine
            best_cos = vals.amax(dim=1)
        return choice, best, best_cos, r_q, r_k, n

    fwd = one(row_vals, row_idx, keep_fwd, cos_x, r_x, r_z, xa, za)
    if cols is None:
        return fwd, None
    return fwd, one(cols.vals, cols.idx, keep_bwd, cos_z, r_z, r_x, za, xa)


def _dense_walk(sim: Any, transposed: bool, k: int, a: float, r_keys: Any | None,
                m: int, tile: int) -> tuple[Any | None, Any | None, Any | None]:
    """Walk the stored ``sim`` [n_x, n_z] by ``tile``-row tiles of its rows (or,
    ``transposed``, of its columns, copied row-major: a blocked transpose).

    Per row: the sorted top ``k`` plain similarities (float32 [n, k], for the neighbour
    means; skipped when ``k`` = 0); then, when ``m`` > 0, the top ``m`` of ``a * sim -
    r_keys`` (float32 [n, m] values, int64 [n, m] key ids)."""
    import torch

    n_rows = sim.shape[1] if transposed else sim.shape[0]
    n_keys = sim.shape[0] if transposed else sim.shape[1]
    m = min(m, n_keys)
    dev = sim.device
    tops = torch.empty((n_rows, min(k, n_keys)), dtype=torch.float32, device=dev) if k \
        else None
    vals = torch.empty((n_rows, m), dtype=torch.float32, device=dev) if m else None
    idx = torch.empty((n_rows, m), dtype=torch.int64, device=dev) if m else None
    work = torch.empty((tile, n_keys), dtype=torch.float32, device=dev)
    for start in range(0, n_rows, tile):
        stop = min(start + tile, n_rows)
        buf = work[: stop - start]
        if transposed:
            buf.copy_(sim[:, start:stop].T)
        if tops is not None:
            tops[start:stop] = torch.topk(buf if transposed else sim[start:stop],
                                          tops.shape[1], dim=1).values
        if m:
            torch.mul(buf if transposed else sim[start:stop], a, out=buf)
            buf.sub_(r_keys[None, :])
            vals[start:stop], idx[start:stop] = _row_topk(buf, m)
    return tops, vals, idx


def _dense_recompute(sim: Any, rows: Any, transposed: bool, a: float, r_q: Any,
                     r_k: Any, keep_fn: KeepFn | None, xp: Any) -> tuple[Any, Any]:
    """Exact masked argmax over every key for the query ``rows`` int64 [m], read from the
    stored ``sim``. Returns (index int64 [m], score float32 [m])."""
    import torch

    full = (sim[:, rows].T if transposed else sim[rows]).clone()
    score = a * full - r_k[None, :] - r_q[rows][:, None]
    if keep_fn is not None:
        all_keys = torch.arange(score.shape[1], device=score.device)
        keep = _keep_mask(keep_fn, rows, all_keys.expand(rows.shape[0], -1), xp)
        score = score.masked_fill(~keep, -math.inf)
    best, arg = score.max(dim=1)  # the first maximal index: ties -> lowest id
    return arg, best.to(torch.float32)


def _dense_mode(x: Any, z: Any, csls: bool, k: int, backward: bool,
                keep_fwd: KeepFn | None, keep_bwd: KeepFn | None, xp: Any,
                progress: bool, tile: int) -> tuple[tuple, tuple | None]:
    """One GEMM pass storing cos [n_x, n_z] (with each row's top k on the way: r_x), one
    transposing walk (r_z and the backward top-M lists, which need only r_x), one row walk
    (the forward top-M lists, which need r_z); masked argmaxes as in exact mode."""
    import torch
    from tqdm.auto import tqdm

    n_x, n_z = x.shape[0], z.shape[0]
    kk = min(k, n_z)
    sim = torch.empty((n_x, n_z), dtype=torch.float32, device=x.device)
    row_tops = torch.empty((n_x, kk), dtype=torch.float32, device=x.device)
    bar = tqdm(total=n_x, desc="similarity", disable=not progress, unit="row")
    for start, stop, block in _blocks(x, z, tile):
        sim[start:stop] = block
        row_tops[start:stop] = torch.topk(block, kk, dim=1).values
        bar.update(stop - start)
    bar.close()
    a = 2.0 if csls else 1.0
    # Cosine retrieval: no penalties (scores are the similarities themselves).
    r_x = neighbour_means(row_tops, k) if csls else torch.zeros(n_x, device=x.device)
    m_b = lazy_list_size(keep_bwd, n_x) if backward else 0
    col_tops, b_vals, b_idx = _dense_walk(sim, True, k, a, r_x, m_b, tile)
    r_z = neighbour_means(col_tops, k) if csls else torch.zeros(n_z, device=x.device)
    _, f_vals, f_idx = _dense_walk(sim, False, 0, a, r_z, lazy_list_size(keep_fwd, n_z),
                                   tile)

    def one(vals: Any, idx: Any, transposed: bool, keep_fn: KeepFn | None, r_q: Any,
            r_k: Any, best_cos: Any) -> tuple:
        score = vals - r_q[:, None]
        bound = None if vals.shape[1] >= r_k.shape[0] else score.amin(dim=1)
        rows = torch.arange(vals.shape[0], device=vals.device)
        keep = _keep_mask(keep_fn, rows, idx, xp) if keep_fn is not None else None
        choice, best, settled = _choose(score, idx, bound, keep)
        redo = torch.nonzero(~settled).squeeze(1)
        if redo.numel():
            choice[redo], best[redo] = _dense_recompute(sim, redo, transposed, a, r_q, r_k,
                                                        keep_fn, xp)
        return choice, best, best_cos, r_q, r_k, int(redo.numel())

    fwd = one(f_vals, f_idx, False, keep_fwd, r_x, r_z, row_tops[:, 0].clone())
    if not backward:
        return fwd, None
    return fwd, one(b_vals, b_idx, True, keep_bwd, r_z, r_x, col_tops[:, 0].clone())


def retrieve_both(x: Any, z: Any, method: Literal["csls", "cosine"] = "csls", k: int = 10,
                  candidates: int = 64, *, backward: bool = True,
                  keep_fwd: KeepFn | None = None, keep_bwd: KeepFn | None = None,
                  progress: bool = False, mode: Mode = "auto",
                  exact_max_keys: int = EXACT_MAX_KEYS,
                  dense_max_bytes: int = DENSE_MAX_BYTES,
                  tile_rows: int = GEMM_ROWS) -> tuple[Retrieval, Retrieval | None]:
    """For every row of ``x`` its best row of ``z`` (forward) and, with ``backward``, for
    every row of ``z`` its best row of ``x``.

    ``x`` [n_x, d], ``z`` [n_z, d] (any float; rows are unit-normalised here). ``method``
    ``csls`` (penalty k) or ``cosine``. ``keep_*``: optional stochastic dropout masks
    (VecMap's stochastic dictionary induction); dropped entries are never chosen.
    ``mode``: ``candidates`` (one pass, best for large key sets without dropout),
    ``exact`` (two passes, immune to dropout), ``dense`` (one GEMM pass into a stored
    n_x x n_z matrix, immune to dropout) or ``auto``: with a dropout mask, dense when that
    matrix fits in ``dense_max_bytes``, else exact when both sides have at most
    ``exact_max_keys`` rows; without one, candidates.
    ``candidates``: cosine short-list length in candidates mode. ``tile_rows``: query rows
    per GEMM (memory O(tile_rows x n_keys)); the values do not depend on it. Results are
    identical in every mode up to float rounding of the scores.
    """
    _check_tile(tile_rows)
    if x.shape[1] != z.shape[1]:
        raise ValueError(f"queries have {x.shape[1]} dims but keys have {z.shape[1]}")
    if k < 1 and method == "csls":
        raise ValueError("CSLS needs k >= 1 neighbours")
    if mode not in ("auto", "exact", "candidates", "dense"):
        raise ValueError(f"mode must be 'auto', 'exact', 'candidates' or 'dense', got "
                         f"{mode!r}")
    xp = array_namespace(x)
    xt, zt = _t(normalize_rows(x)), _t(normalize_rows(z))
    csls = method == "csls"
    if mode == "auto":
        small = max(xt.shape[0], zt.shape[0]) <= exact_max_keys
        dropout = keep_fwd is not None or (backward and keep_bwd is not None)
        fits = 4 * xt.shape[0] * zt.shape[0] <= dense_max_bytes
        mode = ("dense" if fits else "exact" if small else "candidates") if dropout \
            else "candidates"
    if mode == "dense":
        fwd, bwd = _dense_mode(xt, zt, csls, k, backward, keep_fwd, keep_bwd, xp, progress,
                               tile_rows)
    elif mode == "exact":
        fwd, bwd = _exact_mode(xt, zt, csls, k, backward, keep_fwd, keep_bwd, xp, progress,
                               tile_rows)
    else:
        fwd, bwd = _candidate_mode(xt, zt, csls, k, candidates, backward, keep_fwd,
                                   keep_bwd, xp, progress, tile_rows)
    return _result(fwd, xp, mode), (_result(bwd, xp, mode) if bwd is not None else None)


def _result(parts: tuple, xp: Any, mode: str) -> Retrieval:
    choice, score, best_cos, r_q, r_k, n = parts
    arrays = [_back(a, xp) for a in (choice, score, best_cos, r_q, r_k)]
    return Retrieval(*arrays, n_recomputed=n, mode=mode)


def retrieve(queries: Any, keys: Any, method: Literal["csls", "cosine"] = "csls",
             k: int = 10, candidates: int = 64, *, progress: bool = False,
             mode: Mode = "auto", tile_rows: int = GEMM_ROWS) -> Retrieval:
    """Best key (CSLS or cosine argmax, exact) for every query."""
    return retrieve_both(queries, keys, method, k, candidates, backward=False,
                         progress=progress, mode=mode, tile_rows=tile_rows)[0]


def csls_matrix(x: Any, z: Any, k: int = 10) -> Any:
    """Dense CSLS matrix float32 [n_x, n_z] by the formula: a reference for small inputs
    (tests, inspection); never call it on full vocabularies."""
    x, z = normalize_rows(x), normalize_rows(z)
    cos = x @ z.T
    xp = array_namespace(cos)
    kx, kz = min(k, cos.shape[1]), min(k, cos.shape[0])
    r_x = -xp.sort(-cos, axis=1)[:, :kx].mean(axis=1)
    r_z = -xp.sort(-cos, axis=0)[:kz].mean(axis=0)
    return (2 * cos - r_x[:, None] - r_z[None, :]).astype(xp.float32)


def top_neighbours(query: Any, keys: Any, topk: int = 5, r_query: float = 0.0,
                   r_keys: Any | None = None) -> tuple[Any, Any]:
    """The ``topk`` best keys of one query vector [d]: CSLS when ``r_keys`` [n_k] is given
    (2 cos - r_query - r_keys), else cosine. Returns (int64 [topk], float32 [topk])."""
    xp = array_namespace(keys)
    q = _t(normalize_rows(query[None, :]))
    z = _t(normalize_rows(keys))
    _, _, block = next(_blocks(q, z, GEMM_ROWS))
    s = _back(block.clone(), xp)
    if r_keys is not None:
        s = 2 * s - r_query - r_keys[None, :]
    vals, idx = topk_desc(s, topk)
    return idx[0], vals[0]


class HashKeep:
    """A stochastic-dropout mask that is a pure function of (seed, row, column): the same
    entry is kept or dropped whether it is looked at in a short list or a full-row
    recompute, in any batch. A splitmix64-style integer hash; keep when the top 24 bits
    fall below ``keep_prob * 2**24``. ``keep_prob`` is public: the exact retrieval mode
    sizes its short lists from it."""

    def __init__(self, seed: int, keep_prob: float):
        self.seed, self.keep_prob = seed, keep_prob
        self._mix = np.uint64((seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**64)
        self._limit = np.uint64(int(round(keep_prob * (1 << 24))))

    def __call__(self, rows: Any, cols: Any) -> Any:
        """``rows`` int [b], ``cols`` int [b, m] -> bool [b, m] (True = kept)."""
        xp = array_namespace(cols)
        r = xp.asarray(rows, dtype=xp.uint64)[:, None]
        h = cols.astype(xp.uint64) * xp.uint64(0xBF58476D1CE4E5B9)
        h ^= r * xp.uint64(0x94D049BB133111EB) + xp.uint64(self._mix)
        h ^= h >> xp.uint64(31)
        h *= xp.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> xp.uint64(27)
        h *= xp.uint64(0x94D049BB133111EB)
        h ^= h >> xp.uint64(33)
        return (h >> xp.uint64(40)) < self._limit


def hash_keep(seed: int, keep_prob: float) -> KeepFn:
    """The :class:`HashKeep` mask for ``seed`` and ``keep_prob``."""
    return HashKeep(seed, keep_prob)
