"""``tokalign tokenize``: corpus artifact + tokenizer spec -> tokens artifact."""

from __future__ import annotations

import argparse

from tokalign.flags import Opt, add_common_flags, add_config_flags, config_from_args, show_progress


def register(subparsers: argparse._SubParsersAction) -> None:
    from tokalign_core.configs.tokenize import TokenizeConfig

    p = subparsers.add_parser(
        "tokenize",
        help="tokenize every shard of a corpus artifact with one tokenizer",
        description=(
            "Tokenize the training shards and the held-out split of a corpus artifact (built "
            "by `tokalign corpus`) with one tokenizer, in parallel over shards (serially, on "
            "a local Dask cluster with --workers N, or on an existing scheduler with "
            "--dask-address). Writes uint32 ids + int64 document offsets per shard, counts.npy "
            "over the training shards and meta.json; prints the artifact folder."
        ),
    )
    p.add_argument("--corpus", default=None, metavar="DIR",
                   help="the corpus artifact folder printed by `tokalign corpus` (required)")
    add_config_flags(p, TokenizeConfig, label="tokenize", opts={
        "tokenizer": Opt(metavar="SPEC"), "add_eos": Opt(yes_no=True)})
    p.add_argument("--workers", type=int, default=1,
                   help="Dask LocalCluster worker processes; 1 = in this process "
                        "(default: %(default)s)")
    p.add_argument("--dask-address", default=None, metavar="ADDR",
                   help="an existing Dask scheduler (tcp://host:8786); workers must see the "
                        "artifact root and corpus paths")
    add_common_flags(p, config="TokenizeConfig", artifact_root=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokalign.cli import UserError, open_store
    from tokalign_core.data.corpus import ref_from_dir
    from tokalign_core.runtime.executor import make_executor
    from tokalign_core.vocab.tokenize import tokenize_corpus

    if not args.corpus:
        raise UserError("give --corpus DIR (the folder printed by `tokalign corpus`)")
    cfg = config_from_args(args)
    corpus = ref_from_dir(args.corpus, "corpus")
    executor = make_executor(args.workers, args.dask_address, progress=show_progress(args))
    try:
        ref = tokenize_corpus(corpus, cfg, open_store(args.artifact_root), executor)
    finally:
        executor.close()
    print(ref.path)
    return 0
