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
from tokalign_core.configs.distill import DistillConfig
from tokalign_core.configs.train import TrainConfig

DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_T = TrainConfig.model_fields
_D = DistillConfig.model_fields


def _d(name: str, fields: dict = _T) -> Any:
    return fields[name].default


def _add_training_options(p: argparse.ArgumentParser, steps_default: int) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--tokens", required=True,
                   help="target-side tokens artifact folder (from `tokalign tokenize`)")
    g.add_argument("--out", required=True,
                   help="output folder: run.json, checkpoints/, metrics.jsonl, model/")
    g.add_argument("--tokenizer", default=None,
                   help="tokenizer folder or hub id (default: the model's own folder)")
    g.add_argument("--steps", type=int, default=steps_default,
                   help=f"optimizer steps over all stages (default {steps_default})")
    g.add_argument("--seq-len", type=int, default=_d("seq_len"),
                   help=f"tokens per sequence (default {_d('seq_len')})")
    g.add_argument("--micro-batch", type=int, default=_d("micro_batch_size"),
                   help=f"sequences per rank per forward (default {_d('micro_batch_size')})")
    g.add_argument("--tokens-per-step", type=int, default=_d("tokens_per_step"),
                   help="tokens per optimizer step, reached by gradient accumulation "
                   f"(default {_d('tokens_per_step')})")
    g.add_argument("--warmup-ratio", type=float, default=_d("warmup_ratio"),
                   help=f"linear warmup share of each stage (default {_d('warmup_ratio')})")
    g.add_argument("--grad-clip", type=float, default=_d("grad_clip"),
                   help=f"max global gradient norm, 0 = off (default {_d('grad_clip')})")
    g.add_argument("--weight-decay", type=float, default=_d("weight_decay"),
                   help=f"AdamW weight decay (default {_d('weight_decay')})")
    g.add_argument("--checkpoint-every", type=int, default=_d("checkpoint_every"),
                   help=f"steps between checkpoints (default {_d('checkpoint_every')})")
    g.add_argument("--eval-every", type=int, default=_d("eval_every"),
                   help="held-out loss every N steps, 0 = only at the end "
                   f"(default {_d('eval_every')})")
    g.add_argument("--seed", type=int, default=_d("seed"),
                   help=f"data order and model seed (default {_d('seed')})")
    g.add_argument("--engine", choices=["deepspeed", "torch"], default=_d("engine"),
                   help="deepspeed, or a plain-torch single-process loop for debugging "
                   f"(default {_d('engine')})")
    g.add_argument("--zero-stage", type=int, choices=[0, 1, 2, 3], default=_d("zero_stage"),
                   help=f"DeepSpeed ZeRO stage (default {_d('zero_stage')})")
    g.add_argument("--precision", choices=["auto", "bf16", "fp32"], default=_d("precision"),
                   help="auto = bf16 on GPU, fp32 on CPU (default auto)")
    g.add_argument("--peak-flops", type=float, default=_d("peak_flops"),
                   help="per-GPU peak FLOP/s for the logged MFU "
                   f"(default {_d('peak_flops'):.3g}, A100 bf16)")
    g.add_argument("--no-resume", action="store_true",
                   help="ignore existing checkpoints in OUT/checkpoints (default: resume)")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="allow models whose config needs custom code (default off)")
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


def _common(args: argparse.Namespace) -> dict:
    return dict(
        tokens=str(Path(args.tokens).resolve()), out_dir=str(Path(args.out).resolve()),
        tokenizer=args.tokenizer, total_steps=args.steps, seq_len=args.seq_len,
        micro_batch_size=args.micro_batch, tokens_per_step=args.tokens_per_step,
        warmup_ratio=args.warmup_ratio, grad_clip=args.grad_clip,
        weight_decay=args.weight_decay, checkpoint_every=args.checkpoint_every,
        eval_every=args.eval_every, seed=args.seed, engine=args.engine,
        zero_stage=args.zero_stage, precision=args.precision, peak_flops=args.peak_flops,
        resume=not args.no_resume, progress=not args.no_progress,
        trust_remote_code=args.trust_remote_code,
    )


