"""Where the CPU of ``build_cooccur`` goes, one process vs a local Dask cluster: per phase
(cluster start, counting the shards, the merge, shutdown) the wall time and the CPU
seconds of this process, then the CPU seconds of the worker processes
(``RUSAGE_CHILDREN``), and per shard the worker's pid, CPU (user/system) and page faults.
CPU seconds are what a loaded machine distorts least.

    python benchmarks/parallel_profile.py TOKENS_ARTIFACT --workers 1
    python benchmarks/parallel_profile.py TOKENS_ARTIFACT --workers 2 [--start-method spawn]

Nothing is written but a temporary folder next to the tokens artifact (deleted).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tokalign_core.configs.cooccur import CooccurConfig  # noqa: E402
from tokalign_core.embed import cooccur as C  # noqa: E402
from tokalign_core.runtime.executor import DaskExecutor, SerialExecutor  # noqa: E402


def cpu(who: int = resource.RUSAGE_SELF) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def timed_shard(shard: str, row_of_id, config, spill_dir) -> tuple[list[str], dict]:
    """The per-shard function the stage maps, with the worker's own accounting."""
    t0, r0 = time.time(), resource.getrusage(resource.RUSAGE_SELF)
    out = C.count_shard_dir_runs(shard, row_of_id, config, spill_dir)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return out, {"shard": Path(shard).name, "pid": os.getpid(),
                 "wall_s": round(time.time() - t0, 2),
                 "user_s": round(r1.ru_utime - r0.ru_utime, 2),
                 "sys_s": round(r1.ru_stime - r0.ru_stime, 2),
                 "minor_faults": r1.ru_minflt - r0.ru_minflt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tokens", type=Path)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--start-method", choices=["fork", "spawn"], default=None)
    args = ap.parse_args()
    config = CooccurConfig()
    shards = C.tokens_shards(args.tokens)
    counts = np.load(args.tokens / "counts.npy")
    token_ids = C.kept_vocabulary(counts, config.min_count)
    lookup = C.row_lookup(token_ids, counts.size)
    phases: dict[str, tuple[float, float]] = {}

    def phase(name: str, fn):
        t, c = time.time(), cpu()
        out = fn()
        phases[name] = (round(time.time() - t, 2), round(cpu() - c, 2))
        return out

    if args.workers > 1:
        C.warm_kernels()  # as build_cooccur does before its first map
        ex = DaskExecutor(n_workers=args.workers, progress=False, start_method=args.start_method)
        phase("cluster start", lambda: ex.client)
    else:
        ex = SerialExecutor()
    tmp = Path(tempfile.mkdtemp(prefix="parallel-profile-", dir=args.tokens.parent))
    try:
        fn = functools.partial(timed_shard, row_of_id=lookup, config=config, spill_dir=str(tmp))
        res = phase("count shards", lambda: ex.map(fn, [str(s) for s in shards]))
        for _, stats in res:
            print(json.dumps(stats))
        runs = [r for paths, _ in res for r in paths]
        phase("merge", lambda: C.merge_runs(runs, int(token_ids.size), config,
                                            tmp / "cooc.npz", ex))
        phase("shutdown", ex.close)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"workers": args.workers,
                      "start_method": getattr(ex, "start_method", None),
                      "threads_at_end": threading.active_count(),
                      "phases (wall s, CPU s of this process)": phases,
                      "cpu_s_this_process": round(cpu(), 2),
                      "cpu_s_workers": round(cpu(resource.RUSAGE_CHILDREN), 2),
                      "load": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
