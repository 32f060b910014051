"""`tokalign pretrain`: pretrain the tiny source or teacher model (cached by content)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tokalign.flags import (
    Opt,
    add_common_flags,
    add_config_flags,
    config_from_args,
    given,
    show_progress,
)


def register(subparsers) -> None:
    from tokalign_core.configs.pretrain import PRESETS, PretrainConfig
    from tokalign_core.train.pretrain import DEFAULT_CORPUS

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
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="the settings to start from when no --config (default: demo)")
    add_config_flags(p, PretrainConfig, label="pretrain", skip=("preset",),
                     default_text="the preset's", opts={
                         "tokenizer": Opt(metavar="SPEC"),
                         "text_langs": Opt(metavar="L1,L2"), "code_langs": Opt(metavar="L1,L2")})
    p.add_argument("--corpus", default=str(DEFAULT_CORPUS),
                   help="benchmark corpus folder with <lang>.<domain>.jsonl files; when it "
                        "holds none, the Python standard library is used instead "
                        "(default: %(default)s)")
    p.add_argument("--eval-dir", default=None,
                   help="held-out folder with <lang>.jsonl (default: <corpus>/../eval)")
    p.add_argument("--log", default=None, help="JSONL file for loss/lr per step (default: none)")
    p.add_argument("--force", action="store_true", help="retrain even when cached")
    add_common_flags(p, config="PretrainConfig (instead of a --preset)",
                     artifact_root=True, artifact_aliases=("--artifacts",))
    p.set_defaults(func=run, build_config=build_config)


def build_config(args: argparse.Namespace) -> Any:
    """The PretrainConfig: ``--config FILE`` or the ``--preset``'s settings (``--steps``
    given alone keeps the preset's warm-up share), then the flags typed."""
    from tokalign.cli import UserError
    from tokalign_core.configs.pretrain import preset_settings

    if args.config and args.preset:
        raise UserError("give --config or --preset, not both (a config file already holds "
                        "every setting)")
    if args.config:
        return config_from_args(args)
    values = given(args)
    base = preset_settings(args.preset or "demo", steps=values.get("steps"),
                           warmup_steps=values.get("warmup_steps"))
    return config_from_args(args, base=base)


def run(args: argparse.Namespace) -> int:
    from tokalign.cli import UserError, open_store
    from tokalign_core.runtime.tracking import default_logger
    from tokalign_core.train.pretrain import DEFAULT_CORPUS, load_training_texts, pretrain

    config = build_config(args)
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
