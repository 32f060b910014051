"""``tokalign hidden-states``: token representations from a source LLM's last hidden layer
(TokAlign++ "extract from LLM"). See tokalign_core.embed.hidden_states."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from tokalign.flags import add_common_flags, add_config_flags, config_from_args, show_progress


def register(subparsers: Any) -> None:
    from tokalign_core.configs.hidden_states import HiddenStatesConfig

    p = subparsers.add_parser(
        "hidden-states",
        help="token vectors from a source LLM's last hidden layer (two embeddings artifacts)",
        description=(
            "Feed every source token, and every target token's text encoded by the source "
            "tokenizer, to the source causal LM and keep the last layer's hidden state at "
            "the last position. Writes two embeddings artifacts (source, target) under "
            "--artifact-root and prints their references as JSON."
        ),
    )
    p.add_argument("model", metavar="MODEL",
                   help="source causal LM: hub id, folder, .gguf or builtin:smollm2-135m")
    p.add_argument("source_tokenizer", metavar="SOURCE_TOK",
                   help="the model's own tokenizer (hub id, folder, tokenizer.json, "
                   "*.tiktoken, builtin:qwen2)")
    p.add_argument("target_tokenizer", metavar="TARGET_TOK", help="the new tokenizer spec")
    add_config_flags(p, HiddenStatesConfig, label="hidden-states")
    p.add_argument("--source-counts", metavar="TOKENS_DIR", default=None,
                   help="tokens artifact whose counts.npy orders the source rows most "
                   "frequent first (default: by id)")
    p.add_argument("--target-counts", metavar="TOKENS_DIR", default=None,
                   help="same for the target rows (default: by id)")
    add_common_flags(p, config="HiddenStatesConfig", artifact_root=True,
                     artifact_aliases=("--out",))
    p.set_defaults(func=run)


def _counts(folder: str | None) -> np.ndarray | None:
    if folder is None:
        return None
    path = Path(folder) / "counts.npy"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: pass a tokens artifact folder")
    return np.load(path, allow_pickle=False)


def _load_model(spec: str, trust_remote_code: bool) -> Any:
    import torch

    from tokalign.cli import UserError
    from tokalign_core.model.init import check_model_source
    from tokalign_core.model.load import ModelSpecError, load_causal_lm

    check_model_source(spec)
    try:
        return load_causal_lm(spec, dtype=torch.float32, trust_remote_code=trust_remote_code)
    except (OSError, ModelSpecError) as exc:
        raise UserError(f"cannot load causal LM {spec!r}: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    from tokalign.cli import open_store
    from tokalign_core.embed.hidden_states import extract_hidden_states, write_embeddings
    from tokalign_core.store.inputs import digest_of
    from tokalign_core.vocab.tokenizers import load_tokenizer

    cfg = config_from_args(args)
    src_counts, tgt_counts = _counts(args.source_counts), _counts(args.target_counts)
    src_tok, tgt_tok = load_tokenizer(args.source_tokenizer), load_tokenizer(
        args.target_tokenizer)
    model = _load_model(args.model, cfg.trust_remote_code)
    source, target = extract_hidden_states(model, src_tok, tgt_tok, cfg,
                                           progress=show_progress(args))
    store = open_store(args.artifact_root)
    info = {"model": args.model, "source_tokenizer": args.source_tokenizer,
            "target_tokenizer": args.target_tokenizer}
    refs = {
        "source": write_embeddings(store, source.ordered(src_counts),
                                   {**info, "tokenizer": args.source_tokenizer,
                                    "tokenizer_digest": digest_of(src_tok)}),
        "target": write_embeddings(store, target.ordered(tgt_counts),
                                   {**info, "tokenizer": args.target_tokenizer,
                                    "tokenizer_digest": digest_of(tgt_tok)}),
    }
    print(json.dumps({k: r.model_dump() for k, r in refs.items()}, indent=2))
    return 0
