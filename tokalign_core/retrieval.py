"""Batched nearest-neighbour retrieval: cosine and CSLS (Conneau, Lample et al. 2018,
"Word translation without parallel data", eq. 6).

    csls(x, z) = 2 cos(x, z) - r_T(x) - r_S(z)

where r_T(x) is the mean cosine of x to its k nearest neighbours among the keys and r_S(z)
the mean cosine of z to its k nearest neighbours among the queries (k = 10). The penalty
removes hubs: keys that are close to everything.

Memory is O(batch x n_keys): the dense n_queries x n_keys matrix is never built. One pass
over the similarity rows yields, for every query, its ``candidates`` best keys by cosine
(hence r_T) and, streamed over the batches, for every key its best queries (hence r_S and
the reverse direction). CSLS is then evaluated on the candidates only; a candidate is
provably the exact CSLS argmax when its score beats the best score any non-candidate could
reach (2 c_K - r_T(x) - min r_S, c_K the K-th best cosine). Rows that fail the check
(rare) are recomputed exactly over the full key set. Results are therefore exact, not
approximate, for any ``candidates`` value.

Determinism: the similarity GEMM always runs on fixed tiles of :data:`GEMM_ROWS` rows (the
last one zero-padded), so every similarity value is bitwise the same whatever the batch
size; ties go to the lowest index. NumPy inputs run their GEMM and top-k through torch's
CPU kernels (MKL: tile results do not depend on the other rows of the tile; 5-7x faster
top-k than ``np.argpartition``); CuPy inputs stay on the GPU with CuPy's own kernels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from tokalign_core.backend import array_namespace

# Rows per GEMM call. Fixed so that similarity bits never depend on the batch size.
GEMM_ROWS = 256

# keep(query_rows int64 [b], key_ids int64 [b, m]) -> bool [b, m]: stochastic dropout.
KeepFn = Callable[[Any, Any], Any]


def normalize_rows(x: Any) -> Any:
    """float32 copy of ``x`` [n, d] with unit L2 rows (all-zero rows stay zero)."""
    xp = array_namespace(x)
    x = xp.asarray(x, dtype=xp.float32)
    norms = xp.sqrt((x * x).sum(axis=1, keepdims=True))
    return x / xp.where(norms > 0, norms, 1).astype(xp.float32)


class _Keys:
    """The key matrix prepared once for repeated tile GEMMs."""

    def __init__(self, keys: Any):
        self.xp = array_namespace(keys)
        self.z = self.xp.ascontiguousarray(keys, dtype=self.xp.float32)
        self.n, self.d = self.z.shape
        self._zt = None
        if self.xp is np:
            import torch

            self._zt = torch.from_numpy(self.z).T  # a view: MKL reads the transpose

    def sims(self, q: Any) -> Any:
        """Similarities ``q @ keys.T`` (float32 [b, n]) computed on fixed GEMM tiles."""
        xp = self.xp
        b = q.shape[0]
        out = xp.empty((b, self.n), dtype=xp.float32)
        tile = xp.zeros((GEMM_ROWS, self.d), dtype=xp.float32)
        spare = None
        for start in range(0, b, GEMM_ROWS):
            stop = min(start + GEMM_ROWS, b)
            tile[: stop - start] = q[start:stop]
            tile[stop - start:] = 0
            if stop - start == GEMM_ROWS:  # full tile: the GEMM writes straight into out
                self._tile_gemm(tile, out[start:stop])
            else:
                if spare is None:
                    spare = xp.empty((GEMM_ROWS, self.n), dtype=xp.float32)
                self._tile_gemm(tile, spare)
                out[start:stop] = spare[: stop - start]
        return out

    def _tile_gemm(self, tile: Any, out: Any) -> None:
        if self._zt is None:
            self.xp.matmul(tile, self.z.T, out=out)
            return
        import torch

        torch.mm(torch.from_numpy(tile), self._zt, out=torch.from_numpy(out))


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
    Both sorted by cosine descending, ties to the lower index.
    """

    row_vals: Any
    row_idx: Any
    col_vals: Any
    col_idx: Any


