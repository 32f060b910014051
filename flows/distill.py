"""The ``distill`` flow: token-level distillation of the adapted student from a teacher
that shares the target vocabulary (loss = CE + lambda * KL(p_teacher || p_student)), then
evaluation of the student before and after."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import Runner, publish_markdown, publish_table
from flows.evaluate import bpb_rows, run_evaluate
from tasks import stages
from tasks.caching import Workspace
from tasks.lineage import parent_run
from tokalign_core.configs.pipeline import PipelineConfig, bind_run_fields, is_unset
from tokalign_core.configs.train import TrainConfig
from tokalign_core.evaluate.results import DISTILLED
from tokalign_core.evaluate.tables import markdown_table
from tokalign_core.store.artifacts import ArtifactRef


def distill_config(cfg: PipelineConfig, teacher: ArtifactRef | str) -> TrainConfig:
    """``cfg.distill`` with the teacher filled in (a model artifact's folder or a spec)."""
    if cfg.distill is None or cfg.distill.distill is None:
        raise ValueError("the pipeline config has no distill section; set `distill`")
    spec = str(stages.model_dir(teacher)) if isinstance(teacher, ArtifactRef) else teacher
    return bind_run_fields(cfg.distill, teacher=spec)


def teacher_of(cfg: PipelineConfig) -> str | None:
    """The configured teacher spec, or None when the pipeline leaves it to the caller."""
    if cfg.distill is None or cfg.distill.distill is None:
        return None
    teacher = cfg.distill.distill.teacher
    return None if is_unset(teacher) else teacher


def run_distill(r: Runner, cfg: PipelineConfig, student: ArtifactRef,
                teacher: ArtifactRef | str, target_tokens: ArtifactRef,
                texts: str | None) -> dict[str, Any]:
    distilled = r.run("distill", stages.train_task, student, target_tokens,
                      distill_config(cfg, teacher))
    out: dict[str, Any] = {"model": distilled}
    if texts:
        out["evaluation"] = run_evaluate(r, cfg, {DISTILLED: distilled}, texts)
    return out


@flow(name="distill", log_prints=True)
def distill_flow(cfg: PipelineConfig, student: ArtifactRef, teacher: str,
                 target_tokens: ArtifactRef, texts: str | None = None,
                 ws: Workspace = Workspace()) -> dict[str, Any]:
    """Distil ``teacher`` into ``student`` on the target-side tokens."""
    with parent_run(ws, "distill", cfg) as ws:
        r = Runner(ws)
        out = run_distill(r, cfg, student, teacher, target_tokens, texts)
        if "evaluation" in out:
            rows = bpb_rows(out["evaluation"])
            publish_table("distillation", rows, "bits per byte after distillation")
            publish_markdown("distill-summary", markdown_table(rows))
        out["states"] = dict(r.states)
        return out