def _stages(lr1: float, lr2: float) -> list[dict]:
    return [{"name": "embeddings", "trainable": "embeddings", "lr": lr1},
            {"name": "full", "trainable": "all", "lr": lr2}]


def adapt_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of ``tokalign adapt``."""
    return TrainConfig(mode="adapt", model=_model_path(args.model), stage_split=args.split,
                       stages=_stages(args.lr1, args.lr2), **_common(args))


def distill_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of ``tokalign distill`` (one full-parameter stage)."""
    d = DistillConfig(
        teacher=_model_path(args.teacher), kl_weight=args.kl_weight,
        temperature=args.temperature, chunk_size=args.chunk_size, top_k=args.top_k,
        prompt_len=args.prompt_len, do_sample=args.do_sample,
        trust_remote_code=args.trust_remote_code)
    mode = "distill" if args.level == "token" else "sentence-distill"
    return TrainConfig(mode=mode, model=_model_path(args.student), stage_split=0.0,
                       stages=_stages(args.lr, args.lr), distill=d, **_common(args))


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
        "adapt", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="progressive two-stage adaptation of an initialised model",
        description="Stage 1 trains only the input embeddings and the LM head, stage 2 every "
        "parameter (TokAlign section 7), on the target-tokenized corpus. Writes OUT/run.json "
        "and runs python -m tokalign_core.train; rerun to resume after a crash.")
    a.add_argument("--model", required=True,
                   help="initialised model folder (tokalign init) or any model: "
                       "hub id, folder, .gguf or builtin:smollm2-135m")
    a.add_argument("--split", type=float, default=_d("stage_split"),
                   help=f"share of steps in stage 1 (default {_d('stage_split')})")
    a.add_argument("--lr1", type=float, default=6.4e-4,
                   help="peak lr of stage 1, embeddings + head (default 6.4e-4)")
    a.add_argument("--lr2", type=float, default=5e-5,
                   help="peak lr of stage 2, all parameters (default 5e-5)")
    _add_training_options(a, _d("total_steps"))
    a.set_defaults(func=_cmd_adapt)

    d = subparsers.add_parser(
        "distill", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="token-level (KL) or sentence-level distillation from a same-vocabulary teacher",
        description="Token level: loss = CE + lambda * T^2 * KL(teacher^T || student^T), "
        "chunked over the sequence. Sentence level: the teacher continues prompts taken "
        "from the corpus and the student fine-tunes on the continuations (CE).")
    d.add_argument("--student", required=True, help="student model: "
        "hub id, folder, .gguf or builtin:smollm2-135m")
    d.add_argument("--teacher", required=True,
                   help="teacher model: hub id, folder, .gguf or builtin:smollm2-135m "
                        "(same tokenizer as the student)")
    d.add_argument("--level", choices=["token", "sentence"], default="token",
                   help="token-level KL or the sentence-level baseline (default token)")
    d.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (default 5e-5)")
    d.add_argument("--kl-weight", type=float, default=_d("kl_weight", _D),
                   help=f"lambda (default {_d('kl_weight', _D)})")
    d.add_argument("--temperature", type=float, default=_d("temperature", _D),
                   help=f"T (default {_d('temperature', _D)})")
    d.add_argument("--chunk-size", type=int, default=_d("chunk_size", _D),
                   help=f"positions per KL chunk (default {_d('chunk_size', _D)})")
    d.add_argument("--top-k", type=int, default=_d("top_k", _D),
                   help="0 = online teacher; k > 0 = precompute the teacher's top-k "
                   "log-probs once to OUT/teacher_cache (renormalised top-k, default 0)")
    d.add_argument("--prompt-len", type=int, default=_d("prompt_len", _D),
                   help=f"sentence level: prompt tokens (default {_d('prompt_len', _D)})")
    d.add_argument("--do-sample", action="store_true",
                   help="sentence level: seeded sampling instead of greedy (default greedy)")
    _add_training_options(d, _d("total_steps"))
    d.set_defaults(func=_cmd_distill)
