"""The produced models under readable names, with the cards a hub page shows, and in
MLflow as models (issue 17, items 4-5).

Every model the pipeline made (each initialisation, the adapted and the distilled model)
gets ``<run_dir>/models/<name>`` (``aligned-init``, ``aligned-adapted``, ``distilled``, ...):
a Hugging Face folder whose files link into the content-addressed artifact store and whose
README.md is a full model card (method, source model, target tokenizer, alignment digest,
evaluation, Hugging Face metadata with a ``model-index``). Each is logged as an MLflow model
of the parent run; the final one is registered in the model registry.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tasks import stages
from tasks.caching import Workspace
from tasks.lineage import Lineage, is_number
from tokalign_core.configs.pipeline import PipelineConfig, is_unset, short_name
from tokalign_core.evaluate.results import (
    ADAPTED,
    DISTILLED,
    STUDENT_DISTILLED,
    STUDENT_INIT,
    EvalResult,
    ModelKey,
    Stage,
)
from tokalign_core.model.card import CardInfo, method_label, publish_folder, render
from tokalign_core.store.artifacts import ArtifactRef

# The model a run is for, best first: the registered one.
FINAL_ORDER = (STUDENT_DISTILLED, DISTILLED, ADAPTED, ModelKey.init("aligned"))


def folder_name(label: str) -> str:
    """``"aligned (init)" -> "aligned-init"``: lowercase letters, digits and dashes."""
    return re.sub(r"[^0-9a-z]+", "-", label.lower()).strip("-") or "model"


def registered_name(cfg: PipelineConfig) -> str:
    """The model registry name of a run's final model: ``SmolLM2-135M-qwen2-tokalign``."""
    raw = f"{short_name(cfg.source_model)}-{short_name(cfg.target_tokenizer)}-tokalign"
    return re.sub(r"[^0-9A-Za-z._-]+", "-", raw)


def final_key(models: dict[ModelKey, Any]) -> ModelKey | None:
    return next((key for key in FINAL_ORDER if key in models), None)


def _training(cfg: PipelineConfig, key: ModelKey) -> str:
    parts = []
    if key in (ADAPTED, DISTILLED, STUDENT_INIT, STUDENT_DISTILLED) and cfg.adapt is not None:
        parts.append(f"two-stage adaptation ({cfg.adapt.total_steps} steps: embeddings and "
                     "LM head, then every parameter)")
    if key == STUDENT_INIT:
        parts.append("a shallower copy of the adapted model (fewer decoder layers)")
    if key in (DISTILLED, STUDENT_DISTILLED) and cfg.distill is not None:
        teacher = cfg.distill.distill.teacher if cfg.distill.distill is not None else ""
        source = "the adapted model" if key == STUDENT_DISTILLED or not teacher \
            or is_unset(teacher) else short_name(teacher)
        parts.append(f"token-level distillation ({cfg.distill.total_steps} steps) from "
                     f"{source}")
    return ", then ".join(parts)


def _hub_id(spec: str) -> str:
    """``spec`` when it looks like a hub id (``org/name``, not on disk), else ''."""
    looks = re.fullmatch(r"[\w.-]+/[\w.-]+", spec or "") is not None
    return spec if looks and not Path(spec).exists() else ""


def _license(source_model: str) -> str:
    """The source model's licence from its card's front matter, when it has one here."""
    card = Path(source_model) / "README.md"
    if card.is_file():
        found = re.search(r"^license:\s*(\S+)", card.read_text(errors="replace"), re.M)
        if found:
            return found.group(1).strip("'\"")
    return "other"


