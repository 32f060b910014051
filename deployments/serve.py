"""Serve the tokalign flows from this machine (no work pool needed):

    prefect server start --host 127.0.0.1          # terminal 1
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m deployments.serve --config pipeline.yaml --run-dir runs/served \\
        --tokenizers tokenizers/                    # terminal 2
    tokalign tokenizer register ./my-new-tokenizer  # anywhere: starts an align + pipeline run

Deployments: ``align`` and ``pipeline`` (event trigger on ``tokalign.tokenizer.landed``,
``payload.spec`` templated into ``target_tokenizer``; ``pipeline`` also on a cron
schedule), ``evaluate``/``adapt``/``distill`` (on demand), ``demo`` and the tokenizer
``watch-tokenizers`` flow (every few minutes over ``--tokenizers``).
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
                      cron: str | None = DEFAULT_CRON) -> list[Any]:
    """The RunnerDeployments served by :func:`main` (also used by the integration test)."""
    from flows.adapt import adapt_flow
    from flows.align import align_flow
    from flows.demo import demo_flow
    from flows.distill import distill_flow
    from flows.evaluate import evaluate_flow
    from flows.pipeline import pipeline_flow
    from flows.watch import watch_tokenizers
    from tasks.caching import Workspace
    from tokalign_core.configs.pipeline import PipelineConfig

    cfg = PipelineConfig.load(cfg_path) if cfg_path else PipelineConfig()
    ws = Workspace(run_dir=str(Path(run_dir).resolve()))
    base = {"cfg": cfg.model_dump(mode="json"), "ws": ws.model_dump(mode="json")}
    deps = [
        align_flow.to_deployment("align", parameters=base, triggers=[landed_trigger("align")],
                                 tags=["tokalign"]),
        pipeline_flow.to_deployment("pipeline", parameters=base, cron=cron,
                                    triggers=[landed_trigger("pipeline")], tags=["tokalign"]),
        adapt_flow.to_deployment("adapt", tags=["tokalign"]),
        distill_flow.to_deployment("distill", tags=["tokalign"]),
        evaluate_flow.to_deployment("evaluate", tags=["tokalign"]),
        demo_flow.to_deployment("demo", parameters={"ws": Workspace(
            run_dir=str(Path(run_dir).resolve() / "demo")).model_dump(mode="json")},
            tags=["tokalign"]),
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
                   help="PipelineConfig JSON/YAML used as the align/pipeline defaults "
                        "(default: the built-in PipelineConfig())")
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
        raise SystemExit("set PREFECT_API_URL to a running server (prefect server start "
                         "--host 127.0.0.1; export PREFECT_API_URL=http://127.0.0.1:4200/api)")
    from prefect import serve

    serve(*build_deployments(args.config, args.run_dir, args.tokenizers, args.cron),
          limit=args.limit)


if __name__ == "__main__":
    main()
