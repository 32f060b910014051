"""``tokalign cooccur TOKENS_ARTIFACT``: count co-occurrences into a cooccur artifact."""

from __future__ import annotations

import argparse
from pathlib import Path

from tokalign.cli import DEFAULT_ARTIFACT_ROOT as DEFAULT_ROOT


def register(subparsers: argparse._SubParsersAction) -> None:
    from tokalign_core.configs.cooccur import CooccurConfig

    d = CooccurConfig()
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
    p.add_argument("--config", help="CooccurConfig JSON/YAML file; flags given override it")
    p.add_argument("--window", type=int, help=f"context tokens each side (default {d.window})")
    p.add_argument("--min-count", type=int,
                   help=f"keep ids seen at least this often (default {d.min_count})")
    p.add_argument("--max-vocab", type=int, help="keep at most this many ids (default: all)")
    p.add_argument("--keep-rare-positions", action="store_true",
                   help="dropped ids keep their window positions (default: removed first, "
                        "as the GloVe C tool)")
    p.add_argument("--dense-table-mb", type=float,
                   help=f"dense table for frequent pairs, MB (default {d.dense_table_mb})")
    p.add_argument("--buffer-pairs", type=int,
                   help=f"sparse pairs buffered before a flush (default {d.buffer_pairs})")
    p.add_argument("--memory-budget-mb", type=float,
                   help="memory for one shard's counts and for the merge, MB; past it sorted "
                   f"runs spill to <artifact root>/.spill (default {d.memory_budget_mb})")
    p.add_argument("--value-dtype", choices=["float32", "float64"],
                   help=f"dtype of the saved values (default {d.value_dtype})")
    p.add_argument("--workers", type=int, default=1,
                   help="shards counted in parallel; >1 starts a Dask LocalCluster (default 1)")
    p.add_argument("--dask-address",
                   help="use an existing Dask scheduler (tcp://host:8786; default: none)")
    p.add_argument("--no-progress", action="store_true",
                   help="hide the progress bar (shown on stderr by default)")
    p.add_argument("--artifact-root", default=DEFAULT_ROOT,
                   help=f"artifact store root for the output (default {DEFAULT_ROOT})")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    """CooccurConfig from --config plus the flags that were given."""
    from tokalign.cli import config_from
    from tokalign_core.configs.cooccur import CooccurConfig

    flags = {"window": args.window, "min_count": args.min_count, "max_vocab": args.max_vocab,
             "dense_table_mb": args.dense_table_mb, "buffer_pairs": args.buffer_pairs,
             "value_dtype": args.value_dtype, "memory_budget_mb": args.memory_budget_mb}
    if args.keep_rare_positions:
        flags["skip_rare"] = False
    return config_from(CooccurConfig, args.config, flags, "cooccur")


def run(args: argparse.Namespace) -> int:
    from tokalign.cli import UserError, open_store
    from tokalign_core.embed.cooccur import build_cooccur
    from tokalign_core.runtime.executor import make_executor

    config = config_from_args(args)
    if not Path(args.tokens).is_dir():
        raise UserError(f"tokens artifact {args.tokens} does not exist; run `tokalign tokenize`")
    executor = make_executor(args.workers, args.dask_address, progress=not args.no_progress)
    try:
        ref = build_cooccur(args.tokens, config, open_store(args.artifact_root), executor)
    finally:
        executor.close()
    print(ref.path)
    return 0