def card_for(cfg: PipelineConfig, key: ModelKey, alignment: ArtifactRef | None,
             evaluation: dict[ModelKey, EvalResult], align_metrics: dict[str, Any]) -> CardInfo:
    """The card of the model ``key`` (an initialisation, the adapted, the distilled model)."""
    init_method = key.model if key.stage is Stage.INIT and key != STUDENT_INIT else "aligned"
    meta: dict[str, Any] = {}
    if not isinstance(alignment, ArtifactRef):
        alignment = None
    if alignment is not None and (Path(alignment.path) / "meta.json").is_file():
        meta = json.loads((Path(alignment.path) / "meta.json").read_text())
    aligned = init_method == "aligned"
    return CardInfo(
        name=f"{short_name(cfg.source_model)} -> {short_name(cfg.target_tokenizer)}: "
             f"{key.label}",
        method=method_label(init_method, cfg.align.method),
        source_model=cfg.source_model, target_tokenizer=cfg.target_tokenizer,
        alignment=f"sha256:{alignment.sha256}" if alignment is not None and aligned else "",
        counts=meta.get("counts", {}) if aligned else {},
        alignment_metrics=align_metrics if aligned else {},
        eval_results=evaluation[key].to_dict() if key in evaluation else {},
        config_digest=cfg.digest(), base_model=_hub_id(cfg.source_model),
        license=_license(cfg.source_model),
        datasets=[s.path.removeprefix("hf:") for s in cfg.corpus.sources
                  if s.path.startswith("hf:")],
        tags=[init_method] if not aligned else [], training=_training(cfg, key))


def lineage_tags(cfg: PipelineConfig, alignment: ArtifactRef | None,
                 teacher: Any = None) -> dict[str, str]:
    """The parent run's tags to follow a model back: the source model and the alignment
    under one hash each, and the teacher."""
    from tokalign_core.store.hashing import sha256_tree

    src = Path(cfg.source_model)
    tags = {"tokalign.source_model": cfg.source_model,
            "tokalign.source_model.sha256": sha256_tree(src) if src.exists()
            else f"hub:{cfg.source_model}",
            "tokalign.target_tokenizer": cfg.target_tokenizer,
            "tokalign.method": cfg.method_name}
    if isinstance(alignment, ArtifactRef):
        tags["tokalign.alignment.sha256"] = alignment.sha256
    if teacher is not None:
        tags["tokalign.teacher"] = str(stages.model_dir(teacher)) \
            if isinstance(teacher, ArtifactRef) else str(teacher)
        if isinstance(teacher, ArtifactRef):
            tags["tokalign.teacher.sha256"] = teacher.sha256
    return tags


def publish_models(ws: Workspace, cfg: PipelineConfig, models: dict[ModelKey, Any],
                   evaluation: dict[ModelKey, EvalResult], alignment: ArtifactRef | None = None,
                   align_metrics: dict[str, Any] | None = None,
                   teacher: Any = None) -> dict[ModelKey, Path]:
    """``<run_dir>/models/<name>`` (``name``: the key's label, :func:`folder_name`) for every
    model artifact in ``models`` (key -> ref), each logged as an MLflow model of
    ``ws.parent_run_id``; the final one registered; the parent run tagged with
    :func:`lineage_tags`. Returns key -> folder."""
    lineage = Lineage(ws)
    lineage.set_tags(ws.parent_run_id, lineage_tags(cfg, alignment, teacher))
    paths: dict[ModelKey, Path] = {}
    ids: dict[ModelKey, str | None] = {}
    for key, ref in models.items():
        if not isinstance(ref, ArtifactRef):
            continue
        card = card_for(cfg, key, alignment, evaluation, align_metrics or {})
        name = folder_name(key.label)
        paths[key] = publish_folder(stages.model_dir(ref), ws.root / "models" / name,
                                    render(card))
        ids[key] = lineage.log_model(
            ws.parent_run_id, name, paths[key],
            tags={"tokalign.label": key.label, "tokalign.method": card.method,
                  "output.model.sha256": ref.sha256},
            params=_model_params(evaluation.get(key)))
    final = final_key(paths)
    if final is not None:
        lineage.register(registered_name(cfg), ids.get(final), ws.parent_run_id,
                         f"{cfg.title()}: {final.label}")
        lineage.set_tags(ws.parent_run_id, {"tokalign.final_model": str(paths[final])})
    return paths


def _model_params(result: EvalResult | None) -> dict[str, str]:
    """The model's mean metrics as MLflow model params (``bits_per_byte: "1.234"``)."""
    macro = result.macro.to_dict() if result is not None else {}
    return {k: f"{v:.4g}" for k, v in macro.items() if is_number(v, finite=False)}
