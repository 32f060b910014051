"""``tokalign corpus``: build a corpus artifact (mixed, filtered, sharded text) from sources."""

from __future__ import annotations

import argparse
from typing import Any

from tokalign.flags import (
    Opt,
    add_common_flags,
    add_config_flags,
    config_from_args,
    given,
    show_progress,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    from tokalign_core.configs.corpus import CorpusConfig, SourceSpec

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
    )
    p.add_argument("--source", action="append", metavar="PATH", default=None,
                   help="a file, folder, glob or hf:<dataset>; repeat for several sources "
                        "(replaces the config file's sources)")
    p.add_argument("--ratio", action="append", type=float, metavar="R", default=None,
                   help="mixing ratio of each --source, in order (needs a budget; "
                        "default 1.0 each)")
    add_config_flags(p, SourceSpec, label="source", key="source", skip=("path", "ratio"),
                     title="every --source (SourceSpec fields)")
    add_config_flags(p, CorpusConfig, label="corpus", skip=("sources",), opts={
        "n_shards": Opt(names=("--shards", "--n-shards")),
        "token_budget": Opt(clears=("byte_budget",)),
        "byte_budget": Opt(clears=("token_budget",))})
    add_common_flags(p, config="CorpusConfig", artifact_root=True)
    p.set_defaults(func=run, build_config=corpus_config_from_args)


def sources_from_args(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    """The ``--source`` paths with their ``--ratio`` and the per-source flags, or None."""
    from tokalign.cli import UserError

    if not args.source:
        if args.ratio:
            raise UserError("--ratio needs --source (one ratio per source)")
        return None
    ratios = args.ratio or [1.0] * len(args.source)
    if len(ratios) != len(args.source):
        raise UserError(f"{len(args.ratio)} --ratio values for {len(args.source)} --source "
                        "paths; give one ratio per source, in order")
    shared = given(args, "source")
    return [{"path": s, "ratio": r, **shared} for s, r in zip(args.source, ratios, strict=True)]


def corpus_config_from_args(args: argparse.Namespace):
    """``--config`` (if any) with the flags given laid over it."""
    from tokalign.cli import UserError

    sources = sources_from_args(args)

    def with_sources(data: dict[str, Any]) -> None:
        if sources is not None:
            data["sources"] = sources
        if not data.get("sources"):
            raise UserError("no sources: give --source PATH (repeatable) or --config FILE")

    return config_from_args(args, fix=with_sources)


def run(args: argparse.Namespace) -> int:
    from tokalign.cli import open_store
    from tokalign_core.data.corpus import build_corpus

    cfg = corpus_config_from_args(args)
    ref = build_corpus(cfg, open_store(args.artifact_root), progress=show_progress(args))
    print(ref.path)
    return 0
