"""The ``evaluate`` flow: bits per byte, source-normalised perplexity and compression of
any set of models on texts grouped by language (in parallel, each cached by content)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import Runner, publish_markdown, publish_table
from tasks import stages
from tasks.caching import Workspace
from tasks.lineage import parent_run
from tokalign_core.configs.pipeline import PipelineConfig
from tokalign_core.evaluate.results import SOURCE, EvalResult, ModelKey
from tokalign_core.evaluate.tables import markdown_table
from tokalign_core.store.artifacts import ArtifactRef


def submit_evaluate(r: Runner, cfg: PipelineConfig, models: dict[ModelKey, Any], texts: str,
                    after: Any = None) -> dict[ModelKey, Any]:
    """Start evaluating ``models`` (key -> model artifact, or the tracked future of one
    still being built) without waiting: ``key -> tracked future`` of the
    ``evaluate_model`` result (its JSON form; :func:`collect_results` reads it), reference =
    source tokenizer. The flow goes on meanwhile,
    e.g. with a training subprocess that leaves a core free. Each stage is labelled
    ``evaluate:<key's label>`` (its MLflow run and Prefect task run); the label is no
    input of the task, so it does not change its cache key.

    One model at a time, each after the previous one (and after ``after``, a tracked
    future): with a large target vocabulary each evaluation holds [batch, window, vocab]
    logits, and several at once exhaust a small machine's memory."""
    futures: dict[ModelKey, Any] = {}
    for key, ref in models.items():
        wait = [after.future] if after is not None else None
        # A Prefect future as an argument: the task waits for it and gets its result.
        model = getattr(ref, "future", ref)
        after = futures[key] = r.submit(f"evaluate:{key.label}", stages.eval_model_task,
                                        model, texts, cfg.evaluate, cfg.source_tokenizer_spec,
                                        wait_for=wait)
    return futures


def source_first(evaluation: dict[ModelKey, Any]) -> dict[ModelKey, Any]:
    """``evaluation`` with the :data:`~tokalign_core.evaluate.results.SOURCE` entry (the
    source model with its own tokenizer, the reference; if any) moved to the front."""
    return dict(sorted(evaluation.items(), key=lambda kv: kv[0] != SOURCE))


def collect(futures: dict[Any, Any]) -> dict[Any, Any]:
    """``key -> result`` of tracked futures, in their order (raises the first failure)."""
    return {key: f.result() for key, f in futures.items()}


def collect_results(futures: dict[ModelKey, Any]) -> dict[ModelKey, EvalResult]:
    """``key -> EvalResult`` of tracked evaluation futures (:func:`submit_evaluate`)."""
    return {key: EvalResult.from_dict(value) for key, value in collect(futures).items()}


def run_evaluate(r: Runner, cfg: PipelineConfig, models: dict[ModelKey, Any],
                 texts: str) -> dict[ModelKey, EvalResult]:
    """``key -> evaluate_model result`` for every model (one at a time), waiting for all."""
    return collect_results(submit_evaluate(r, cfg, models, texts))


# Per-group bits-per-byte columns in the summary only up to this many scored groups (the
# demo scores 8); with more, the table keeps the means and the per-group values stay in
# each evaluate stage's MLflow run and Prefect artifact.
MAX_GROUP_COLUMNS = 8


def bpb_rows(evaluation: dict[ModelKey, EvalResult]) -> list[dict[str, Any]]:
    """One row per model (``model``: its key's label): bits per byte and source-normalised
    perplexity averaged over the scored text groups, then each scored group's bits per byte
    (when there are at most :data:`MAX_GROUP_COLUMNS`; columns in the first model's
    ``scored_groups`` order)."""
    columns = _scored_columns(evaluation)
    rows = []
    for key, result in evaluation.items():
        groups = result.groups
        rows.append({"model": key.label,
                     "bits_per_byte": _or_nan(result.macro.bits_per_byte),
                     "norm_ppl": _or_nan(result.macro.norm_ppl),
                     **{g: _or_nan(groups[g].bits_per_byte if g in groups else None)
                        for g in columns}})
    return rows


def _or_nan(value: float | None) -> float:
    """A table cell: NaN for a metric that was not measured."""
    return float("nan") if value is None else value


def _scored_columns(evaluation: dict[ModelKey, EvalResult]) -> list[str]:
    """The first result's scored groups (in ``score_groups`` order), if few enough."""
    if not evaluation:
        return []
    first = next(iter(evaluation.values()))
    groups = first.groups
    fixed = {"model", "bits_per_byte", "norm_ppl"}  # a group of that name keeps no column
    scored = [g for g in first.scored_groups
              if g in groups and groups[g].bits_per_byte is not None and g not in fixed]
    return scored if len(scored) <= MAX_GROUP_COLUMNS else []


def compression_rows(evaluation: dict[ModelKey, EvalResult]) -> list[dict[str, Any]]:
    """Per group: target tokens per byte and the length change against the source
    tokenizer (same for every model with the target vocabulary; taken from the first)."""
    if not evaluation:
        return []
    first = next(iter(evaluation.values()))
    return [{"group": g, "tokens_per_byte": m.tokens_per_byte,
             "length_change": m.length_change}
            for g, m in sorted(first.groups.items())]


@flow(name="evaluate", log_prints=True)
def evaluate_flow(cfg: PipelineConfig, models: dict[str, ArtifactRef], texts: str,
                  ws: Workspace = Workspace()) -> dict[str, Any]:
    """Evaluate ``models`` (name -> model artifact; any names, shown as given) on ``texts``;
    ``evaluation`` is keyed by :class:`ModelKey` (``ModelKey(name)``)."""
    with parent_run(ws, "evaluate", cfg) as ws:
        r = Runner(ws)
        evaluation = run_evaluate(r, cfg, {ModelKey(name): m for name, m in models.items()},
                                  texts)
        rows = bpb_rows(evaluation)
        publish_table("evaluation", rows, "bits per byte by model")
        publish_markdown("evaluation-summary", markdown_table(rows))
        return {"evaluation": evaluation, "states": dict(r.states)}
