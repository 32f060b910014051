"""One optimizer step: ``gas`` micro-batches through an engine, each one's loss by mode.

Batches are packed blocks of the tokens artifact (:mod:`tokalign_core.train.data`): the
global block cursor advances ``micro_batch * world`` blocks per micro-batch and continues
across stages. Loss: CE over the tokenizer's columns, plus ``lambda * T^2 * KL`` in
``distill`` mode (:mod:`tokalign_core.train.distill`), or CE on teacher generations in
``sentence-distill``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from tokalign_core.train.context import Context
from tokalign_core.train.data import rank_positions
from tokalign_core.train.distill import IGNORE_INDEX, token_loss_sums
from tokalign_core.train.distributed import all_mean
from tokalign_core.train.engine import TorchEngine
from tokalign_core.train.metrics import mfu


def optimizer_step(engine: TorchEngine, gas: int,
                   micro_loss: Callable[[int], tuple[Any, dict[str, float]]]
                   ) -> dict[str, float]:
    """One optimizer step of ``gas`` micro-batches.

    ``micro_loss(m)`` runs micro-batch ``m`` (0-based) forward through ``engine`` and
    returns (scalar loss tensor, {part name: float}); each loss is back-propagated and the
    engine stepped (the optimizer moves on the last one). Returns ``loss`` and every part,
    averaged over the micro-batches of this rank."""
    sums: dict[str, float] = {"loss": 0.0}
    for m in range(gas):
        loss, parts = micro_loss(m)
        engine.backward(loss)
        engine.step()
        sums["loss"] += float(loss.detach()) / gas
        for name, value in parts.items():
            sums[name] = sums.get(name, 0.0) + value / gas
    return sums


def micro_batch(ctx: Context, position: int) -> tuple[Any, Any, np.ndarray]:
    """(input_ids int64 [b, L], labels int64 [b, L], block ids [b]) for this rank."""
    import torch

    cfg = ctx.cfg
    ids = ctx.sampler.block_ids(rank_positions(position, cfg.micro_batch_size,
                                               ctx.dist.world, ctx.dist.rank))
    if cfg.mode == "sentence-distill":
        seqs, keep = ctx.cache.get("seqs", ids), ctx.cache.get("keep", ids)
        labels = np.where(keep[:, 1:], seqs[:, 1:], IGNORE_INDEX)
    else:
        seqs = ctx.blocks.blocks(ids)
        labels = seqs[:, 1:]
    dev = ctx.dist.device
    return (torch.from_numpy(np.ascontiguousarray(seqs[:, :-1])).to(dev),
            torch.from_numpy(np.ascontiguousarray(labels)).to(dev), ids)


def compute_loss(ctx: Context, logits: Any, input_ids: Any, labels: Any,
                 block_ids: np.ndarray) -> tuple[Any, dict[str, float]]:
    """The mode's loss and its parts (ce, kl per labelled token)."""
    import torch

    cfg = ctx.cfg
    d = cfg.distill
    temperature = d.temperature if d else 1.0
    chunk = d.chunk_size if d else 256
    teacher_logits, topk = None, None
    if cfg.mode == "distill" and ctx.teacher is not None:
        with torch.no_grad():
            teacher_logits = ctx.teacher(input_ids=input_ids).logits
    elif cfg.mode == "distill":
        topk = (torch.from_numpy(ctx.cache.get("topk_ids", block_ids).astype(np.int64)),
                torch.from_numpy(ctx.cache.get("topk_lp", block_ids).astype(np.float32)))
        topk = (topk[0].to(logits.device), topk[1].to(logits.device))
    sums = token_loss_sums(logits, labels, ctx.vocab, teacher_logits, topk, temperature, chunk)
    kl_weight = d.kl_weight if (d and cfg.mode == "distill") else 0.0
    loss = sums.loss(kl_weight, temperature)
    n = float(sums.n.clamp(min=1))
    return loss, {"ce": float(sums.ce.detach()) / n, "kl": float(sums.kl.detach()) / n}


def train_step(ctx: Context, engine: TorchEngine, cursor: int) -> dict[str, float]:
    """One optimizer step (``gas`` micro-batches) from global position ``cursor``."""
    t0 = time.perf_counter()
    lr = engine.lr()  # the rate this step uses (the scheduler advances inside the step)
    step_blocks = ctx.cfg.micro_batch_size * ctx.dist.world

    def micro_loss(m: int) -> tuple[Any, dict[str, float]]:
        x, y, ids = micro_batch(ctx, cursor + m * step_blocks)
        return compute_loss(ctx, engine.forward(x), x, y, ids)

    sums = optimizer_step(engine, ctx.gas, micro_loss)
    loss, ce, kl = all_mean([sums["loss"], sums["ce"], sums["kl"]], ctx.dist)
    dt = time.perf_counter() - t0
    tokens = ctx.gas * step_blocks * ctx.cfg.seq_len
    metrics = {"loss": loss, "ce": ce, "lr": lr, "tokens_per_s": tokens / dt,
               "step_time_s": dt, "epoch": ctx.sampler.epoch(cursor)}
    if ctx.cfg.mode == "distill":
        metrics["kl"] = kl
    norm = engine.grad_norm()
    if norm is not None:
        metrics["grad_norm"] = norm
    if ctx.dist.device.type == "cuda":
        metrics["mfu"] = mfu(ctx.n_params, tokens / dt, ctx.dist.world, ctx.cfg.peak_flops)
    return metrics
