"""Benchmark: VecMap self-learning (tokalign_core.align.vecmap) on synthetic rotated embeddings
with a known answer.

Builds n x d "source" vectors with cluster structure and a decaying spectrum, a target
side that is a rotated, noised, locally re-ordered copy (like two frequency orders), runs
VecMap (seeded or unsupervised init) and reports per-iteration wall time, total time, peak
RSS and P@1 of the CSLS retrieval against the hidden permutation.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/vecmap_bench.py --n 20000 --dim 300 \
        --cutoff 20000 --max-iterations 8 --init shared
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np


def synthetic(n: int, d: int, noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((200, d)) * 2
    x = (centers[rng.integers(0, 200, n)] + rng.standard_normal((n, d))) * np.linspace(2, .5, d)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    perm = np.argsort(np.arange(n) + rng.normal(0, n / 60, n))
    z = x[perm] @ q + noise * rng.standard_normal((n, d))
    truth = np.empty(n, np.int64)
    truth[perm] = np.arange(n)
    return x.astype(np.float32), z.astype(np.float32), truth


def _loadavg() -> str:
    with open("/proc/loadavg") as fh:
        return fh.read()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="rows per side (default 20000)")
    ap.add_argument("--dim", type=int, default=300, help="dimensions (default 300)")
    ap.add_argument("--cutoff", type=int, default=20000, help="vocab_cutoff (default 20000)")
    ap.add_argument("--init", choices=["shared", "unsupervised"], default="shared")
    ap.add_argument("--init-size", type=int, default=4000, help="default 4000")
    ap.add_argument("--noise", type=float, default=0.05, help="target noise (default 0.05)")
    ap.add_argument("--max-iterations", type=int, default=8, help="cap (default 8)")
    ap.add_argument("--interval", type=int, default=50, help="stochastic_interval (50)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--dense-max-bytes", type=int, default=None,
                    help="VecMapConfig.dense_max_bytes (default: the config's, 2 GiB; 0 = the "
                         "two-pass exact retrieval instead of the stored similarity matrix)")
    args = ap.parse_args()

    import torch

    from tokalign_core.align import vecmap
    from tokalign_core.align.retrieval import retrieve
    from tokalign_core.configs.align import VecMapConfig

    torch.set_num_threads(args.threads)
    x, z, truth = synthetic(args.n, args.dim, args.noise)
    cfg = VecMapConfig(init=args.init, init_size=args.init_size, vocab_cutoff=args.cutoff,
                       max_iterations=args.max_iterations, stochastic_interval=args.interval,
                       **({} if args.dense_max_bytes is None
                          else {"dense_max_bytes": args.dense_max_bytes}))
    seeds = np.arange(0, args.n, 50)
    iters = []

    cpu = [time.process_time()]

    def log(stats):
        # CPU seconds of this process per iteration: less sensitive than wall time to
        # other jobs on a shared machine (both threads' time counts).
        now = time.process_time()
        stats.cpu_seconds, cpu[0] = round(now - cpu[0], 2), now
        iters.append(vars(stats))
        print(json.dumps({**vars(stats), "loadavg": _loadavg().split()[:3]}),
              flush=True)

    load0 = _loadavg().strip()
    t0 = time.perf_counter()
    res = vecmap.fit(x, z, cfg, seed_pairs=(seeds, truth[seeds]), callback=log)
    total = time.perf_counter() - t0
    r = retrieve(res.x_mapped, res.z_mapped, "csls", 10)
    per_it = [i["seconds"] for i in iters]
    print(json.dumps({
        "n": args.n, "dim": args.dim, "cutoff": args.cutoff, "init": args.init,
        "iterations": len(iters), "stop_reason": res.meta["stop_reason"],
        "seconds_total_fit": round(total, 1),
        "seconds_per_iteration_median": round(float(np.median(per_it)), 2) if per_it else None,
        "cpu_seconds_per_iteration_median": round(float(np.median(
            [i["cpu_seconds"] for i in iters])), 2) if iters else None,
        "seconds_init_and_final": round(total - sum(per_it), 1),
        "recomputed_per_iteration": [i["recomputed"] for i in iters],
        "p_at_1": float((r.indices == truth).mean()),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "loadavg_before": load0, "loadavg_after": _loadavg().strip()}))


if __name__ == "__main__":
    main()
