"""``tokalign eval-align``: score an alignment on held-out documents (BLEU-1, BERTScore,
held-out P@1, hubness, coverage) before any training. See tokalign_core.align.metrics."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tokalign.flags import Opt, add_common_flags, add_config_flags, config_from_args
from tokalign_core.configs.align_eval import EvalAlignConfig


def register(subparsers: Any) -> None:
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
    add_config_flags(p, EvalAlignConfig, label="eval-align", opts={
        "bertscore_num_layers": Opt(names=("--bertscore-layers", "--bertscore-num-layers")),
        "strip_bos_eos": Opt(negatives=("--keep-special",))})
    p.add_argument("--out", metavar="JSON", default="eval-align.json",
                   help="where to write the metrics as JSON (default: %(default)s)")
    add_common_flags(p, config="EvalAlignConfig")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> EvalAlignConfig:
    """The config file (if any) with the flags the user set laid over it."""
    return config_from_args(args)


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
