"""GloVe at scale: the default output does not depend on the core count (fixed block
grid), and the out-of-core engine (nonzeros streamed from disk in buckets) gives the
same vectors as the in-memory one for a seed, whatever the memory budget's spill."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import sys
import numpy as np, scipy.sparse as sp
from tokalign_core.configs.glove import GloveConfig
from tokalign_core.glove import train_glove
x = sp.load_npz(sys.argv[1])
res = train_glove(x, GloveConfig(dim=8, iterations=3, device="cpu"), progress=False)
np.save(sys.argv[2], res.vectors)
"""


def _random_cooc(n: int = 60, density: float = 0.3, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    x = sp.random(n, n, density=density, random_state=rng, format="csr") * 20
    return (x + x.T).tocsr()


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
