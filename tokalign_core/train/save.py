"""The trained model's output folder: ``out_dir/model``, a ``save_pretrained`` folder
(safetensors) with the tokenizer, a README model card and ``training.json``, written
through a temp folder and renamed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokalign_core.configs.train import TrainConfig
from tokalign_core.store.artifacts import atomic_dir
from tokalign_core.train.context import Context


def save_final_model(ctx: Context, module: Any, state_dict: dict | None, steps: int,
                     final_eval: dict) -> Path:
    """``out_dir/model``: safetensors + tokenizer + model card, renamed into place."""
    out = Path(ctx.cfg.out_dir)
    final = out / "model"
    with atomic_dir(final) as tmp:
        for p in module.parameters():
            p.requires_grad_(True)
        module.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        ctx.tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(_model_card(ctx.cfg, steps, final_eval))
        (tmp / "training.json").write_text(json.dumps(
            {"config": ctx.cfg.model_dump(mode="json"), "config_digest": ctx.cfg.digest(),
             "steps": steps, **final_eval}, indent=2))
    return final


def _model_card(cfg: TrainConfig, steps: int, final_eval: dict) -> str:
    s1, s2 = cfg.stage_steps()
    lines = [
        "# TokAlign-adapted model", "",
        f"- base model: `{cfg.model}`", f"- training mode: {cfg.mode}",
        f"- tokens artifact: `{cfg.tokens}`",
        f"- steps: {steps} ({s1} embeddings + head at lr {cfg.stages[0].lr}, {s2} all "
        f"parameters at lr {cfg.stages[1].lr})",
        f"- sequence length {cfg.seq_len}, ~{cfg.tokens_per_step} tokens per step",
        f"- config digest: `{cfg.digest()}`",
    ]
    if cfg.distill:
        lines.append(f"- teacher: `{cfg.distill.teacher}` (lambda {cfg.distill.kl_weight}, "
                     f"T {cfg.distill.temperature})")
    lines += [f"- {k}: {v:.4f}" for k, v in final_eval.items()]
    return "\n".join(lines) + "\n"
