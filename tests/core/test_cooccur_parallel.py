"""Co-occurrence with workers (issue 18, item 4): the distributed path must fork its
workers (no thread left behind by the counting code) and give byte-identical artifacts."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tokalign_core.runtime import executor as ex_mod


def test_warm_kernels_starts_no_thread_so_workers_can_fork():
    """``build_cooccur`` warms the kernels in the command's process right before the
    LocalCluster starts; a thread left running by that (tqdm's monitor thread, made by a
    disabled progress bar) made every CLI run spawn its workers, which then re-imported
    everything. Run in a fresh interpreter: pytest's own threads must not count."""
    code = textwrap.dedent("""
        import threading
        from tokalign_core.embed.cooccur import warm_kernels
        from tokalign_core.runtime.executor import resolve_start_method
        warm_kernels()
        print(threading.active_count(), [t.name for t in threading.enumerate()],
              resolve_start_method(None))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == "1", out
    assert out[-1] == "fork"


def test_start_method_is_recorded():
    ex = ex_mod.DaskExecutor(n_workers=2, progress=False)
    assert ex.start_method is None  # nothing started: decided at the first map


# --- the merge on the workers -----------------------------------------------------------

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tokalign_core.embed.cooccur import (  # noqa: E402
    _band_groups,
    _bands,
    count_shard_runs,
    kept_vocabulary,
    merge_runs,
    row_lookup,
)

from .test_cooccur import _split, _zipf_corpus  # noqa: E402
from .test_cooccur_spill import _tiny  # noqa: E402


class _Workers:
    """A distributed executor's interface, run in this process (what the merge sends to
    workers is pickled, as Dask would)."""

    distributed = True

    def __init__(self, n_workers: int = 2, fail_after: int | None = None):
        self.n_workers = n_workers
        self.fail_after = fail_after
        self.jobs = 0

    def map(self, fn, items):
        import pickle

        out = []
        for item in items:
            if self.fail_after is not None and self.jobs == self.fail_after:
                raise RuntimeError("worker lost")
            self.jobs += 1
            out.append(pickle.loads(pickle.dumps(fn))(pickle.loads(pickle.dumps(item))))
        return out


def _runs(tmp_path, seed: int = 5):
    ids, offsets, counts = _zipf_corpus(30_000, 400, seed=seed)
    cfg = _tiny()
    lookup = row_lookup(kept_vocabulary(counts, 2), counts.size)
    runs = []
    for k, (i, o) in enumerate(_split(ids, offsets, 3)):
        runs += count_shard_runs(i, o, lookup, cfg, tmp_path / "spill", name=f"s{k}")
    return runs, int(lookup.max()) + 1, cfg


def test_band_groups_are_contiguous_balanced_and_cover_every_row():
    per_row = np.array([5, 0, 7, 1, 1, 9, 2, 2, 3, 4], np.int64)
    bands = _bands(per_row, 4)
    for k in (1, 2, 4, 50):
        groups = _band_groups(bands, per_row, k)
        assert [b for g in groups for b in g] == bands  # in order, nothing lost
        assert 1 <= len(groups) <= k and all(groups)
    two = _band_groups(bands, per_row, 2)
    sizes = [sum(int(per_row[r0:r1].sum()) for r0, r1 in g) for g in two]
    assert max(sizes) <= 2 * min(sizes)  # about half the entries each (bands are coarse)
    assert _band_groups([], np.zeros(0, np.int64), 4) == [[(0, 0)]]


@pytest.mark.parametrize("budget", ["tiny", "roomy"])
def test_merge_on_workers_is_byte_identical_to_the_merge_in_one_process(tmp_path, budget):
    runs, n, cfg = _runs(tmp_path)
    if budget == "roomy":  # one band would hold every row: it is still split for the workers
        cfg = cfg.model_copy(update={"memory_budget_mb": 512})
    one = merge_runs(runs, n, cfg, tmp_path / "one.npz")
    workers = _Workers(n_workers=2)
    two = merge_runs(runs, n, cfg, tmp_path / "two.npz", workers)
    assert workers.jobs == 4  # two band groups per worker, each into its own part files
    assert one == two
    assert (tmp_path / "one.npz").read_bytes() == (tmp_path / "two.npz").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.npz", "spill", "two.npz"]


def test_a_failed_merge_leaves_no_part_files(tmp_path):
    runs, n, cfg = _runs(tmp_path)
    with pytest.raises(RuntimeError, match="worker lost"):
        merge_runs(runs, n, cfg, tmp_path / "cooc.npz", _Workers(fail_after=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spill"]


@pytest.mark.slow  # starts a LocalCluster
def test_build_cooccur_with_a_local_cluster_is_byte_identical(tmp_path):
    from tokalign_core.embed.cooccur import build_cooccur
    from tokalign_core.store.artifacts import ArtifactStore

    from .test_cooccur import _write_tokens

    ids, offsets, counts = _zipf_corpus(30_000, 400, seed=6)
    tokens = _write_tokens(tmp_path / "tokens", _split(ids, offsets, 4), counts)
    cfg = _tiny()
    serial = build_cooccur(tokens, cfg, ArtifactStore(tmp_path / "a"))
    ex = ex_mod.DaskExecutor(n_workers=2, progress=False)
    try:
        store = ArtifactStore(tmp_path / "b")
        dask = build_cooccur(tokens, cfg, store, ex)
    finally:
        ex.close()
    for name in ("cooc.npz", "token_ids.npy"):
        assert (Path(serial.path) / name).read_bytes() == (Path(dask.path) / name).read_bytes()
    assert list((store.root / ".spill").iterdir()) == []
