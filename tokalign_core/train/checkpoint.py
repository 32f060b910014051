"""Checkpoints and resume.

Every ``checkpoint_every`` steps and at each stage end: the engine's own state (DeepSpeed's
``save_checkpoint``: module, ZeRO optimizer partitions, scheduler; or one ``torch.save``),
the per-rank RNG states, and ``trainer_state.json`` (stage, step, block cursor) written
last as the commit marker. With ``resume`` the newest committed checkpoint is loaded after
a crash and the run ends bit-identical to an uninterrupted one. DeepSpeed unpickles its
files, so a checkpoint folder someone else could have written is never loaded.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokalign_core.train.distributed import Dist, barrier
from tokalign_core.train.engine import TorchEngine

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"


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
    barrier()
    if dist.rank == 0:
        _private_checkpoints(root)  # before the commit marker: a resumable tag is private
        atomic_write_text(root / tag / STATE_FILE, json.dumps(state.as_dict(), indent=2))
        _private_checkpoints(root / tag)
        _prune(root, keep)
    barrier()


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
