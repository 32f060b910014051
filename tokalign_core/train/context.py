"""What one training run holds: tokenizer, model, packed data, sampler, logger and, for
distillation, the teacher and its on-disk cache; checked to fit together before any step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokalign_core.configs.train import TrainConfig
from tokalign_core.train.data import BlockSampler, PackedBlocks, TokenStream, rank_positions
from tokalign_core.train.distributed import Dist
from tokalign_core.train.engine import grad_accumulation
from tokalign_core.vocab.tokenizers import load_tokenizer

log = logging.getLogger(__name__)


@dataclass
class Context:
    cfg: TrainConfig
    dist: Dist
    model: Any
    tokenizer: Any
    vocab: int
    eos_id: int
    blocks: PackedBlocks
    sampler: BlockSampler
    gas: int
    logger: Any
    teacher: Any = None
    cache: Any = None
    n_params: int = 0


def _load_model(name: str, dtype: Any, trust: bool) -> Any:
    from tokalign_core.model.load import load_causal_lm

    return load_causal_lm(name, dtype=dtype, trust_remote_code=trust, eval_mode=False)


def check_tokens_tokenizer(meta: dict, tok: Any, tokens: str | Path, tok_name: str) -> None:
    """The tokens artifact must come from the model's tokenizer: its recorded
    ``tokenizer_digest`` is compared (ids of another tokenizer of the same size would
    train silently on garbage)."""
    from tokalign_core.store.inputs import check_same_tokenizer

    check_same_tokenizer(
        meta.get("tokenizer_digest"), tok, what=f"tokens artifact {tokens}",
        recorded_name=repr(meta.get("tokenizer", "?")), given_name=repr(str(tok_name)),
        fix="tokenize the corpus with the model's tokenizer (tokalign tokenize --tokenizer "
            f"{tok_name}) or pass the matching --tokenizer")


def _check_vocab(model: Any, vocab: int, stream: TokenStream, name: str) -> None:
    rows = model.get_input_embeddings().weight.shape[0]
    if rows < vocab:
        raise ValueError(f"{name} has {rows} embedding rows but its tokenizer has {vocab} "
                         "tokens; initialise the model for this tokenizer first (tokalign init)")
    top = stream.max_id()
    if top >= vocab:
        raise ValueError(
            f"tokens artifact {stream.folder} contains id {top} but the tokenizer has {vocab} "
            "tokens: it was tokenized with another tokenizer; tokenize with the model's")
    if stream.vocab_size is not None and stream.vocab_size > vocab:
        log.warning("tokens artifact vocab_size %d > tokenizer length %d",
                    stream.vocab_size, vocab)


def build_context(cfg: TrainConfig, dist: Dist) -> Context:
    """Load tokenizer, model, data (and teacher); validate that they fit together."""
    import torch

    from tokalign_core.runtime.tracking import NullLogger, default_logger

    tok = load_tokenizer(cfg.tokenizer or cfg.model, trust_remote_code=cfg.trust_remote_code)
    eos = cfg.eos_id if cfg.eos_id is not None else tok.eos_token_id
    if eos is None:
        raise ValueError(f"tokenizer {cfg.tokenizer or cfg.model} has no eos token; set eos_id")
    model = _load_model(cfg.model, torch.float32, cfg.trust_remote_code)
    stream = TokenStream(cfg.tokens, eos)
    check_tokens_tokenizer(stream.meta, tok, cfg.tokens, cfg.tokenizer or cfg.model)
    _check_vocab(model, len(tok), stream, cfg.model)
    blocks = PackedBlocks(stream, cfg.seq_len)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    logger = default_logger(out / "metrics.jsonl") if dist.rank == 0 else NullLogger()
    ctx = Context(cfg, dist, model, tok, len(tok), int(eos), blocks,
                  BlockSampler(len(blocks), cfg.seed), grad_accumulation(cfg, dist.world),
                  logger, n_params=sum(p.numel() for p in model.parameters()))
    if cfg.mode != "adapt":
        _attach_teacher(ctx)
    return ctx


def _attach_teacher(ctx: Context) -> None:
    """Load the teacher (frozen, eval) and, when asked, build its on-disk cache."""
    import torch

    from tokalign_core.train import distill

    cfg, d = ctx.cfg, ctx.cfg.distill
    try:
        teacher_tok = load_tokenizer(d.teacher, trust_remote_code=d.trust_remote_code)
        distill.same_vocabulary(ctx.tokenizer, teacher_tok)
    except OSError:
        log.warning("teacher %s ships no tokenizer; assuming the student's", d.teacher)
    dtype = torch.bfloat16 if ctx.dist.bf16 else torch.float32
    teacher = _load_model(d.teacher, dtype, d.trust_remote_code).to(ctx.dist.device).eval()
    teacher.requires_grad_(False)
    if teacher.get_output_embeddings().weight.shape[0] < ctx.vocab:
        raise ValueError(f"teacher {d.teacher} has fewer output rows than the tokenizer's "
                         f"{ctx.vocab} tokens")
    ctx.teacher = teacher
    if cfg.mode == "sentence-distill" or d.top_k:
        ctx.cache = _teacher_cache(ctx)
        if cfg.mode == "distill":
            ctx.teacher = None  # the cache replaces the online teacher


def run_block_ids(ctx: Context) -> np.ndarray:
    """Every block id this rank reads over the whole run (int64 [n])."""
    cfg, d = ctx.cfg, ctx.dist
    step_blocks = cfg.micro_batch_size * d.world
    pos = [rank_positions(m * step_blocks, cfg.micro_batch_size, d.world, d.rank)
           for m in range(cfg.total_steps * ctx.gas)]
    return ctx.sampler.block_ids(np.concatenate(pos))


def _teacher_cache(ctx: Context) -> Any:
    from tokalign_core.store.hashing import sha256_bytes
    from tokalign_core.train import distill

    cfg, d = ctx.cfg, ctx.cfg.distill
    ids = run_block_ids(ctx)
    meta = {"teacher": str(d.teacher), "tokens": str(Path(cfg.tokens).resolve()),
            "seq_len": cfg.seq_len, "data_seed": cfg.seed, "eos": ctx.eos_id,
            "blocks": sha256_bytes(np.unique(ids).tobytes())}
    folder = (Path(cfg.out_dir) / "teacher_cache" /
              f"{cfg.mode}-rank{ctx.dist.rank}-of-{ctx.dist.world}")
    show = cfg.progress and ctx.dist.rank == 0
    if cfg.mode == "distill":
        return distill.precompute_topk(ctx.teacher, ctx.blocks, ids, folder, meta, d.top_k,
                                       d.temperature, ctx.vocab, d.gen_batch_size,
                                       d.topk_dtype, d.chunk_size, show)
    return distill.precompute_sentences(ctx.teacher, ctx.blocks, ids, folder, meta,
                                        d.prompt_len, ctx.eos_id, d.do_sample,
                                        d.gen_temperature, d.gen_top_p, cfg.seed,
                                        d.gen_batch_size, show)
