"""The parent ``pipeline`` flow: align -> adapt (init + baselines, two stages) ->
distill (when a teacher is configured) -> evaluate, with one MLflow parent run and the
summary tables published as Prefect artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from flows.adapt import start_adapt
from flows.align import alignment_rows, run_align
from flows.common import (
    Runner,
    markdown_table,
    publish_markdown,
    publish_table,
    with_target,
)
from flows.distill import run_distill, teacher_of
from flows.evaluate import bpb_rows, collect, compression_rows, submit_evaluate
from tasks import stages
from tasks.caching import Workspace
from tasks.lineage import Lineage, parent_run
from tokalign_core.artifacts import ArtifactRef
from tokalign_core.configs.pipeline import PipelineConfig


def eval_texts(r: Runner, cfg: PipelineConfig, corpus: ArtifactRef) -> str:
    """``cfg.eval_texts``, else the corpus's held-out documents."""
    if cfg.eval_texts:
        return cfg.eval_texts
    ref = r.run("heldout-texts", stages.heldout_texts_task, corpus)
    return str(Path(ref.path) / "texts.jsonl")


def run_pipeline(r: Runner, cfg: PipelineConfig, source_model: Any = None,
                 teacher: ArtifactRef | str | None = None,
                 texts: str | None = None) -> dict[str, Any]:
    """Every stage on runner ``r``; returns refs, metrics and the summary rows."""
    source_model = source_model or cfg.source_model
    aligned = run_align(r, cfg, source_model)
    texts = texts or eval_texts(r, cfg, aligned["corpus"])
    # Evaluations run one after another in the background, next to the single-core
    # training subprocesses (adapt, then distill); the flow waits for them at the end.
    adapted = start_adapt(r, cfg, source_model, aligned["alignment"],
                          aligned["tokens"]["target"], texts)
    pending = adapted["pending"]
    teacher = teacher or teacher_of(cfg)
    if teacher is not None and cfg.distill is not None:
        student = adapted["models"].get("aligned (adapted)", adapted["inits"]["aligned"])
        distilled = run_distill(r, cfg, student, teacher, aligned["tokens"]["target"], None)
        adapted["models"]["distilled"] = distilled["model"]
        pending.update(submit_evaluate(r, cfg, {"distilled": distilled["model"]}, texts,
                                       after=list(pending.values())[-1]))
    evaluation = collect(pending)
    return {**aligned, "texts": texts, "models": adapted["models"], "evaluation": evaluation,
            "tables": summary_tables(aligned["metrics"], evaluation)}


def summary_tables(metrics: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, list]:
    return {"bits_per_byte": bpb_rows(evaluation),
            "compression": compression_rows(evaluation),
            "alignment": alignment_rows(metrics)}


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
    fig = bpb_figure(tables["bits_per_byte"])
    if fig is not None:
        lineage.log_figure(ws.parent_run_id, fig, "bits_per_byte.png")
    return text


def bpb_figure(rows: list[dict[str, Any]]) -> Any:
    """A bar chart of mean bits per byte by model (matplotlib, Agg); None without rows."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh([r["model"] for r in rows], [r["bits_per_byte"] for r in rows])
    ax.set_xlabel("bits per byte (lower is better)")
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
