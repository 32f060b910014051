"""``tokalign cooccur TOKENS_ARTIFACT``: count co-occurrences into a cooccur artifact."""

from __future__ import annotations

import argparse
from pathlib import Path

from tokalign.flags import Opt, add_common_flags, add_config_flags, config_from_args, show_progress


def register(subparsers: argparse._SubParsersAction) -> None:
    from tokalign_core.configs.cooccur import CooccurConfig

    p = subparsers.add_parser(
        "cooccur",
        help="count windowed token co-occurrences (GloVe input) from a tokens artifact",
        description=(
            "Count symmetric, 1/distance-weighted co-occurrences of a tokens artifact's "
            "training shards (window reset at document boundaries) into a cooccur artifact "
            "(cooc.npz CSR, token_ids.npy, meta.json). Sums are exact: the result does not "
            "depend on sharding or workers. Prints the artifact path."
        ),
    )
    p.add_argument("tokens", help="tokens artifact folder (shard-*/ids.npy, counts.npy)")
    add_config_flags(p, CooccurConfig, label="cooccur",
                     opts={"skip_rare": Opt(negatives=("--keep-rare-positions",))})
    p.add_argument("--workers", type=int, default=1,
                   help="shards counted in parallel; >1 starts a Dask LocalCluster (default 1)")
    p.add_argument("--dask-address",
                   help="use an existing Dask scheduler (tcp://host:8786; default: none)")
    add_common_flags(p, config="CooccurConfig", artifact_root=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokalign.cli import UserError, open_store
    from tokalign_core.embed.cooccur import build_cooccur
    from tokalign_core.runtime.executor import make_executor

    config = config_from_args(args)
    if not Path(args.tokens).is_dir():
        raise UserError(f"tokens artifact {args.tokens} does not exist; run `tokalign tokenize`")
    executor = make_executor(args.workers, args.dask_address, progress=show_progress(args))
    try:
        ref = build_cooccur(args.tokens, config, open_store(args.artifact_root), executor)
    finally:
        executor.close()
    print(ref.path)
    return 0
