"""``tokalign adapt`` and ``tokalign distill``: write ``OUT/run.json`` (a TrainConfig) and
launch ``python -m tokalign_core.train`` (or the ``deepspeed`` / ``torchrun`` launcher),
streaming its output. The run resumes from ``OUT/checkpoints`` when started again."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tokalign.cli import UserError
from tokalign.flags import Opt, add_common_flags, add_config_flags, config_from_args
from tokalign_core.configs.train import DEFAULT_STAGES, TrainConfig

DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# Flag spellings the docs use for TrainConfig fields (the rest are --field-name).
_OPTS = {
    "model": Opt(metavar="SPEC"), "tokens": Opt(metavar="DIR"),
    "out_dir": Opt(names=("--out", "--out-dir"), metavar="DIR"),
    "total_steps": Opt(names=("--steps", "--total-steps")),
    "micro_batch_size": Opt(names=("--micro-batch", "--micro-batch-size")),
    "stage_split": Opt(names=("--split", "--stage-split")),
}
# Set by the command itself (mode by the command and --level, stages by the lr flags).
_SET_HERE = ("mode", "stages")
LEVELS = {"token": "distill", "sentence": "sentence-distill"}


def _add_launcher_options(p: argparse.ArgumentParser) -> None:
    lg = p.add_argument_group("launcher")
    lg.add_argument("--launcher", choices=["python", "deepspeed", "torchrun"], default="python",
                    help="python: one process (CPU or one GPU); deepspeed: the DeepSpeed "
                    "launcher (multi-GPU, --hostfile for multi-node); torchrun: torch's "
                    "launcher (default python)")
    lg.add_argument("--num-gpus", type=int, default=None,
                    help="processes per node for deepspeed/torchrun (default: all GPUs for "
                    "deepspeed, 1 for torchrun)")
    lg.add_argument("--hostfile", default=None,
                    help="deepspeed launcher hostfile for multi-node runs (default none)")
    lg.add_argument("--dry-run", action="store_true",
                    help="write run.json and print the command without running it")
    add_common_flags(p, config="TrainConfig (e.g. a previous OUT/run.json)")


def _stages(data: dict, lrs: tuple[float | None, float | None]) -> list[dict]:
    """The two stages of ``data`` (default: embeddings then full) with the lr flags given."""
    stages = [dict(s) for s in data.get("stages") or
              [s.model_dump() for s in DEFAULT_STAGES]]
    for stage, lr in zip(stages, lrs, strict=True):
        if lr is not None:
            stage["lr"] = lr
    return stages


def _absolute_paths(data: dict) -> None:
    """Absolute inputs and outputs: the training subprocess may run elsewhere."""
    for key in ("tokens", "out_dir"):
        if data.get(key):
            data[key] = str(Path(data[key]).resolve())
    if data.get("model"):
        data["model"] = _model_path(data["model"])
    if isinstance(data.get("distill"), dict) and data["distill"].get("teacher"):
        data["distill"]["teacher"] = _model_path(data["distill"]["teacher"])


def adapt_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of ``tokalign adapt``: --config, the flags, mode adapt."""

    def fix(data: dict) -> None:
        data["stages"] = _stages(data, (args.lr1, args.lr2))
        _absolute_paths(data)

    return config_from_args(args, fixed={"mode": "adapt"}, fix=fix)


def distill_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of ``tokalign distill`` (one full-parameter stage)."""

    def fix(data: dict) -> None:
        if args.level is not None or data.get("mode") not in LEVELS.values():
            data["mode"] = LEVELS[args.level or "token"]
        data["stages"] = _stages(data, (args.lr, args.lr))
        _absolute_paths(data)

    return config_from_args(args, fixed={"stage_split": 0.0}, fix=fix)


def _model_path(spec: str) -> str:
    """Absolute path for local folders (the subprocess may run elsewhere); hub ids as is."""
    p = Path(spec)
    return str(p.resolve()) if p.exists() else spec


def launch_command(args: argparse.Namespace, run_json: Path) -> list[str]:
    """The command that runs ``python -m tokalign_core.train --config run_json``."""
    tail = ["--config", str(run_json)]
    if args.launcher == "python":
        return [sys.executable, "-m", "tokalign_core.train", *tail]
    if args.launcher == "torchrun":
        exe = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
        return [exe, "--nproc_per_node", str(args.num_gpus or 1), "-m",
                "tokalign_core.train", *tail]
    exe = shutil.which("deepspeed", path=str(Path(sys.executable).parent)) or "deepspeed"
    cmd = [exe]
    if args.hostfile:
        cmd += ["--hostfile", args.hostfile]
    if args.num_gpus:
        cmd += ["--num_gpus", str(args.num_gpus)]
    return [*cmd, "--module", "tokalign_core.train", *tail]


def preflight(cfg: TrainConfig) -> None:
    """Check the inputs before launching a (possibly multi-node) job: the output folder
    holds no input, the model folders are complete, the tokens artifact exists and was
    tokenized with the model's tokenizer. Raises UserError / ValueError in one line."""
    from tokalign_core.model.init import check_model_source
    from tokalign_core.store.artifacts import read_meta
    from tokalign_core.store.inputs import check_out_dir
    from tokalign_core.train.loop import check_tokens_tokenizer
    from tokalign_core.vocab.tokenizers import load_tokenizer

    teacher = cfg.distill.teacher if cfg.distill else None
    check_out_dir(cfg.out_dir, [cfg.model, cfg.tokens, cfg.tokenizer, teacher])
    for spec in (cfg.model, teacher):
        if spec:
            check_model_source(spec)
    tokens = Path(cfg.tokens)
    if not tokens.is_dir():
        raise UserError(f"--tokens {tokens} does not exist; give the folder printed by "
                        "`tokalign tokenize`")
    meta = read_meta(tokens)
    name = cfg.tokenizer or cfg.model
    if meta.get("tokenizer_digest"):
        tok = load_tokenizer(name, trust_remote_code=cfg.trust_remote_code)
        check_tokens_tokenizer(meta, tok, tokens, name)


