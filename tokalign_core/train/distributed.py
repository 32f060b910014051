"""The process environment of one training rank: rank/world from the launcher, device,
precision, seeds, collectives, and the DeepSpeed build-avoidance on CPU.

On CPU (ENVIRONMENT.md): a single process needs RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/
MASTER_PORT (set here when absent); DeepSpeed's ``deepspeed_shm_comm`` JIT build is skipped
(its ``build_shm_op`` is replaced by a no-op; set ``TOKALIGN_DS_SHM=1`` to allow it).
"""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokalign_core.configs.train import TrainConfig


@dataclass
class Dist:
    rank: int
    local_rank: int
    world: int
    device: Any
    bf16: bool


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def setup_process(cfg: TrainConfig) -> Dist:
    """Rank/world from the launcher's environment (defaults for one process), device,
    precision, seeds and the DeepSpeed build-avoidance settings."""
    import torch

    env = os.environ
    if "RANK" not in env:
        env.setdefault("LOCAL_RANK", "0")
        env.setdefault("WORLD_SIZE", "1")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(_free_port()))
        env["RANK"] = "0"
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.cwd() / ".cache" / "torch_extensions"))
    rank, local, world = int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"])
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if cfg.precision == "bf16" and not cuda:
        raise ValueError("precision='bf16' on CPU is ~20x slower than fp32 here; use 'auto' "
                         "or 'fp32' on CPU")
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and cuda
                                       and torch.cuda.is_bf16_supported())
    if cfg.engine == "torch" and world > 1:
        raise ValueError("engine='torch' is single-process (debugging); use the deepspeed "
                         "engine for several ranks")
    seed_all(cfg.seed)
    return Dist(rank, local, world, device, bf16)


def seed_all(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def patch_deepspeed_builds() -> None:
    """Skip the ``deepspeed_shm_comm`` JIT build (~95 s on CPU) unless TOKALIGN_DS_SHM=1.
    ``import deepspeed.comm.torch as m`` would bind torch itself, hence importlib."""
    import importlib

    if os.environ.get("TOKALIGN_DS_SHM") == "1":
        return
    mod = importlib.import_module("deepspeed.comm.torch")
    mod.build_shm_op = lambda: None


def barrier() -> None:
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        tdist.barrier()


def all_mean(values: list[float], dist: Dist) -> list[float]:
    import torch
    import torch.distributed as tdist

    if dist.world == 1 or not tdist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=dist.device)
    tdist.all_reduce(t)
    return (t / dist.world).tolist()
