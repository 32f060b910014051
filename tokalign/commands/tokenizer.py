"""``tokalign tokenizer register PATH_OR_HUB_ID``: announce a new target tokenizer to the
Prefect server (event ``tokalign.tokenizer.landed``); the served align/pipeline deployments
start a run with it as the target."""

from __future__ import annotations

import argparse
import json
from typing import Any

from tokalign.flags import add_common_flags


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "tokenizer",
        help="manage target tokenizers (announce new ones to the Prefect deployments)",
        description="Tokenizer commands for the deployed pipeline.",
    )
    sub = p.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND")
    reg = sub.add_parser(
        "register",
        help="emit tokalign.tokenizer.landed for a tokenizer",
        description=(
            "Emit the Prefect event `tokalign.tokenizer.landed` for a tokenizer. The align "
            "and pipeline deployments served by `python -m deployments.serve` have a trigger "
            "on it and start a run with this tokenizer as the target. A local path is sent "
            "as an absolute path with the sha256 of its bytes; a hub id or builtin alias as "
            "given. Needs PREFECT_API_URL pointing at a running Prefect server."
        ),
    )
    reg.add_argument("spec", metavar="PATH_OR_HUB_ID",
                     help="tokenizer folder, tokenizer.json, *.tiktoken, hub id or "
                          "builtin:qwen2 (required)")
    reg.add_argument("--check", action="store_true",
                     help="load the tokenizer first and refuse to announce one that does "
                          "not load (default: off, the run will report it)")
    add_common_flags(reg, progress=False)
    reg.set_defaults(func=run_register)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def run_register(args: argparse.Namespace) -> int:
    import os

    from tokalign.cli import UserError

    if not os.environ.get("PREFECT_API_URL"):
        raise UserError("PREFECT_API_URL is not set: start a server (`prefect server start "
                        "--host 127.0.0.1`), serve the deployments (`python -m "
                        "deployments.serve`) and export PREFECT_API_URL="
                        "http://127.0.0.1:4200/api")
    if args.check:
        from tokalign_core.vocab.tokenizers import load_tokenizer

        try:
            load_tokenizer(args.spec)
        except Exception as exc:  # noqa: BLE001 - any load failure is the user's to fix
            raise UserError(f"tokenizer {args.spec!r} does not load: {exc}") from exc
    from tasks.events import emit_tokenizer_landed

    print(json.dumps(emit_tokenizer_landed(args.spec), indent=2))
    return 0
