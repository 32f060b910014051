"""Training entry point: progressive two-stage adaptation and distillation (METHOD.md 7-8).

    python -m tokalign_core.train --config run.json                # one process (CPU/GPU)
    deepspeed --num_gpus 8 --module tokalign_core.train --config run.json
    deepspeed --hostfile hosts --module tokalign_core.train --config run.json
    torchrun --nproc_per_node 2 -m tokalign_core.train --config run.json

``run.json`` is a :class:`~tokalign_core.configs.train.TrainConfig`. The loop:

* **Stages** (TokAlign section 7): stage 1 trains only the input embeddings and the LM head,
  found by module identity (``get_input_embeddings()`` / ``get_output_embeddings()``: one
  parameter when tied, the head's bias included; the reference code's substring rule freezes
  Llama's ``lm_head``), stage 2 trains everything. Each stage builds its own DeepSpeed engine
  (ZeRO partitions only trainable parameters, so the set cannot change inside an engine)
  with a torch AdamW (decay on matrices, none on biases/norms, as HF Trainer) and its own
  cosine schedule: ``lr(s) = peak * (s+1)/W`` for ``s < W = round(warmup_ratio * steps)``,
  then ``peak * (m + (1-m) * (1 + cos(pi * (s-W)/(steps-W))) / 2)``.
* **Batches**: packed blocks of the tokens artifact (:mod:`tokalign_core.train.data`); gradient
  accumulation ``round(tokens_per_step / (micro_batch * seq_len * world))``. The global
  block cursor continues across stages, so stage 2 sees blocks stage 1 did not.
* **Loss**: CE over the tokenizer's columns, plus ``lambda * T^2 * KL`` in ``distill`` mode
  (:mod:`tokalign_core.train.distill`), or CE on teacher generations in ``sentence-distill``.
* **Checkpoints** every ``checkpoint_every`` steps and at each stage end: DeepSpeed's
  ``save_checkpoint`` (module, ZeRO optimizer partitions, scheduler), the per-rank RNG
  states, and ``trainer_state.json`` (stage, step, block cursor) written last as the commit
  marker. With ``resume`` the newest committed checkpoint is loaded after a crash and the
  run ends bit-identical to an uninterrupted one.
* **Metrics** (rank 0; JSON lines in ``out_dir/metrics.jsonl``, MLflow when
  ``MLFLOW_RUN_ID`` is set): loss, ce, kl, lr, grad_norm, tokens_per_s, stage, epoch,
  eval_loss and, on GPU, ``mfu = 6 * n_params * tokens_per_s / (world * peak_flops)``
  (the forward+backward FLOPs of a dense decoder per token, Kaplan et al. 2020, attention
  FLOPs ignored; all parameters count even in stage 1, whose backward still runs through
  the whole network; ``peak_flops`` per device is a config field).
* **Output**: ``out_dir/model``, a ``save_pretrained`` folder (safetensors) with the
  tokenizer and a model card, written through a temp folder and renamed.

On CPU (ENVIRONMENT.md): a single process needs RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/
MASTER_PORT (set here when absent); DeepSpeed's ``deepspeed_shm_comm`` JIT build is skipped
(its ``build_shm_op`` is replaced by a no-op; set ``TOKALIGN_DS_SHM=1`` to allow it) and a
torch optimizer is passed so ``fused_adam`` is never built; fp32 only (bf16 is ~20x slower).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import shutil
import socket
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokalign_core.configs.train import StageConfig, TrainConfig
from tokalign_core.store.artifacts import atomic_dir
from tokalign_core.train.data import (
    BlockSampler,
    PackedBlocks,
    TokenStream,
    heldout_blocks,
    rank_positions,
)
from tokalign_core.train.distill import IGNORE_INDEX, token_loss_sums
from tokalign_core.vocab.tokenizers import load_tokenizer

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"


# ------------------------------------------------------------------ parameter selection


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


def cosine_factor(step: int, steps: int, warmup_ratio: float, min_ratio: float) -> float:
    """LR multiplier of optimizer step ``step`` (0-based) in a stage of ``steps`` steps."""
    warmup = int(round(warmup_ratio * steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


# ------------------------------------------------------------------ process environment


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
    _seed_all(cfg.seed)
    return Dist(rank, local, world, device, bf16)


def _seed_all(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _patch_deepspeed_builds() -> None:
    """Skip the ``deepspeed_shm_comm`` JIT build (~95 s on CPU) unless TOKALIGN_DS_SHM=1.
    ``import deepspeed.comm.torch as m`` would bind torch itself, hence importlib."""
    import importlib

    if os.environ.get("TOKALIGN_DS_SHM") == "1":
        return
    mod = importlib.import_module("deepspeed.comm.torch")
    mod.build_shm_op = lambda: None


def _barrier() -> None:
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        tdist.barrier()


def _all_mean(values: list[float], dist: Dist) -> list[float]:
    import torch
    import torch.distributed as tdist

    if dist.world == 1 or not tdist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=dist.device)
    tdist.all_reduce(t)
    return (t / dist.world).tolist()


# ------------------------------------------------------------------ engines


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

        _patch_deepspeed_builds()
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


def build_engine(cfg: TrainConfig, model: Any, stage: StageConfig, steps: int, gas: int,
                 dist: Dist) -> TorchEngine:
    """Freeze for the stage, then AdamW + cosine schedule + engine."""
    import torch

    params = set_trainable(model, stage.trainable)
    opt = torch.optim.AdamW(param_groups(params, cfg.weight_decay), lr=stage.lr,
                            betas=tuple(cfg.betas), eps=cfg.adam_eps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: cosine_factor(s, steps, cfg.warmup_ratio, cfg.min_lr_ratio))
    model.train()
    if cfg.engine == "torch":
        return TorchEngine(model.to(dist.device), opt, sched, gas, cfg.grad_clip, dist.bf16)
    return DeepSpeedEngine(model, opt, sched, ds_config(cfg, gas, dist))


# ------------------------------------------------------------------ checkpoints


@dataclass
class TrainerState:
    """What a checkpoint records besides the engine's own state."""

    stage: int
    stage_step: int
    global_step: int
    cursor: int
    tag: str = ""
    config_digest: str = ""
    world: int = 1

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class UnsafeCheckpointError(PermissionError):
    """A checkpoint folder another user could have written: never loaded."""


