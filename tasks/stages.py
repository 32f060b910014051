"""One content-cached Prefect task per pipeline stage: thin wrappers over tokalign_core.

Each task resolves its inputs (artifact refs, tokenizer specs), calls one core function,
records a nested MLflow run (params, input/output hashes, metrics) and returns an
:class:`~tokalign_core.store.artifacts.ArtifactRef` or a small dict of metrics (a typed
result's ``to_dict()``: cache records are plain JSON). Each task's first argument is the
flow run's :class:`~tasks.context.StageContext` (store, executor, logger, progress; never
part of a cache key). Work that fans out over shards runs on Dask inside the task
(:meth:`~tasks.context.StageContext.executor`). Training runs
as a subprocess ``python -m tokalign_core.train --config run.json`` with ``MLFLOW_RUN_ID``
set, so the training loop logs into the stage's MLflow run (and the same command runs on a
DeepSpeed launcher without Prefect).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tasks.caching import Workspace
from tasks.common import stage_task
from tasks.context import StageContext
from tasks.lineage import flat_numbers, stage_run
from tasks.runtime import pinned_env, run_logger, store
from tokalign_core.configs.align import AlignConfig
from tokalign_core.configs.align_eval import EvalAlignConfig
from tokalign_core.configs.cooccur import CooccurConfig
from tokalign_core.configs.corpus import CorpusConfig
from tokalign_core.configs.evaluate import EvalConfig
from tokalign_core.configs.glove import GloveConfig
from tokalign_core.configs.init import InitConfig
from tokalign_core.configs.pipeline import bind_run_fields
from tokalign_core.configs.tokenize import TokenizeConfig
from tokalign_core.configs.train import TrainConfig
from tokalign_core.store.artifacts import ArtifactRef

ModelSpec = ArtifactRef | str


def _spec(model: ModelSpec) -> str:
    """A model/tokenizer spec string from a ref (its folder) or a spec."""
    return model.path if isinstance(model, ArtifactRef) else model


def _tok(spec: ModelSpec, trust_remote_code: bool = False) -> Any:
    from tokalign_core.vocab.tokenizers import load_tokenizer

    return load_tokenizer(_spec(spec), trust_remote_code=trust_remote_code)


# ------------------------------------------------------------------------ corpus side


@stage_task("corpus")
def corpus_task(ctx: StageContext, cfg: CorpusConfig) -> ArtifactRef:
    """Mixed corpus artifact (parquet shards + held-out split) from the configured sources."""
    from tokalign_core.data.corpus import build_corpus

    with ctx.run("corpus", cfg) as run:
        ref = build_corpus(cfg, ctx.store, progress=ctx.progress)
        run.dataset("corpus", ref.sha256, ref.path)
        run.metrics(flat_numbers(ref.meta(), depth=1))
        run.outputs(corpus=ref)
    return ref


@stage_task("tokenize")
def tokenize_task(ctx: StageContext, corpus: ArtifactRef, cfg: TokenizeConfig) -> ArtifactRef:
    """Token ids of the corpus under one tokenizer (shards on Dask when workers > 1)."""
    from tokalign_core.vocab.tokenize import tokenize_corpus

    stage = f"tokenize:{Path(cfg.tokenizer).name}"
    with ctx.run_on_executor(stage, cfg, {"corpus": corpus}) as (run, ex):
        ref = tokenize_corpus(corpus, cfg, ctx.store, executor=ex)
        meta = ref.meta()
        run.dataset(f"tokenizer:{cfg.tokenizer}", str(meta.get("tokenizer_digest", "")),
                    cfg.tokenizer)
        run.metrics({k: meta[k] for k in ("n_tokens", "n_docs", "vocab_size") if k in meta})
        run.outputs(tokens=ref)
    return ref


@stage_task("cooccur")
def cooccur_task(ctx: StageContext, tokens: ArtifactRef, cfg: CooccurConfig) -> ArtifactRef:
    """Windowed 1/distance co-occurrence counts (per shard on Dask, merged exactly)."""
    from tokalign_core.embed.cooccur import build_cooccur

    with ctx.run_on_executor("cooccur", cfg, {"tokens": tokens}) as (run, ex):
        ref = build_cooccur(tokens, cfg, ctx.store, executor=ex)
        run.outputs(cooccur=ref)
    return ref


@stage_task("glove")
def glove_task(ctx: StageContext, cooccur: ArtifactRef, cfg: GloveConfig) -> ArtifactRef:
    """GloVe token vectors; the cost per iteration goes to MLflow as ``glove.cost``."""
    from tokalign_core.embed.glove import build_glove

    with ctx.run("glove", cfg, {"cooccur": cooccur}) as run:
        logger = run.logger()
        try:
            ref = build_glove(cooccur, cfg, ctx.store, logger=logger, progress=ctx.progress)
        finally:
            logger.close()
        run.outputs(embeddings=ref)
    return ref


@stage_task("hidden-states")
def hidden_states_task(ctx: StageContext, model: ModelSpec, source_tokenizer: ModelSpec,
                       target_tokenizer: str, source_tokens: ArtifactRef | None = None,
                       target_tokens: ArtifactRef | None = None,
                       batch_size: int = 32) -> dict[str, ArtifactRef]:
    """TokAlign++ representations: last-token hidden states of the source model for every
    source token and every target token's text; rows ordered by corpus frequency when the
    tokens artifacts are given."""
    from tokalign_core.configs.hidden_states import HiddenStatesConfig
    from tokalign_core.embed.hidden_states import extract_hidden_states, write_embeddings
    from tokalign_core.model.init import load_model
    from tokalign_core.store.inputs import digest_of
    from tokalign_core.vocab.tokenize import load_counts

    inputs = {"model": model, "source_tokens": source_tokens, "target_tokens": target_tokens}
    with ctx.run("hidden-states", None, inputs) as run:
        s_tok, t_tok = _tok(source_tokenizer), _tok(target_tokenizer)
        src, tgt = extract_hidden_states(load_model(_spec(model)), s_tok, t_tok,
                                         HiddenStatesConfig(batch_size=batch_size),
                                         progress=ctx.progress)
        counts = [load_counts(t) if t is not None else None for t in (source_tokens,
                                                                       target_tokens)]
        refs = {"source": write_embeddings(ctx.store, src.ordered(counts[0]),
                                           {"tokenizer": _spec(source_tokenizer),
                                            "tokenizer_digest": digest_of(s_tok)}),
                "target": write_embeddings(ctx.store, tgt.ordered(counts[1]),
                                           {"tokenizer": target_tokenizer,
                                            "tokenizer_digest": digest_of(t_tok)})}
        run.outputs(**refs)
    return refs


@stage_task("shared-tokens")
def shared_tokens_task(ctx: StageContext, source_tokenizer: ModelSpec,
                       target_tokenizer: str) -> dict[str, Any]:
    """Overlap statistics of the two vocabularies (tokens equal as bytes, specials by role)."""
    from tokalign_core.vocab.vocab import build_vocab, overlap_stats, shared_tokens

    with ctx.run("shared-tokens") as run:
        s_vocab, t_vocab = build_vocab(_tok(source_tokenizer)), build_vocab(_tok(target_tokenizer))
        stats = overlap_stats(s_vocab, t_vocab, shared_tokens(s_vocab, t_vocab))
        run.metrics(flat_numbers(stats, depth=1))
    return stats


# ------------------------------------------------------------------------ alignment


@stage_task("align")
def align_task(ws: Workspace, source_emb: ArtifactRef, target_emb: ArtifactRef,
               source_tokenizer: ModelSpec, target_tokenizer: str,
               cfg: AlignConfig) -> ArtifactRef:
    """The target -> source alignment artifact (VecMap objective per iteration to MLflow),
    with ``heldout_pairs.npz`` when ``cfg.holdout`` hides shared pairs: the same files as
    ``tokalign align`` (both call :func:`tokalign_core.align.prepare.prepare_alignment`)."""
    from tokalign_core.align.prepare import prepare_alignment

    inputs = {"source_emb": source_emb, "target_emb": target_emb}
    with stage_run(ws, f"align:{cfg.method}", cfg, inputs) as run:
        step = iter(range(10**9))
        prepared = prepare_alignment(
            source_emb.path, target_emb.path, _tok(source_tokenizer), _tok(target_tokenizer),
            cfg, source_spec=_spec(source_tokenizer), target_spec=target_tokenizer,
            callback=lambda stats: run.metrics(flat_numbers(stats, "vecmap."), next(step)),
            progress=ws.progress)
        with store(ws).writer("alignment") as w:
            prepared.save(w.dir)
        counts = prepared.output.alignment.counts()
        run.metrics({f"count.{k}": v for k, v in counts.items()})
        run.outputs(alignment=w.ref)
    return w.ref


@stage_task("evaluate-alignment")
def eval_align_task(ctx: StageContext, alignment: ArtifactRef, source_tokens: ArtifactRef,
                    target_tokens: ArtifactRef, source_tokenizer: ModelSpec,
                    target_tokenizer: str, cfg: EvalAlignConfig) -> dict[str, Any]:
    """BLEU-1 / BERTScore both directions, hubness and coverage on the held-out split."""
    from tokalign_core.align import metrics as am
    from tokalign_core.align.alignment import Alignment

    inputs = {"alignment": alignment, "source_tokens": source_tokens,
              "target_tokens": target_tokens}
    with ctx.run("evaluate-alignment", cfg, inputs) as run:
        toks = (_tok(source_tokenizer), _tok(target_tokenizer)) if cfg.bertscore else (None,
                                                                                        None)
        ali = Alignment.load(alignment.path)
        ali.check_tokens(source_tokens.path, target_tokens.path)
        result = am.evaluate_alignment(
            ali, am.load_heldout(source_tokens.path, cfg.strip_bos_eos),
            am.load_heldout(target_tokens.path, cfg.strip_bos_eos), cfg, *toks)
        run.metrics(flat_numbers(result))
        run.lineage.log_text(run.run_id, am.format_table(result), "alignment_metrics.md")
    return json.loads(json.dumps(result.to_dict(), default=float))


# ------------------------------------------------------------------------ models


@stage_task("init-model")
def init_task(ctx: StageContext, model: ModelSpec, source_tokenizer: ModelSpec,
              target_tokenizer: str, cfg: InitConfig,
              alignment: ArtifactRef | None = None,
              target_tokens: ArtifactRef | None = None) -> ArtifactRef:
    """The source model with the target vocabulary, initialised by ``cfg.method`` (the
    alignment for ``aligned``, else a baseline) -> model artifact (save_pretrained).
    ``target_tokens`` (the target-side tokens artifact) feeds the LM-head calibration."""
    from tokalign_core.align.alignment import Alignment
    from tokalign_core.model.calibrate import CalibrationData
    from tokalign_core.model.card import CardInfo, method_label
    from tokalign_core.model.init import initialize, load_model, save_initialized
    from tokalign_core.model.load import model_slot

    inputs = {"model": model, "alignment": alignment, "target_tokens": target_tokens}
    with ctx.run(f"init:{cfg.method}", cfg, inputs) as run, model_slot():
        t_tok = _tok(target_tokenizer, cfg.trust_remote_code)
        ali = Alignment.load(alignment.path) if alignment is not None else None
        data = None
        if target_tokens is not None:
            data = CalibrationData.for_init(target_tokens.path, cfg)
        result = initialize(load_model(_spec(model), cfg.trust_remote_code), t_tok, ali, cfg,
                            _tok(source_tokenizer, cfg.trust_remote_code), data)
        card = CardInfo(
            method=method_label(cfg.method, (ali.meta.get("method") if ali else None)),
            source_model=_spec(model), target_tokenizer=target_tokenizer,
            alignment=f"sha256:{alignment.sha256}" if alignment is not None else "",
            counts=result.report.counts, config_digest=cfg.digest())
        with ctx.store.writer("model") as w:
            save_initialized(result.model, t_tok, w.dir / "model", card, overwrite=True)
        run.metrics({f"count.{k}": v for k, v in result.report.counts.items()})
        run.outputs(model=w.ref)
    return w.ref


@stage_task("shrink-model")
def shrink_task(ctx: StageContext, model: ArtifactRef, layers: int) -> ArtifactRef:
    """A shallower copy of a model artifact (``layers`` evenly spread decoder blocks kept,
    same vocabulary): a student to distil from the full-depth model."""
    from tokalign_core.model.init import keep_layers, load_model, save_initialized
    from tokalign_core.model.load import model_slot

    with ctx.run(f"shrink:{layers}", None, {"model": model}) as run, model_slot():
        folder = model_dir(model)
        net = load_model(str(folder))
        kept = keep_layers(net, layers)
        with ctx.store.writer("model") as w:
            save_initialized(net, _tok(str(folder)), w.dir / "model", overwrite=True,
                             card_info={"method": f"student: layers {kept} of the model"})
        run.metrics({"layers_kept": len(kept)})
        run.outputs(model=w.ref)
    return w.ref


# Seconds between progress lines of a training subprocess in the Prefect log.
PROGRESS_SECONDS = 15.0


def follow_training(proc: subprocess.Popen, metrics: Path, label: str, total: int,
                    every: float = PROGRESS_SECONDS, logger: Any = None) -> int:
    """Wait for a training subprocess, logging its newest step from ``metrics`` (the
    JSONL it appends to) every ``every`` seconds and once at the end:
    ``adapt: step 12/24 (stage 1), loss 3.214, lr 0.00064``. Returns its exit code.
    ``logger`` defaults to the calling Prefect run's."""
    logger = logger or run_logger()
    offset = metrics.stat().st_size if metrics.exists() else 0  # a resumed run's old lines
    shown = None
    while True:
        try:
            code = proc.wait(timeout=every)
        except subprocess.TimeoutExpired:
            code = None
        latest, offset = _latest_step(metrics, offset)
        if latest is not None and latest.get("step") != shown:
            shown = latest.get("step")
            logger.info("%s: %s", label, step_line(latest, total))
        if code is not None:
            return code


