"""Which parameters a training stage trains (TokAlign section 7).

Stage 1 trains only the input embeddings and the LM head, found by module identity
(``get_input_embeddings()`` / ``get_output_embeddings()``: one parameter when tied, the
head's bias included; the reference code's substring rule freezes Llama's ``lm_head``),
stage 2 trains everything. AdamW decays matrices only (biases and norm scales are not
decayed, as in HF Trainer).
"""

from __future__ import annotations

import logging
from typing import Any

from tokalign_core.configs.train import StageConfig, TrainConfig

log = logging.getLogger(__name__)


def embedding_and_head_parameters(model: Any) -> list[Any]:
    """Parameters of ``get_input_embeddings()`` and ``get_output_embeddings()`` (the head's
    bias included), each once: a tied model yields one matrix. Found by module identity,
    never by parameter name."""
    modules = [model.get_input_embeddings(), model.get_output_embeddings()]
    if modules[0] is None:
        raise ValueError(f"{type(model).__name__} has no input embeddings to train")
    if modules[1] is None:
        log.warning("%s has no separate output embeddings; stage 1 trains the input "
                    "embeddings only", type(model).__name__)
    seen: dict[int, Any] = {}
    for module in modules:
        for p in [] if module is None else module.parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


def set_trainable(model: Any, trainable: str) -> list[Any]:
    """Freeze/unfreeze for a stage (``embeddings`` or ``all``); returns the trainable
    parameters (deduplicated, model order)."""
    if trainable == "all":
        keep = {id(p) for p in model.parameters()}
    elif trainable == "embeddings":
        keep = {id(p) for p in embedding_and_head_parameters(model)}
    else:
        raise ValueError(f"trainable must be 'embeddings' or 'all', got {trainable!r}")
    out, seen = [], set()
    for p in model.parameters():  # deduplicates tied parameters
        p.requires_grad_(id(p) in keep)
        if id(p) in keep and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def param_groups(params: list[Any], weight_decay: float) -> list[dict]:
    """AdamW groups: decay on matrices, none on vectors (biases, norm scales)."""
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    return groups


def plan_stages(cfg: TrainConfig) -> list[tuple[int, StageConfig, int]]:
    """(stage index, stage config, steps) for the stages that have steps."""
    pairs = zip(cfg.stages, cfg.stage_steps(), strict=True)
    return [(i, s, n) for i, (s, n) in enumerate(pairs) if n > 0]