def _unsafe(path: Path, st: os.stat_result, writable_bits: int) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}, not by you (uid {os.geteuid()})"
    if st.st_mode & writable_bits:
        who = "group- or world-writable" if writable_bits & stat.S_IWGRP else "world-writable"
        return f"{who} (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def check_resume_safe(out_dir: Path, root: Path) -> None:
    """Refuse to resume from checkpoints someone else could have planted or edited.

    DeepSpeed unpickles its checkpoint files (torch.load with weights-only mode off), which
    runs code from the file. So ``out_dir`` must be ours and not world-writable, and the
    checkpoint folder and everything below it ours and not group/world-writable (this
    trainer writes them so: folder 0700, files ``go-w``). Raises
    :class:`UnsafeCheckpointError` naming the path and the fix."""
    checks = [(Path(out_dir), stat.S_IWOTH)]
    if root.exists() or root.is_symlink():
        checks.append((root, stat.S_IWGRP | stat.S_IWOTH))
        if not root.is_symlink():
            checks += [(p, stat.S_IWGRP | stat.S_IWOTH) for p in sorted(root.rglob("*"))]
    for path, bits in checks:
        problem = _unsafe(path, os.lstat(path), bits)
        if problem:
            raise UnsafeCheckpointError(
                f"refusing to resume training from {out_dir}: {path} is {problem}, and "
                "DeepSpeed checkpoints are loaded with pickle (code runs on load). Fix: make "
                f"it yours and not writable by others (chown $USER, chmod go-w), or delete "
                f"{root} to start over")


def _private_checkpoints(root: Path) -> None:
    """The checkpoint folder owner-only, every file and folder below it ``go-w`` (DeepSpeed
    writes under the umask): what :func:`check_resume_safe` requires on resume."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(root, 0o700)
    for p in root.rglob("*"):
        st = os.lstat(p)
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            os.chmod(p, stat.S_IMODE(st.st_mode) & ~(stat.S_IWGRP | stat.S_IWOTH))


def latest_checkpoint(root: Path) -> TrainerState | None:
    """The newest *committed* checkpoint (its ``trainer_state.json`` exists)."""
    best = None
    for state_file in root.glob(f"*/{STATE_FILE}"):
        state = TrainerState(**json.loads(state_file.read_text()))
        if best is None or state.global_step > best.global_step:
            best = state
    return best


def _rng_state() -> dict:
    import torch

    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)),
                       "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                       "gauss": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(engine: TorchEngine, root: Path, state: TrainerState, dist: Dist,
                    keep: int) -> None:
    """Engine state, then each rank's RNG, then the commit marker (rank 0), then pruning."""
    import torch

    from tokalign_core.store.artifacts import atomic_write_text

    tag = f"step{state.global_step:08d}"
    state.tag = tag
    engine.save(root, tag, state.as_dict())
    (root / tag).mkdir(parents=True, exist_ok=True)
    torch.save(_rng_state(), root / tag / f"rng-rank{dist.rank}.pt")
    _barrier()
    if dist.rank == 0:
        _private_checkpoints(root)  # before the commit marker: a resumable tag is private
        atomic_write_text(root / tag / STATE_FILE, json.dumps(state.as_dict(), indent=2))
        _private_checkpoints(root / tag)
        _prune(root, keep)
    _barrier()


