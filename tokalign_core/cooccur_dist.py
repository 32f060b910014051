"""Co-occurrence counting spread over workers, partial counts exchanged through files.

Used by :func:`tokalign_core.cooccur.build_cooccur` when its executor is distributed (a
Dask LocalCluster or a remote scheduler). Where the time of the naive version went (issue
18, ``benchmarks/parallel.md``): every worker pickled its shard's int64 CSR (12 bytes per
nonzero, ~0.5 GB at 10M tokens) through the scheduler to the client, which then summed
the shards and symmetrised X = U + U^T alone, a serial tail as long as half the counting.
Here nothing large crosses the scheduler and the tail runs on the workers too:

1. **Count** (one task per tokens shard): :func:`count_part` counts the shard's directed
   matrix U_k (:func:`tokalign_core.cooccur.count_shard`, unchanged) and writes its CSR
   arrays to ``<scratch>/part-<shard>/{indptr,indices,data}.npy``; the task returns the
   folder name.
2. **Symmetrise by row blocks** (one task per block, blocks balanced by nonzeros):
   :func:`symmetric_block` reads every part memory-mapped and builds rows [r0, r1) of
   X = sum_k U_k + (sum_k U_k)^T: the rows of each U_k in the block plus the entries whose
   *column* is in the block, transposed. Integer sums, divided once as in
   :func:`tokalign_core.cooccur.finalize`, so every row equals the serial one bit for bit.
   It writes ``<scratch>/block-<i>/{row_nnz,indices,data}.npy``.
3. **Assemble** (this process): row counts -> indptr, the blocks' indices and data copied
   in order into the final arrays (one sequential pass) and saved as ``cooc.npz``: the
   same bytes as the serial path.

The scratch folder is inside the artifact writer's temp folder (so the workers must share
the artifact root's file system, as they already must for the tokens) and is deleted
before the artifact is committed; a killed run leaves it to the store's sweep of dead
writers. A task that dies with its worker is re-run by Dask on another worker; tasks only
write their own folder (atomically renamed into place), so a re-run is harmless.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from tokalign_core.configs.cooccur import CooccurConfig, window_lcm

ROW_CHUNK_NNZ = 1 << 24  # nonzeros scanned at a time when collecting a block's columns
_ARRAYS = ("indptr", "indices", "data")


def _save_arrays(folder: Path, arrays: dict[str, np.ndarray]) -> str:
    """Write ``name.npy`` files into a temp sibling, then rename it to ``folder``: a
    re-run task (its first worker killed) never leaves a half-written folder behind."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    for name, arr in arrays.items():
        np.save(tmp / f"{name}.npy", arr, allow_pickle=False)
    try:
        os.rename(tmp, folder)
    except OSError:  # another attempt finished first: same content, keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return str(folder)


def count_part(shards: Sequence[str], row_of_id: np.ndarray, config: CooccurConfig,
               scratch: str, index: int) -> str:
    """Count a group of tokens shard folders and sum them (one worker's share) into
    ``<scratch>/part-<index>`` (directed int64 CSR arrays). Returns that folder.
    Picklable (module-level)."""
    from tokalign_core.cooccur import count_shard_dir, merge_counts

    u = merge_counts([count_shard_dir(s, row_of_id, config) for s in shards])
    return _save_arrays(Path(scratch) / f"part-{index:05d}",
                        {"indptr": u.indptr.astype(np.int64, copy=False),
                         "indices": u.indices.astype(np.int32, copy=False),
                         "data": u.data.astype(np.int64, copy=False)})


def shard_groups(sizes: Sequence[int], n_groups: int) -> list[list[int]]:
    """Split shard indices into at most ``n_groups`` groups of about equal total size
    (largest shard first onto the lightest group); each group lists indices ascending."""
    groups: list[list[int]] = [[] for _ in range(max(1, min(n_groups, len(sizes))))]
    load = [0] * len(groups)
    for i in sorted(range(len(sizes)), key=lambda k: (-sizes[k], k)):
        g = load.index(min(load))
        groups[g].append(i)
        load[g] += sizes[i]
    return [sorted(g) for g in groups if g]


def _load_part(folder: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr int64 [n+1], indices int32 [nnz], data int64 [nnz]), memory-mapped."""
    return tuple(np.load(Path(folder) / f"{a}.npy", mmap_mode="r", allow_pickle=False)
                 for a in _ARRAYS)  # type: ignore[return-value]


def _columns_in(indptr, indices, data, r0: int, r1: int, n: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entries of one part whose column is in [r0, r1), as (column - r0, row, value),
    scanning ``ROW_CHUNK_NNZ`` nonzeros at a time so memory stays at one chunk."""
    out_c, out_r, out_v = [], [], []
    nnz = int(indptr[n])
    for lo in range(0, nnz, ROW_CHUNK_NNZ):
        hi = min(nnz, lo + ROW_CHUNK_NNZ)
        cols = np.asarray(indices[lo:hi])
        pos = np.flatnonzero((cols >= r0) & (cols < r1))
        if pos.size:
            out_c.append(cols[pos] - r0)
            out_v.append(np.asarray(data[lo:hi])[pos])
            # the row of entry p is the last row starting at or before p
            out_r.append((np.searchsorted(indptr, pos + lo, side="right") - 1)
                         .astype(np.int32))
    if not out_c:
        empty = np.empty(0, np.int32)
        return empty, empty, np.empty(0, np.int64)
    return np.concatenate(out_c), np.concatenate(out_r), np.concatenate(out_v)