def _latest_step(path: Path, offset: int) -> tuple[dict[str, Any] | None, int]:
    """The last complete training-step row appended to ``path`` after ``offset``."""
    if not path.exists():
        return None, offset
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read()
    end = data.rfind(b"\n") + 1  # a line still being written waits for the next poll
    latest = None
    for line in data[:end].splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if "loss" in row and row.get("step") is not None:
            latest = row
    return latest, offset + end


def step_line(row: dict[str, Any], total: int) -> str:
    """``step 12/24 (stage 1), loss 3.214, lr 0.00064, 1234 tokens/s``."""
    parts = [f"step {row['step']}/{total}" + (f" (stage {row['stage']})" if "stage" in row
                                              else "")]
    for key, fmt in (("loss", "loss {:.4g}"), ("kl", "kl {:.4g}"), ("lr", "lr {:.3g}"),
                     ("tokens_per_s", "{:.0f} tokens/s"), ("eval_loss", "eval loss {:.4g}")):
        if isinstance(row.get(key), (int, float)):
            parts.append(fmt.format(row[key]))
    return ", ".join(parts)


def model_dir(ref: ArtifactRef) -> Path:
    """The save_pretrained folder inside a model artifact."""
    inner = Path(ref.path) / "model"
    return inner if inner.is_dir() else Path(ref.path)


