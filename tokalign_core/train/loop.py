"""Training entry point: progressive two-stage adaptation and distillation (METHOD.md 7-8).

    python -m tokalign_core.train --config run.json                # one process (CPU/GPU)
    deepspeed --num_gpus 8 --module tokalign_core.train --config run.json
    deepspeed --hostfile hosts --module tokalign_core.train --config run.json
    torchrun --nproc_per_node 2 -m tokalign_core.train --config run.json

``run.json`` is a :class:`~tokalign_core.configs.train.TrainConfig`. :func:`run_training`
ties the pieces together, one module per concern:

* :mod:`~tokalign_core.train.distributed`: rank, device, precision, seeds, collectives;
* :mod:`~tokalign_core.train.context`: tokenizer, model, packed data (and teacher), checked;
* :mod:`~tokalign_core.train.stages`: stage 1 trains the embeddings and the LM head, stage 2
  everything (TokAlign section 7);
* :mod:`~tokalign_core.train.engine`: per stage a DeepSpeed (or plain torch) engine with a
  torch AdamW and its own schedule (:mod:`~tokalign_core.train.schedule`): ZeRO partitions
  only trainable parameters, so the set cannot change inside an engine;
* :mod:`~tokalign_core.train.step`: one optimizer step of ``gas`` micro-batches,
  ``gas = round(tokens_per_step / (micro_batch * seq_len * world))``;
* :mod:`~tokalign_core.train.checkpoint`: committed checkpoints and bit-identical resume;
* :mod:`~tokalign_core.train.metrics`: eval loss and MFU; rank 0 logs loss, ce, kl, lr,
  grad_norm, tokens_per_s, stage, epoch and eval_loss as JSON lines in
  ``out_dir/metrics.jsonl`` (and to MLflow when ``MLFLOW_RUN_ID`` is set);
* :mod:`~tokalign_core.train.save`: ``out_dir/model``, the ``save_pretrained`` folder;
* :mod:`~tokalign_core.train.entry`: the command line (``main``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokalign_core.configs.train import TrainConfig
from tokalign_core.train.checkpoint import (
    TrainerState,
    check_resume_safe,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from tokalign_core.train.context import Context, build_context
from tokalign_core.train.data import heldout_blocks
from tokalign_core.train.distributed import Dist, barrier, setup_process
from tokalign_core.train.engine import TorchEngine, build_engine
from tokalign_core.train.metrics import evaluate
from tokalign_core.train.save import save_final_model
from tokalign_core.train.stages import plan_stages
from tokalign_core.train.step import train_step

log = logging.getLogger(__name__)


@dataclass
class StepInfo:
    """Passed to the ``on_step`` callback after every optimizer step."""

    global_step: int
    stage: int
    stage_step: int
    cursor: int
    metrics: dict[str, float]


@dataclass
class TrainResult:
    final_model: Path | None
    global_step: int
    cursor: int
    metrics_path: Path
    resumed_from: str | None
    history: list[dict] = field(default_factory=list)


@dataclass
class RunPosition:
    """Where the run stands: optimizer steps done, global block cursor, metrics so far."""

    global_step: int = 0
    cursor: int = 0
    history: list[dict] = field(default_factory=list)


def run_training(cfg: TrainConfig, on_step: Callable[[StepInfo], None] | None = None
                 ) -> TrainResult:
    """Train per ``cfg`` (resuming when a checkpoint exists) and save the final model."""
    import torch

    dist = setup_process(cfg)
    threads = cfg.threads or int(os.environ.get("OMP_NUM_THREADS") or 0)
    if threads:
        torch.set_num_threads(threads)
    ctx = build_context(cfg, dist)
    root = Path(cfg.out_dir) / "checkpoints"
    state = resume_point(cfg, root)
    eval_data = heldout_blocks(cfg.tokens, ctx.eos_id, cfg.seq_len, cfg.eval_blocks)
    pos = RunPosition(state.global_step, state.cursor) if state else RunPosition()
    engine = None
    bar = _progress(cfg, dist, pos.global_step)
    try:
        for index, stage, steps in plan_stages(cfg):
            if state and state.stage > index:
                continue
            engine = build_engine(cfg, ctx.model, stage, steps, ctx.gas, dist)
            s_step = 0
            if state and state.stage == index:
                load_checkpoint(engine, root, state, dist)
                s_step = state.stage_step
            if pos.global_step == 0 and cfg.eval_every:  # the starting point of the curve
                ctx.logger.log(evaluate(ctx, engine, eval_data), step=0)
            run_stage(ctx, engine, index, steps, s_step, pos, eval_data, bar, on_step)
            if index != plan_stages(cfg)[-1][0]:
                engine.close()
        final = _finish(ctx, engine, eval_data, pos.global_step)
    finally:
        bar.close()
        ctx.logger.close()
    return TrainResult(final, pos.global_step, pos.cursor, Path(cfg.out_dir) / "metrics.jsonl",
                       state.tag if state else None, pos.history)


def resume_point(cfg: TrainConfig, root: Path) -> TrainerState | None:
    """The newest committed checkpoint under ``root`` when ``cfg.resume`` (after checking
    that nobody else could have written it), else None."""
    if not cfg.resume:
        return None
    check_resume_safe(Path(cfg.out_dir), root)
    state = latest_checkpoint(root)
    if state and state.config_digest != cfg.digest():
        log.warning("resuming %s written by a different config (digest %s != %s)",
                    state.tag, state.config_digest[:12], cfg.digest()[:12])
    return state


def run_stage(ctx: Context, engine: TorchEngine, index: int, steps: int, s_step: int,
              pos: RunPosition, eval_data: np.ndarray, bar: Any,
              on_step: Callable[[StepInfo], None] | None) -> None:
    """Stage ``index`` from its step ``s_step`` to ``steps``: train, evaluate, log and
    checkpoint on schedule, advancing ``pos``. ``eval_data`` int64 [n, seq_len + 1]."""
    cfg, dist = ctx.cfg, ctx.dist
    root = Path(cfg.out_dir) / "checkpoints"
    while s_step < steps:
        _check_epoch(ctx, pos.cursor)
        metrics = train_step(ctx, engine, pos.cursor)
        pos.cursor += ctx.gas * cfg.micro_batch_size * dist.world
        s_step, pos.global_step = s_step + 1, pos.global_step + 1
        g_step = pos.global_step
        metrics["stage"] = index + 1
        if cfg.eval_every and g_step % cfg.eval_every == 0:
            metrics.update(evaluate(ctx, engine, eval_data))
        if g_step % cfg.log_every == 0 or s_step == steps:
            ctx.logger.log(metrics, step=g_step)
        pos.history.append({"step": g_step, **metrics})
        bar.update(1)
        bar.set_postfix(stage=index + 1, loss=f"{metrics['loss']:.3f}")
        if g_step % cfg.checkpoint_every == 0 or s_step == steps:
            save_checkpoint(engine, root, TrainerState(
                index, s_step, g_step, pos.cursor, config_digest=cfg.digest(),
                world=dist.world), dist, cfg.keep_checkpoints)
        if on_step:
            on_step(StepInfo(g_step, index + 1, s_step, pos.cursor, metrics))


def _progress(cfg: TrainConfig, dist: Dist, start: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=cfg.total_steps, initial=start, desc="train", unit="step",
                disable=not cfg.progress or dist.rank != 0)


def _check_epoch(ctx: Context, cursor: int) -> None:
    end = cursor + ctx.gas * ctx.cfg.micro_batch_size * ctx.dist.world - 1
    if ctx.sampler.epoch(end) > 0 and not ctx.cfg.allow_repeat:
        raise ValueError(
            f"the tokens artifact has {len(ctx.blocks)} blocks of {ctx.cfg.seq_len + 1} tokens "
            f"but the run needs more (cursor {cursor}); add data, reduce total_steps or "
            "tokens_per_step, or set allow_repeat")
    if ctx.sampler.epoch(end) != ctx.sampler.epoch(cursor):
        log.warning("data epoch %d starts at block position %d: blocks repeat from here "
                    "(reshuffled)", ctx.sampler.epoch(end), end)


def _finish(ctx: Context, engine: TorchEngine | None, eval_data: np.ndarray,
            g_step: int) -> Path | None:
    """Final held-out eval, then the save_pretrained folder (rank 0)."""
    if engine is None:
        raise ValueError("no stage has any steps (total_steps * stage_split rounds to 0?)")
    final_eval = evaluate(ctx, engine, eval_data)
    if final_eval:
        ctx.logger.log(final_eval, step=g_step)
    state_dict = engine.full_state_dict()
    path = None
    if ctx.dist.rank == 0 and ctx.cfg.save_final:
        path = save_final_model(ctx, engine.module, state_dict, g_step, final_eval)
    barrier()
    engine.close()
    return path
