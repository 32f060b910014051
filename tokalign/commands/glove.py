"""``tokalign glove COOCCUR_ARTIFACT``: train GloVe vectors into an embeddings artifact."""

from __future__ import annotations

import argparse
from pathlib import Path

from tokalign.cli import DEFAULT_ARTIFACT_ROOT as DEFAULT_ROOT


def register(subparsers: argparse._SubParsersAction) -> None:
    from tokalign_core.configs.glove import GloveConfig

    d = GloveConfig()
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
    p.add_argument("--config", help="GloveConfig JSON/YAML file; flags given override it")
    p.add_argument("--dim", type=int, help=f"vector size (default {d.dim})")
    p.add_argument("--iterations", type=int, help=f"passes (default {d.iterations})")
    p.add_argument("--eta", type=float, help=f"AdaGrad learning rate (default {d.eta})")
    p.add_argument("--x-max", type=float, help=f"weighting cutoff x_max (default {d.x_max})")
    p.add_argument("--alpha", type=float, help=f"weighting exponent (default {d.alpha})")
    p.add_argument("--engine", choices=["auto", "numba", "torch"],
                   help="numba: per-nonzero AdaGrad on CPU (the C tool's algorithm); torch: "
                   f"mini-batch AdaGrad on CPU/CUDA; auto: numba on CPU, torch on CUDA "
                   f"(default {d.engine})")
    p.add_argument("--threads", type=int,
                   help="numba threads (default: all cores)")
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                   help="numba: conflict-free schedule on a fixed block grid, bit-reproducible "
                   "for a seed whatever the thread count; --no-deterministic = Hogwild like "
                   "the C tool (faster, not reproducible with >1 thread) "
                   f"(default {d.deterministic})")
    p.add_argument("--memory-budget-mb", type=float,
                   help="nonzeros resident at once, MB; past it they stream from "
                   f"<artifact root>/.spill in random buckets (default {d.memory_budget_mb})")
    p.add_argument("--batch-size", type=int,
                   help=f"torch engine: nonzeros per AdaGrad step (default {d.batch_size})")
    p.add_argument("--vectors", choices=["w+c", "w"], help=f"output (default {d.vectors})")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"],
                   help=f"torch device; auto = CUDA when available (default {d.device})")
    p.add_argument("--seed", type=int, help=f"init and shuffling seed (default {d.seed})")
    p.add_argument("--metrics",
                   help="also append per-iteration cost to this JSONL file (default: none)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.add_argument("--artifact-root", default=DEFAULT_ROOT,
                   help=f"artifact store root for the output (default {DEFAULT_ROOT})")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    """GloveConfig from --config plus the flags that were given."""
    from tokalign.cli import config_from
    from tokalign_core.configs.glove import GloveConfig

    flags = {"dim": args.dim, "iterations": args.iterations, "eta": args.eta,
             "x_max": args.x_max, "alpha": args.alpha, "batch_size": args.batch_size,
             "vectors": args.vectors, "device": args.device, "seed": args.seed,
             "engine": args.engine, "threads": args.threads,
             "deterministic": args.deterministic, "memory_budget_mb": args.memory_budget_mb}
    return config_from(GloveConfig, args.config, flags, "glove")


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
                          logger=logger, progress=not args.no_progress)
    finally:
        logger.close()
    print(ref.path)
    return 0