@stage_task("train")
def train_task(ctx: StageContext, model: ArtifactRef, tokens: ArtifactRef,
               cfg: TrainConfig) -> ArtifactRef:
    """Run ``python -m tokalign_core.train`` (both stages of adaptation, or distillation)
    in a subprocess logging into this stage's MLflow run; the final model becomes an
    artifact. The work folder is keyed by the inputs, so a killed run resumes from its last
    checkpoint."""
    key = f"{model.sha256[:12]}-{tokens.sha256[:12]}-{cfg.digest()[:12]}"
    work = ctx.ws.root / "train" / f"{cfg.mode}-{key}"
    run_cfg = bind_run_fields(cfg, model=str(model_dir(model)), tokens=tokens.path,
                              out_dir=str(work))
    with ctx.run(f"train:{cfg.mode}", run_cfg, {"model": model, "tokens": tokens}) as run:
        run_cfg.save(work / "run.json")
        cmd = [sys.executable, "-m", "tokalign_core.train", "--config", str(work / "run.json")]
        label = ctx.stage_label or cfg.mode
        with open(work / "train.log", "w") as out:
            proc = subprocess.Popen(cmd, env=pinned_env(run.env()), stdout=out,
                                    stderr=subprocess.STDOUT, text=True)
            code = follow_training(proc, work / "metrics.jsonl", label, cfg.total_steps,
                                   logger=ctx.logger)
        if code != 0:
            tail = (work / "train.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"training failed (exit {code}); see {work}/train.log:\n{tail}")
        with ctx.store.writer("model") as w:
            shutil.copytree(work / "model", w.dir / "model")
        run.outputs(model=w.ref)
    return w.ref


@stage_task("evaluate-model")
def eval_model_task(ctx: StageContext, model: ModelSpec, texts: str, cfg: EvalConfig,
                    reference_tokenizer: ModelSpec | None = None) -> dict[str, Any]:
    """Bits per byte, source-normalised perplexity and compression per text group of a
    model artifact, or of a model folder / hub id (the source model, as the reference).

    Which model it is for tables ("aligned (init)") is not an input: the flow's stage label
    (``evaluate:aligned (init)``, in ``ctx``, never in a cache key) names the MLflow run
    and its table, so the same model and texts under two names are evaluated once."""
    from tokalign_core.evaluate.perplexity import evaluate_model, format_table, load_texts
    from tokalign_core.model.init import load_model

    stage = ctx.stage_label or "evaluate:model"
    label = stage.removeprefix("evaluate:")
    with ctx.run(stage, cfg, {"model": model}) as run:
        path = model_dir(model) if isinstance(model, ArtifactRef) else model
        ref_tok = _tok(reference_tokenizer) if reference_tokenizer is not None else None
        result = evaluate_model(load_model(str(path)), _tok(str(path)),
                                load_texts(texts, cfg.txt_split, cfg.max_docs_per_group),
                                ref_tok, cfg)
        run.metrics(flat_numbers(result))
        run.lineage.log_text(run.run_id, format_table(result), f"evaluation_{label}.md")
    return json.loads(json.dumps(result.to_dict(), default=float))


@stage_task("heldout-texts")
def heldout_texts_task(ctx: StageContext, corpus: ArtifactRef,
                       label: str = "heldout") -> ArtifactRef:
    """The corpus's held-out documents as ``texts.jsonl`` (label ``label``), the default
    evaluation texts when no ``eval_texts`` folder is given."""
    from tokalign_core.data.corpus import heldout_file, read_texts

    with ctx.store.writer("texts", {"corpus": corpus.sha256}) as w:
        lines = [json.dumps({"text": t, "label": label}) for t in read_texts(heldout_file(corpus))]
        w.path("texts.jsonl").write_text("\n".join(lines) + "\n")
    return w.ref


# ------------------------------------------------------------------------ demo inputs


def sample_files(files: list[Any], per_group: int | None, seed: int) -> list[Any]:
    """At most ``per_group`` source files per (language, domain), a seeded sample in path
    order: a bounded, reproducible slice of the machine's text for the demo."""
    import random

    if per_group is None:
        return files
    groups: dict[tuple[str, str], list[Any]] = {}
    for f in sorted(files, key=lambda f: f.path):
        groups.setdefault((f.lang, f.domain), []).append(f)
    rng = random.Random(seed)
    out = []
    for key in sorted(groups):
        members = groups[key]
        out += sorted(rng.sample(members, min(per_group, len(members))), key=lambda f: f.path)
    return out


@stage_task("text-corpus")
def text_corpus_task(ctx: StageContext, cfg: Any,
                     max_files_per_group: int | None = None) -> ArtifactRef:
    """A real multilingual corpus from the machine's text (``textsources``), as an artifact
    with ``train/<lang>.<domain>.jsonl`` and ``eval/<lang>.jsonl``."""
    from tokalign_core.data.machine_text import discover
    from tokalign_core.data.textsources import build_text_corpus

    with ctx.run("text-corpus", cfg) as run:
        files = sample_files(discover(cfg), max_files_per_group, cfg.seed)
        with ctx.store.writer("textcorpus") as w:
            summary = build_text_corpus(cfg, w.dir / "train", w.dir / "eval", files=files,
                                        progress=ctx.progress)
            (w.dir / "summary.json").write_text(json.dumps(
                {"train": summary.train, "eval": summary.eval, "fallback": summary.fallback},
                indent=2, sort_keys=True))
        run.metrics({"files": len(files)})
        run.dataset("text-corpus", w.ref.sha256, w.ref.path)
        run.outputs(text_corpus=w.ref)
    return w.ref


@stage_task("eval-sample")
def eval_sample_task(ctx: StageContext, corpus: ArtifactRef, max_docs: int,
                     max_chars: int) -> ArtifactRef:
    """The first ``max_docs`` held-out documents per language of a text corpus, each cut to
    ``max_chars`` at a space: ``<lang>.jsonl`` files for a short, bounded evaluation."""
    from tokalign_core.data.mix import read_jsonl

    with ctx.store.writer("texts", {"max_docs": max_docs, "max_chars": max_chars}) as w:
        for path in sorted((Path(corpus.path) / "eval").glob("*.jsonl")):
            docs = [d["text"] for _, d in zip(range(max_docs), read_jsonl(path), strict=False)]
            cut = [t if len(t) <= max_chars else t[:max_chars].rsplit(" ", 1)[0] for t in docs]
            lines = [json.dumps({"text": t}, ensure_ascii=False) for t in cut if t.strip()]
            if lines:
                w.path(path.name).write_text("\n".join(lines) + "\n")
    return w.ref


@stage_task("pretrain")
def pretrain_task(ctx: StageContext, cfg: Any, corpus: ArtifactRef) -> ArtifactRef:
    """A tiny causal LM pretrained on the text corpus (also cached by ``pretrain`` itself)."""
    from tokalign_core.train.pretrain import pretrain

    with ctx.run(f"pretrain:{cfg.preset}", cfg, {"corpus": corpus}) as run:
        logger = run.logger()
        try:
            result = pretrain(cfg, ctx.store, corpus_dir=Path(corpus.path) / "train",
                              logger=logger, progress=ctx.progress)
        finally:
            logger.close()
        run.metrics(flat_numbers(result.metrics))
        run.outputs(model=result.ref)
    return result.ref
