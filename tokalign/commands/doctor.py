"""``tokalign doctor SOURCE [TARGET]``: pre-flight checks before heavy work.

With TARGET, the pair is checked as a vocabulary swap (:func:`tokalign_core.model.doctor.
diagnose_pair`); ``--with-tokenizer TOK`` checks MODEL as it is used with TOK now."""

from __future__ import annotations

import argparse
from pathlib import Path

from tokalign.flags import add_common_flags, add_config_flags, config_from_args


def register(subparsers) -> None:
    from tokalign_core.configs.doctor import DoctorConfig

    p = subparsers.add_parser(
        "doctor",
        help="pre-flight checks of a source model and the target tokenizer it will get "
        "(sizes, tying, special tokens, chat template, unreachable tokens, shared tokens, "
        "custom code)",
        description=(
            "Reads only the model's config (weights are not loaded) and the tokenizers, and "
            "reports findings as ok / warning / blocker. With TARGET, the source model is "
            "checked with its own tokenizer, the target tokenizer on its own, and the pair "
            "for what the swap does (new matrix size, shared tokens). Exit code 1 when there "
            "is a blocker, 0 otherwise."
        ),
    )
    p.add_argument("model", metavar="SOURCE",
                   help="source model: hub id, local folder (config.json is enough), .gguf "
                   "or builtin:smollm2-135m")
    p.add_argument("tokenizer", metavar="TARGET", nargs="?", default=None,
                   help="target tokenizer spec the model will get (default: none; only the "
                   "model with its own tokenizer is checked)")
    p.add_argument("--source-tokenizer", default=None, metavar="SPEC",
                   help="the source model's tokenizer when its folder has none "
                   "(default: the model's own)")
    p.add_argument("--with-tokenizer", default=None, metavar="SPEC",
                   help="instead of a swap, check MODEL as used with this tokenizer now "
                   "(e.g. a folder after `tokalign init`); sizes must match")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="also write the report as JSON to FILE ('-' for stdout only)")
    add_config_flags(p, DoctorConfig, label="doctor")
    add_common_flags(p, config="DoctorConfig", progress=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokalign.cli import UserError
    from tokalign_core.model.doctor import diagnose, diagnose_pair
    from tokalign_core.store.artifacts import atomic_write_text

    cfg = config_from_args(args)
    if args.with_tokenizer and args.tokenizer:
        raise UserError("give either TARGET (a swap) or --with-tokenizer (the tokenizer the "
                        "model uses now), not both")
    if args.tokenizer:
        report = diagnose_pair(args.model, args.tokenizer, args.source_tokenizer, cfg)
    else:
        tok = args.with_tokenizer or args.source_tokenizer or args.model
        report = diagnose(args.model, tok, cfg)
    if args.json == "-":
        print(report.to_json())
    else:
        print(report.table())
        if args.json:
            atomic_write_text(Path(args.json), report.to_json())
    return 1 if report.blockers else 0
