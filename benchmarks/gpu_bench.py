"""GPU vs CPU side by side: CSLS retrieval, VecMap and GloVe on both sides of the backend
switch, interleaved (CPU, GPU, CPU, GPU), written as a markdown report.

Synthetic inputs with a known answer (a rotated, noised copy), so every row also checks
the result: P@1 of the retrieval / VecMap mapping against the hidden pairing, and GloVe's
final cost. ``benchmarks/gpu.sh`` runs this with the GPU tests on a GPU machine;

    python benchmarks/gpu_bench.py --backends numpy cupy --out benchmarks/out/gpu.md

runs it directly (``--backends numpy`` alone works on any machine, to check the script).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pair(n: int, d: int, seed: int = 0, rotate: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """x [n, d] with a decaying spectrum and z = x Q + noise (row i matches row i; Q = I
    with ``rotate=False``, for the retrieval alone)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * np.linspace(2.0, 0.5, d)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    z = (x @ q if rotate else x) + 0.3 * rng.standard_normal((n, d))
    return x.astype(np.float32), z.astype(np.float32)


def _sync(backend: str) -> None:
    if backend == "cupy":
        import cupy

        cupy.cuda.Device().synchronize()


def bench_retrieval(backend: str, n: int, d: int) -> dict:
    from tokalign_core.align.retrieval import retrieve_both
    from tokalign_core.runtime.backend import asarray, to_numpy

    x, z = pair(n, d, rotate=False)
    xa, za = asarray(x, backend), asarray(z, backend)
    t0 = time.perf_counter()
    fwd, _ = retrieve_both(xa, za, "csls", 10, 64)
    _sync(backend)
    secs = time.perf_counter() - t0
    p1 = float((to_numpy(fwd.indices) == np.arange(n)).mean())
    return {
        "stage": f"CSLS retrieval {n:,} x {n:,} x {d}",
        "seconds": secs,
        "check": f"P@1 {p1:.4f}",
    }


def bench_vecmap(backend: str, n: int, d: int, iterations: int) -> dict:
    from tokalign_core.align import vecmap
    from tokalign_core.configs.align import VecMapConfig

    x, z = pair(n, d, seed=1)
    seeds = (np.arange(0, n, 20), np.arange(0, n, 20))
    cfg = VecMapConfig(backend=backend, vocab_cutoff=n, max_iterations=iterations)
    t0 = time.perf_counter()
    res = vecmap.fit(x, z, cfg, seed_pairs=seeds)
    secs = time.perf_counter() - t0
    from tokalign_core.align.retrieval import retrieve

    p1 = float((retrieve(res.x_mapped, res.z_mapped, "csls", 10).indices == np.arange(n)).mean())
    return {
        "stage": f"VecMap {n:,} rows, cutoff {n:,}, {res.meta['iterations']} it",
        "seconds": secs,
        "check": f"P@1 {p1:.4f}, stop {res.meta['stop_reason']}",
    }


def bench_glove(backend: str, n: int, d: int, iterations: int) -> dict:
    import scipy.sparse as sp

    from tokalign_core.configs.glove import GloveConfig
    from tokalign_core.embed.glove import train_glove

    rng = np.random.default_rng(2)
    # Zipf-like counts: row i has ~ 40 / (1 + i / 100) partners
    rows = np.repeat(np.arange(n), np.maximum(2, 400 // (1 + np.arange(n) // 100)))
    cols = rng.integers(0, n, rows.size)
    vals = rng.pareto(1.5, rows.size) + 1.0
    m = sp.coo_matrix((vals, (rows, cols)), shape=(n, n)).tocsr()
    cooc = (m + m.T).tocsr()
    device = "cuda" if backend == "cupy" else "cpu"
    engine = "torch" if backend == "cupy" else "numba"
    t0 = time.perf_counter()
    res = train_glove(
        cooc,
        GloveConfig(dim=d, iterations=iterations, device=device, engine=engine),
        progress=False,
    )
    _sync(backend)
    secs = time.perf_counter() - t0
    return {
        "stage": f"GloVe {n:,} ids, {cooc.nnz:,} nonzeros, {d} d x {iterations}",
        "seconds": secs,
        "check": f"final cost {res.costs[-1]:.5f} ({engine})",
    }


def machine() -> str:
    gpu = "none"
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        gpu = (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            .stdout.strip()
            .replace("\n", "; ")
            or "none"
        )
    return (
        f"{platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or 'cpu'}, "
        f"GPU {gpu}, Python {platform.python_version()}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", nargs="+", default=["numpy", "cupy"], choices=["numpy", "cupy"])
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds (default 2)")
    ap.add_argument("--n", type=int, default=20000, help="rows (default 20000)")
    ap.add_argument("--dim", type=int, default=300, help="dimensions (default 300)")
    ap.add_argument("--vecmap-iterations", type=int, default=30)
    ap.add_argument("--glove-iterations", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "gpu.md")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))
    stages = [
        lambda b: bench_retrieval(b, args.n, args.dim),
        lambda b: bench_vecmap(b, args.n, args.dim, args.vecmap_iterations),
        lambda b: bench_glove(b, args.n, min(args.dim, 100), args.glove_iterations),
    ]
    rows = []
    for stage in stages:
        for rnd in range(args.repeats):
            for backend in args.backends:  # interleaved: A B A B
                load = Path("/proc/loadavg").read_text().split()[0]
                row = {**stage(backend), "backend": backend, "round": rnd + 1, "load": load}
                print(json.dumps(row), flush=True)
                rows.append(row)
    write_report(args, rows)


def write_report(args: argparse.Namespace, rows: list[dict]) -> None:
    lines = [
        "# GPU vs CPU: retrieval, VecMap, GloVe",
        "",
        "Command (from the repository root):",
        "",
        f"    {' '.join([Path(sys.executable).name, *sys.argv])}",
        "",
        f"Machine: {machine()}",
        "",
        "Rounds interleaved (each backend once per round); load = 1-minute load "
        "average before the row.",
        "",
        "| stage | backend | round | seconds | check | load |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['stage']} | {r['backend']} | {r['round']} | {r['seconds']:.2f} | "
        f"{r['check']} | {r['load']} |"
        for r in rows
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"report -> {args.out}")


if __name__ == "__main__":
    main()
