"""Cold vs cached rerun of the tiny pipeline (align -> init + baselines -> two-stage
adaptation -> distillation -> evaluation) through the Prefect flows.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/orchestration.py --run-dir .cache/bench-orch

Each run is a fresh Python process (so the rerun really comes from the persisted cache,
not memory) that starts its own temporary Prefect server, as a user's rerun would.
``flow_body_s`` times the pipeline inside the flow; ``process_s`` adds imports and the
server start. As ``tokalign demo`` does, the child calls :func:`tasks.lineage.prewarm`
before the flow, so MLflow's import overlaps the temporary server's start (``--no-prewarm``
measures without it). Prints one JSON line per run, then one ``SUMMARY`` line with the
ratios, the target and the load averages.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r'''
import json, os, sys, time
t0 = time.perf_counter()
from pathlib import Path
from tokalign_core.store import hashing
if os.environ.get("TOKALIGN_BENCH_CODE_HASH"):
    # Other people edit the library while this runs: freeze its hash at the benchmark's
    # start so the rerun measures the cache, not their edits.
    hashing.code_hash = lambda: os.environ["TOKALIGN_BENCH_CODE_HASH"]
from prefect import flow
from flows.common import Runner
from flows.pipeline import run_pipeline
from tasks.caching import Workspace
from tasks.lineage import parent_run, prewarm
from tokalign_core.configs.pipeline import PipelineConfig
cfg = PipelineConfig.load(sys.argv[1])
ws = Workspace(run_dir=sys.argv[2])
teacher = sys.argv[3]
if os.environ.get("TOKALIGN_BENCH_PREWARM") == "1":
    prewarm(ws)

@flow(name="bench-pipeline")
def bench(cfg: PipelineConfig, ws: Workspace, teacher: str):
    t = time.perf_counter()
    with parent_run(ws, "pipeline", cfg) as ws:
        r = Runner(ws)
        run_pipeline(r, cfg, teacher=teacher)
    return {"flow_body_s": time.perf_counter() - t, "states": r.states}

out = bench(cfg, ws, teacher)
out["process_s"] = time.perf_counter() - t0
print("RESULT " + json.dumps(out))
'''


def make_inputs(root: Path) -> tuple[Path, str]:
    sys.path.insert(0, str(REPO))
    from tests.flows.tiny import tiny_inputs, tiny_models
    from tokalign_core.model import toy

    texts = toy.stdlib_texts(250) + toy.MULTILINGUAL_SAMPLES * 3
    bpe, sp = toy.train_bytelevel_bpe(texts, 600), toy.train_sentencepiece_bpe(texts, 700)
    cfg = tiny_inputs(root, texts, bpe, sp)
    cfg, teacher = tiny_models(root, cfg, bpe, sp)
    cfg.save(root / "pipeline.json")
    return root / "pipeline.json", teacher


def run_once(cfg: Path, run_dir: Path, teacher: str, env: dict) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(cfg), str(run_dir), teacher],
                          cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-4000:])
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[7:])
    out["wall_s"] = wall
    out["cached"] = sum(v == "Cached" for v in out["states"].values())
    out["stages"] = len(out["states"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", default=".cache/bench-orch")
    p.add_argument("--pin-code-hash", action="store_true",
                   help="freeze tokalign_core's code hash at start (shared dev trees)")
    p.add_argument("--no-prewarm", action="store_true",
                   help="do not start MLflow's import before the flow (tasks.lineage.prewarm)")
    args = p.parse_args()
    root = (REPO / args.run_dir).resolve()
    shutil.rmtree(root, ignore_errors=True)
    cfg, teacher = make_inputs(root / "inputs")
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PREFECT_HOME=str(root / ".prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300",
               MLFLOW_DISABLE_TELEMETRY="true", HF_HUB_OFFLINE="1",
               TOKALIGN_BENCH_PREWARM="0" if args.no_prewarm else "1")
    if args.pin_code_hash:
        from tokalign_core.store.hashing import code_hash

        env["TOKALIGN_BENCH_CODE_HASH"] = code_hash()
    results = {}
    for name in ("cold", "rerun"):
        load = Path("/proc/loadavg").read_text().split()[:3]
        res = run_once(cfg, root / "run", teacher, env)
        res["loadavg_before"] = load
        results[name] = res
        print(json.dumps({"run": name, **{k: v for k, v in res.items() if k != "states"}}))
    print(summary(results["cold"], results["rerun"], not args.no_prewarm))


def summary(cold: dict, rerun: dict, prewarm: bool) -> str:
    """The one line to quote: both runs, both ratios, the < 5 % target and the load."""
    body = rerun["flow_body_s"] / cold["flow_body_s"]
    process = rerun["process_s"] / cold["process_s"]
    after = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return (f"SUMMARY cold {cold['flow_body_s']:.1f} s flow body / {cold['process_s']:.1f} s "
            f"process ({cold['cached']}/{cold['stages']} cached); rerun "
            f"{rerun['flow_body_s']:.1f} s / {rerun['process_s']:.1f} s "
            f"({rerun['cached']}/{rerun['stages']} cached); rerun/cold flow body "
            f"{100 * body:.1f} % (target < 5 %: {'met' if body < 0.05 else 'NOT met'}), "
            f"process {100 * process:.1f} %; prewarm {'on' if prewarm else 'off'}; "
            f"load before cold {' '.join(cold['loadavg_before'])}, before rerun "
            f"{' '.join(rerun['loadavg_before'])}, after {after}; nproc {os.cpu_count()}")


if __name__ == "__main__":
    main()
