"""The ``adapt`` flow: initialise the source model with the target vocabulary (the
alignment, and each baseline for comparison), train the aligned model in two stages
(embeddings + LM head, then everything), and evaluate before and after."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import Runner, publish_markdown, publish_table
from flows.evaluate import (
    bpb_rows,
    collect,
    collect_results,
    source_first,
    submit_evaluate,
)
from tasks import stages
from tasks.caching import Workspace
from tasks.lineage import parent_run
from tokalign_core.configs.pipeline import PipelineConfig
from tokalign_core.evaluate.results import ADAPTED, SOURCE, ModelKey
from tokalign_core.evaluate.tables import markdown_table
from tokalign_core.store.artifacts import ArtifactRef


def submit_inits(r: Runner, cfg: PipelineConfig, source_model: Any,
                 alignment: ArtifactRef, target_tokens: ArtifactRef | None) -> dict[str, Any]:
    """Start ``aligned`` plus every baseline initialisation, in parallel: method -> tracked
    future of the model artifact. The aligned one gets the target tokens for its LM-head
    calibration; the baselines stay as published."""
    return {
        method: r.submit(f"init:{method}", stages.init_task, source_model,
                         cfg.source_tokenizer_spec, cfg.target_tokenizer,
                         cfg.init_config(method), alignment if method == "aligned" else None,
                         target_tokens if method == "aligned" else None)
        for method in ("aligned", *cfg.baselines)
    }


def start_adapt(r: Runner, cfg: PipelineConfig, source_model: Any, alignment: ArtifactRef,
                target_tokens: ArtifactRef, texts: str) -> dict[str, Any]:
    """Init (aligned + baselines) -> two-stage training of the aligned model, without
    waiting for more than the cores need: training starts once the aligned init exists
    (the baselines finish next to it), every initialisation (and the source model with its
    own tokenizer, :data:`~tokalign_core.evaluate.results.SOURCE`) is evaluated while it
    trains (the training subprocess uses one core), and the adapted model's evaluation is
    started last. Returns ``inits`` (method -> model), ``models`` and ``pending``
    (:class:`~tokalign_core.evaluate.results.ModelKey` -> model, and -> evaluation future;
    :func:`flows.evaluate.collect` them)."""
    started = submit_inits(r, cfg, source_model, alignment, target_tokens)
    training = None if cfg.adapt is None else r.submit(
        "adapt", stages.train_task, started["aligned"].result(), target_tokens, cfg.adapt)
    # The source model with its own tokenizer last: the reference row, cheap (small head).
    pending = submit_evaluate(r, cfg, {**{ModelKey.init(m): f for m, f in started.items()},
                                       SOURCE: source_model}, texts)
    inits = collect(started)
    models: dict[ModelKey, Any] = {ModelKey.init(m): ref for m, ref in inits.items()}
    if training is not None:
        models[ADAPTED] = training.result()
        last = list(pending.values())[-1]
        pending.update(submit_evaluate(r, cfg, {ADAPTED: models[ADAPTED]}, texts, after=last))
    return {"inits": inits, "models": models, "pending": pending}


def run_adapt(r: Runner, cfg: PipelineConfig, source_model: Any, alignment: ArtifactRef,
              target_tokens: ArtifactRef, texts: str) -> dict[str, Any]:
    """:func:`start_adapt`, waiting for the evaluation of every initialisation and of the
    adapted model (``evaluation``: model key -> result)."""
    out = start_adapt(r, cfg, source_model, alignment, target_tokens, texts)
    return {"inits": out["inits"], "models": out["models"],
            "evaluation": source_first(collect_results(out.pop("pending")))}


@flow(name="adapt", log_prints=True)
def adapt_flow(cfg: PipelineConfig, alignment: ArtifactRef, target_tokens: ArtifactRef,
               texts: str, ws: Workspace = Workspace(),
               source_model: str | None = None) -> dict[str, Any]:
    """Initialise, adapt and evaluate given an alignment and the target-side tokens."""
    with parent_run(ws, "adapt", cfg) as ws:
        r = Runner(ws)
        out = run_adapt(r, cfg, source_model or cfg.source_model, alignment, target_tokens,
                        texts)
        rows = bpb_rows(out["evaluation"])
        publish_table("bits-per-byte", rows, "bits per byte by initialisation")
        publish_markdown("adapt-summary", markdown_table(rows))
        out["states"] = dict(r.states)
        return out
