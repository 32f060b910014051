"""``tokalign eval-model``: normalised perplexity, bits per byte and compression per group;
``tokalign lm-eval``: downstream tasks through lm-evaluation-harness (optional extra)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tokalign.flags import Opt, add_common_flags, add_config_flags, config_from_args, show_progress


def register(subparsers) -> None:
    _register_eval(subparsers)
    _register_lm_eval(subparsers)


def _register_eval(subparsers) -> None:
    p = subparsers.add_parser(
        "eval-model",
        help="perplexity normalised to a reference tokenizer, bits per byte, compression",
        description=(
            "Score texts grouped by label (a folder of <label>.txt / <label>.jsonl files, or "
            "one file) with a causal LM. Per group: total NLL, ordinary perplexity, perplexity "
            "normalised to the reference tokenizer's token count (comparable across "
            "tokenizers), bits per byte, tokens per byte and the length change vs the "
            "reference tokenizer. Long documents are scored in sliding windows."
        ),
    )
    p.add_argument("model", help="model: "
        "hub id, folder, .gguf or builtin:smollm2-135m (its tokenizer is loaded from it)")
    p.add_argument("--texts", required=True, help="a .txt/.jsonl file or a folder of them")
    p.add_argument("--reference-tokenizer", default=None,
                   help="tokenizer spec whose token counts normalise perplexity (the source "
                   "model's, to compare with it); default: the model's own tokenizer")
    p.add_argument("--tokenizer", default=None,
                   help="the model's tokenizer spec (default: loaded from MODEL)")
    from tokalign_core.configs.evaluate import EvalConfig

    add_config_flags(p, EvalConfig, label="eval-model", opts={
        "max_docs_per_group": Opt(names=("--max-docs", "--max-docs-per-group")),
        "score_groups": Opt(metavar="G1,G2"), "add_bos": Opt(negatives=("--no-bos",))})
    p.add_argument("--output", default=None, help="write the results JSON here")
    add_common_flags(p, config="EvalConfig")
    p.set_defaults(func=run_eval)


def _register_lm_eval(subparsers) -> None:
    from tokalign_core.configs.evaluate import LmEvalConfig

    p = subparsers.add_parser(
        "lm-eval",
        help="downstream tasks with lm-evaluation-harness (pip install 'tokalign[eval]')",
        description=(
            "Run lm-evaluation-harness tasks (e.g. arc_easy,boolq,hellaswag,openbookqa,piqa,"
            "winogrande,xnli,pawsx,xcopa,xstorycloze) on a saved model folder. Task data comes"
            " from the Hugging Face hub unless --include-path points at local task YAMLs."
        ),
    )
    p.add_argument("model", help="model: hub id, folder, .gguf or builtin:smollm2-135m")
    add_config_flags(p, LmEvalConfig, label="lm-eval", opts={
        "tasks": Opt(metavar="T1,T2"), "include_path": Opt(metavar="DIR")})
    p.add_argument("--output", default=None, help="write the results JSON here")
    add_common_flags(p, config="LmEvalConfig", progress=False)
    p.set_defaults(func=run_lm_eval)


def run_eval(args: argparse.Namespace) -> int:
    from tokalign_core.evaluate.perplexity import evaluate_model, format_table, load_texts
    from tokalign_core.model.init import load_model
    from tokalign_core.store.artifacts import atomic_write_text
    from tokalign_core.vocab.tokenizers import load_tokenizer

    cfg = config_from_args(args)
    groups = load_texts(args.texts, cfg.txt_split, cfg.max_docs_per_group)
    model = load_model(args.model, cfg.trust_remote_code)
    tok = load_tokenizer(args.tokenizer or args.model, cfg.trust_remote_code)
    ref = load_tokenizer(args.reference_tokenizer, cfg.trust_remote_code) \
        if args.reference_tokenizer else None
    result = evaluate_model(model, tok, groups, ref, cfg, progress=show_progress(args))
    results = {**result.to_dict(), "model": str(args.model),
               "reference_tokenizer": args.reference_tokenizer or "(model's own)"}
    print(format_table(result))
    if args.output:
        atomic_write_text(Path(args.output), json.dumps(results, indent=2))
    return 0


def run_lm_eval(args: argparse.Namespace) -> int:
    from tokalign.cli import UserError
    from tokalign_core.evaluate.perplexity import run_lm_eval as _run
    from tokalign_core.store.artifacts import atomic_write_text

    cfg = config_from_args(args)
    try:
        results = _run(args.model, cfg)
    except ImportError as exc:
        raise UserError(str(exc)) from exc
    text = json.dumps(results, indent=2, default=str)
    print(text)
    if args.output:
        atomic_write_text(Path(args.output), text)
    return 0
