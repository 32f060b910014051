"""GloVe training benchmark: seconds per iteration at 300 dims and the cost per iteration.

Trains on a cooccur artifact (e.g. one written by ``benchmarks/cooccur_bench.py``) and
compares with the Stanford C tool's figure on this machine class (2 threads: ~6.4 min per
iteration over 84.8M nonzeros, scaled linearly to this artifact's nonzeros).
``--reference-batch`` trains a second time with a small batch (close to the C tool's
per-entry updates; batch 1 is exactly its sequential algorithm) to compare final costs.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/glove_bench.py COOCCUR_DIR \
        --iterations 15 --threads 1 [--reference-batch 256]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
from pathlib import Path

C_TOOL_S_PER_IT = 6.4 * 60  # 2 threads, 84.8M nonzeros, 300 dims
C_TOOL_NNZ = 84.8e6
OUT = Path(".cache/bench/glove")


def run(cooccur: str, iterations: int, dim: int, batch: int) -> dict:
    from tokalign_core.configs.glove import GloveConfig
    from tokalign_core.cooccur import load_cooccur
    from tokalign_core.glove import train_glove

    cooc, _, _ = load_cooccur(cooccur)
    cfg = GloveConfig(dim=dim, iterations=iterations, batch_size=batch, device="auto")
    res = train_glove(cooc, cfg, progress=False,
                      callback=lambda it, c: print(f"  it {it}: cost {c:.6f}", flush=True))
    per_it = sum(res.seconds) / len(res.seconds)
    c_tool = C_TOOL_S_PER_IT * cooc.nnz / C_TOOL_NNZ
    return {"cooccur": cooccur, "nnz": int(cooc.nnz), "n": cooc.shape[0], "dim": dim,
            "batch_size": batch, "iterations": iterations, "costs": res.costs,
            "seconds_per_iteration": round(per_it, 2), "nnz_per_s": round(cooc.nnz / per_it),
            "c_tool_2threads_s_per_it_scaled": round(c_tool, 2),
            "speed_vs_c_tool": round(c_tool / per_it, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "loadavg": open("/proc/loadavg").read().split()[:3]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cooccur", help="cooccur artifact folder")
    p.add_argument("--iterations", type=int, default=15)
    p.add_argument("--dim", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--reference-batch", type=int, help="second run with this batch size")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    batches = [args.batch_size] + ([args.reference_batch] if args.reference_batch else [])
    for batch in batches:
        row = {**run(args.cooccur, args.iterations, args.dim, batch), "threads": args.threads,
               "nproc": os.cpu_count()}
        print(json.dumps(row), flush=True)
        with (OUT / "results.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