def symmetric_block(parts: Sequence[str], r0: int, r1: int, n: int, window: int,
                    value_dtype: str, scratch: str, index: int) -> str:
    """Rows [r0, r1) of the symmetric X (see the module docstring) from the parts'
    directed counts; writes ``<scratch>/block-<index>/{row_nnz,indices,data}.npy``
    (int64 [r1-r0], int32 [nnz], ``value_dtype`` [nnz]) and returns that folder."""
    m = r1 - r0
    total = None
    for folder in parts:
        indptr, indices, data = _load_part(folder)
        lo, hi = int(indptr[r0]), int(indptr[r1])
        # U's own rows of the block (a CSR slice: sorted, no duplicates) ...
        own = sp.csr_matrix((np.asarray(data[lo:hi]), np.asarray(indices[lo:hi]),
                             np.asarray(indptr[r0:r1 + 1]) - lo), shape=(m, n))
        # ... plus U^T's: the entries whose column falls in the block, transposed. They
        # were scanned in U's (row, column) order, so the stable COO -> CSR conversion
        # leaves every row's columns sorted: both terms are canonical and the additions
        # below are linear merges (integers: exact in any order).
        c, r, v = _columns_in(indptr, indices, data, r0, r1, n)
        for term in (own, sp.coo_matrix((v, (c, r)), shape=(m, n)).tocsr()):
            total = term if total is None else total + term
    total = sp.csr_matrix(total)
    total.eliminate_zeros()
    total.sort_indices()
    data = (total.data.astype(np.float64) / float(window_lcm(window))).astype(value_dtype,
                                                                            copy=False)
    return _save_arrays(Path(scratch) / f"block-{index:05d}",
                        {"row_nnz": np.diff(total.indptr).astype(np.int64),
                         "indices": total.indices.astype(np.int32, copy=False),
                         "data": data})


def row_blocks(parts: Sequence[str], n: int, n_blocks: int) -> list[tuple[int, int]]:
    """``n_blocks`` row ranges [r0, r1) covering [0, n) with about equal nonzeros of
    U + U^T (row counts plus column counts over all parts); empty ranges dropped."""
    weight = np.zeros(n, dtype=np.int64)
    for folder in parts:
        indptr, indices, _ = _load_part(folder)
        weight += np.diff(np.asarray(indptr))
        weight += np.bincount(np.asarray(indices), minlength=n)[:n]
    cum = np.cumsum(weight)
    targets = cum[-1] * np.arange(1, n_blocks) / n_blocks if n else []
    cuts = [0, *np.searchsorted(cum, targets, side="left").tolist(), n]
    cuts = sorted(set(min(max(c, 0), n) for c in cuts))
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a]


def assemble(blocks: Sequence[str], n: int) -> sp.csr_matrix:
    """The final CSR [n, n] from the blocks in row order (one copy of indices and data)."""
    row_nnz = [np.load(Path(b) / "row_nnz.npy", allow_pickle=False) for b in blocks]
    counts = np.concatenate(row_nnz) if row_nnz else np.zeros(0, np.int64)
    if counts.size != n:
        raise RuntimeError(f"co-occurrence blocks cover {counts.size} rows, expected {n}")
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    nnz = int(indptr[-1])
    first = np.load(Path(blocks[0]) / "data.npy", mmap_mode="r") if blocks else None
    indices = np.empty(nnz, dtype=np.int32)
    data = np.empty(nnz, dtype=first.dtype if first is not None else np.float64)
    pos = 0
    for b in blocks:
        bi = np.load(Path(b) / "indices.npy", mmap_mode="r", allow_pickle=False)
        bd = np.load(Path(b) / "data.npy", mmap_mode="r", allow_pickle=False)
        indices[pos:pos + bi.size] = bi
        data[pos:pos + bd.size] = bd
        pos += bi.size
    return sp.csr_matrix((data, indices, indptr), shape=(n, n))


def count_distributed(shards: Sequence[Path], row_of_id: np.ndarray, n_kept: int,
                      config: CooccurConfig, executor: Any, scratch: Path
                      ) -> sp.csr_matrix:
    """X (CSR ``config.value_dtype`` [n_kept, n_kept]) of the tokens ``shards``, counted
    and symmetrised on ``executor``'s workers through files under ``scratch`` (which the
    workers must see). Equal, array for array, to the serial
    ``finalize(merge_counts([count_shard(s) ...]))``."""
    import functools

    scratch.mkdir(parents=True, exist_ok=True)
    workers = max(1, int(getattr(executor, "n_workers", 1)))
    # One counting task per worker (shards balanced by tokens): fewer, larger parts make
    # the symmetrisation below cheaper (it reads every part once per block).
    sizes = [int(np.load(s / "ids.npy", mmap_mode="r").shape[0]) for s in shards]
    groups = shard_groups(sizes, workers)
    count = functools.partial(_count_job, row_of_id=row_of_id, config=config,
                              scratch=str(scratch))
    parts = executor.map(count, [([str(shards[i]) for i in g], k)
                                 for k, g in enumerate(groups)])
    # Two blocks per worker: a worker that finishes early takes the next block.
    ranges = row_blocks(parts, n_kept, 2 * workers)
    jobs = [(r0, r1, i) for i, (r0, r1) in enumerate(ranges)]
    block = functools.partial(_block_job, parts=list(parts), n=n_kept, window=config.window,
                              value_dtype=config.value_dtype, scratch=str(scratch))
    blocks = executor.map(block, jobs)
    cooc = assemble(blocks, n_kept)
    shutil.rmtree(scratch, ignore_errors=True)
    return cooc


def _count_job(job: tuple[list[str], int], row_of_id: np.ndarray, config: CooccurConfig,
               scratch: str) -> str:
    return count_part(job[0], row_of_id, config, scratch, job[1])


def _block_job(job: tuple[int, int, int], parts: list[str], n: int, window: int,
               value_dtype: str, scratch: str) -> str:
    r0, r1, index = job
    return symmetric_block(parts, r0, r1, n, window, value_dtype, scratch, index)
