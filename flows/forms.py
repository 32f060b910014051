"""The flows behind the served deployments, with parameters a person can fill in.

Prefect renders a flow's parameters as its "Custom run" form. The library flows take whole
configs (``PipelineConfig``: ~200 fields) and a :class:`~tasks.caching.Workspace` (with
internals such as ``parent_run_id``), which make a form of thousands of pixels. These
flows have the same names (``pipeline``, ``align``, ``adapt``, ``distill``, ``evaluate``)
and take, at the top: a preset, the source model, the target tokenizer, the corpus and the
steps; everything else is in one ``advanced`` section (a whole ``PipelineConfig`` to start
from, the teacher, the run folder, the Dask workers). Artifacts are given as folders, never
as raw kind/sha256/path references.

Out of the box (every field left at its default) a run works on this machine: the corpus is
the machine's own text (as in the demo) and the source model is SmolLM2-135M from the
``builtin:`` alias, so an event-triggered run only needs its ``target_tokenizer``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from prefect import flow
from pydantic import Field

from flows.align import alignment_rows, run_align
from flows.common import Runner, publish_markdown, publish_table
from flows.demo import SOURCE_MODEL, TEXT_CORPUS, DemoConfig, bind_corpus, reads_machine_text
from flows.evaluate import bpb_rows, run_evaluate
from flows.pipeline import publish_summary, run_pipeline
from tasks import stages
from tasks.caching import Workspace
from tasks.lineage import parent_run
from tokalign_core.configs.base import FrozenConfig
from tokalign_core.configs.pipeline import PipelineConfig
from tokalign_core.evaluate.results import ModelKey
from tokalign_core.evaluate.tables import markdown_table
from tokalign_core.store.artifacts import ArtifactRef

Preset = Literal["quick", "demo", "tokalign++", "tokalign", "paper-scale"]
PRESET_HELP = ("quick: minutes, micro budgets (try it first); demo: the demo's settings "
               "(~20 min on 2 cores); tokalign++ / tokalign: the papers' methods at full "
               "settings; paper-scale: Pythia-1b -> Qwen2 on ~1B tokens (GPUs)")


class Advanced(FrozenConfig):
    """Everything beyond the top-level fields."""

    pipeline: PipelineConfig | None = Field(
        None, description="every stage's settings to start from instead of the preset's "
        "(source, target, corpus and steps above still apply when set)")
    teacher: str | None = Field(
        None, description="distil from this model, which uses the target tokenizer (quick "
        "and demo without one: the adapted model into a shallower student)")
    run_dir: str = Field("runs/served", description="artifacts, models, results and the "
                         "MLflow store of this run (one store per run folder)")
    workers: int = Field(2, ge=1, description="Dask LocalCluster processes; 1 = serial")
    dask_address: str | None = Field(None, description="an existing Dask scheduler "
                                     "(tcp://host:8786) instead of a LocalCluster")

    def workspace(self) -> Workspace:
        return Workspace(run_dir=str(Path(self.run_dir).expanduser().resolve()),
                         workers=self.workers, dask_address=self.dask_address)


def base_config(preset: str, target: str, advanced: Advanced) -> tuple[PipelineConfig,
                                                                         DemoConfig]:
    """The preset's (or ``advanced.pipeline``'s) settings, and the demo settings that say
    how to read this machine's text (used when no corpus is given)."""
    demo = DemoConfig.make(target, quick=preset == "quick")
    if advanced.pipeline is not None:
        return advanced.pipeline, demo
    if preset in ("quick", "demo"):
        return demo.pipeline, demo
    return PipelineConfig.preset(preset, source_model=SOURCE_MODEL), demo


def form_config(preset: str, source_model: str | None, target_tokenizer: str | None,
                corpus: list[str] | tuple[str, ...], steps: int | None,
                advanced: Advanced) -> tuple[PipelineConfig, DemoConfig]:
    """The run's PipelineConfig: the base settings with the form's top-level fields.
    No corpus: the machine's text (bound at run time by :func:`machine_text`)."""
    cfg, demo = base_config(preset, target_tokenizer or "builtin:qwen2", advanced)
    data = cfg.model_dump(mode="json")
    if source_model:
        data["source_model"] = source_model
    if target_tokenizer:
        data["target_tokenizer"] = target_tokenizer
    if corpus:
        data["corpus"]["sources"] = [{"path": p} for p in corpus]
    elif advanced.pipeline is None:
        data["corpus"]["sources"] = [{"path": TEXT_CORPUS, "format": "jsonl"}]
    if advanced.teacher:
        if data.get("distill") is None and data.get("adapt") is not None:
            data["distill"] = {**data["adapt"], "mode": "distill"}
        if data.get("distill") is not None:
            data["distill"]["distill"] = {**(data["distill"].get("distill") or {}),
                                          "teacher": advanced.teacher}
    if steps:
        for key in ("adapt", "distill"):
            if data.get(key) is not None:
                data[key]["total_steps"] = steps
    return PipelineConfig.model_validate(data), demo


