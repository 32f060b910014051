"""Adaptation and distillation figures (issue 5). Three subcommands:

  throughput  tokens/s of the training loop on CPU for a ~7M-parameter GPT-NeoX,
              DeepSpeed ZeRO-1 vs the plain-torch engine, stage 1 vs stage 2.
  compare     held-out bits/token (and bits/byte with --heldout-bytes) after 0, 50, 100,
              200 ... steps of two-stage adaptation, for several initialised models of the
              same target tokenizer (e.g. TokAlign++ vs the best baseline), plus a loss plot.
              Needs initialised model folders (tokalign init) and a tokens artifact.
  distill     a tiny teacher trained on the target tokenizer, then token-level vs
              sentence-level distillation of a fresh student on the same step/token budget.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/adapt_bench.py throughput
    .venv/bin/python benchmarks/adapt_bench.py compare --tokens ART --model tokalign++=DIR \
        --model fvt=DIR --steps 400 --eval-every 50
    .venv/bin/python benchmarks/adapt_bench.py distill
    .venv/bin/python benchmarks/adapt_bench.py distill --teacher ADAPTED --student INIT \
        --tokens ART --steps 60

Results print as JSON and go to .cache/bench/adapt/*.json. Figures under shared load are
noisy: record `cat /proc/loadavg` with them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench" / "adapt"


def _loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def _toy_data(folder: Path, vocab: int, n_docs: int, seed: int = 0):
    """Tokenizer + tokens artifact from the standard library's text (no network)."""
    from tokalign_core.model import toy
    from tokalign_core.train.data import write_tokens_artifact

    texts = toy.stdlib_texts(n_docs, seed=seed)
    tok = toy.train_bytelevel_bpe(texts, vocab_size=vocab)
    docs = [tok(t)["input_ids"] for t in texts]
    n_held = max(8, len(docs) // 20)
    write_tokens_artifact(folder / "tokens", [docs[n_held:]], heldout=docs[:n_held],
                          vocab_size=len(tok))
    return tok, folder / "tokens"


def _save(model, tok, folder: Path) -> Path:
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def throughput(args: argparse.Namespace) -> dict:
    import torch

    from tokalign_core.configs.train import TrainConfig
    from tokalign_core.model import toy
    from tokalign_core.train.loop import run_training

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    work = CACHE / "throughput"
    shutil.rmtree(work, ignore_errors=True)
    tok, tokens = _toy_data(work, vocab=4096, n_docs=1500)
    model = toy.tiny_gpt_neox(len(tok), hidden=256, layers=6, heads=4, max_positions=512)
    n_params = sum(p.numel() for p in model.parameters())
    src = _save(model, tok, work / "model")
    out = {"n_params": n_params, "seq_len": args.seq_len, "micro_batch": args.micro_batch,
           "loadavg_before": _loadavg(), "runs": {}}
    for engine in ("deepspeed", "torch"):
        cfg = TrainConfig(model=str(src), tokens=str(tokens), out_dir=str(work / engine),
                          engine=engine, seq_len=args.seq_len,
                          micro_batch_size=args.micro_batch,
                          tokens_per_step=args.seq_len * args.micro_batch,
                          total_steps=2 * args.steps, checkpoint_every=10**6,
                          eval_blocks=0, progress=False, save_final=False)
        t0 = time.perf_counter()
        res = run_training(cfg)
        wall = time.perf_counter() - t0
        per_stage = {}
        for stage in (1, 2):
            rows = [h for h in res.history if h["stage"] == stage][1:]  # drop the first step
            per_stage[f"stage{stage}_tokens_per_s"] = (
                sum(h["tokens_per_s"] for h in rows) / max(1, len(rows)))
        out["runs"][engine] = {**per_stage, "wall_s": wall}
    out["loadavg_after"] = _loadavg()
    return out


def _eval_curve(metrics: Path) -> list[dict]:
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    return [{"step": r["step"], "eval_loss": r["eval_loss"],
             "bits_per_token": r["eval_bits_per_token"]} for r in rows if "eval_loss" in r]


def heldout_bytes_per_token(model_dir: str, tokens: str, seq_len: int,
                            n_blocks: int) -> tuple[int, int]:
    """(predicted tokens, their UTF-8 bytes) of the held-out blocks the training loop
    scores: every token's bytes from the canonical vocabulary (special tokens: 0 bytes),
    so bits/byte = bits/token * tokens / bytes is exact, not a decode-and-count estimate."""
    from tokalign_core.train.data import heldout_blocks
    from tokalign_core.vocab.tokenizers import load_tokenizer
    from tokalign_core.vocab.vocab import build_vocab

    tok = load_tokenizer(model_dir)
    vocab = build_vocab(tok)
    width = np.array([len(b) if b is not None else 0 for b in vocab.token_bytes], np.int64)
    eos = tok.eos_token_id if tok.eos_token_id is not None else 0
    blocks = heldout_blocks(tokens, eos, seq_len, n_blocks)[:, 1:]
    return int(blocks.size), int(width[blocks].sum())


def compare(args: argparse.Namespace) -> dict:
    """Adapt each initialised model with the same config; eval curves + a plot."""
    from tokalign_core.configs.train import TrainConfig
    from tokalign_core.train.loop import run_training

    out = {"loadavg_before": _loadavg(), "curves": {}}
    first = args.model[0].split("=", 1)[1]
    if not args.heldout_bytes:  # every model shares the target tokenizer: count once
        args.heldout_tokens, args.heldout_bytes = heldout_bytes_per_token(
            first, args.tokens, args.seq_len, args.eval_blocks)
    out["heldout"] = {"tokens": args.heldout_tokens, "bytes": args.heldout_bytes}
    for spec in args.model:
        name, folder = spec.split("=", 1)
        cfg = TrainConfig(model=folder, tokens=args.tokens, out_dir=str(CACHE / "compare" / name),
                          engine=args.engine, seq_len=args.seq_len,
                          micro_batch_size=args.micro_batch,
                          tokens_per_step=args.tokens_per_step, total_steps=args.steps,
                          eval_every=args.eval_every, eval_blocks=args.eval_blocks,
                          checkpoint_every=args.steps, progress=True, resume=False)
        shutil.rmtree(cfg.out_dir, ignore_errors=True)
        res = run_training(cfg)
        curve = _eval_curve(res.metrics_path)
        if args.heldout_bytes:  # same tokenizer for every model: bpb = bpt * tokens / bytes
            for c in curve:
                c["bits_per_byte"] = c["bits_per_token"] * args.heldout_tokens / args.heldout_bytes
        out["curves"][name] = {"eval": curve, "train_loss": [
            (h["step"], h["loss"]) for h in res.history]}
    out["loadavg_after"] = _loadavg()
    _plot(out["curves"], CACHE / "compare" / "loss_curves.png")
    return out


def _plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, c in curves.items():
        axes[0].plot(*zip(*c["train_loss"], strict=True), label=name)
        key = "bits_per_byte" if all("bits_per_byte" in e for e in c["eval"]) \
            else "bits_per_token"
        axes[1].plot([e["step"] for e in c["eval"]], [e[key] for e in c["eval"]],
                     marker="o", label=name)
        axes[1].set_ylabel(f"held-out {key.replace('_', ' ')}")
    axes[0].set(xlabel="step", ylabel="train loss (nats/token)", title="training loss")
    axes[1].set(xlabel="step", title="held-out")
    for ax in axes:
        ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)


