"""``tokalign init``: initialise a source model for a target tokenizer (TokAlign / baselines)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tokalign.flags import add_common_flags, add_config_flags, config_from_args
from tokalign_core.configs.init import InitConfig


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "init",
        help="initialise a model's embeddings for a new tokenizer (aligned copy or baseline)",
        description=(
            "Copy, for every target token, the aligned source token's input-embedding and "
            "LM-head rows (method 'aligned', from `tokalign align`), or initialise them with "
            "a baseline (random, random-permutation, mean, multivariate, fvt). Resizes the "
            "model to the target tokenizer, sets bos/eos/pad ids, and saves model (safetensors)"
            " + tokenizer + README.md model card to --out."
        ),
    )
    p.add_argument("--model", required=True, help="source causal LM: "
        "hub id, folder, .gguf or builtin:smollm2-135m")
    p.add_argument("--target-tokenizer", required=True,
                   help="target tokenizer spec: hub id, folder, tokenizer.json or builtin:qwen2")
    p.add_argument("--source-tokenizer", default=None,
                   help="source tokenizer spec (default: the --model folder / id)")
    p.add_argument("--alignment", default=None,
                   help="alignment folder (alignment.npz) from `tokalign align`; required for "
                   "--method aligned, optional for baselines (its shared tokens are reused)")
    p.add_argument("--target-tokens", default=None, metavar="DIR",
                   help="target-side tokens artifact (`tokalign tokenize` with the target "
                   "tokenizer): its counts and sample documents calibrate the LM head of "
                   "method aligned (first-piece rows + log-frequency bias); without it the "
                   "aligned rows are copied uncalibrated")
    add_config_flags(p, InitConfig, label="init")
    p.add_argument("--out", required=True, help="output folder for the initialised model")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="load the source model in this dtype (default: the checkpoint's)")
    add_common_flags(p, config="InitConfig", progress=False)
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> InitConfig:
    """The InitConfig from --config plus explicit overrides."""
    return config_from_args(args)


def run(args: argparse.Namespace) -> int:
    from tokalign.cli import UserError
    from tokalign_core.align.alignment import Alignment
    from tokalign_core.model.calibrate import CalibrationData
    from tokalign_core.model.card import CardInfo, hash_input
    from tokalign_core.model.init import initialize, load_model, save_initialized
    from tokalign_core.store.inputs import check_out_dir
    from tokalign_core.vocab.tokenizers import load_tokenizer

    cfg = build_config(args)
    out_dir = Path(args.out)
    check_out_dir(out_dir, [args.model, args.target_tokenizer, args.source_tokenizer,
                            args.alignment, args.target_tokens])
    if out_dir.exists() and any(out_dir.iterdir()) and not args.overwrite:
        raise UserError(f"{out_dir} exists and is not empty; pass --overwrite to replace it")
    if cfg.method == "aligned" and not args.alignment:
        raise UserError("--method aligned needs --alignment DIR (run `tokalign align` first)")
    alignment = Alignment.load(args.alignment) if args.alignment else None
    model = load_model(args.model, cfg.trust_remote_code, args.dtype)
    target = load_tokenizer(args.target_tokenizer, cfg.trust_remote_code)
    source = load_tokenizer(args.source_tokenizer or args.model, cfg.trust_remote_code)
    data = None
    if args.target_tokens:
        try:
            data = CalibrationData.for_init(args.target_tokens, cfg)
        except ValueError as exc:
            raise UserError(f"--target-tokens {args.target_tokens}: {exc}") from exc
    elif cfg.method == "aligned" and cfg.calibrate_head is None:
        print("note: LM head not calibrated (pass --target-tokens DIR to calibrate it)",
              file=sys.stderr)
    try:
        result = initialize(model, target, alignment, cfg, source, data)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    hashes = {"source_model": hash_input(args.model), "target_tokenizer": hash_input(target),
              "source_tokenizer": hash_input(source)}
    if args.alignment:
        hashes["alignment"] = hash_input(Path(args.alignment))
    if args.target_tokens:
        hashes["target_token_counts"] = hash_input(Path(args.target_tokens) / "counts.npy")
    card = CardInfo(
        method=cfg.method, source_model=str(args.model),
        target_tokenizer=str(args.target_tokenizer), alignment=str(args.alignment or ""),
        counts=result.report.counts, input_hashes=hashes, config=cfg.model_dump(mode="json"),
        config_digest=cfg.digest(),
        alignment_metrics=(alignment.meta.get("metrics", {}) if alignment else {}),
        init_report={k: v for k, v in vars(result.report).items() if k != "counts"},
    )
    out = save_initialized(result.model, target, args.out, card, overwrite=args.overwrite)
    print(json.dumps({"out": str(out), "counts": result.report.counts,
                      "embedding_rows": result.report.embedding_rows}, indent=2))
    return 0