def machine_text(r: Runner, cfg: PipelineConfig, demo: DemoConfig) -> PipelineConfig:
    """``cfg`` reading this machine's text when its corpus is the placeholder (the demo's
    text-corpus and evaluation-sample stages, cached like every stage)."""
    if not reads_machine_text(cfg):
        return cfg
    corpus = r.run("text-corpus", stages.text_corpus_task, demo.text, demo.max_files_per_group)
    sample = r.run("eval-sample", stages.eval_sample_task, corpus, demo.eval_docs,
                   demo.eval_chars)
    return bind_corpus(cfg, corpus, cfg.source_model, sample)


@flow(name="pipeline", log_prints=True)
def pipeline_form(
    preset: Preset = Field("quick", description=PRESET_HELP),
    source_model: str | None = Field(None, description="the model to adapt: hub id, "
                                     "folder, .gguf or builtin alias (empty: "
                                     f"{SOURCE_MODEL}, or advanced.pipeline's)"),
    target_tokenizer: str | None = Field(None, description="the new vocabulary: hub id, "
                                         "folder, tokenizer.json, *.tiktoken or "
                                         "builtin:qwen2 (empty: the preset's, builtin:qwen2 "
                                         "for quick and demo)"),
    corpus: list[str] = Field([], description="text files, folders, globs "
                              "or hf:<dataset>, mixed equally (empty: this machine's text)"),
    steps: int | None = Field(None, ge=1, description="adaptation (and distillation) steps "
                              "(empty: the preset's)"),
    advanced: Advanced = Field(Advanced(), description="everything else"),
) -> dict[str, Any]:
    """Align, initialise (with baselines), adapt, distil and evaluate: the whole pipeline."""
    cfg, demo = form_config(preset, source_model, target_tokenizer, corpus, steps, advanced)
    student_layers = demo.student_layers if preset in ("quick", "demo") and \
        advanced.teacher is None and advanced.pipeline is None else None
    with parent_run(advanced.workspace(), "pipeline", cfg) as ws:
        r = Runner(ws)
        cfg = machine_text(r, cfg, demo)
        out = run_pipeline(r, cfg, student_layers=student_layers)
        out["summary"] = publish_summary(ws, out["tables"], "pipeline")
        out["states"] = dict(r.states)
        print("models:\n" + "\n".join(f"  {k.label}: {v}" for k, v in out["published"].items()))
        return out


@flow(name="align", log_prints=True)
def align_form(
    preset: Preset = Field("quick", description=PRESET_HELP),
    source_model: str | None = Field(None, description="the model whose vocabulary is "
                                     f"aligned (empty: {SOURCE_MODEL}, or "
                                     "advanced.pipeline's)"),
    target_tokenizer: str | None = Field(None, description="the new vocabulary (empty: the "
                                         "preset's, builtin:qwen2 for quick and demo)"),
    corpus: list[str] = Field([], description="text both tokenizers see "
                              "(empty: this machine's text)"),
    advanced: Advanced = Field(Advanced(), description="everything else"),
) -> dict[str, Any]:
    """Tokenize, co-occurrence, GloVe (or hidden states), alignment and its metrics."""
    cfg, demo = form_config(preset, source_model, target_tokenizer, corpus, None, advanced)
    with parent_run(advanced.workspace(), "align", cfg) as ws:
        r = Runner(ws)
        out = run_align(r, machine_text(r, cfg, demo))
        rows = alignment_rows(out["metrics"])
        publish_table("alignment-metrics", rows, f"alignment to {cfg.target_tokenizer}")
        publish_markdown("alignment-summary", markdown_table(rows))
        print(f"alignment: {out['alignment'].path}")
        out["states"] = dict(r.states)
        return out


def artifact(folder: str, kind: str) -> ArtifactRef:
    """The artifact in ``folder`` (a folder a stage printed), checked against its manifest."""
    from tokalign_core.data.corpus import ref_from_dir

    return ref_from_dir(folder, kind)