def distill_given(args: argparse.Namespace) -> dict:
    """Students = one initialised model (e.g. the TokAlign++ init of the bake-off source
    model for the Qwen2 vocabulary), teacher = a model that shares its vocabulary (e.g.
    the same init after adaptation); CE only vs token-level vs sentence-level, each with
    the same steps and tokens per step. Held-out bits/token and bits/byte."""
    from tokalign_core.configs.distill import DistillConfig
    from tokalign_core.configs.train import TrainConfig
    from tokalign_core.train.loop import run_training

    work = CACHE / "distill-given"
    n_tok, n_bytes = heldout_bytes_per_token(args.student, args.tokens, args.seq_len,
                                             args.eval_blocks)
    common = dict(model=args.student, tokens=args.tokens, engine="torch",
                  seq_len=args.seq_len, micro_batch_size=args.micro_batch,
                  tokens_per_step=args.seq_len * args.micro_batch, checkpoint_every=10**6,
                  eval_blocks=args.eval_blocks, eval_every=args.steps, progress=True,
                  total_steps=args.steps, resume=False, save_final=False)
    out = {"loadavg_before": _loadavg(), "teacher": args.teacher, "student": args.student,
           "heldout": {"tokens": n_tok, "bytes": n_bytes}, "students": {}}
    for name, mode, extra in [("ce-only", "adapt", {}), ("token-level", "distill", {}),
                              ("sentence-level", "sentence-distill", {"prompt_len": 16})]:
        d = None if mode == "adapt" else DistillConfig(teacher=args.teacher, **extra)
        shutil.rmtree(work / name, ignore_errors=True)
        t0 = time.perf_counter()
        r = run_training(TrainConfig(out_dir=str(work / name), mode=mode, distill=d,
                                     **common))
        curve = _eval_curve(r.metrics_path)
        for c in curve:
            c["bits_per_byte"] = c["bits_per_token"] * n_tok / n_bytes
        out["students"][name] = {"start": curve[0], "end": curve[-1],
                                 "wall_s": time.perf_counter() - t0}
        log_progress(name, out["students"][name])
    out["loadavg_after"] = _loadavg()
    return out


def log_progress(name: str, row: dict) -> None:
    print(json.dumps({name: row}), flush=True)


