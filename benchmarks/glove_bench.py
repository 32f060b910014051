"""GloVe training benchmark: seconds per iteration at 300 dims and the cost per iteration.

Trains on a cooccur artifact (e.g. one written by ``benchmarks/cooccur_bench.py``) and
compares with the Stanford C tool's figure on this machine class (2 threads: ~6.4 min per
iteration over 84.8M nonzeros, scaled linearly to this artifact's nonzeros). Each
``--run`` is ENGINE:THREADS[:BATCH] (e.g. ``numba:1`` = the C tool's exact sequential
algorithm, the reference for final costs; ``numba:2`` = Hogwild; ``torch:1:8192``).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/glove_bench.py COOCCUR_DIR \
        --iterations 15 --run numba:1 numba:2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

C_TOOL_S_PER_IT = 6.4 * 60  # 2 threads, 84.8M nonzeros, 300 dims
C_TOOL_NNZ = 84.8e6
OUT = Path(".cache/bench/glove")


def run(cooccur: str, iterations: int, dim: int, spec: str) -> dict:
    """Train once with the ENGINE:THREADS[:BATCH] ``spec``; timing and costs as a dict."""
    import torch

    from tokalign_core.configs.glove import GloveConfig
    from tokalign_core.embed.cooccur import load_cooccur
    from tokalign_core.embed.glove import train_glove

    engine, threads, *batch = spec.split(":")
    torch.set_num_threads(int(threads))
    cooc, _, _ = load_cooccur(cooccur)
    cfg = GloveConfig(dim=dim, iterations=iterations, engine=engine, threads=int(threads),
                      batch_size=int(batch[0]) if batch else 8192, device="cpu")
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    cpu0 = time.process_time()
    res = train_glove(cooc, cfg, progress=False,
                      callback=lambda it, c: print(f"  {spec} it {it}: cost {c:.6f}",
                                                   flush=True))
    cpu = time.process_time() - cpu0  # all threads' CPU seconds: a load-robust figure
    # the first iteration of a fresh numba signature includes its compilation
    secs = res.seconds[1:] if len(res.seconds) > 1 else res.seconds
    per_it = sum(secs) / len(secs)
    c_tool = C_TOOL_S_PER_IT * cooc.nnz / C_TOOL_NNZ
    return {"cooccur": cooccur, "run": spec, "engine": res.engine, "nnz": int(cooc.nnz),
            "n": cooc.shape[0], "dim": dim, "iterations": iterations, "costs": res.costs,
            "seconds": [round(s, 2) for s in res.seconds],
            "seconds_per_iteration": round(per_it, 2), "nnz_per_s": round(cooc.nnz / per_it),
            "cpu_s_per_iteration_all_threads": round(cpu / iterations, 2),
            "nnz_per_cpu_s": round(cooc.nnz * iterations / cpu),
            "c_tool_2threads_s_per_it_scaled": round(c_tool, 2),
            "speed_vs_c_tool": round(c_tool / per_it, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "loadavg_before": load_before,
            "loadavg_after": Path("/proc/loadavg").read_text().split()[:3]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cooccur", help="cooccur artifact folder")
    p.add_argument("--iterations", type=int, default=15, help="passes (default 15)")
    p.add_argument("--dim", type=int, default=300, help="vector size (default 300)")
    p.add_argument("--run", nargs="+", default=["numba:1", "numba:2"],
                   help="ENGINE:THREADS[:BATCH] runs, in order (default numba:1 numba:2)")
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for spec in args.run:
        row = {**run(args.cooccur, args.iterations, args.dim, spec), "nproc": os.cpu_count()}
        print(json.dumps(row), flush=True)
        with (OUT / "results.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
