"""`tokalign pretrain`: pretrain the tiny source or teacher model (cached by content)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tokalign.flags import add_common_flags, show_progress


def register(subparsers) -> None:
    from tokalign_core.train.pretrain import DEFAULT_CORPUS, PRESETS

    p = subparsers.add_parser(
        "pretrain",
        help="pretrain a tiny GPT-NeoX source/teacher model on English text + code",
        description=(
            "Pretrain a small GPT-NeoX (Pythia's architecture) from scratch on English text "
            "and code from the benchmark corpus (benchmarks/make_corpus.py; without it, on "
            "the Python standard library). The result is an HF model folder with its "
            "tokenizer, cached by a hash of the training texts + config + code: a second "
            "run with the same inputs reuses it. Presets: "
            + "; ".join(f"{n} ({c.hidden}d x {c.layers} layers, {c.steps} steps, "
                        f"tokenizer {c.tokenizer})" for n, c in PRESETS.items())
        ),
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="demo",
                   help="model/data size preset (default: %(default)s)")
    p.add_argument("--corpus", default=str(DEFAULT_CORPUS),
                   help="benchmark corpus folder with <lang>.<domain>.jsonl files; when it "
                        "holds none, the Python standard library is used instead "
                        "(default: %(default)s)")
    p.add_argument("--eval-dir", default=None,
                   help="held-out folder with <lang>.jsonl (default: <corpus>/../eval)")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps; warm-up scales with it (default: the preset's)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: the preset's, 0)")
    p.add_argument("--tokenizer", default=None,
                   help="'train-bpe' or a tokenizer spec such as builtin:qwen2 "
                        "(default: the preset's)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's own choice)")
    p.add_argument("--log", default=None, help="JSONL file for loss/lr per step (default: none)")
    p.add_argument("--force", action="store_true", help="retrain even when cached")
    add_common_flags(p, config="PretrainConfig (replaces --preset)",
                     artifact_root=True, artifact_aliases=("--artifacts",))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokalign.cli import UserError, open_store
    from tokalign_core.runtime.tracking import default_logger
    from tokalign_core.train.pretrain import (
        DEFAULT_CORPUS,
        PretrainConfig,
        load_training_texts,
        preset,
        pretrain,
    )

    if args.config:
        if not Path(args.config).exists():
            raise UserError(f"--config {args.config} does not exist")
        config = PretrainConfig.load(args.config)
        flags = {"steps": args.steps, "seed": args.seed, "tokenizer": args.tokenizer,
                 "threads": args.threads}  # flags given override the file
        config = PretrainConfig.model_validate(
            {**config.model_dump(), **{k: v for k, v in flags.items() if v is not None}})
    else:
        config = preset(args.preset, steps=args.steps, seed=args.seed,
                        tokenizer=args.tokenizer, threads=args.threads)
    if args.corpus != str(DEFAULT_CORPUS) and not Path(args.corpus).is_dir():
        raise UserError(f"--corpus {args.corpus} is not a folder; build it with "
                        "`python benchmarks/make_corpus.py` or leave --corpus out")
    open_store(args.artifact_root)  # refuses a root that is a file before the long load
    texts = load_training_texts(config, args.corpus, args.eval_dir)
    logger = default_logger(args.log, prefix="pretrain/")
    try:
        result = pretrain(config, args.artifact_root, texts=texts, logger=logger,
                          progress=show_progress(args), force=args.force)
    finally:
        logger.close()
    print(json.dumps({"path": result.ref.path, "sha256": result.ref.sha256,
                      "cached": result.cached, "key": result.key,
                      "metrics": result.metrics}, indent=2))
    return 0
