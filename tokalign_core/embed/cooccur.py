"""Sparse, sharded, exact co-occurrence counting (GloVe, Pennington et al. 2014, sec. 4.2).

X_ij = sum over the corpus of 1/d for every occurrence of token j at distance d <= window
(either side) of token i, within one document (METHOD.md section 2.1). Rows are the kept
vocabulary (ids seen at least ``min_count`` times), most frequent first.

How it works:

* **Exact sums.** Every weight 1/d (d <= window) is an integer multiple of 1/L with
  L = lcm(1..window) (360360 for window 15). We accumulate the int64 sums of L/d and divide
  once at the end, so the result is bit-identical whatever the sharding, the merge order or
  the buffer size (float sums in different orders differ in their last bits). The config
  refuses windows whose L could overflow; :func:`build_cooccur` re-checks the token count.
* **Per shard, then merge.** :func:`count_shard` counts one shard's *directed* matrix U
  (U_ab = sum of L/d over pairs where a precedes b). The merge sums the shards' U (integer
  addition commutes) and symmetrises once: X = U + U^T, as the C tool's symmetric mode
  (which also counts a self-pair twice on the diagonal).
* **Fast kernel.** Like the C tool, frequent pairs (rank product below a bound) go to a
  dense int64 table and the rest to a sparse pair buffer; when the buffer fills it is sorted
  and run-length summed into sorted runs, merged like an LSM tree. Memory is bounded by
  ``dense_table_mb`` + ``buffer_pairs`` * 8 bytes + the distinct pairs found. The loops are
  compiled with numba when it is installed (plain Python otherwise: same result, slow).
* **Window at document boundaries** resets; with ``skip_rare`` (default, as the C tool)
  the positions of discarded ids are removed before windowing.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from tokalign_core.configs.cooccur import CooccurConfig, max_exact_tokens, window_lcm
from tokalign_core.store.artifacts import (
    ArtifactRef,
    ArtifactStore,
    folder_digest,
    input_dir,
    read_meta,
)
from tokalign_core.store.spill import spill_folder
from tokalign_core.vocab.tokenize import check_shard_names

log = logging.getLogger(__name__)

STEP_TOKENS = 1 << 20  # tokens per kernel call between progress-bar updates


# ---------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------


def kept_vocabulary(counts: np.ndarray, min_count: int = 5, max_vocab: int | None = None
                    ) -> np.ndarray:
    """Token ids with ``counts >= min_count``, most frequent first, ties by ascending id.

    counts: int [vocab_size]. Returns int64 [n_kept] (at most ``max_vocab``).
    """
    counts = np.asarray(counts)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"token counts must be a non-empty 1-D array, got shape {counts.shape}")
    ids = np.flatnonzero(counts >= min_count)
    order = np.lexsort((ids, -counts[ids].astype(np.int64)))
    kept = ids[order].astype(np.int64)
    return kept[:max_vocab] if max_vocab is not None else kept


def row_lookup(token_ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """int32 [vocab_size]: the row of each tokenizer id in the kept vocabulary, -1 if dropped."""
    lookup = np.full(vocab_size, -1, dtype=np.int32)
    lookup[np.asarray(token_ids, dtype=np.int64)] = np.arange(len(token_ids), dtype=np.int32)
    return lookup


# ---------------------------------------------------------------------------------------
# Kernels (plain Python; compiled by numba in _kernels())
# ---------------------------------------------------------------------------------------


def _count_range_py(rows, offsets, i, i_end, window, weights, row_start, row_len, dense,
                    buf, nbuf, n_kept, shift):
    """Count the pairs starting at positions i..i_end-1; return (next position, buffer fill).

    rows: int32 [n] kept row per position (-1: dropped, no pairs); offsets: int64 document
    starts [n_docs+1]. A pair (a at i, b at i+d, same document, d <= window) adds weights[d]
    to the dense table when b < row_len[a], else appends ``((a*n_kept+b) << shift) | d`` to
    ``buf``. Stops early, before position i, when the buffer could not take another window.
    The left token is fixed in the inner loop so its table row stays in registers.
    """
    cap = buf.shape[0]
    doc = np.searchsorted(offsets, i, side="right") - 1
    end = offsets[doc + 1]
    while i < i_end:
        if cap - nbuf < window:
            break
        while i >= end:  # next non-empty document: the window resets here
            doc += 1
            end = offsets[doc + 1]
        a = rows[i]
        if a >= 0:
            base = row_start[a]
            limit = row_len[a]
            key = np.int64(a) * n_kept
            hi = min(end, i + window + 1)
            for k in range(i + 1, hi):
                b = rows[k]
                if b < 0:
                    continue
                if b < limit:
                    dense[base + b] += weights[k - i]
                else:
                    buf[nbuf] = ((key + b) << shift) | (k - i)
                    nbuf += 1
        i += 1
    return i, nbuf


def _assemble_py(dense, row_start, row_len, keys, vals, n_kept, indptr, indices, data):
    """Fill CSR arrays from the dense table and the sorted sparse (pair, value) run.

    In every row a the dense columns (b < row_len[a]) precede the sparse ones, so writing
    dense then sparse entries row by row gives sorted column indices. indptr must hold the
    row counts' cumulative sum (int64 [n_kept+1]).
    """
    s = 0
    for a in range(n_kept):
        n = indptr[a]
        base = row_start[a]
        for b in range(row_len[a]):
            v = dense[base + b]
            if v != 0:
                indices[n] = b
                data[n] = v
                n += 1
        while s < keys.shape[0] and keys[s] // n_kept == a:
            indices[n] = keys[s] % n_kept
            data[n] = vals[s]
            n += 1
            s += 1
    return s


def _dense_row_nonzeros_py(dense, row_start, row_len, out):
    """out[a] = nonzero entries of dense row a (int64 [n_kept]), with no temporary the size
    of the table (a cumulative sum over it allocated a fresh int64 copy per shard)."""
    for a in range(row_start.shape[0]):
        base = row_start[a]
        c = 0
        for b in range(row_len[a]):
            if dense[base + b] != 0:
                c += 1
        out[a] = c


def _sum_sorted_py(keys, shift, weights, out_keys, out_vals):
    """Run-length sum of sorted ``pair << shift | d`` codes: out = (pair, sum of weights[d]).

    Returns the number of distinct pairs written to out_keys / out_vals (int64).
    """
    mask = (np.int64(1) << shift) - 1
    n = 0
    last = np.int64(-1)
    for v in keys:
        pair = v >> shift
        w = weights[v & mask]
        if pair == last:
            out_vals[n - 1] += w
        else:
            out_keys[n] = pair
            out_vals[n] = w
            last = pair
            n += 1
    return n


def _merge_runs_py(ka, va, kb, vb, out_k, out_v):
    """Merge two sorted unique (key, value) runs, summing values of equal keys."""
    i = 0
    j = 0
    n = 0
    while i < ka.shape[0] and j < kb.shape[0]:
        if ka[i] < kb[j]:
            out_k[n] = ka[i]
            out_v[n] = va[i]
            i += 1
        elif kb[j] < ka[i]:
            out_k[n] = kb[j]
            out_v[n] = vb[j]
            j += 1
        else:
            out_k[n] = ka[i]
            out_v[n] = va[i] + vb[j]
            i += 1
            j += 1
        n += 1
    while i < ka.shape[0]:
        out_k[n] = ka[i]
        out_v[n] = va[i]
        i += 1
        n += 1
    while j < kb.shape[0]:
        out_k[n] = kb[j]
        out_v[n] = vb[j]
        j += 1
        n += 1
    return n


@functools.lru_cache(maxsize=1)
def _kernels() -> tuple[Callable[..., Any], ...]:
    """The five kernels, numba-compiled (cached on disk) when numba is installed."""
    plain = (_count_range_py, _sum_sorted_py, _merge_runs_py, _assemble_py,
             _dense_row_nonzeros_py)
    try:
        import numba
    except ImportError:
        log.warning("numba is not installed: co-occurrence counting runs in plain Python "
                    "(same result, ~100x slower); `pip install numba`")
        return plain
    jit = numba.njit(cache=True, nogil=True)
    return tuple(jit(f) for f in plain)


# ---------------------------------------------------------------------------------------
# Per-shard counting
# ---------------------------------------------------------------------------------------


def dense_layout(n_kept: int, entries: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the dense table: row a holds columns b < row_len[a] = min(n, P // (a+1)).

    P (the C tool's ``max_product``) is the largest bound whose table fits in ``entries``.
    Returns int64 row_start [n_kept], int64 row_len [n_kept].
    """
    ranks = np.arange(1, n_kept + 1, dtype=np.int64)

    def size(p: int) -> int:
        return int(np.minimum(n_kept, p // ranks).sum())

    lo, hi = 0, n_kept * n_kept
    while lo < hi:  # largest P with size(P) <= entries
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if size(mid) <= entries else (lo, mid - 1)
    row_len = np.minimum(n_kept, lo // ranks)
    row_start = np.concatenate(([0], np.cumsum(row_len)[:-1])).astype(np.int64)
    return row_start, row_len.astype(np.int64)


def _drop_rare_positions(rows: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove dropped positions (-1) and shift document offsets accordingly."""
    dropped = np.flatnonzero(rows < 0)  # few (rare ids): no int64 per token
    return rows[rows >= 0], offsets - np.searchsorted(dropped, offsets, side="left")


def _check_shard(ids: np.ndarray, offsets: np.ndarray, vocab_size: int, name: str) -> None:
    if ids.ndim != 1 or offsets.ndim != 1 or offsets.size < 1:
        raise ValueError(f"shard {name}: ids and offsets must be 1-D (offsets [n_docs+1])")
    if offsets[0] != 0 or offsets[-1] != ids.size or np.any(np.diff(offsets) < 0):
        raise ValueError(
            f"shard {name}: offsets must rise from 0 to len(ids)={ids.size}, got "
            f"{offsets[0]}..{offsets[-1]}; the tokens artifact is inconsistent, rebuild it"
        )
    if ids.size and int(ids.max()) >= vocab_size:
        raise ValueError(
            f"shard {name}: token id {int(ids.max())} >= vocab_size {vocab_size} of counts.npy;"
            " the shard and the counts come from different tokenizers"
        )


class _Runs:
    """Sorted unique (pair key, int64 sum) runs, merged LSM-style to keep their number low."""

    def __init__(self, merge: Callable[..., Any]):
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []
        self._merge = merge

    def add(self, keys: np.ndarray, vals: np.ndarray) -> None:
        self.runs.append((keys, vals))
        while len(self.runs) > 1 and len(self.runs[-2][0]) <= 2 * len(self.runs[-1][0]):
            b = self.runs.pop()
            a = self.runs.pop()
            self.runs.append(self._merge2(a, b))

    def _merge2(self, a, b):
        n = len(a[0]) + len(b[0])
        out_k, out_v = np.empty(n, np.int64), np.empty(n, np.int64)
        m = self._merge(a[0], a[1], b[0], b[1], out_k, out_v)
        return _trim(out_k, out_v, m)

    def entries(self) -> int:
        """Distinct pairs held (an upper bound: runs may share pairs)."""
        return sum(len(k) for k, _ in self.runs)

    def total(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.runs:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        acc = self.runs[-1]
        for run in reversed(self.runs[:-1]):
            acc = self._merge2(run, acc)
        return acc


def count_shard(
    ids: np.ndarray,
    offsets: np.ndarray,
    row_of_id: np.ndarray,
    config: CooccurConfig = CooccurConfig(),
    progress: bool = False,
    name: str = "shard",
) -> sp.csr_matrix:
    """Directed integer co-occurrence counts of one shard.

    ids: uint32 [n_tokens] (documents concatenated); offsets: int64 [n_docs+1];
    row_of_id: int32 [vocab_size] from :func:`row_lookup`. Returns CSR int64
    [n_kept, n_kept] with U[a, b] = sum over pairs (a before b, distance d <= window, same
    document) of lcm(1..window) / d. Pure: the same inputs give the same matrix.
    """
    scan = _ShardScan(ids, offsets, row_of_id, config, name)
    runs = scan.run(progress)
    return _to_csr(runs, scan.dense, scan.row_start, scan.row_len, scan.n_kept)


class _ShardScan:
    """The counting state of one shard: kept rows per position, the dense table, the pair
    buffer and its sorted runs (see the module docstring)."""

    def __init__(self, ids, offsets, row_of_id: np.ndarray, config: CooccurConfig, name: str):
        ids = np.asarray(ids)
        offsets = np.asarray(offsets, dtype=np.int64)
        _check_shard(ids, offsets, row_of_id.size, name)
        self.name, self.window = name, config.window
        self.n_kept = int(row_of_id.max()) + 1 if row_of_id.size else 0
        rows = row_of_id[ids]
        if config.skip_rare:
            rows, offsets = _drop_rare_positions(rows, offsets)
        self.rows, self.offsets = rows, offsets
        self.shift = int(config.window).bit_length()
        if self.n_kept and (self.n_kept * self.n_kept) >= (1 << (62 - self.shift)):
            raise ValueError(f"{self.n_kept} kept tokens is too many for 64-bit pair keys; "
                             "set max_vocab")
        lcm = window_lcm(config.window)
        self.weights = np.array([0] + [lcm // d for d in range(1, config.window + 1)],
                                dtype=np.int64)
        n_pairs = rows.size * config.window
        entries = min(int(config.dense_table_mb * 2**20) // 8, self.n_kept * self.n_kept,
                      n_pairs)
        self.row_start, self.row_len = dense_layout(self.n_kept, max(entries, 0))
        self.dense = np.zeros(int(self.row_len.sum()), dtype=np.int64)
        self.buf = np.empty(min(config.buffer_pairs, max(n_pairs, 4 * config.window)),
                            dtype=np.int64)

    def run(self, progress: bool = False, spill: Callable[[_Runs], None] | None = None,
            spill_entries: int = 0) -> _Runs:
        """Count the whole shard; returns the sparse runs (the dense table is ``self.dense``).

        spill: called with the runs whenever they hold more than ``spill_entries`` distinct
        pairs; it must take them out of memory (empty ``runs.runs``).
        """
        count_range, sum_sorted, merge = _kernels()[:3]
        runs = _Runs(merge)
        rows, buf, window = self.rows, self.buf, self.window
        n = rows.size
        bar = _bar(n, progress, self.name)
        j, nbuf = 0, 0
        while j < n:
            j_new, nbuf = count_range(rows, self.offsets, j, min(n, j + STEP_TOKENS), window,
                                      self.weights, self.row_start, self.row_len, self.dense,
                                      buf, nbuf, self.n_kept, self.shift)
            bar.update(j_new - j)
            j = j_new
            if buf.shape[0] - nbuf < window:  # buffer full: sort, sum, keep as a run
                _flush(buf, nbuf, self.shift, self.weights, sum_sorted, runs)
                nbuf = 0
                if spill is not None and runs.entries() > spill_entries:
                    spill(runs)
        _flush(buf, nbuf, self.shift, self.weights, sum_sorted, runs)
        bar.close()
        return runs


def _flush(buf, nbuf, shift, weights, sum_sorted, runs: _Runs) -> None:
    """Sort the buffered pair codes, sum equal pairs, keep the result as a sorted run.

    np.sort (SIMD-accelerated in numpy 2) beat a numba LSD radix sort here (1.3 vs 1.7
    CPU s at 10M tokens of real text), so it stays.
    """
    if nbuf == 0:
        return
    keys = np.sort(buf[:nbuf])
    # Run-length sum in place: the write position never passes the read position, and
    # ``keys`` is a fresh array (np.sort copies), so the run never aliases the buffer.
    out_v = np.empty(nbuf, np.int64)
    m = sum_sorted(keys, shift, weights, keys, out_v)
    runs.add(*_trim(keys, out_v, m))


def _trim(keys: np.ndarray, vals: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """First m entries; copied only when that frees much memory."""
    if m >= 0.75 * keys.size:
        return keys[:m], vals[:m]
    return keys[:m].copy(), vals[:m].copy()


def _to_csr(runs: _Runs, dense, row_start, row_len, n_kept) -> sp.csr_matrix:
    """Dense-table entries plus the sparse runs (disjoint pair sets) as one CSR int64."""
    keys, vals = runs.total()
    n = max(n_kept, 1)
    per_row = np.zeros(n_kept, dtype=np.int64)
    _kernels()[4](dense, row_start, row_len, per_row)
    per_row += np.bincount(keys // n, minlength=n_kept)[:n_kept]
    indptr = np.concatenate(([0], np.cumsum(per_row))).astype(np.int64)
    indices = np.empty(indptr[-1], dtype=np.int32)
    data = np.empty(indptr[-1], dtype=np.int64)
    _kernels()[3](dense, row_start, row_len, keys, vals, n_kept, indptr, indices, data)
    return sp.csr_matrix((data, indices, indptr), shape=(n_kept, n_kept))


class _NoBar:
    """What a disabled bar does: nothing."""

    def update(self, n: int) -> None:
        return None

    def close(self) -> None:
        return None


def _bar(total: int, enabled: bool, name: str):
    # No tqdm object at all when disabled: even a disabled one starts tqdm's monitor
    # thread, and a process with a thread running is never forked (runtime.executor), so
    # warm_kernels() made every LocalCluster spawn its workers (issue 18, item 4).
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=f"cooccur {name}", unit="tok",
                unit_scale=True, leave=False)


# ---------------------------------------------------------------------------------------
# Merge
# ---------------------------------------------------------------------------------------


def merge_counts(parts: Sequence[sp.spmatrix]) -> sp.csr_matrix:
    """Sum per-shard directed int64 counts. Integer addition: exact in any order."""
    if not parts:
        raise ValueError("no shard counts to merge")
    total = sp.csr_matrix(parts[0], dtype=np.int64, copy=True)
    for part in parts[1:]:
        total = total + sp.csr_matrix(part, dtype=np.int64)
    return total


def finalize(directed: sp.spmatrix, window: int, dtype: str = "float64") -> sp.csr_matrix:
    """X = (U + U^T) / lcm(1..window): the symmetric co-occurrence matrix (CSR, sorted).

    directed: int64 [n, n] summed counts. Returns CSR ``dtype`` [n, n]; one division per
    entry, so equal integer sums give bit-identical values.
    """
    u = sp.csr_matrix(directed, dtype=np.int64)
    sym = (u + u.T.tocsr()).tocsr()
    sym.eliminate_zeros()
    sym.sort_indices()
    data = (sym.data.astype(np.float64) / float(window_lcm(window))).astype(dtype, copy=False)
    # copy=False: at 50M+ nonzeros every spare copy is hundreds of MB of peak memory
    return sp.csr_matrix((data, sym.indices.astype(np.int32, copy=False),
                          sym.indptr.astype(np.int64, copy=False)), shape=sym.shape)


def count_cooccurrences(
    shards: Sequence[tuple[np.ndarray, np.ndarray]],
    counts: np.ndarray,
    config: CooccurConfig = CooccurConfig(),
    executor: Any = None,
) -> tuple[sp.csr_matrix, np.ndarray]:
    """In-memory convenience: (X CSR [n_kept, n_kept], token_ids int64 [n_kept]).

    shards: (ids uint32 [n], offsets int64 [n_docs+1]) pairs; counts: int [vocab_size].
    ``executor``: anything with ``.map`` (default serial).
    """
    token_ids = _vocabulary_or_raise(counts, config, "counts")
    _check_exact(sum(int(np.asarray(i).size) for i, _ in shards), config.window)
    lookup = row_lookup(token_ids, len(counts))
    fn = functools.partial(_count_pair, row_of_id=lookup, config=config)
    parts = (executor.map(fn, list(shards)) if executor is not None
             else [fn(s) for s in shards])
    return finalize(merge_counts(parts), config.window, config.value_dtype), token_ids


def _count_pair(shard: tuple[np.ndarray, np.ndarray], row_of_id: np.ndarray,
                config: CooccurConfig) -> sp.csr_matrix:
    return count_shard(shard[0], shard[1], row_of_id, config)


def _vocabulary_or_raise(counts: np.ndarray, config: CooccurConfig, where: str) -> np.ndarray:
    counts = np.asarray(counts)
    if counts.size == 0 or counts.sum() == 0:
        raise ValueError(f"{where} is empty (no token was counted): the corpus has no tokens")
    token_ids = kept_vocabulary(counts, config.min_count, config.max_vocab)
    if token_ids.size == 0:
        raise ValueError(
            f"no token id in {where} occurs at least min_count={config.min_count} times "
            f"(max count {int(counts.max())}); lower min_count or use a larger corpus"
        )
    return token_ids


def _check_exact(n_tokens: int, window: int) -> None:
    if n_tokens > max_exact_tokens(window):
        raise ValueError(
            f"{n_tokens} tokens could overflow the exact int64 sums for window {window} "
            f"(limit {max_exact_tokens(window)}); use a smaller window"
        )


# ---------------------------------------------------------------------------------------
# Bounded memory: runs spilled to disk, merged streaming
# ---------------------------------------------------------------------------------------

# Bytes per distinct directed pair while the sparse runs are spilled: the runs and their
# merge (32), row/column ids (12), U, U^T and U + U^T as CSR int64 (12 each, the sum up to
# twice as many entries).
SPILL_BYTES = 96
# Bytes per entry of a row band while the final merge sums the runs' slices of it (each
# slice's indices and data, the pairwise sums, the float values written out).
MERGE_BYTES = 48


def runs_budget_entries(config: CooccurConfig) -> int:
    """Distinct directed pairs the in-memory runs may hold before they are spilled: what
    ``memory_budget_mb`` leaves after the dense table (and its CSR copy at the end) and the
    pair buffer."""
    mb = 2**20
    fixed = 3 * config.dense_table_mb * mb + config.buffer_pairs * 8
    return max(int((config.memory_budget_mb * mb - fixed) // SPILL_BYTES), 1)


def _symmetrise(u: sp.csr_matrix) -> sp.csr_matrix:
    """U + U^T as CSR int64 with sorted indices (a self-pair counts twice, as the C tool)."""
    sym = (u + u.T.tocsr()).tocsr()
    sym.sort_indices()
    return sym


def _run_matrix(keys: np.ndarray, vals: np.ndarray, n: int) -> sp.csr_matrix:
    """Directed CSR int64 [n, n] of sorted unique pair keys a*n+b with their sums."""
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys // n, minlength=n), out=indptr[1:])
    return sp.csr_matrix((vals, (keys % n).astype(np.int32), indptr), shape=(n, n))


def write_run(sym: sp.csr_matrix, folder: Path) -> str:
    """Save a symmetric run (``indptr.npy`` int64 [n+1], ``indices.npy`` int32,
    ``data.npy`` int64 summed L/d counts) into a new ``folder``; returns its path."""
    folder.mkdir(parents=True)
    np.save(folder / "indptr.npy", sym.indptr.astype(np.int64), allow_pickle=False)
    np.save(folder / "indices.npy", sym.indices.astype(np.int32), allow_pickle=False)
    np.save(folder / "data.npy", sym.data.astype(np.int64), allow_pickle=False)
    return str(folder)


def count_shard_runs(
    ids: np.ndarray,
    offsets: np.ndarray,
    row_of_id: np.ndarray,
    config: CooccurConfig,
    spill_dir: str | Path,
    name: str = "shard",
    progress: bool = False,
) -> list[str]:
    """Count one shard within ``config.memory_budget_mb``: its symmetric counts as sorted
    runs on disk, for :func:`merge_runs`.

    Whenever the in-memory runs pass :func:`runs_budget_entries`, they are symmetrised and
    written to ``spill_dir/<name>-runNNNNN``; the last run also holds the dense table.
    Summed by :func:`merge_runs`, the runs of all shards give exactly the matrix of
    :func:`count_cooccurrences` (integer sums). ``name`` must be unique per shard.
    Returns the run folders (strings, cheap to send back from a worker).
    """
    scan = _ShardScan(ids, offsets, row_of_id, config, name)
    n = max(scan.n_kept, 1)
    paths: list[str] = []

    def spill(runs: _Runs) -> None:
        keys, vals = runs.total()
        runs.runs.clear()
        sym = _symmetrise(_run_matrix(keys, vals, n))
        del keys, vals
        paths.append(write_run(sym, Path(spill_dir) / f"{name}-run{len(paths):05d}"))

    runs = scan.run(progress, spill, runs_budget_entries(config))
    last = _symmetrise(_to_csr(runs, scan.dense, scan.row_start, scan.row_len, scan.n_kept))
    paths.append(write_run(last, Path(spill_dir) / f"{name}-run{len(paths):05d}"))
    return paths


def count_shard_dir_runs(shard: str, row_of_id: np.ndarray, config: CooccurConfig,
                         spill_dir: str) -> list[str]:
    """:func:`count_shard_runs` on a tokens shard folder (memory-mapped reads). Picklable:
    an executor maps it over shard folders; ``spill_dir`` must be visible to every worker
    and to the process that merges."""
    folder = Path(shard)
    ids = np.load(folder / "ids.npy", mmap_mode="r", allow_pickle=False)
    offsets = np.load(folder / "offsets.npy", allow_pickle=False)
    return count_shard_runs(ids, offsets, row_of_id, config, spill_dir, name=folder.name)


def _bands(per_row: np.ndarray, cap: int) -> list[tuple[int, int]]:
    """Consecutive row ranges [r0, r1) of at most ``cap`` entries each (a longer row
    alone)."""
    ends = np.cumsum(per_row)
    bands, r0 = [], 0
    while r0 < per_row.size:
        base = ends[r0 - 1] if r0 else 0
        r1 = max(int(np.searchsorted(ends, base + cap, side="right")), r0 + 1)
        bands.append((r0, min(r1, per_row.size)))
        r0 = bands[-1][1]
    return bands


def merge_runs(run_paths: Sequence[str | Path], n: int, config: CooccurConfig,
               out: str | Path, executor: Any = None) -> int:
    """Sum symmetric runs into ``out``, a ``cooc.npz`` (CSR of X = sum / lcm(1..window) in
    ``config.value_dtype``, as :func:`finalize` writes it), row band by row band.

    Each band holds at most ``memory_budget_mb`` / :data:`MERGE_BYTES` entries; the band's
    slice of every run is read from disk, summed (exact integer addition), divided and
    appended to raw part files next to ``out``, which are then framed into the npz.
    ``executor``: a distributed one sums contiguous groups of bands on its workers, two
    groups per worker, each into its own part files (so the merge is not a serial tail;
    ``out``'s folder must be visible to the workers); otherwise all in this process.
    The bytes are the same either way. Returns the number of nonzeros.
    """
    from tokalign_core.store.npzstream import NpzWriter

    out = Path(out)
    run_paths = [str(p) for p in run_paths]
    per_row = sum((np.diff(np.load(Path(p) / "indptr.npy", allow_pickle=False))
                   for p in run_paths), np.zeros(n, np.int64))
    cap = max(int(config.memory_budget_mb * 2**20) // MERGE_BYTES, 1)
    distributed = getattr(executor, "distributed", False)
    k = 2 * executor.n_workers if distributed else 1
    if distributed:
        # Bands small enough that every group gets some, and that the workers summing
        # side by side stay within the one budget together.
        cap = max(min(cap // executor.n_workers, -(-int(per_row.sum()) // k)), 1)
    groups = _band_groups(_bands(per_row, cap), per_row, k)
    parts = [str(out.with_name(f"{out.name}.part{i:05d}")) for i in range(len(groups))]
    fn = functools.partial(sum_band_group, run_paths=run_paths, n=n, config=config)
    jobs = list(zip(parts, groups, strict=True))
    try:
        rows = executor.map(fn, jobs) if distributed else [fn(j) for j in jobs]
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.concatenate([np.zeros(0, np.int64), *rows]), out=indptr[1:])
        with NpzWriter(out) as z:  # the member order and dtypes of scipy's save_npz
            z.write_file("indices", np.int32, [Path(p + ".indices") for p in parts])
            z.write("indptr", indptr)
            z.write("format", np.array(b"csr"))
            z.write("shape", np.array((n, n)))
            z.write_file("data", np.dtype(config.value_dtype), [Path(p + ".data") for p in parts])
    finally:
        for p in parts:
            Path(p + ".indices").unlink(missing_ok=True)
            Path(p + ".data").unlink(missing_ok=True)
    return int(indptr[-1])


def _band_groups(bands: list[tuple[int, int]], per_row: np.ndarray, k: int
                 ) -> list[list[tuple[int, int]]]:
    """``bands`` cut into at most ``k`` contiguous groups of about equal entries (no empty
    group; one group when ``k`` is 1 or there is nothing to sum)."""
    ends = np.cumsum(per_row)
    total = int(ends[-1]) if ends.size else 0
    groups: list[list[tuple[int, int]]] = []
    last = -1
    for r0, r1 in bands:
        # the group of the band's middle entry: monotone in r0, so groups stay contiguous
        mid2 = (int(ends[r0 - 1]) if r0 else 0) + int(ends[r1 - 1])
        g = min(k - 1, mid2 * k // (2 * total)) if total else 0
        if g != last:
            groups.append([])
            last = g
        groups[-1].append((r0, r1))
    return groups or [[(0, 0)]]


def sum_band_group(job: tuple[str, list[tuple[int, int]]], run_paths: Sequence[str], n: int,
                   config: CooccurConfig) -> np.ndarray:
    """Sum the runs over a group of consecutive row bands into raw files ``<part>.indices``
    (int32) and ``<part>.data`` (``config.value_dtype``, sum / lcm). Picklable, for an
    executor. job: (part path prefix, [(r0, r1), ...]). Returns the entries per row, int64
    [rows of the group]."""
    from tokalign_core.store.npzstream import npy_member

    part, bands = job
    runs = [(np.load(Path(p) / "indptr.npy", allow_pickle=False),
             npy_member(Path(p) / "indices.npy"), npy_member(Path(p) / "data.npy"))
            for p in run_paths]
    lcm = float(window_lcm(config.window))
    rows = []
    with open(part + ".indices", "wb") as fi, open(part + ".data", "wb") as fd:
        for r0, r1 in bands:
            band = _sum_band(runs, r0, r1, n)
            band.indices.astype(np.int32, copy=False).tofile(fi)
            (band.data.astype(np.float64) / lcm).astype(config.value_dtype).tofile(fd)
            rows.append(np.diff(band.indptr).astype(np.int64))
    return np.concatenate(rows) if rows else np.zeros(0, np.int64)


def _sum_band(runs, r0: int, r1: int, n: int) -> sp.csr_matrix:
    """Rows [r0, r1) summed over the runs: CSR int64 [r1-r0, n], sorted indices."""
    total = sp.csr_matrix((r1 - r0, n), dtype=np.int64)
    for ip, indices, data in runs:
        lo, hi = int(ip[r0]), int(ip[r1])
        if hi > lo:
            part = sp.csr_matrix((data.read(lo, hi), indices.read(lo, hi), ip[r0:r1 + 1] - lo),
                                 shape=(r1 - r0, n))
            total = total + part
    total.sort_indices()
    return total


# ---------------------------------------------------------------------------------------
# Artifacts
# ---------------------------------------------------------------------------------------


def tokens_shards(tokens_dir: Path) -> list[Path]:
    """Training shard folders (``shard-*``; the held-out split is not counted)."""
    shards = sorted(p for p in tokens_dir.glob("shard-*") if p.is_dir())
    if not shards:
        raise FileNotFoundError(f"tokens artifact {tokens_dir} has no shard-* folders")
    check_shard_names(tokens_dir, [s.name for s in shards])
    for s in shards:
        for f in ("ids.npy", "offsets.npy"):
            if not (s / f).exists():
                raise FileNotFoundError(f"tokens shard {s} has no {f}; rebuild the tokens")
    return shards


def count_shard_dir(shard: str, row_of_id: np.ndarray, config: CooccurConfig) -> sp.csr_matrix:
    """:func:`count_shard` on a tokens shard folder (memory-mapped reads). Picklable."""
    folder = Path(shard)
    ids = np.load(folder / "ids.npy", mmap_mode="r", allow_pickle=False)
    offsets = np.load(folder / "offsets.npy", allow_pickle=False)
    return count_shard(ids, offsets, row_of_id, config, name=folder.name)


def _shard_tokens(shard: Path) -> int:
    return int(np.load(shard / "ids.npy", mmap_mode="r", allow_pickle=False).shape[0])


def build_cooccur(
    tokens: ArtifactRef | str | Path,
    config: CooccurConfig,
    store: ArtifactStore,
    executor: Any = None,
) -> ArtifactRef:
    """Count a tokens artifact into a **cooccur** artifact (``cooc.npz``, ``token_ids.npy``,
    ``meta.json``). ``executor``: a :mod:`tokalign_core.runtime.executor` executor (default serial,
    one shard at a time). Memory stays within ``config.memory_budget_mb`` per shard count
    (:func:`count_shard_runs` spills sorted runs under ``<store root>/.spill``) and for the
    merge (:func:`merge_runs` streams them into ``cooc.npz``), plus the shard's tokens (8
    bytes each). The result equals :func:`count_cooccurrences` exactly. Returns the ref.
    """
    from tokalign_core.runtime.executor import SerialExecutor

    folder = input_dir(tokens, "tokens", ["counts.npy"])
    shards = tokens_shards(folder)
    counts = np.load(folder / "counts.npy", allow_pickle=False)
    token_ids = _vocabulary_or_raise(counts, config, f"{folder}/counts.npy")
    n_tokens = sum(_shard_tokens(s) for s in shards)
    _check_exact(n_tokens, config.window)
    executor = executor or SerialExecutor(progress=True, desc="cooccur shards")
    if getattr(executor, "distributed", False):
        warm_kernels()  # a LocalCluster forked on the first map inherits them
    # Runs and the merged matrix are written next to the store (same file system, so the
    # finished cooc.npz is moved, not copied); the folder goes on success, on error, and
    # (swept by the next run) after a kill.
    with spill_folder(store.root / ".spill", "cooccur-") as tmp:
        fn = functools.partial(count_shard_dir_runs, row_of_id=row_lookup(token_ids, counts.size),
                               config=config, spill_dir=tmp)
        runs = [r for part in executor.map(fn, [str(s) for s in shards]) for r in part]
        nnz = merge_runs(runs, int(token_ids.size), config, Path(tmp) / "cooc.npz", executor)
        meta = _meta(folder, config, token_ids, counts, nnz, n_tokens, len(shards))
        meta["spilled_runs"] = len(runs) - len(shards)
        with store.writer("cooccur", meta) as w:
            os.replace(Path(tmp) / "cooc.npz", w.path("cooc.npz"))
            np.save(w.path("token_ids.npy"), token_ids, allow_pickle=False)
    log.info("cooccur: %d kept tokens, %d nonzeros, %d runs -> %s", token_ids.size, nnz,
             len(runs), w.ref.path)
    return w.ref


def warm_kernels() -> None:
    """Compile (or load from numba's disk cache) the counting kernels for the types real
    shards use, so worker processes forked from this one start with them ready."""
    ids = (np.arange(400, dtype=np.uint32) * 7) % 13
    # no dense table and a tiny buffer: the scan, flush, run-merge and CSR kernels all run
    count_shard(ids, np.array([0, 400], np.int64), row_lookup(np.arange(13), 13),
                CooccurConfig(window=15, dense_table_mb=0.0, buffer_pairs=64))


def _meta(folder: Path, config: CooccurConfig, token_ids, counts, nnz: int, n_tokens: int,
          n_shards: int) -> dict[str, Any]:
    tokens_meta = read_meta(folder)
    kept = int(counts[token_ids].sum())
    return {
        "stage": "cooccur",
        "config": config.model_dump(mode="json"),
        "config_digest": config.digest(),
        "tokens_artifact": str(folder),
        "tokens_sha256": folder_digest(folder, "tokens"),
        "tokenizer": tokens_meta.get("tokenizer"),
        "tokenizer_digest": tokens_meta.get("tokenizer_digest"),
        "vocab_size": int(counts.size),
        "n_kept": int(token_ids.size),
        "n_shards": n_shards,
        "n_tokens": n_tokens,
        "n_tokens_kept": kept,
        "n_tokens_dropped": int(counts.sum()) - kept,
        "nnz": int(nnz),
        "lcm": window_lcm(config.window),
        "symmetric": True,
        "weighting": "1/distance",
    }


def load_cooccur(ref: ArtifactRef | str | Path) -> tuple[sp.csr_matrix, np.ndarray, dict]:
    """(X CSR [n, n], token_ids int64 [n], meta) of a cooccur artifact (no pickle)."""
    folder = input_dir(ref, "cooccur", ["cooc.npz", "token_ids.npy"])
    from tokalign_core.store.inputs import reading

    fix = f"delete {folder} and rerun `tokalign cooccur`"
    with reading(folder / "cooc.npz", fix):
        cooc = sp.load_npz(folder / "cooc.npz").tocsr()
    with reading(folder / "token_ids.npy", fix):
        token_ids = np.load(folder / "token_ids.npy", allow_pickle=False)
    if cooc.shape != (token_ids.size, token_ids.size):
        raise ValueError(f"cooccur artifact {folder}: matrix {cooc.shape} does not match "
                         f"{token_ids.size} token ids; delete it and rerun `tokalign cooccur`")
    return cooc, token_ids, read_meta(folder)
