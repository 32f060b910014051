"""Metrics measured during training: held-out loss and model FLOPs utilisation.

``mfu = 6 * n_params * tokens_per_s / (world * peak_flops)`` (the forward+backward FLOPs
of a dense decoder per token, Kaplan et al. 2020, attention FLOPs ignored; all parameters
count even in stage 1, whose backward still runs through the whole network).
"""

from __future__ import annotations

import math

import numpy as np

from tokalign_core.train.context import Context
from tokalign_core.train.distill import token_loss_sums
from tokalign_core.train.engine import TorchEngine


def mfu(n_params: int, tokens_per_s: float, world: int, peak_flops: float) -> float:
    """Model FLOPs utilisation: 6 * N * tokens/s over the cluster's peak FLOP/s."""
    return 6.0 * n_params * tokens_per_s / (world * peak_flops)


def evaluate(ctx: Context, engine: TorchEngine, blocks: np.ndarray) -> dict[str, float]:
    """Mean CE (nats/token) and bits/token on held-out blocks [n, L+1]."""
    import torch

    if len(blocks) == 0:
        return {}
    engine.module.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for a in range(0, len(blocks), ctx.cfg.micro_batch_size):
            b = torch.from_numpy(blocks[a:a + ctx.cfg.micro_batch_size]).to(ctx.dist.device)
            logits = engine.forward(b[:, :-1])
            sums = token_loss_sums(logits, b[:, 1:], ctx.vocab, chunk_size=256)
            total, n = total + float(sums.ce), n + int(sums.n)
    engine.module.train()
    loss = total / max(n, 1)
    return {"eval_loss": loss, "eval_bits_per_token": loss / math.log(2)}
