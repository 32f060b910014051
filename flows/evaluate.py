"""The ``evaluate`` flow: bits per byte, source-normalised perplexity and compression of
any set of models on texts grouped by language (in parallel, each cached by content)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import Runner, markdown_table, publish_markdown, publish_table
from tasks import stages
from tasks.caching import Workspace
from tasks.lineage import parent_run
from tokalign_core.artifacts import ArtifactRef
from tokalign_core.configs.pipeline import PipelineConfig


def run_evaluate(r: Runner, cfg: PipelineConfig, models: dict[str, ArtifactRef],
                 texts: str) -> dict[str, dict[str, Any]]:
    """``label -> evaluate_model result`` for every model, reference = source tokenizer.

    One model at a time: with a large target vocabulary each evaluation holds
    [batch, window, vocab] logits, and several at once exhaust a small machine's memory."""
    return {label: r.run(f"evaluate:{label}", stages.eval_model_task, ref, texts,
                         cfg.evaluate, cfg.source_tokenizer_spec, label)
            for label, ref in models.items()}


def bpb_rows(evaluation: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model: bits per byte and source-normalised perplexity, averaged over the
    text groups (per-group values are in each stage's MLflow run and Prefect artifact)."""
    rows = []
    for label, result in evaluation.items():
        macro = result.get("macro", {})
        rows.append({"model": label,
                     "bits_per_byte": macro.get("bits_per_byte", float("nan")),
                     "norm_ppl": macro.get("norm_ppl", float("nan"))})
    return rows


def compression_rows(evaluation: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per group: target tokens per byte and the length change against the source
    tokenizer (same for every model with the target vocabulary; taken from the first)."""
    if not evaluation:
        return []
    first = next(iter(evaluation.values()))
    return [{"group": g, "tokens_per_byte": m.get("tokens_per_byte", float("nan")),
             "length_change": m.get("length_change", float("nan"))}
            for g, m in sorted(first.get("groups", {}).items())]


@flow(name="evaluate", log_prints=True)
def evaluate_flow(cfg: PipelineConfig, models: dict[str, ArtifactRef], texts: str,
                  ws: Workspace = Workspace()) -> dict[str, Any]:
    """Evaluate ``models`` (label -> model artifact) on ``texts``."""
    with parent_run(ws, "evaluate", cfg) as ws:
        r = Runner(ws)
        evaluation = run_evaluate(r, cfg, models, texts)
        rows = bpb_rows(evaluation)
        publish_table("evaluation", rows, "bits per byte by model")
        publish_markdown("evaluation-summary", markdown_table(rows))
        return {"evaluation": evaluation, "states": dict(r.states)}
