"""The parent ``pipeline`` flow: align -> adapt (init + baselines, two stages) ->
distill (when a teacher is configured) -> evaluate, with one MLflow parent run and the
summary tables published as Prefect artifacts."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from prefect import flow

from flows.adapt import start_adapt
from flows.align import alignment_rows, run_align
from flows.common import Runner, publish_markdown, publish_table, with_target
from flows.distill import run_distill, teacher_of
from flows.evaluate import (
    bpb_rows,
    collect_results,
    compression_rows,
    source_first,
    submit_evaluate,
)
from flows.publish import publish_models
from tasks import stages
from tasks.caching import Workspace
from tasks.lineage import Lineage, is_number, parent_run
from tokalign_core.align.metrics import AlignmentMetrics
from tokalign_core.configs.pipeline import PipelineConfig
from tokalign_core.evaluate.results import (
    ADAPTED,
    DISTILLED,
    SOURCE,
    STUDENT_DISTILLED,
    STUDENT_INIT,
    EvalResult,
    ModelKey,
)
from tokalign_core.evaluate.tables import markdown_table
from tokalign_core.store.artifacts import ArtifactRef


def eval_texts(r: Runner, cfg: PipelineConfig, corpus: ArtifactRef) -> str:
    """``cfg.eval_texts``, else the corpus's held-out documents."""
    if cfg.eval_texts:
        return cfg.eval_texts
    ref = r.run("heldout-texts", stages.heldout_texts_task, corpus)
    return str(Path(ref.path) / "texts.jsonl")


def run_pipeline(r: Runner, cfg: PipelineConfig, source_model: Any = None,
                 teacher: ArtifactRef | str | None = None,
                 texts: str | None = None, student_layers: int | None = None) -> dict[str, Any]:
    """Every stage on runner ``r``; returns refs, metrics and the summary rows (``models``,
    ``evaluation`` and ``published`` keyed by :class:`ModelKey`).

    Distillation runs when ``cfg.distill`` is set and there is a teacher: ``teacher`` (or
    the config's), distilled into the adapted model; or, with ``student_layers`` and no
    teacher, the adapted model itself distilled into a copy of it with that many layers."""
    source_model = source_model or cfg.source_model
    aligned = run_align(r, cfg, source_model)
    texts = texts or eval_texts(r, cfg, aligned["corpus"])
    # Evaluations run one after another in the background, next to the single-core
    # training subprocesses (adapt, then distill); the flow waits for them at the end.
    adapted = start_adapt(r, cfg, source_model, aligned["alignment"],
                          aligned["tokens"]["target"], texts)
    pending = adapted["pending"]
    teacher = teacher or teacher_of(cfg)
    student = adapted["models"].get(ADAPTED, adapted["inits"]["aligned"])
    if teacher is None and student_layers and cfg.distill is not None:
        teacher = student
        student = r.run("shrink-student", stages.shrink_task, teacher, student_layers)
        adapted["models"][STUDENT_INIT] = student
        pending.update(submit_evaluate(r, cfg, {STUDENT_INIT: student}, texts,
                                       after=list(pending.values())[-1]))
    if teacher is not None and cfg.distill is not None:
        distilled = run_distill(r, cfg, student, teacher, aligned["tokens"]["target"], None)
        key = STUDENT_DISTILLED if STUDENT_INIT in adapted["models"] else DISTILLED
        adapted["models"][key] = distilled["model"]
        pending.update(submit_evaluate(r, cfg, {key: distilled["model"]}, texts,
                                       after=list(pending.values())[-1]))
    evaluation = source_first(collect_results(pending))
    tables = summary_tables(aligned["metrics"], evaluation)
    published = publish_models(r.ws, cfg, adapted["models"], evaluation, aligned["alignment"],
                               {row["metric"]: row["value"] for row in tables["alignment"]},
                               teacher if cfg.distill is not None else None)
    return {**aligned, "texts": texts, "models": adapted["models"], "evaluation": evaluation,
            "tables": tables, "published": {k: str(v) for k, v in published.items()}}


def summary_tables(metrics: AlignmentMetrics,
                   evaluation: dict[ModelKey, EvalResult]) -> dict[str, list]:
    """Bits per byte by model (the source reference first when present), compression of
    the target tokenizer (from a target-vocabulary model) and the brief alignment metrics."""
    target_side = {k: v for k, v in evaluation.items() if k != SOURCE}
    return {"bits_per_byte": bpb_rows(evaluation),
            "compression": compression_rows(target_side),
            "alignment": alignment_rows(metrics, brief=True)}


