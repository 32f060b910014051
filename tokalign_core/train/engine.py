"""The two training engines behind one interface: DeepSpeed (ZeRO, any number of ranks)
and plain torch (one process, for debugging and toy runs).

Both take a torch AdamW and a ``LambdaLR`` schedule built here (:func:`adamw`); a torch
optimizer is passed to DeepSpeed so ``fused_adam`` is never built on CPU. An engine runs
``forward(input_ids [b, L]) -> logits [b, L, V]``, ``backward(loss)`` (scaled by the
accumulation itself) and ``step()`` once per micro-batch; the optimizer and the schedule
advance every ``gas``-th micro-batch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokalign_core.configs.train import StageConfig, TrainConfig
from tokalign_core.train.distributed import Dist, patch_deepspeed_builds
from tokalign_core.train.schedule import cosine_factor
from tokalign_core.train.stages import param_groups, set_trainable


class TorchEngine:
    """The same loop without DeepSpeed (single process): AdamW, accumulation, clipping."""

    def __init__(self, model: Any, optimizer: Any, scheduler: Any, gas: int, clip: float,
                 bf16: bool):
        self.module, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.gas, self.clip, self.bf16 = gas, clip, bf16
        self.micro = 0
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self._norm: float | None = None

    def forward(self, input_ids: Any) -> Any:
        import torch

        with torch.autocast(input_ids.device.type, torch.bfloat16, enabled=self.bf16):
            return self.module(input_ids=input_ids).logits

    def backward(self, loss: Any) -> None:
        (loss / self.gas).backward()

    def step(self) -> None:
        import torch

        self.micro += 1
        if self.micro % self.gas:
            return
        max_norm = self.clip if self.clip > 0 else float("inf")
        self._norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def grad_norm(self) -> float | None:
        return self._norm

    def save(self, root: Path, tag: str, client_state: dict) -> None:
        import torch

        (root / tag).mkdir(parents=True, exist_ok=True)
        torch.save({"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "client": client_state},
                   root / tag / "torch_state.pt")

    def load(self, root: Path, tag: str) -> dict:
        import torch

        state = torch.load(root / tag / "torch_state.pt", map_location="cpu", weights_only=True)
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        return state["client"]

    def full_state_dict(self) -> dict | None:
        return None

    def close(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)


class DeepSpeedEngine(TorchEngine):
    """DeepSpeed engine wrapper with the :class:`TorchEngine` interface."""

    def __init__(self, model: Any, optimizer: Any, scheduler: Any, ds_config: dict):
        import deepspeed

        patch_deepspeed_builds()
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
        self.module = self.engine.module
        self.zero_stage = ds_config["zero_optimization"]["stage"]

    def forward(self, input_ids: Any) -> Any:
        return self.engine(input_ids=input_ids).logits

    def backward(self, loss: Any) -> None:
        self.engine.backward(loss)  # scales by 1/gradient_accumulation_steps itself

    def step(self) -> None:
        self.engine.step()

    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def grad_norm(self) -> float | None:
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    def save(self, root: Path, tag: str, client_state: dict) -> None:
        self.engine.save_checkpoint(str(root), tag=tag, client_state=client_state)

    def load(self, root: Path, tag: str) -> dict:
        path, client = self.engine.load_checkpoint(
            str(root), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True)
        if path is None:
            raise FileNotFoundError(f"DeepSpeed could not load checkpoint {root / tag}")
        return client

    def full_state_dict(self) -> dict | None:
        if self.zero_stage == 3:  # parameters are partitioned: gather a full copy
            return self.engine._zero3_consolidated_16bit_state_dict()
        return None

    def close(self) -> None:
        if hasattr(self.engine, "destroy"):
            self.engine.destroy()


def ds_config(cfg: TrainConfig, gas: int, dist: Dist) -> dict:
    """The DeepSpeed JSON config of a run."""
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": gas,
        "train_batch_size": cfg.micro_batch_size * gas * dist.world,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": dist.bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def grad_accumulation(cfg: TrainConfig, world: int) -> int:
    """Micro-batches per optimizer step reaching ``tokens_per_step`` (at least 1)."""
    per_micro = cfg.micro_batch_size * cfg.seq_len * world
    return max(1, int(round(cfg.tokens_per_step / per_micro)))


def adamw(params: list[Any], lr: float, weight_decay: float, betas: tuple[float, float],
          eps: float, lr_factor: Callable[[int], float]) -> tuple[Any, Any]:
    """(torch AdamW with :func:`~tokalign_core.train.stages.param_groups`, ``LambdaLR``
    scaling ``lr`` by ``lr_factor(optimizer step)``)."""
    import torch

    opt = torch.optim.AdamW(param_groups(params, weight_decay), lr=lr, betas=tuple(betas),
                            eps=eps)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)


def build_engine(cfg: TrainConfig, model: Any, stage: StageConfig, steps: int, gas: int,
                 dist: Dist) -> TorchEngine:
    """Freeze for the stage, then AdamW + cosine schedule + engine."""
    params = set_trainable(model, stage.trainable)
    opt, sched = adamw(params, stage.lr, cfg.weight_decay, cfg.betas, cfg.adam_eps,
                       lambda s: cosine_factor(s, steps, cfg.warmup_ratio, cfg.min_lr_ratio))
    model.train()
    if cfg.engine == "torch":
        return TorchEngine(model.to(dist.device), opt, sched, gas, cfg.grad_clip, dist.bf16)
    return DeepSpeedEngine(model, opt, sched, ds_config(cfg, gas, dist))
