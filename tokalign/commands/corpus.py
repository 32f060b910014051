"""``tokalign corpus``: build a corpus artifact (mixed, filtered, sharded text) from sources."""

from __future__ import annotations

import argparse
from typing import Any

from tokalign.cli import DEFAULT_ARTIFACT_ROOT as DEFAULT_ROOT


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "corpus",
        help="mix text sources into a sharded corpus artifact with a held-out split",
        description=(
            "Read jsonl / parquet / plain-text files, folders, globs or `datasets` datasets, "
            "apply the input policy (invalid UTF-8 replaced, NUL removed, empty documents "
            "dropped, long documents split; all counted in meta.json), mix the sources by "
            "ratio up to a budget, and write N parquet shards plus heldout.parquet. Prints "
            "the artifact folder. Per-source options beyond the flags below: use --config."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", default=None,
                   help="CorpusConfig as JSON/YAML; flags given on the command line override it")
    p.add_argument("--source", action="append", metavar="PATH", default=None,
                   help="a file, folder, glob or hf:<dataset>; repeat for several sources "
                        "(replaces the config file's sources)")
    p.add_argument("--ratio", action="append", type=float, metavar="R", default=None,
                   help="mixing ratio of each --source, in order (needs a budget; "
                        "default 1.0 each)")
    p.add_argument("--format", default="auto",
                   choices=["auto", "jsonl", "parquet", "text", "dataset"],
                   help="reader for every --source; auto: from the file suffix "
                        "(default: %(default)s)")
    p.add_argument("--text-field", default="text",
                   help="column / JSON key holding the text, for every --source "
                        "(default: %(default)s)")
    p.add_argument("--text-unit", default="line", choices=["line", "paragraph", "file"],
                   help="what one document is in plain-text files (default: %(default)s)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--token-budget", type=int, default=None,
                        help="size of the mix in tokens, converted to bytes with "
                             "--bytes-per-token (default: everything)")
    budget.add_argument("--byte-budget", type=int, default=None,
                        help="size of the mix in UTF-8 bytes (default: everything)")
    p.add_argument("--bytes-per-token", type=float, default=None,
                   help="bytes per token used to turn --token-budget into bytes "
                        "(config default 4.0)")
    p.add_argument("--shards", type=int, default=None,
                   help="number of training shards (config default 8)")
    p.add_argument("--heldout-fraction", type=float, default=None,
                   help="fraction of documents held out (config default 0.05)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the held-out draw and the document order (config default 0)")
    p.add_argument("--max-doc-chars", type=int, default=None,
                   help="documents longer than this are split (config default 1000000)")
    p.add_argument("--artifact-root", default=DEFAULT_ROOT,
                   help="folder of the content-addressed artifact store (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars (default: shown)")
    p.set_defaults(func=run)


def corpus_config_from_args(args: argparse.Namespace):
    """Merge ``--config`` (if any) with the flags given; flags win."""
    from tokalign.cli import UserError
    from tokalign_core.configs.corpus import CorpusConfig

    data: dict[str, Any] = {}
    if args.config:
        data = CorpusConfig.load(args.config).model_dump(mode="json")
    if args.source:
        ratios = args.ratio or [1.0] * len(args.source)
        if len(ratios) != len(args.source):
            raise UserError(f"{len(args.ratio)} --ratio values for {len(args.source)} --source "
                            "paths; give one ratio per source, in order")
        data["sources"] = [
            {"path": s, "ratio": r, "format": args.format, "text_field": args.text_field,
             "text_unit": args.text_unit}
            for s, r in zip(args.source, ratios, strict=True)
        ]
    elif args.ratio:
        raise UserError("--ratio needs --source (one ratio per source)")
    if not data.get("sources"):
        raise UserError("no sources: give --source PATH (repeatable) or --config FILE")
    overrides = {"token_budget": args.token_budget, "byte_budget": args.byte_budget,
                 "bytes_per_token": args.bytes_per_token, "n_shards": args.shards,
                 "heldout_fraction": args.heldout_fraction, "seed": args.seed,
                 "max_doc_chars": args.max_doc_chars}
    data.update({k: v for k, v in overrides.items() if v is not None})
    if args.token_budget is not None:
        data["byte_budget"] = None
    if args.byte_budget is not None:
        data["token_budget"] = None
    try:
        return CorpusConfig.model_validate(data)
    except Exception as exc:
        raise UserError(f"invalid corpus settings: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    from tokalign.cli import open_store
    from tokalign_core.data.corpus import build_corpus

    cfg = corpus_config_from_args(args)
    ref = build_corpus(cfg, open_store(args.artifact_root), progress=not args.no_progress)
    print(ref.path)
    return 0
