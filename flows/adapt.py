"""The ``adapt`` flow: initialise the source model with the target vocabulary (the
alignment, and each baseline for comparison), train the aligned model in two stages
(embeddings + LM head, then everything), and evaluate before and after."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import Runner, markdown_table, publish_markdown, publish_table
from flows.evaluate import bpb_rows, run_evaluate
from tasks import stages
from tasks.caching import Workspace
from tasks.lineage import parent_run
from tokalign_core.artifacts import ArtifactRef
from tokalign_core.configs.pipeline import PipelineConfig


def run_init(r: Runner, cfg: PipelineConfig, source_model: Any,
             alignment: ArtifactRef) -> dict[str, ArtifactRef]:
    """``aligned`` plus every baseline initialisation, in parallel."""
    futures = {
        method: r.submit(f"init:{method}", stages.init_task, source_model,
                         cfg.source_tokenizer_spec, cfg.target_tokenizer,
                         cfg.init_config(method), alignment if method == "aligned" else None)
        for method in ("aligned", *cfg.baselines)
    }
    return {m: f.result() for m, f in futures.items()}


def run_adapt(r: Runner, cfg: PipelineConfig, source_model: Any, alignment: ArtifactRef,
              target_tokens: ArtifactRef, texts: str) -> dict[str, Any]:
    """Init (aligned + baselines) -> two-stage training of the aligned model -> evaluation
    of every initialisation and of the adapted model."""
    inits = run_init(r, cfg, source_model, alignment)
    models = {f"{m} (init)": ref for m, ref in inits.items()}
    if cfg.adapt is not None:
        models["aligned (adapted)"] = r.run("adapt", stages.train_task, inits["aligned"],
                                            target_tokens, cfg.adapt)
    evaluation = run_evaluate(r, cfg, models, texts)
    return {"inits": inits, "models": models, "evaluation": evaluation}


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
