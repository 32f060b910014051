"""Benchmark: batched CSLS retrieval over full vocabularies (tokalign_core.align.retrieval).

Synthetic unit vectors (Gaussian, float32): n_target queries, n_source keys, d dims.
Reports wall time, peak RSS and how many queries needed the exact recompute; with
--check N it also verifies N random queries against a brute-force CSLS.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/retrieval_bench.py \
        --targets 256000 --sources 50000 --dim 300
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np


def _loadavg() -> str:
    with open("/proc/loadavg") as fh:
        return fh.read()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", type=int, default=256_000, help="queries (default 256000)")
    ap.add_argument("--sources", type=int, default=50_000, help="keys (default 50000)")
    ap.add_argument("--dim", type=int, default=300, help="dimensions (default 300)")
    ap.add_argument("--k", type=int, default=10, help="CSLS k (default 10)")
    ap.add_argument("--candidates", type=int, default=64, help="candidates (default 64)")
    ap.add_argument("--tile-rows", type=int, default=2048,
                    help="query rows per GEMM tile: memory only (default 2048)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--check", type=int, default=200, help="queries checked by brute force")
    ap.add_argument("--mode", choices=["auto", "exact", "candidates"], default="auto",
                    help="retrieval mode (default auto = candidates without dropout)")
    args = ap.parse_args()

    import torch

    from tokalign_core.align import retrieval as R

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.targets, args.dim), dtype=np.float32)
    z = rng.standard_normal((args.sources, args.dim), dtype=np.float32)
    load0 = _loadavg().strip()
    t0 = time.perf_counter()
    res = R.retrieve(x, z, "csls", args.k, args.candidates, progress=True, mode=args.mode,
                     tile_rows=args.tile_rows)
    seconds = time.perf_counter() - t0
    load1 = _loadavg().strip()
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    ok = None
    if args.check:
        rows = rng.choice(args.targets, size=args.check, replace=False)
        xn, zn = R.normalize_rows(x[rows]), R.normalize_rows(z)
        csls = 2 * (xn @ zn.T) - res.r_queries[rows, None] - res.r_keys[None, :]
        ok = float((csls.argmax(1) == res.indices[rows]).mean())
    print(json.dumps({
        "targets": args.targets, "sources": args.sources, "dim": args.dim,
        "threads": args.threads, "omp": os.environ.get("OMP_NUM_THREADS"),
        "seconds": round(seconds, 1), "peak_rss_gb": round(peak_gb, 2),
        "gflop": round(2 * args.targets * args.sources * args.dim / 1e9),
        "recomputed": res.n_recomputed, "mode": res.mode,
        "gemm_rows": args.tile_rows, "brute_force_agreement": ok,
        "loadavg_before": load0, "loadavg_after": load1}))


if __name__ == "__main__":
    main()
