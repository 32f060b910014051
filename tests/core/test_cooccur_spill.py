"""Co-occurrence counting within a memory budget: runs spilled to disk and merged streaming
give exactly the in-memory matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from tokalign_core.configs.cooccur import CooccurConfig
from tokalign_core.embed.cooccur import (
    build_cooccur,
    count_cooccurrences,
    count_shard_runs,
    kept_vocabulary,
    load_cooccur,
    merge_runs,
    row_lookup,
    runs_budget_entries,
)
from tokalign_core.store.artifacts import ArtifactStore

from .test_cooccur import _split, _write_tokens, _zipf_corpus

# A tiny dense table and pair buffer leave ~550 distinct pairs for the in-memory runs and
# ~1,200 entries per merge band: many spills per shard, many bands.
TINY = {"min_count": 2, "window": 5, "dense_table_mb": 0.002, "buffer_pairs": 256}


def _tiny(**kw) -> CooccurConfig:
    fixed = 3 * TINY["dense_table_mb"] + TINY["buffer_pairs"] * 8 / 2**20
    return CooccurConfig(**TINY, memory_budget_mb=fixed + 0.05, **kw)


def _assert_same_csr(a: sp.csr_matrix, b: sp.csr_matrix) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    for name in ("indptr", "indices", "data"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_spilled_build_equals_in_memory_counts_exactly(tmp_path, dtype):
    ids, offsets, counts = _zipf_corpus(30_000, 400, seed=3)
    shards = _split(ids, offsets, 3)
    tokens = _write_tokens(tmp_path / "tokens", shards, counts)
    cfg = _tiny(value_dtype=dtype)
    assert runs_budget_entries(cfg) < 1000
    store = ArtifactStore(tmp_path / "store")
    x, token_ids, meta = load_cooccur(build_cooccur(tokens, cfg, store))
    want, want_ids = count_cooccurrences(shards, counts, cfg)
    np.testing.assert_array_equal(token_ids, want_ids)
    _assert_same_csr(x, want)
    assert meta["spilled_runs"] > 10 and meta["nnz"] == want.nnz
    # the budget does not enter the result: a roomy one gives the same matrix, unspilled
    roomy = load_cooccur(build_cooccur(tokens, cfg.model_copy(update={"memory_budget_mb": 512}),
                                       ArtifactStore(tmp_path / "store2")))
    _assert_same_csr(roomy[0], want)
    assert roomy[2]["spilled_runs"] == 0
    assert list((store.root / ".spill").iterdir()) == []


def test_run_interface_for_workers(tmp_path):
    # The function boundary a distributed engine calls: each worker counts its shards into
    # run folders under a shared spill folder; one process merges them streaming.
    ids, offsets, counts = _zipf_corpus(20_000, 300, seed=4)
    cfg = _tiny()
    lookup = row_lookup(kept_vocabulary(counts, 2), counts.size)
    runs = []
    for k, (i, o) in enumerate(_split(ids, offsets, 2)):
        runs += count_shard_runs(i, o, lookup, cfg, tmp_path / "spill", name=f"s{k}")
    n = int(lookup.max()) + 1
    nnz = merge_runs(runs[::-1], n, cfg, tmp_path / "cooc.npz")  # any run order
    want, _ = count_cooccurrences([(ids, offsets)], counts, cfg)
    _assert_same_csr(sp.load_npz(tmp_path / "cooc.npz"), want)
    assert nnz == want.nnz and len(runs) > 4


def test_budget_too_small_for_the_fixed_parts_is_a_clear_error():
    with pytest.raises(ValueError, match="memory_budget_mb 100.0 leaves no room"):
        CooccurConfig(memory_budget_mb=100)  # the dense table alone takes 3 x 128 MB


def test_spill_folders_of_killed_runs_are_swept_and_live_ones_kept(tmp_path):
    import subprocess
    import sys

    from tokalign_core.store.spill import LOCK, spill_folder

    root = tmp_path / ".spill"
    # a run killed with -9 while spilling: its folder stays, its lock dies with it
    code = ("import os, sys; from tokalign_core.store.spill import spill_folder\n"
            "with spill_folder(sys.argv[1], 'cooccur-') as f:\n"
            "    (f / 'run').write_bytes(b'x'); print(f, flush=True); os._exit(9)\n")
    out = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True,
                         text=True, check=False)
    dead = Path(out.stdout.strip())
    assert (dead / "run").exists()
    with spill_folder(root, "glove-") as live:
        assert (live / LOCK).exists() and not dead.exists()  # swept when the next one opens
        with spill_folder(root, "cooccur-") as other:  # a second live run
            assert live.exists() and other.exists()
        assert not other.exists() and live.exists()
    assert list(root.iterdir()) == []