def _has_checkpoint(out: Path) -> bool:
    from tokalign_core.train.loop import latest_checkpoint

    return (out / "checkpoints").is_dir() and latest_checkpoint(out / "checkpoints") is not None


def _run(args: argparse.Namespace, cfg: TrainConfig) -> int:
    out = Path(cfg.out_dir)
    preflight(cfg)
    out.mkdir(parents=True, exist_ok=True)
    run_json = out / "run.json"
    cfg.save(run_json)
    cmd = launch_command(args, run_json)
    shown = " ".join(shlex.quote(c) for c in cmd)
    shown = shown.replace(shlex.quote(cmd[0]), Path(cmd[0]).name, 1)
    print(f"wrote {run_json}\n{shown}", flush=True)
    if args.dry_run:
        return 0
    env = dict(os.environ)
    if args.launcher == "python":  # a standalone job: never join a caller's process group
        for key in DIST_ENV:
            env.pop(key, None)
    rc = subprocess.run(cmd, env=env).returncode  # inherits stdout/stderr: streams live
    if rc != 0:
        if _has_checkpoint(out):
            raise UserError(f"training exited with code {rc}; rerun the same command to "
                            f"resume from {out / 'checkpoints'}")
        raise UserError(f"training exited with code {rc} before its first checkpoint (the "
                        "cause is printed above); fix it and run again: there is nothing "
                        "to resume")
    return 0


def _cmd_adapt(args: argparse.Namespace) -> int:
    try:
        cfg = adapt_config(args)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    return _run(args, cfg)


def _cmd_distill(args: argparse.Namespace) -> int:
    try:
        cfg = distill_config(args)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    return _run(args, cfg)


def register(subparsers: Any) -> None:
    a = subparsers.add_parser(
        "adapt",
        help="progressive two-stage adaptation of an initialised model",
        description="Stage 1 trains only the input embeddings and the LM head, stage 2 every "
        "parameter (TokAlign section 7), on the target-tokenized corpus. Writes OUT/run.json "
        "and runs python -m tokalign_core.train; rerun to resume after a crash.")
    lr1, lr2 = (s.lr for s in DEFAULT_STAGES)
    a.add_argument("--lr1", type=float, default=None,
                   help=f"peak lr of stage 1, embeddings + head (default {lr1:g})")
    a.add_argument("--lr2", type=float, default=None,
                   help=f"peak lr of stage 2, all parameters (default {lr2:g})")
    add_config_flags(a, TrainConfig, label="adapt", skip=(*_SET_HERE, "distill"), opts=_OPTS)
    _add_launcher_options(a)
    a.set_defaults(func=_cmd_adapt, build_config=adapt_config)

    d = subparsers.add_parser(
        "distill",
        help="token-level (KL) or sentence-level distillation from a same-vocabulary teacher",
        description="Token level: loss = CE + lambda * T^2 * KL(teacher^T || student^T), "
        "chunked over the sequence. Sentence level: the teacher continues prompts taken "
        "from the corpus and the student fine-tunes on the continuations (CE).")
    d.add_argument("--level", choices=sorted(LEVELS), default=None,
                   help="token-level KL or the sentence-level baseline (default token)")
    d.add_argument("--lr", type=float, default=None,
                   help=f"peak learning rate (default {lr2:g})")
    add_config_flags(
        d, TrainConfig, label="distill", nested={"distill": ""},
        skip=(*_SET_HERE, "stage_split", "distill.trust_remote_code"),
        opts={**_OPTS, "model": Opt(names=("--student",), metavar="SPEC"),
              "distill.teacher": Opt(metavar="SPEC"),
              "trust_remote_code": Opt(also=("distill.trust_remote_code",))})
    _add_launcher_options(d)
    d.set_defaults(func=_cmd_distill, build_config=distill_config)
