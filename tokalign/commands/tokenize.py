"""``tokalign tokenize``: corpus artifact + tokenizer spec -> tokens artifact."""

from __future__ import annotations

import argparse
from typing import Any

from tokalign.cli import DEFAULT_ARTIFACT_ROOT as DEFAULT_ROOT


def register(subparsers: argparse._SubParsersAction) -> None:
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
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--corpus", default=None, metavar="DIR",
                   help="the corpus artifact folder printed by `tokalign corpus` (required)")
    p.add_argument("--tokenizer", default=None, metavar="SPEC",
                   help="hub id, tokenizer folder, tokenizer.json, *.tiktoken rank file or "
                        "builtin:qwen2 (required unless in --config)")
    p.add_argument("--config", metavar="FILE", default=None,
                   help="TokenizeConfig as JSON/YAML; flags given on the command line override it")
    p.add_argument("--add-bos", choices=["auto", "yes", "no"], default=None,
                   help="prepend BOS: auto = as tokenizer(text) does (config default auto)")
    p.add_argument("--add-eos", choices=["yes", "no"], default=None,
                   help="append EOS to every document (config default no)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="documents per encode_batch call (config default 1024)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow a hub tokenizer's custom Python code (default: off)")
    p.add_argument("--workers", type=int, default=1,
                   help="Dask LocalCluster worker processes; 1 = in this process "
                        "(default: %(default)s)")
    p.add_argument("--dask-address", default=None, metavar="ADDR",
                   help="an existing Dask scheduler (tcp://host:8786); workers must see the "
                        "artifact root and corpus paths")
    p.add_argument("--artifact-root", default=DEFAULT_ROOT,
                   help="folder of the content-addressed artifact store (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars (default: shown)")
    p.set_defaults(func=run)


def tokenize_config_from_args(args: argparse.Namespace):
    """Merge ``--config`` (if any) with the flags given; flags win."""
    from tokalign.cli import UserError
    from tokalign_core.configs.tokenize import TokenizeConfig

    data: dict[str, Any] = {}
    if args.config:
        data = TokenizeConfig.load(args.config).model_dump(mode="json")
    if args.tokenizer:
        data["tokenizer"] = args.tokenizer
    if args.add_bos is not None:
        data["add_bos"] = {"auto": None, "yes": True, "no": False}[args.add_bos]
    if args.add_eos is not None:
        data["add_eos"] = args.add_eos == "yes"
    if args.batch_size is not None:
        data["batch_size"] = args.batch_size
    if args.trust_remote_code:
        data["trust_remote_code"] = True
    if not data.get("tokenizer"):
        raise UserError("no tokenizer: give --tokenizer SPEC or a --config with `tokenizer`")
    try:
        return TokenizeConfig.model_validate(data)
    except Exception as exc:
        raise UserError(f"invalid tokenize settings: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    from tokalign.cli import UserError, open_store
    from tokalign_core.data.corpus import ref_from_dir
    from tokalign_core.runtime.executor import make_executor
    from tokalign_core.vocab.tokenize import tokenize_corpus

    if not args.corpus:
        raise UserError("give --corpus DIR (the folder printed by `tokalign corpus`)")
    cfg = tokenize_config_from_args(args)
    corpus = ref_from_dir(args.corpus, "corpus")
    executor = make_executor(args.workers, args.dask_address, progress=not args.no_progress)
    try:
        ref = tokenize_corpus(corpus, cfg, open_store(args.artifact_root), executor)
    finally:
        executor.close()
    print(ref.path)
    return 0
