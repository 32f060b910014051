"""GloVe at scale: the default output does not depend on the core count (fixed block
grid), and the out-of-core engine (nonzeros streamed from disk in buckets) gives the
same vectors as the in-memory one for a seed, whatever the memory budget's spill."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import sys
import numpy as np, scipy.sparse as sp
from tokalign_core.configs.glove import GloveConfig
from tokalign_core.embed.glove import train_glove
x = sp.load_npz(sys.argv[1])
res = train_glove(x, GloveConfig(dim=8, iterations=3, device="cpu"), progress=False)
np.save(sys.argv[2], res.vectors)
"""


def _random_cooc(n: int = 60, density: float = 0.3, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    x = sp.random(n, n, density=density, random_state=rng, format="csr") * 20
    return (x + x.T).tocsr()


@pytest.mark.slow  # two fresh processes (~15 s); the in-process 1-vs-2-thread test is fast
def test_default_vectors_do_not_depend_on_the_thread_count(tmp_path):
    # Issue 16 defect 5: NUMBA_NUM_THREADS=1 and =2 gave different vectors for one config.
    sp.save_npz(tmp_path / "x.npz", _random_cooc())
    out = {}
    for threads in ("1", "2"):
        env = {**os.environ, "NUMBA_NUM_THREADS": threads, "PYTHONPATH": str(ROOT),
               "OMP_NUM_THREADS": "1"}
        out[threads] = tmp_path / f"v{threads}.npy"
        subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "x.npz"),
                        str(out[threads])], check=True, env=env, cwd=ROOT, timeout=300)
    a, b = np.load(out["1"]), np.load(out["2"])
    assert a.tobytes() == b.tobytes()


def _cfg(**kw):
    from tokalign_core.configs.glove import GloveConfig

    base = {"dim": 8, "iterations": 3, "device": "cpu", "threads": 2, "memory_budget_mb": 0.01}
    return GloveConfig(**{**base, **kw})


def test_spilled_buckets_give_the_in_memory_result(monkeypatch, tmp_path):
    import tokalign_core.embed.glove as glove

    x = _random_cooc(n=80)
    runs = {}
    for where, fraction in (("memory", float("inf")), ("disk", 0.0)):
        monkeypatch.setattr(glove, "SPILL_FRACTION", fraction)
        runs[where] = glove.train_glove(x, _cfg(), progress=False, workdir=tmp_path / where)
    assert not runs["memory"].spilled and runs["disk"].spilled
    assert runs["disk"].buckets == runs["memory"].buckets > 8  # several buckets per stratum
    assert runs["disk"].vectors.tobytes() == runs["memory"].vectors.tobytes()
    assert runs["disk"].costs == runs["memory"].costs
    assert list((tmp_path / "disk").iterdir()) == []  # the spill folder is cleaned up
    # the torch engine reads the same buckets in the same order
    monkeypatch.setattr(glove, "SPILL_FRACTION", 0.0)
    t = glove.train_glove(x, _cfg(engine="torch", batch_size=1, dtype="float64"),
                          progress=False)
    nb = glove.train_glove(x, _cfg(dtype="float64"), progress=False)
    np.testing.assert_allclose(t.costs, nb.costs, rtol=1e-10)


def test_budget_changes_buckets_not_quality():
    from tokalign_core.embed.glove import train_glove

    x = _random_cooc(n=80)
    small = train_glove(x, _cfg(iterations=15), progress=False)
    whole = train_glove(x, _cfg(iterations=15, memory_budget_mb=64), progress=False)
    assert small.buckets > whole.buckets == 8
    assert small.costs[-1] == pytest.approx(whole.costs[-1], rel=0.05)


def test_artifact_is_streamed_and_equals_the_in_memory_matrix(tmp_path):
    from tokalign_core.embed.artifact import Embeddings
    from tokalign_core.embed.glove import build_glove, train_glove
    from tokalign_core.store.artifacts import ArtifactStore

    x = _random_cooc(n=50)
    folder = tmp_path / "cooc"
    folder.mkdir()
    sp.save_npz(folder / "cooc.npz", x, compressed=False)
    np.save(folder / "token_ids.npy", np.arange(50, dtype=np.int64))
    store = ArtifactStore(tmp_path / "store")
    emb = Embeddings.load(build_glove(folder, _cfg(), store, progress=False))
    vectors, meta = emb.vectors, emb.meta
    assert vectors.tobytes() == train_glove(x, _cfg(), progress=False).vectors.tobytes()
    assert meta["threads"] == 2 and meta["spilled"] and meta["nnz"] == x.nnz
    assert list((store.root / ".spill").iterdir()) == []