def summary_markdown(tables: dict[str, list]) -> str:
    """The three summary tables as one markdown document."""
    parts = []
    for title, key in (("Bits per byte by method (before / after adaptation)", "bits_per_byte"),
                       ("Compression per language (target vs source tokenizer)", "compression"),
                       ("Alignment metrics", "alignment")):
        parts += [f"## {title}", "", markdown_table(tables[key]), ""]
    return "\n".join(parts)


def publish_summary(ws: Workspace, tables: dict[str, list], name: str) -> str:
    """Prefect table + markdown artifacts and a bits-per-byte plot on the MLflow parent run."""
    for key, rows in tables.items():
        publish_table(f"{name}-{key}", rows)
    text = summary_markdown(tables)
    publish_markdown(f"{name}-summary", text, f"{name} summary")
    lineage = Lineage(ws)
    lineage.log_text(ws.parent_run_id, text, "summary.md")
    lineage.describe(ws.parent_run_id, text)
    # The headline numbers on the parent run too, so MLflow's run comparison lines up
    # whole runs (a cached rerun's nested runs only point at the artifacts).
    lineage.log_metrics(ws.parent_run_id, summary_metrics(tables))
    for name, fig in (("bits_per_byte.png", bpb_figure(tables["bits_per_byte"])),
                      ("compression.png", compression_figure(tables["compression"]))):
        if fig is not None:
            lineage.log_figure(ws.parent_run_id, fig, name)
    return text


def slug(label: str) -> str:
    """An MLflow-safe metric name part: ``"aligned (init)" -> "aligned_init"``."""
    return re.sub(r"[^0-9A-Za-z]+", "_", label).strip("_") or "_"


def summary_metrics(tables: dict[str, list]) -> dict[str, float]:
    """The summary tables as flat metrics, each name with one separator so MLflow groups
    the charts by what is measured: ``bpb/<model>``, ``norm_ppl/<model>``,
    ``bpb_<group>/<model>``, ``length_change/<group>`` and ``length_change/mean``, and
    ``alignment/<metric>``. NaNs (a group a model was not scored on) are left out."""
    out: dict[str, float] = {}
    for row in tables.get("bits_per_byte", []):
        model = slug(row["model"])
        for key, value in row.items():
            if key == "model":
                continue
            name = {"bits_per_byte": "bpb", "norm_ppl": "norm_ppl"}.get(key, f"bpb_{slug(key)}")
            out[f"{name}/{model}"] = value
    changes = {slug(row["group"]): row["length_change"] for row in tables.get("compression", [])}
    out.update({f"length_change/{group}": change for group, change in changes.items()})
    finite = [c for c in changes.values() if is_number(c)]
    if finite:
        out["length_change/mean"] = sum(finite) / len(finite)
    for row in tables.get("alignment", []):
        out[f"alignment/{slug(row['metric'])}"] = row["value"]
    return {k: float(v) for k, v in out.items() if is_number(v)}


def _axes(height: float) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, height))


def bpb_figure(rows: list[dict[str, Any]]) -> Any:
    """A bar chart of mean bits per byte by model (matplotlib, Agg); None without rows."""
    if not rows:
        return None
    fig, ax = _axes(3.5)
    ax.barh([r["model"] for r in rows], [r["bits_per_byte"] for r in rows])
    ax.set_xlabel("bits per byte (lower is better)")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def compression_figure(rows: list[dict[str, Any]]) -> Any:
    """Token count change per group, target vs source tokenizer (%; negative = fewer
    target tokens), largest saving first; None without rows."""
    rows = sorted((r for r in rows if math.isfinite(r.get("length_change", math.nan))),
                  key=lambda r: r["length_change"])
    if not rows:
        return None
    fig, ax = _axes(max(2.5, 0.28 * len(rows) + 1))
    ax.barh([r["group"] for r in rows], [100 * r["length_change"] for r in rows])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("token count change with the target tokenizer (%)")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


@flow(name="pipeline", log_prints=True)
def pipeline_flow(cfg: PipelineConfig = PipelineConfig(), ws: Workspace = Workspace(),
                  target_tokenizer: str | None = None) -> dict[str, Any]:
    """The whole TokAlign / TokAlign++ pipeline for ``cfg`` (``target_tokenizer`` overrides
    the config's target, as event-triggered runs do)."""
    cfg = with_target(cfg, target_tokenizer)
    with parent_run(ws, "pipeline", cfg) as ws:
        r = Runner(ws)
        out = run_pipeline(r, cfg)
        out["summary"] = publish_summary(ws, out["tables"], "pipeline")
        out["states"] = dict(r.states)
        return out
