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
    p.add_argument("--tasks", required=True, help="comma-separated task names")
    p.add_argument("--num-fewshot", type=int, default=None,
                   help="few-shot examples (default: each task's own)")
    p.add_argument("--batch-size", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--limit", type=float, default=None,
                   help="examples per task (int) or fraction (<1); default all")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--include-path", default=None, help="folder of extra local task YAMLs")
    p.add_argument("--output", default=None, help="write the results JSON here")
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom model code")
    add_common_flags(p, progress=False)
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
    results = evaluate_model(model, tok, groups, ref, cfg, progress=show_progress(args))
    results["model"] = str(args.model)
    results["reference_tokenizer"] = args.reference_tokenizer or "(model's own)"
    print(format_table(results))
    if args.output:
        atomic_write_text(Path(args.output), json.dumps(results, indent=2))
    return 0


def parse_tasks(text: str) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c'] (an empty list is an error)."""
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    if not tasks:
        raise ValueError("--tasks is empty; pass e.g. --tasks arc_easy,piqa")
    return tasks


def run_lm_eval(args: argparse.Namespace) -> int:
    from tokalign.cli import UserError
    from tokalign_core.evaluate.perplexity import run_lm_eval as _run
    from tokalign_core.store.artifacts import atomic_write_text

    tasks = parse_tasks(args.tasks)
    if args.limit is not None and args.limit <= 0:
        raise UserError(f"--limit must be positive, got {args.limit}")
    try:
        results = _run(args.model, tasks, args.num_fewshot, args.batch_size,
                       int(args.limit) if args.limit and args.limit >= 1 else args.limit,
                       args.device, args.include_path, args.trust_remote_code)
    except ImportError as exc:
        raise UserError(str(exc)) from exc
    text = json.dumps(results, indent=2, default=str)
    print(text)
    if args.output:
        atomic_write_text(Path(args.output), text)
    return 0