def model_ref(folder: str) -> ArtifactRef:
    """A model artifact from its folder, its ``model/`` folder or a published
    ``<run>/models/<name>`` folder (whose files link into the artifact)."""
    path = Path(folder).expanduser().resolve()
    config = path / "config.json"
    if config.is_symlink():  # a published folder: its files are the artifact's
        path = config.resolve().parent
    if path.name == "model" and not (path / "MANIFEST.json").exists():
        path = path.parent
    return artifact(str(path), "model")


@flow(name="adapt", log_prints=True)
def adapt_form(
    alignment: str = Field(..., description="alignment folder (printed by align)"),
    target_tokens: str = Field(..., description="target-side tokens folder"),
    texts: str = Field(..., description="evaluation texts (folder or file by language)"),
    source_model: str | None = Field(None, description=f"the model to adapt (empty: "
                                     f"{SOURCE_MODEL})"),
    preset: Preset = Field("quick", description=PRESET_HELP),
    steps: int | None = Field(None, ge=1, description="adaptation steps"),
    advanced: Advanced = Field(Advanced(), description="everything else"),
) -> dict[str, Any]:
    """Initialise (alignment + baselines), adapt in two stages and evaluate."""
    from flows.adapt import run_adapt

    target = (artifact(target_tokens, "tokens").meta() or {}).get("tokenizer")
    cfg, _ = form_config(preset, source_model, target, [], steps, advanced)
    with parent_run(advanced.workspace(), "adapt", cfg) as ws:
        r = Runner(ws)
        out = run_adapt(r, cfg, cfg.source_model, artifact(alignment, "alignment"),
                        artifact(target_tokens, "tokens"), texts)
        rows = bpb_rows(out["evaluation"])
        publish_table("bits-per-byte", rows, "bits per byte by initialisation")
        out["states"] = dict(r.states)
        return out


@flow(name="distill", log_prints=True)
def distill_form(
    student: str = Field(..., description="the model to train (a model folder a run "
                         "printed, e.g. <run>/models/aligned-adapted)"),
    teacher: str = Field(..., description="the teacher: a model with the same vocabulary"),
    target_tokens: str = Field(..., description="target-side tokens folder"),
    texts: str | None = Field(None, description="evaluation texts (empty: no evaluation)"),
    preset: Preset = Field("quick", description=PRESET_HELP),
    steps: int | None = Field(None, ge=1, description="distillation steps"),
    advanced: Advanced = Field(Advanced(), description="everything else"),
) -> dict[str, Any]:
    """Distil ``teacher`` into ``student`` on the target-side tokens."""
    from flows.distill import run_distill

    tokens = artifact(target_tokens, "tokens")
    adv = advanced.model_copy(update={"teacher": teacher})
    cfg, _ = form_config(preset, None, (tokens.meta() or {}).get("tokenizer"), [], steps, adv)
    teacher_spec: Any = teacher
    if (Path(teacher) / "config.json").is_symlink() or (Path(teacher) / "MANIFEST.json").exists():
        teacher_spec = model_ref(teacher)
    with parent_run(advanced.workspace(), "distill", cfg) as ws:
        r = Runner(ws)
        out = run_distill(r, cfg, model_ref(student), teacher_spec, tokens, texts)
        if "evaluation" in out:
            publish_table("distillation", bpb_rows(out["evaluation"]),
                          "bits per byte after distillation")
        out["states"] = dict(r.states)
        return out


@flow(name="evaluate", log_prints=True)
def evaluate_form(
    models: dict[str, str] = Field(..., description="name -> model folder (a run's "
                                   "<run>/models/<name>, or any save_pretrained folder); "
                                   "the names label the results"),
    texts: str = Field(..., description="texts by language (folder or file)"),
    reference_tokenizer: str = Field(SOURCE_MODEL, description="the tokenizer "
                                     "normalised perplexity is measured against"),
    advanced: Advanced = Field(Advanced(), description="everything else"),
) -> dict[str, Any]:
    """Bits per byte, normalised perplexity and compression of the given models."""
    cfg, _ = form_config("quick", reference_tokenizer, None, [], None, advanced)
    resolved: dict[ModelKey, Any] = {}
    for name, folder in models.items():
        try:
            resolved[ModelKey(name)] = model_ref(folder)
        except FileNotFoundError:  # any model folder or hub id, evaluated as it is
            resolved[ModelKey(name)] = folder
    with parent_run(advanced.workspace(), "evaluate", cfg) as ws:
        r = Runner(ws)
        evaluation = run_evaluate(r, cfg, resolved, texts)
        rows = bpb_rows(evaluation)
        publish_table("evaluation", rows, "bits per byte by model")
        return {"evaluation": evaluation, "states": dict(r.states)}
