"""Serve the tokalign flows from this machine (no work pool needed):

    PREFECT_UI_API_URL=http://127.0.0.1:4200/api prefect server start --host 127.0.0.1
    export PREFECT_API_URL=http://127.0.0.1:4200/api               # terminal 2:
    python -m deployments.serve --run-dir runs/served --tokenizers tokenizers/
    tokalign tokenizer register ./my-new-tokenizer  # anywhere: starts one pipeline run

Deployments (the form flows of :mod:`flows.forms`: a preset, the source model, the target
tokenizer, the corpus and the steps on top, the rest under ``advanced``; every field left
empty runs on this machine's text with SmolLM2-135M and the ``quick`` preset):
``pipeline`` (event trigger on ``tokalign.tokenizer.landed``, ``payload.spec`` templated
into ``target_tokenizer``, and a weekly cron), ``align`` (on the event too with
``--align-on-event``), ``adapt``/``distill``/``evaluate`` (on demand), ``demo`` and
``demo-quick`` (the quick demo in one click) and the tokenizer ``watch-tokenizers`` flow
(every few minutes over ``--tokenizers``). Every flow writes into ``--run-dir`` (one
MLflow store, ``<run-dir>/mlflow.db``, for all of them).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

DEFAULT_CRON = "0 3 * * 1"  # Mondays 03:00: a weekly refresh of the full pipeline
WATCH_CRON = "*/5 * * * *"


def landed_trigger(name: str) -> Any:
    """Start a run of this deployment for every landed tokenizer (spec -> parameter)."""
    from prefect.events import DeploymentEventTrigger

    from tasks.events import EVENT, RESOURCE_PREFIX

    return DeploymentEventTrigger(
        name=f"{name}-on-new-tokenizer",
        expect={EVENT},
        match={"prefect.resource.id": f"{RESOURCE_PREFIX}*"},
        parameters={"target_tokenizer": "{{ event.payload.spec }}"},
    )


def build_deployments(cfg_path: str | None, run_dir: str, tokenizers: str | None,
                      cron: str | None = DEFAULT_CRON, align_on_event: bool = False,
                      preset: str = "quick") -> list[Any]:
    """The RunnerDeployments served by :func:`main` (also used by the integration test).

    ``cfg_path``: a PipelineConfig file used as the pipeline/align settings (the forms'
    ``advanced.pipeline``); none: ``preset``. One run per landed tokenizer (the pipeline)
    unless ``align_on_event`` also starts an align run."""
    from flows.demo import DemoConfig, demo_flow
    from flows.forms import (
        Advanced,
        adapt_form,
        align_form,
        distill_form,
        evaluate_form,
        pipeline_form,
    )
    from flows.watch import watch_tokenizers
    from tasks.caching import Workspace
    from tokalign_core.configs.pipeline import PipelineConfig

    root = Path(run_dir).expanduser().resolve()
    advanced = Advanced(run_dir=str(root),
                        pipeline=PipelineConfig.load(cfg_path) if cfg_path else None)
    common = {"advanced": advanced.model_dump(mode="json")}
    top = {**common, "preset": preset}
    demo_ws = Workspace(run_dir=str(root)).model_dump(mode="json")
    deps = [
        pipeline_form.to_deployment("pipeline", parameters=top, cron=cron,
                                    triggers=[landed_trigger("pipeline")], tags=["tokalign"]),
        align_form.to_deployment("align", parameters=top, tags=["tokalign"],
                                 triggers=[landed_trigger("align")] if align_on_event else []),
        adapt_form.to_deployment("adapt", parameters=common, tags=["tokalign"]),
        distill_form.to_deployment("distill", parameters=common, tags=["tokalign"]),
        evaluate_form.to_deployment("evaluate", parameters=common, tags=["tokalign"]),
        # The demo shares the run folder (one MLflow store for every flow of this server).
        demo_flow.to_deployment("demo", parameters={"ws": demo_ws}, tags=["tokalign"]),
        demo_flow.to_deployment("demo-quick", parameters={
            "ws": demo_ws, "cfg": DemoConfig.make(quick=True).model_dump(mode="json")},
            tags=["tokalign"], description="the quick demo (a smoke test in minutes)"),
    ]
    if tokenizers:
        deps.append(watch_tokenizers.to_deployment(
            "watch-tokenizers", cron=WATCH_CRON,
            parameters={"folder": str(Path(tokenizers).resolve())}, tags=["tokalign"]))
    return deps


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m deployments.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None,
                   help="PipelineConfig JSON/YAML used as the align/pipeline settings "
                        "(default: the --preset)")
    p.add_argument("--preset", default="quick",
                   choices=("quick", "demo", "tokalign++", "tokalign", "paper-scale"),
                   help="default preset of the pipeline/align forms (default: %(default)s)")
    p.add_argument("--align-on-event", action="store_true",
                   help="a landed tokenizer also starts an align run (default: only the "
                        "pipeline, one run per event)")
    p.add_argument("--run-dir", default="runs/served",
                   help="artifacts, results and MLflow store of served runs "
                        "(default: %(default)s)")
    p.add_argument("--tokenizers", default=None,
                   help="folder watched for new tokenizers every 5 minutes "
                        "(default: no watcher)")
    p.add_argument("--cron", default=DEFAULT_CRON,
                   help="cron schedule of the pipeline deployment (default: %(default)r)")
    p.add_argument("--limit", type=int, default=1,
                   help="flow runs executed at once (default: %(default)s; the stages "
                        "already use every core)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not os.environ.get("PREFECT_API_URL"):
        raise SystemExit("set PREFECT_API_URL to a running server (PREFECT_UI_API_URL="
                         "http://127.0.0.1:4200/api prefect server start --host 127.0.0.1; "
                         "export PREFECT_API_URL=http://127.0.0.1:4200/api)")
    from prefect import serve

    serve(*build_deployments(args.config, args.run_dir, args.tokenizers, args.cron,
                             args.align_on_event, args.preset), limit=args.limit)


if __name__ == "__main__":
    main()