def _prune(root: Path, keep: int) -> None:
    done = sorted(p.parent for p in root.glob(f"*/{STATE_FILE}"))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(engine: TorchEngine, root: Path, state: TrainerState, dist: Dist) -> None:
    import torch

    engine.load(root, state.tag)
    rng = root / state.tag / f"rng-rank{dist.rank}.pt"
    if rng.exists():
        _set_rng_state(torch.load(rng, weights_only=True))
    else:
        log.warning("checkpoint %s has no RNG state for rank %d (world size changed?)",
                    state.tag, dist.rank)


# ------------------------------------------------------------------ run context


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


# ------------------------------------------------------------------ one step


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
    sums = {"loss": 0.0, "ce": 0.0, "kl": 0.0}
    step_blocks = ctx.cfg.micro_batch_size * ctx.dist.world
    for m in range(ctx.gas):
        x, y, ids = micro_batch(ctx, cursor + m * step_blocks)
        logits = engine.forward(x)
        loss, parts = compute_loss(ctx, logits, x, y, ids)
        engine.backward(loss)
        engine.step()
        sums["loss"] += float(loss.detach()) / ctx.gas
        sums["ce"] += parts["ce"] / ctx.gas
        sums["kl"] += parts["kl"] / ctx.gas
    loss, ce, kl = _all_mean([sums["loss"], sums["ce"], sums["kl"]], ctx.dist)
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


# ------------------------------------------------------------------ the run


def plan_stages(cfg: TrainConfig) -> list[tuple[int, StageConfig, int]]:
    """(stage index, stage config, steps) for the stages that have steps."""
    pairs = zip(cfg.stages, cfg.stage_steps(), strict=True)
    return [(i, s, n) for i, (s, n) in enumerate(pairs) if n > 0]


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
    if cfg.resume:
        check_resume_safe(Path(cfg.out_dir), root)
    state = latest_checkpoint(root) if cfg.resume else None
    if state and state.config_digest != cfg.digest():
        log.warning("resuming %s written by a different config (digest %s != %s)",
                    state.tag, state.config_digest[:12], cfg.digest()[:12])
    resumed = state.tag if state else None
    eval_data = heldout_blocks(cfg.tokens, ctx.eos_id, cfg.seq_len, cfg.eval_blocks)
    history: list[dict] = []
    g_step, cursor = (state.global_step, state.cursor) if state else (0, 0)
    engine = None
    bar = _progress(cfg, dist, g_step)
    try:
        for index, stage, steps in plan_stages(cfg):
            if state and state.stage > index:
                continue
            engine = build_engine(cfg, ctx.model, stage, steps, ctx.gas, dist)
            s_step = 0
            if state and state.stage == index:
                load_checkpoint(engine, root, state, dist)
                s_step = state.stage_step
            if g_step == 0 and cfg.eval_every:  # the starting point of the eval curve
                ctx.logger.log(evaluate(ctx, engine, eval_data), step=0)
            while s_step < steps:
                _check_epoch(ctx, cursor)
                metrics = train_step(ctx, engine, cursor)
                cursor += ctx.gas * cfg.micro_batch_size * dist.world
                s_step, g_step = s_step + 1, g_step + 1
                metrics["stage"] = index + 1
                if cfg.eval_every and g_step % cfg.eval_every == 0:
                    metrics.update(evaluate(ctx, engine, eval_data))
                if g_step % cfg.log_every == 0 or s_step == steps:
                    ctx.logger.log(metrics, step=g_step)
                history.append({"step": g_step, **metrics})
                bar.update(1)
                bar.set_postfix(stage=index + 1, loss=f"{metrics['loss']:.3f}")
                if g_step % cfg.checkpoint_every == 0 or s_step == steps:
                    save_checkpoint(engine, root, TrainerState(
                        index, s_step, g_step, cursor, config_digest=cfg.digest(),
                        world=dist.world), dist, cfg.keep_checkpoints)
                if on_step:
                    on_step(StepInfo(g_step, index + 1, s_step, cursor, metrics))
            if index != plan_stages(cfg)[-1][0]:
                engine.close()
        final = _finish(ctx, engine, eval_data, g_step)
    finally:
        bar.close()
        ctx.logger.close()
    return TrainResult(final, g_step, cursor, Path(cfg.out_dir) / "metrics.jsonl", resumed,
                       history)


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
    _barrier()
    engine.close()
    return path


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


# ------------------------------------------------------------------ command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tokalign_core.train",
        description="Run one TokAlign training job (adapt / distill / sentence-distill) from "
        "a TrainConfig JSON or YAML file. Works alone, under the deepspeed launcher "
        "(--module) and under torchrun.")
    p.add_argument("--config", required=True, help="path of run.json (a TrainConfig)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None,
                   help="set by the deepspeed launcher; LOCAL_RANK in the environment wins")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    try:
        cfg = TrainConfig.load(args.config)
    except FileNotFoundError:
        print(f"train: error: config {args.config} does not exist", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
    result = run_training(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"final_model": str(result.final_model), "steps": result.global_step,
                          "resumed_from": result.resumed_from}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