def _batches(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
    step = max(GEMM_ROWS, -(-batch_size // GEMM_ROWS) * GEMM_ROWS)
    for start in range(0, n, step):
        yield start, min(start + step, n)


def _merge_columns(vals: Any, idx: Any, sims: Any, start: int) -> None:
    """Stream the best queries of every key: merge the rows ``sims`` [t, n_k] (query ids
    ``start..start+t``) into the running per-key lists ``vals``/``idx`` [n_k, Kc] in place.
    Only keys with an entry above their current K-th best are touched, so after the first
    batches the merge costs little more than one comparison per entry."""
    xp = array_namespace(sims)
    cols = xp.flatnonzero((sims > vals[:, -1][None, :]).any(axis=0))
    if cols.size == 0:
        return
    kc = vals.shape[1]
    sub = xp.ascontiguousarray(sims[:, cols].T)
    # Running entries first (lower query ids), then the new rows in id order, so sorting
    # ties by position is sorting them by query id.
    top_vals, pos = topk_desc(xp.concatenate([vals[cols], sub], axis=1), kc)
    old = xp.take_along_axis(idx[cols], xp.minimum(pos, kc - 1), 1)
    vals[cols] = top_vals
    idx[cols] = xp.where(pos < kc, old, start + pos - kc)


def scan(queries: Any, keys: Any, row_k: int, col_k: int, batch_size: int = 4096,
         progress: bool = False, desc: str = "similarity scan") -> Scan:
    """Top ``row_k`` keys of every query and top ``col_k`` queries of every key, by dot
    product, in one batched pass. Inputs float32 [n_q, d] and [n_k, d] (unit rows for
    cosine). Memory O(batch x n_k); the result does not depend on ``batch_size``."""
    from tqdm.auto import tqdm

    xp = array_namespace(queries)
    kz = _Keys(keys)
    n_q = queries.shape[0]
    row_k, col_k = min(row_k, kz.n), min(max(col_k, 1), n_q)
    row_vals = xp.empty((n_q, row_k), dtype=xp.float32)
    row_idx = xp.empty((n_q, row_k), dtype=xp.int64)
    col_vals = xp.full((kz.n, col_k), -xp.inf, dtype=xp.float32)
    col_idx = xp.full((kz.n, col_k), -1, dtype=xp.int64)
    batches = list(_batches(n_q, batch_size))
    for start, stop in tqdm(batches, desc=desc, disable=not progress, unit="batch"):
        sims = kz.sims(queries[start:stop])
        row_vals[start:stop], row_idx[start:stop] = topk_desc(sims, row_k)
        for t in range(0, stop - start, GEMM_ROWS):  # fixed slices: batch-size invariant
            _merge_columns(col_vals, col_idx, sims[t:t + GEMM_ROWS], start + t)
    return Scan(row_vals, row_idx, col_vals, col_idx)


def neighbour_means(vals: Any, k: int) -> Any:
    """r(x): mean of the ``k`` best similarities per row of sorted ``vals`` [n, K>=k]."""
    xp = array_namespace(vals)
    k = min(k, vals.shape[1])
    return vals[:, :k].astype(xp.float64).mean(axis=1).astype(xp.float32)


@dataclass
class Retrieval:
    """Best key for every query.

    - ``indices`` int64 [n_q]: chosen key row
    - ``scores`` float32 [n_q]: its CSLS (or cosine) score
    - ``best_cos`` float32 [n_q]: the best plain cosine of the query (VecMap's objective)
    - ``r_queries`` float32 [n_q], ``r_keys`` float32 [n_k]: CSLS neighbour means
      (zeros for cosine retrieval)
    - ``n_recomputed``: queries whose candidates could not prove the answer and were
      recomputed over all keys
    """

    indices: Any
    scores: Any
    best_cos: Any
    r_queries: Any
    r_keys: Any
    n_recomputed: int


def _candidate_choice(vals: Any, idx: Any, r_q: Any, r_keys: Any, csls: bool,
                      keep: Any | None) -> tuple[Any, Any, Any]:
    """Best candidate per row and whether it is provably the exact argmax.

    ``vals``/``idx`` [n, K] sorted candidates; ``keep`` bool [n, K] or None. Returns
    (index int64 [n], score float32 [n], exact bool [n])."""
    xp = array_namespace(vals)
    n_keys = r_keys.shape[0]
    if csls:
        score = 2 * vals - r_q[:, None] - r_keys[idx]
        bound = 2 * vals[:, -1] - r_q - r_keys.min()
    else:
        score, bound = vals, vals[:, -1]
    if keep is not None:
        score = xp.where(keep, score, -xp.inf)
    best = score.max(axis=1)
    big = xp.iinfo(xp.int64).max
    choice = xp.where(score == best[:, None], idx, big).min(axis=1)
    exact = xp.isfinite(best)
    if vals.shape[1] < n_keys:  # non-candidates exist: the best must beat their bound
        exact &= best > bound
    return choice, best.astype(xp.float32), exact


def _exact_rows(rows: Any, queries: Any, kz: _Keys, r_q: Any, r_keys: Any, csls: bool,
                keep_fn: KeepFn | None, batch_size: int) -> tuple[Any, Any]:
    """Exact argmax over all keys for the query rows ``rows`` (ties -> lowest index)."""
    xp = kz.xp
    choice = xp.empty(rows.shape[0], dtype=xp.int64)
    score = xp.empty(rows.shape[0], dtype=xp.float32)
    all_keys = xp.arange(kz.n, dtype=xp.int64)
    for start, stop in _batches(rows.shape[0], batch_size):
        part = rows[start:stop]
        s = kz.sims(queries[part])
        if csls:
            s = 2 * s - r_q[part][:, None] - r_keys[None, :]
        if keep_fn is not None:
            s = xp.where(keep_fn(part, xp.broadcast_to(all_keys, s.shape)), s, -xp.inf)
        choice[start:stop] = s.argmax(axis=1)  # first maximum = lowest index
        score[start:stop] = s[xp.arange(stop - start), choice[start:stop]]
    return choice, score


def _resolve(vals: Any, idx: Any, queries: Any, keys: Any, r_q: Any, r_keys: Any,
             csls: bool, keep_fn: KeepFn | None, batch_size: int) -> tuple[Any, Any, int]:
    """Candidates first, then an exact recompute of the rows they cannot settle."""
    xp = array_namespace(vals)
    rows = xp.arange(vals.shape[0], dtype=xp.int64)
    keep = keep_fn(rows, idx) if keep_fn is not None else None
    choice, score, exact = _candidate_choice(vals, idx, r_q, r_keys, csls, keep)
    redo = xp.flatnonzero(~exact)
    if redo.size:
        choice[redo], score[redo] = _exact_rows(
            redo, queries, _Keys(keys), r_q, r_keys, csls, keep_fn, batch_size)
    return choice, score, int(redo.size)


def retrieve_both(x: Any, z: Any, method: Literal["csls", "cosine"] = "csls", k: int = 10,
                  candidates: int = 64, batch_size: int = 4096, backward: bool = True,
                  keep_fwd: KeepFn | None = None, keep_bwd: KeepFn | None = None,
                  progress: bool = False) -> tuple[Retrieval, Retrieval | None]:
    """For every row of ``x`` its best row of ``z`` (forward) and, with ``backward``, for
    every row of ``z`` its best row of ``x``, from a single similarity pass.

    ``x`` [n_x, d], ``z`` [n_z, d] (any float; rows are unit-normalised here). ``method``
    ``csls`` (penalty k) or ``cosine``. ``keep_*``: optional stochastic dropout masks
    (VecMap's stochastic dictionary induction); dropped entries are never chosen.
    """
    if x.shape[1] != z.shape[1]:
        raise ValueError(f"queries have {x.shape[1]} dims but keys have {z.shape[1]}")
    if k < 1 and method == "csls":
        raise ValueError("CSLS needs k >= 1 neighbours")
    x, z = normalize_rows(x), normalize_rows(z)
    xp = array_namespace(x)
    csls = method == "csls"
    n_cand = max(candidates, k)  # the neighbour means are read from the candidate lists
    need_col = n_cand if backward else (k if csls else 1)
    sc = scan(x, z, n_cand, need_col, batch_size, progress)
    if csls:
        r_x, r_z = neighbour_means(sc.row_vals, k), neighbour_means(sc.col_vals, k)
    else:
        r_x = xp.zeros(x.shape[0], xp.float32)
        r_z = xp.zeros(z.shape[0], xp.float32)
    fwd = _resolve(sc.row_vals, sc.row_idx, x, z, r_x, r_z, csls, keep_fwd, batch_size)
    fwd_res = Retrieval(fwd[0], fwd[1], sc.row_vals[:, 0].copy(), r_x, r_z, fwd[2])
    if not backward:
        return fwd_res, None
    bwd = _resolve(sc.col_vals, sc.col_idx, z, x, r_z, r_x, csls, keep_bwd, batch_size)
    return fwd_res, Retrieval(bwd[0], bwd[1], sc.col_vals[:, 0].copy(), r_z, r_x, bwd[2])


def retrieve(queries: Any, keys: Any, method: Literal["csls", "cosine"] = "csls",
             k: int = 10, candidates: int = 64, batch_size: int = 4096,
             progress: bool = False) -> Retrieval:
    """Best key (CSLS or cosine argmax, exact) for every query, in batches."""
    return retrieve_both(queries, keys, method, k, candidates, batch_size, backward=False,
                         progress=progress)[0]


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
    q = normalize_rows(query[None, :])
    z = normalize_rows(keys)
    s = _Keys(z).sims(q)
    if r_keys is not None:
        s = 2 * s - r_query - r_keys[None, :]
    vals, idx = topk_desc(s, topk)
    return idx[0], vals[0]


def hash_keep(seed: int, keep_prob: float) -> KeepFn:
    """A stochastic-dropout mask that is a pure function of (seed, row, column): the same
    entry is kept or dropped whether it is looked at as a candidate or in an exact
    recompute, in any batch. A splitmix64-style integer hash; keep when the top 24 bits
    fall below ``keep_prob * 2**24``."""
    mix = np.uint64((seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**64)
    limit = np.uint64(int(round(keep_prob * (1 << 24))))

    def keep(rows: Any, cols: Any) -> Any:
        xp = array_namespace(cols)
        r = xp.asarray(rows, dtype=xp.uint64)[:, None]
        h = cols.astype(xp.uint64) * xp.uint64(0xBF58476D1CE4E5B9)
        h ^= r * xp.uint64(0x94D049BB133111EB) + xp.uint64(mix)
        h ^= h >> xp.uint64(31)
        h *= xp.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> xp.uint64(27)
        h *= xp.uint64(0x94D049BB133111EB)
        h ^= h >> xp.uint64(33)
        return (h >> xp.uint64(40)) < limit

    return keep
