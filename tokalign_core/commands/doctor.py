"""``tokalign doctor MODEL TOKENIZER``: pre-flight checks before heavy work."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "doctor",
        help="check a model + tokenizer pair (sizes, tying, special tokens, chat template, "
        "unreachable tokens, custom code)",
        description=(
            "Reads only the model's config (weights are not loaded) and the tokenizer, and "
            "reports findings as ok / warning / blocker. Exit code 1 when there is a blocker, "
            "0 otherwise."
        ),
    )
    p.add_argument("model", help="model: hub id, local folder (config.json is enough), .gguf or "
                   "builtin:smollm2-135m")
    p.add_argument("tokenizer", nargs="?", default=None,
                   help="tokenizer spec (default: the model's own)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow a model whose config declares custom code (config.auto_map)")
    p.add_argument("--max-check-tokens", type=int, default=20000,
                   help="check reachability of at most this many (seeded, sampled) token ids "
                   "(default 20000)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the reachability sample (default 0)")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="also write the report as JSON to FILE ('-' for stdout only)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokalign_core.artifacts import atomic_write_text
    from tokalign_core.doctor import diagnose

    report = diagnose(args.model, args.tokenizer or args.model, args.trust_remote_code,
                      args.max_check_tokens, args.seed)
    if args.json == "-":
        print(report.to_json())
    else:
        print(report.table())
        if args.json:
            atomic_write_text(Path(args.json), report.to_json())
    return 1 if report.blockers else 0
