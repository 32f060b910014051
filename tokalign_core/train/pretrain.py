"""Pretrain the tiny source (and teacher) models the demo and benchmarks start from.

No pretrained causal LM ships on PyPI, so TokAlign's source model (Pythia, a GPT-NeoX
with an English-centric byte-level BPE; Li et al., 2025, §4.1) is stood in for by a small
GPT-NeoX trained here from scratch on real English text and code from the benchmark corpus
(:mod:`tokalign_core.data.textsources`, read through :mod:`tokalign_core.data.mix`). Presets:

- ``demo``: ~2.9M parameters, 8k byte-level BPE, 400 steps of 8 x 128 tokens: a few
  minutes on an idle 2-core machine (end-to-end demo);
- ``bakeoff``: ~10.7M parameters, 8k BPE (method comparisons; see benchmarks/corpus.md);
- ``teacher``: a tiny model with the Qwen2 target tokenizer (``builtin:qwen2``), trained
  the same way, for token-level distillation in the demo;
- ``micro``: a few steps of a toy model (tests).

Training runs single-process through the training package's plain-torch engine
(:class:`~tokalign_core.train.engine.TorchEngine`: AdamW without decay on vectors, gradient
clipping), its optimizer step (:func:`~tokalign_core.train.step.optimizer_step`) and its
schedule (:func:`~tokalign_core.train.schedule.warmup_cosine`: linear warm-up over
``warmup_steps``, cosine decay towards ``min_lr_ratio * lr``) on seeded random windows of
the token stream, with a tqdm bar and loss/lr logged through
:mod:`tokalign_core.runtime.tracking`. Held-out bits per byte come from the evaluator
(:mod:`tokalign_core.evaluate.perplexity`), the README from
:mod:`tokalign_core.model.card`. The result is a ``model`` artifact (an HF
``save_pretrained`` folder with safetensors, the tokenizer, ``meta.json`` and the model
card) written atomically through :class:`~tokalign_core.store.artifacts.ArtifactStore`
and cached by content (:meth:`~tokalign_core.store.artifacts.ArtifactStore.recall`): the
key hashes the training texts, the config, the source of the functions that train and
save the model (:func:`code_digest`), and the torch/transformers/tokenizers versions. A
second call with the same inputs returns the cached artifact after checking its manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokalign_core.configs.pretrain import PRESETS, PretrainConfig, preset
from tokalign_core.evaluate.perplexity import (
    GroupStats,
    evaluate_group,
    nll_sum,
    score_documents,
    windows,
)
from tokalign_core.model.load import transformers_lock
from tokalign_core.model.toy import train_bytelevel_bpe
from tokalign_core.runtime.tracking import MetricsLogger, NullLogger
from tokalign_core.store.artifacts import ArtifactRef, ArtifactStore
from tokalign_core.train.distill import token_loss_sums
from tokalign_core.train.engine import TorchEngine, adamw
from tokalign_core.train.schedule import warmup_cosine
from tokalign_core.train.stages import param_groups, set_trainable
from tokalign_core.train.step import optimizer_step

log = logging.getLogger(__name__)

KIND = "model"
INDEX = "pretrain"  # the store index (<root>/index/pretrain/<key>.json)
DEFAULT_CORPUS = Path(__file__).resolve().parents[1] / ".cache" / "bench" / "corpus"
DEFAULT_EVAL = DEFAULT_CORPUS.parent / "eval"


# ----------------------------------------------------------------------------- data


@dataclass
class TrainingTexts:
    """Training and held-out texts plus where they came from (``corpus`` or ``stdlib``)."""

    train: list[str]
    eval: dict[str, list[str]]
    source: str


def load_training_texts(config: PretrainConfig, corpus_dir: str | Path | None = None,
                        eval_dir: str | Path | None = None) -> TrainingTexts:
    """English prose + code from the benchmark corpus (``benchmarks/make_corpus.py``).

    Takes ``(1 - code_fraction) * train_bytes`` of prose from ``<lang>.*.jsonl`` for each
    of ``text_langs`` and the rest from ``<lang>.code.jsonl`` for ``code_langs``, split
    evenly over the files (a small file's unused share goes to the others), each read
    from its start (the corpus is already shuffled with its seed). Held-out texts come from
    ``eval/<lang>.jsonl``. Without a corpus, falls back to this interpreter's standard
    library (English docstrings/comments and Python code) and says so in the log.
    """
    from tokalign_core.data.mix import corpus_texts, read_jsonl

    corpus = Path(corpus_dir) if corpus_dir else DEFAULT_CORPUS
    evald = Path(eval_dir) if eval_dir else corpus.parent / "eval"
    if not is_corpus_folder(corpus):
        return _stdlib_texts(config)
    prose_budget = int(config.train_bytes * (1 - config.code_fraction)) if config.code_langs \
        else config.train_bytes
    code_budget = config.train_bytes - prose_budget if config.text_langs else config.train_bytes
    train: list[str] = []
    for langs, domains, budget in ((config.text_langs, None, prose_budget),
                                   (config.code_langs, ["code"], code_budget)):
        if not langs:
            continue
        files = [p for p in sorted(corpus.glob("*.jsonl"))
                 if p.stem.split(".")[0] in langs
                 and (domains is None) == (not p.stem.endswith(".code"))]
        # Smallest files first, each taking an equal share of what is left, so a small
        # file's unused share goes to the larger ones.
        files.sort(key=lambda p: (p.stat().st_size, p.name))
        left = budget
        for i, path in enumerate(files):
            lang, domain = path.stem.split(".", 1)
            got = list(corpus_texts(corpus, [lang], [domain],
                                    max_bytes=left // (len(files) - i)))
            left -= sum(len(t.encode()) for t in got)
            train += got
    if not train:
        raise ValueError(f"corpus {corpus} holds no text for langs {config.text_langs} / "
                         f"code {config.code_langs}; rebuild it or change the config")
    held: dict[str, list[str]] = {}
    for lang in (*config.text_langs, *config.code_langs):
        path = evald / f"{lang}.jsonl"
        if path.exists():
            held[lang] = _take_bytes((r["text"] for r in read_jsonl(path)), config.eval_bytes)
    return TrainingTexts(train, held, "corpus")


def is_corpus_folder(folder: Path) -> bool:
    """A benchmark corpus: has ``READY`` or at least one ``<lang>.<domain>.jsonl`` (other
    jsonl files, e.g. a metrics log, do not count)."""
    return folder.is_dir() and ((folder / "READY").exists() or any(
        p.stem.count(".") == 1 for p in folder.glob("*.jsonl")))


def _take_bytes(texts, budget: int) -> list[str]:
    out, used = [], 0
    for t in texts:
        n = len(t.encode())
        if used + n > budget and out:
            break
        out.append(t)
        used += n
    return out


def _stdlib_texts(config: PretrainConfig) -> TrainingTexts:
    from tokalign_core.model.toy import stdlib_texts

    log.warning("no benchmark corpus found: pretraining on the standard library's text "
                "(run benchmarks/make_corpus.py for real multilingual text)")
    docs = stdlib_texts(max_docs=100_000, seed=config.seed)
    held = _take_bytes(docs, config.eval_bytes)
    train = _take_bytes(docs[len(held):], config.train_bytes)
    return TrainingTexts(train, {"stdlib": held}, "stdlib")


def texts_digest(train: list[str], held: dict[str, list[str]]) -> str:
    """sha256 over every training and held-out text (length-prefixed, in order)."""
    h = hashlib.sha256()
    for t in train:
        b = t.encode()
        h.update(len(b).to_bytes(8, "little") + b)
    for lang in sorted(held):
        h.update(b"\x00eval:" + lang.encode())
        for t in held[lang]:
            b = t.encode()
            h.update(len(b).to_bytes(8, "little") + b)
    return h.hexdigest()


def code_digest() -> str:
    """Hash of the code that turns (texts, config) into a model: the source of the
    tokenizer/model builders, the training loop, the evaluation and the artifact writer
    in this module, of ``toy.train_bytelevel_bpe``, plus the torch / transformers /
    tokenizers versions. Function-level on purpose: editing a loader, the CLI or another
    module must not force a multi-minute retrain (the texts are hashed separately)."""
    import inspect

    import tokenizers
    import torch
    import transformers

    parts = [inspect.getsource(obj) for obj in _training_code()]
    parts += [torch.__version__, transformers.__version__, tokenizers.__version__]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def cache_key(config: PretrainConfig, texts: TrainingTexts) -> str:
    """The content key: training texts + config + code."""
    cfg = config.model_dump(mode="json")
    cfg.pop("threads", None)  # thread count changes speed, not the result we key on
    cfg.pop("log_every", None)
    blob = json.dumps({"texts": texts_digest(texts.train, texts.eval), "config": cfg,
                       "code": code_digest()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# ----------------------------------------------------------------------------- cache


def find_cached(store: ArtifactStore, key: str) -> ArtifactRef | None:
    """The model artifact recorded under ``key`` if it is still intact (sizes + checksums
    of the manifest); a damaged one is reported and quarantined by the store, so it is
    rebuilt."""
    return store.recall(INDEX, key)


# ----------------------------------------------------------------------------- model


def build_tokenizer(config: PretrainConfig, texts: list[str]):
    """Train the English-centric byte-level BPE (Pythia-like: ``<|endoftext|>`` is bos,
    eos and unk), or load the configured tokenizer spec."""
    if config.tokenizer != "train-bpe":
        from tokalign_core.vocab.tokenizers import load_tokenizer

        return load_tokenizer(config.tokenizer)
    return train_bytelevel_bpe(_take_bytes(texts, config.bpe_train_bytes),
                               vocab_size=config.vocab_size)


def build_model(config: PretrainConfig, vocab_size: int, eos_id: int, bos_id: int):
    """A randomly initialised GPT-NeoX (Pythia's architecture: parallel residual, rotary
    on a quarter of each head, untied embeddings by default)."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(
        vocab_size=vocab_size, hidden_size=config.hidden, num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        intermediate_size=config.intermediate or 4 * config.hidden,
        max_position_embeddings=max(config.seq_len, 512),
        tie_word_embeddings=config.tie_embeddings, bos_token_id=bos_id, eos_token_id=eos_id,
        use_parallel_residual=True,
    )
    # The weights are drawn from torch's process-global generator, and the demo pretrains
    # the source model and the teacher in two threads at once: interleaved draws would make
    # the initial weights depend on thread timing. One build at a time, in a forked RNG
    # state so the caller's generator is left as it was.
    with _SEEDED_BUILD, transformers_lock(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return GPTNeoXForCausalLM(cfg)


_SEEDED_BUILD = threading.Lock()


def _eos_id(tok) -> int:
    eos = tok.eos_token_id
    if eos is None:
        raise ValueError(f"tokenizer {getattr(tok, 'name_or_path', tok)!r} has no eos token; "
                         "pretraining separates documents with it")
    return int(eos)


def token_stream(tok, texts: list[str]):
    """All texts tokenized and joined with eos after each document.

    Returns a 1-D torch.int64 tensor [n_tokens].
    """
    import numpy as np
    import torch

    eos = _eos_id(tok)
    ids = tok(texts, add_special_tokens=False)["input_ids"] if texts else []
    flat = np.fromiter((i for doc in ids for i in (*doc, eos)), dtype=np.int64)
    if flat.size and int(flat.max()) >= len(tok):
        raise ValueError(f"tokenizer produced id {int(flat.max())} >= its size {len(tok)}")
    return torch.from_numpy(flat)


def train_loop(model, stream, config: PretrainConfig, logger: MetricsLogger,
               progress: bool = True) -> dict[str, float]:
    """Train on random ``seq_len`` windows of ``stream`` (int64 [n]); returns stats.

    Each step draws ``batch_size`` window starts from a generator seeded with ``seed``; a
    window [seq_len] gives inputs ``w[:-1]`` and next-token labels ``w[1:]``, and the step
    minimises their mean cross-entropy through the training package's engine."""
    import torch
    from tqdm.auto import tqdm

    if stream.numel() < config.seq_len + 1:
        raise ValueError(f"training text gives {stream.numel()} tokens, fewer than one "
                         f"window of seq_len={config.seq_len}; add text or shorten seq_len")
    gen = torch.Generator().manual_seed(config.seed)
    engine = _engine(model, config)
    vocab = model.get_output_embeddings().weight.shape[0]
    n_windows = stream.numel() - config.seq_len
    t0 = time.perf_counter()
    loss_ema = None
    bar = tqdm(range(config.steps), desc=f"pretrain {config.preset}", disable=not progress,
               mininterval=2)
    for step in bar:
        starts = torch.randint(0, n_windows, (config.batch_size,), generator=gen)
        batch = torch.stack([stream[s: s + config.seq_len] for s in starts.tolist()])
        lr = engine.lr()  # the rate this step uses (the schedule advances inside the step)
        loss = optimizer_step(engine, 1, lambda _m, b=batch: _window_loss(engine, b, vocab)
                              )["loss"]
        if not math.isfinite(loss):
            raise FloatingPointError(f"pretraining loss became {loss} at step {step}; "
                                     "lower lr or raise warmup_steps")
        loss_ema = loss if loss_ema is None else 0.95 * loss_ema + 0.05 * loss
        if step % config.log_every == 0 or step == config.steps - 1:
            logger.log({"train/loss": loss, "train/lr": lr,
                        "train/grad_norm": engine.grad_norm()}, step)
            bar.set_postfix(loss=f"{loss_ema:.3f}")
    engine.close()
    model.eval()
    secs = time.perf_counter() - t0
    return {"final_loss_ema": float(loss_ema), "train_seconds": secs,
            "seconds_per_step": secs / config.steps,
            "train_tokens_seen": config.steps * config.batch_size * config.seq_len}


def _engine(model, config: PretrainConfig) -> TorchEngine:
    """The plain-torch engine over every parameter: AdamW (0.9, 0.95), the warm-up +
    cosine schedule, clipping at ``grad_clip``, one micro-batch per step, fp32."""
    params = set_trainable(model, "all")
    opt, sched = adamw(params, config.lr, config.weight_decay, (0.9, 0.95), 1e-8,
                       lambda s: warmup_cosine(s, config.steps, config.warmup_steps,
                                               config.min_lr_ratio))
    model.train()
    return TorchEngine(model, opt, sched, 1, config.grad_clip, bf16=False)


def _window_loss(engine: TorchEngine, batch, vocab: int):
    """(mean next-token CE of ``batch`` int64 [b, L] over its b * (L-1) targets, {})."""
    sums = token_loss_sums(engine.forward(batch[:, :-1]), batch[:, 1:], vocab)
    return sums.loss(0.0, 1.0), {}


def bits_per_byte(model, tok, texts: list[str], seq_len: int, batch_size: int = 8) -> float:
    """Held-out bits per UTF-8 byte (Gao et al., 2020; comparable across tokenizers) by
    the evaluator: each text prefixed with the tokenizer's BOS (else EOS, as in Pythia and
    the trained BPE, whose ``<|endoftext|>`` is both) and scored in consecutive windows of
    ``seq_len + 1`` tokens that overlap by one (``stride = seq_len``), so every token is
    scored once with up to ``seq_len`` tokens of context."""
    from tokalign_core.configs.evaluate import EvalConfig

    if not texts:
        raise ValueError("bits_per_byte needs at least one held-out text")
    _eos_id(tok)
    cfg = EvalConfig(window=seq_len + 1, stride=seq_len, batch_size=batch_size, add_bos=True)
    stats = evaluate_group(model, tok, tok, texts, cfg, progress=False)
    return float(stats.metrics().bits_per_byte)


# ----------------------------------------------------------------------------- entry


@dataclass
class PretrainResult:
    """The model artifact, whether it came from the cache, and its metrics."""

    ref: ArtifactRef
    cached: bool
    key: str
    metrics: dict[str, float]


def pretrain(config: PretrainConfig, store: ArtifactStore | str | Path,
             texts: TrainingTexts | None = None, corpus_dir: str | Path | None = None,
             logger: MetricsLogger | None = None, progress: bool = True,
             force: bool = False) -> PretrainResult:
    """Pretrain (or fetch from the cache) the model described by ``config``.

    ``texts`` defaults to :func:`load_training_texts` on ``corpus_dir``. The artifact is a
    folder loadable by ``AutoModelForCausalLM.from_pretrained`` and
    ``AutoTokenizer.from_pretrained``. ``force`` retrains even when cached.
    """
    store = store if isinstance(store, ArtifactStore) else ArtifactStore(store)
    texts = texts or load_training_texts(config, corpus_dir)
    key = cache_key(config, texts)
    if not force and (ref := find_cached(store, key)) is not None:
        log.info("pretrained %s model found in the cache: %s", config.preset, ref.path)
        return PretrainResult(ref, True, key, ref.meta().get("metrics", {}))
    import torch

    if config.threads:
        torch.set_num_threads(config.threads)
    logger = logger or NullLogger()
    tok = build_tokenizer(config, texts.train)
    model = build_model(config, len(tok), _eos_id(tok),
                        int(tok.bos_token_id if tok.bos_token_id is not None else _eos_id(tok)))
    stream = token_stream(tok, texts.train)
    stats = train_loop(model, stream, config, logger, progress)
    metrics: dict[str, float] = {**stats, "train_tokens": int(stream.numel()),
                                 "n_params": sum(p.numel() for p in model.parameters())}
    for lang, held in texts.eval.items():
        if held:
            metrics[f"eval_bpb/{lang}"] = bits_per_byte(model, tok, held, config.seq_len,
                                                        config.eval_batch_size)
    logger.log({k: v for k, v in metrics.items() if k.startswith("eval_bpb")}, config.steps)
    meta = {"key": key, "config": config.model_dump(mode="json"), "metrics": metrics,
            "texts_source": texts.source, "texts_digest": texts_digest(texts.train, texts.eval),
            "train_docs": len(texts.train), "code_digest": code_digest()}
    with store.writer(KIND) as w:
        model.save_pretrained(w.dir, safe_serialization=True)
        tok.save_pretrained(w.dir)
        (w.dir / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        (w.dir / "README.md").write_text(model_card(config, metrics, texts.source, key))
    store.remember(INDEX, key, w.ref)
    return PretrainResult(w.ref, False, key, metrics)


def model_card(config: PretrainConfig, metrics: dict[str, float], source: str,
               key: str) -> str:
    """A short README for the pretrained folder (:func:`tokalign_core.model.card.render`):
    what it is, how it was made, its held-out bits per byte, the config and cache key."""
    from tokalign_core.model.card import CardInfo, render

    texts = "the benchmark corpus" if source == "corpus" else "the Python standard library"
    vocab = f" ({config.vocab_size} tokens)" if config.tokenizer == "train-bpe" else ""
    bpb = {k.split("/", 1)[1]: {"bits_per_byte": v} for k, v in metrics.items()
           if k.startswith("eval_bpb/")}
    info = CardInfo(
        name=f"tokalign pretrained `{config.preset}` model", method="pretrained",
        target_tokenizer=f"{config.tokenizer}{vocab}",
        summary="A small GPT-NeoX (Pythia's architecture) pretrained from scratch by "
        f"`tokalign pretrain` on English text and code ({texts}).",
        training=f"{config.steps} steps of {config.batch_size} x {config.seq_len} tokens",
        eval_results={"groups": bpb} if bpb else {},
        init_report={k: v for k, v in metrics.items() if not k.startswith("eval_bpb/")},
        config=config.model_dump(mode="json"), config_digest=key,
        notes="The config digest is the cache key: a hash of the training texts, this "
        "config and the training code.")
    return render(info)


def load_pretrained(ref: ArtifactRef | str | Path):
    """(model, tokenizer) of a pretrained artifact (a ref or its folder), in eval mode."""
    from tokalign_core.model.load import load_causal_lm
    from tokalign_core.vocab.tokenizers import load_tokenizer

    path = Path(ref.path) if isinstance(ref, ArtifactRef) else Path(ref)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is not a pretrained model folder (no config.json); "
                                "run `tokalign pretrain` first")
    return load_causal_lm(path), load_tokenizer(path)


def _training_code() -> tuple[Any, ...]:
    """The objects whose source is the "code" part of the cache key, bound when this
    module is imported (a test monkeypatching one of them does not change the key)."""
    return _TRAINING_CODE


# The config is keyed by its values (cache_key); its class (field help, presets) is not
# training code, so editing a description does not force a retrain.
_TRAINING_CODE = (build_tokenizer, build_model, token_stream, train_loop,
                  _engine, _window_loss, bits_per_byte, pretrain, model_card, _eos_id,
                  train_bytelevel_bpe, warmup_cosine, adamw, param_groups, set_trainable,
                  TorchEngine, optimizer_step, token_loss_sums, evaluate_group,
                  score_documents, nll_sum, windows, GroupStats)


__all__ = ["PRESETS", "PretrainConfig", "PretrainResult", "TrainingTexts", "bits_per_byte",
           "build_model", "build_tokenizer", "cache_key", "find_cached",
           "load_pretrained", "load_training_texts", "preset", "pretrain", "texts_digest",
           "token_stream"]
