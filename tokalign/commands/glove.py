"""``tokalign glove COOCCUR_ARTIFACT``: train GloVe vectors into an embeddings artifact."""

from __future__ import annotations

import argparse
from pathlib import Path

from tokalign.flags import add_common_flags, add_config_flags, config_from_args, show_progress


def register(subparsers: argparse._SubParsersAction) -> None:
    from tokalign_core.configs.glove import GloveConfig

    p = subparsers.add_parser(
        "glove",
        help="train GloVe token vectors on a cooccur artifact",
        description=(
            "Train GloVe (weighted least squares on log co-occurrences, AdaGrad, vectors = "
            "word + context), seeded: on CPU the Stanford C tool's per-nonzero AdaGrad "
            "compiled with numba (Hogwild threads), on CUDA torch mini-batches. "
            "Writes an embeddings artifact (vectors.npy, token_ids.npy, meta.json with the "
            "cost per iteration) and prints its path."
        ),
    )
    p.add_argument("cooccur", help="cooccur artifact folder (cooc.npz, token_ids.npy)")
    add_config_flags(p, GloveConfig, label="glove")
    p.add_argument("--metrics",
                   help="also append per-iteration cost to this JSONL file (default: none)")
    add_common_flags(p, config="GloveConfig", artifact_root=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokalign.cli import UserError, open_store
    from tokalign_core.embed.glove import build_glove
    from tokalign_core.runtime.tracking import default_logger

    config = config_from_args(args)
    if not Path(args.cooccur).is_dir():
        raise UserError(f"cooccur artifact {args.cooccur} does not exist; run `tokalign cooccur`")
    logger = default_logger(args.metrics, prefix="")
    try:
        ref = build_glove(args.cooccur, config, open_store(args.artifact_root),
                          logger=logger, progress=show_progress(args))
    finally:
        logger.close()
    print(ref.path)
    return 0