def distill_bench(args: argparse.Namespace) -> dict:
    """Teacher: a bigger tiny model trained on the data; students: token vs sentence.
    With ``--teacher``/``--student``/``--tokens``: :func:`distill_given` instead."""
    if args.teacher:
        return distill_given(args)
    import torch

    from tokalign_core.configs.distill import DistillConfig
    from tokalign_core.configs.train import TrainConfig
    from tokalign_core.model import toy
    from tokalign_core.train.loop import run_training

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    work = CACHE / "distill"
    shutil.rmtree(work, ignore_errors=True)
    tok, tokens = _toy_data(work, vocab=1024, n_docs=1500)
    common = dict(tokens=str(tokens), engine="torch", seq_len=128, micro_batch_size=8,
                  tokens_per_step=1024, checkpoint_every=10**6, eval_blocks=32,
                  progress=False, stage_split=0.0)
    teacher_init = _save(toy.tiny_gpt_neox(len(tok), hidden=128, layers=4, seed=1), tok,
                         work / "teacher-init")
    t = run_training(TrainConfig(model=str(teacher_init), out_dir=str(work / "teacher"),
                                 total_steps=args.teacher_steps, seed=1,
                                 stages=[{"name": "e", "trainable": "embeddings", "lr": 1e-3},
                                         {"name": "f", "trainable": "all", "lr": 2e-3}],
                                 **common))
    student = _save(toy.tiny_gpt_neox(len(tok), hidden=64, layers=2, seed=2), tok,
                    work / "student-init")
    out = {"loadavg_before": _loadavg(), "teacher_eval": _eval_curve(t.metrics_path)[-1],
           "students": {}}
    stages = [{"name": "e", "trainable": "embeddings", "lr": 1e-3},
              {"name": "f", "trainable": "all", "lr": 2e-3}]
    for name, mode, extra in [("ce-only", "adapt", {}),
                              ("token-level", "distill", {}),
                              ("sentence-level", "sentence-distill", {"prompt_len": 16})]:
        d = None if mode == "adapt" else DistillConfig(teacher=str(t.final_model), **extra)
        t0 = time.perf_counter()
        r = run_training(TrainConfig(model=str(student), out_dir=str(work / name), mode=mode,
                                     total_steps=args.steps, stages=stages, distill=d,
                                     **common))
        out["students"][name] = {**_eval_curve(r.metrics_path)[-1],
                                 "wall_s": time.perf_counter() - t0}
    out["loadavg_after"] = _loadavg()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    tp = sub.add_parser("throughput", help="CPU tokens/s, ~7M-parameter model")
    tp.add_argument("--steps", type=int, default=4, help="steps per stage (default 4)")
    tp.add_argument("--seq-len", type=int, default=256, help="default 256")
    tp.add_argument("--micro-batch", type=int, default=8, help="default 8")
    cp = sub.add_parser("compare", help="bits/token vs steps for several initialisations")
    cp.add_argument("--tokens", required=True, help="target tokens artifact")
    cp.add_argument("--model", action="append", required=True, help="NAME=DIR, repeatable")
    cp.add_argument("--steps", type=int, default=400, help="default 400")
    cp.add_argument("--eval-every", type=int, default=50, help="default 50")
    cp.add_argument("--eval-blocks", type=int, default=32, help="default 32")
    cp.add_argument("--seq-len", type=int, default=256, help="default 256")
    cp.add_argument("--micro-batch", type=int, default=8, help="default 8")
    cp.add_argument("--tokens-per-step", type=int, default=4096, help="default 4096")
    cp.add_argument("--engine", default="deepspeed", choices=["deepspeed", "torch"])
    cp.add_argument("--heldout-bytes", type=int, default=0,
                    help="UTF-8 bytes of the scored held-out text (enables bits/byte)")
    cp.add_argument("--heldout-tokens", type=int, default=0,
                    help="target tokens of the same held-out text")
    dp = sub.add_parser("distill", help="token-level vs sentence-level distillation")
    dp.add_argument("--teacher-steps", type=int, default=150, help="default 150")
    dp.add_argument("--steps", type=int, default=60, help="student steps (default 60)")
    dp.add_argument("--teacher", default=None,
                    help="teacher model folder sharing the student's vocabulary (with "
                         "--student and --tokens: distil a given model instead of toys)")
    dp.add_argument("--student", default=None, help="initialised student model folder")
    dp.add_argument("--tokens", default=None, help="tokens artifact of the shared tokenizer")
    dp.add_argument("--seq-len", type=int, default=128, help="default 128")
    dp.add_argument("--micro-batch", type=int, default=4, help="default 4")
    dp.add_argument("--eval-blocks", type=int, default=32, help="default 32")
    args = p.parse_args()
    fn = {"throughput": throughput, "compare": compare, "distill": distill_bench}[args.cmd]
    result = fn(args)
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / f"{args.cmd}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
