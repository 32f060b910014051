"""``tokalign align`` (build the target -> source alignment) and ``tokalign neighbors``
(a target token's top-k source tokens with scores: the paper's case-study table).
See tokalign_core.align.build, tokalign_core.align.vecmap and tokalign_core.align.retrieval."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from tokalign.flags import Opt, add_common_flags, add_config_flags, config_from_args

_TOK_HELP = "hub id, local folder, tokenizer.json, *.tiktoken or builtin:qwen2"


def register(subparsers: Any) -> None:
    _register_align(subparsers)
    _register_neighbors(subparsers)


def _register_align(subparsers: Any) -> None:
    from tokalign_core.configs.align import AlignConfig

    p = subparsers.add_parser(
        "align",
        help="align the target vocabulary to the source (VecMap + CSLS, or a baseline)",
        description=(
            "For every target token id choose the source token whose parameters it will "
            "copy. Shared tokens (same bytes) and special tokens (same role) map directly; "
            "the others by retrieval in a common space: VecMap self-learning + CSLS "
            "(TokAlign++), relative representations over shared anchors (TokAlign) or plain "
            "cosine. Tokens without a vector get a counted, seeded fallback. Writes "
            "alignment.npz/.json, meta.json and the retrieval space (for `tokalign "
            "neighbors`) to --out."
        ),
    )
    p.add_argument("--source-emb", required=True, metavar="DIR",
                   help="embeddings artifact of the source tokens (vectors.npy, "
                   "token_ids.npy); required")
    p.add_argument("--target-emb", required=True, metavar="DIR",
                   help="embeddings artifact of the target tokens; required")
    p.add_argument("--source-tokenizer", required=True, metavar="SPEC",
                   help=f"the source model's tokenizer ({_TOK_HELP}); required")
    p.add_argument("--target-tokenizer", required=True, metavar="SPEC",
                   help=f"the new tokenizer ({_TOK_HELP}); required")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder; must not exist or be empty (written atomically)")
    add_config_flags(p, AlignConfig, label="align", nested={"vecmap": "vecmap-"}, opts={
        "seed": Opt(also=("vecmap.seed",)),
        **{f"vecmap.{name}": Opt(names=(f"--{name.replace('_', '-')}",)) for name in (
            "init", "init_size", "vocab_cutoff", "max_iterations")}})
    add_common_flags(p, config="AlignConfig")
    p.set_defaults(func=run_align)


def _register_neighbors(subparsers: Any) -> None:
    from tokalign.options import NeighborsOptions

    p = subparsers.add_parser(
        "neighbors",
        help="a target token's top-k source tokens with CSLS/cosine scores",
        description=(
            "Print the k best source tokens of one target token in the space where "
            "`tokalign align` ran, with their CSLS (or cosine) scores, and the source "
            "token the alignment finally chose (which may come from a shared-token "
            "override)."
        ),
    )
    p.add_argument("token", metavar="TOKEN",
                   help="target token: its vocabulary string (e.g. 'Ġthe' or '▁the'), a "
                   "text that is one target token, or an id with --id")
    p.add_argument("--alignment-run", required=True, metavar="DIR",
                   help="output folder of `tokalign align`; required")
    p.add_argument("--source-tokenizer", metavar="SPEC", default=None,
                   help="override the source tokenizer recorded by align (default: recorded)")
    p.add_argument("--target-tokenizer", metavar="SPEC", default=None,
                   help="override the target tokenizer recorded by align (default: recorded)")
    add_config_flags(p, NeighborsOptions, label="neighbors", opts={
        "top": Opt(names=("-k", "--top")), "by_id": Opt(names=("--id",)),
        "as_json": Opt(names=("--json",))})
    add_common_flags(p, config="NeighborsOptions", progress=False)
    p.set_defaults(func=run_neighbors)


# ----------------------------------------------------------------------- align


def build_config(args: argparse.Namespace) -> Any:
    """The config file (if any) with the flags the user set laid over it."""
    return config_from_args(args)


def _check_fresh_out(path: Path) -> None:
    from tokalign.cli import UserError

    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"--out {path} already exists and is not empty; choose a new folder")


def run_align(args: argparse.Namespace) -> int:
    from tokalign_core.align.prepare import prepare_alignment
    from tokalign_core.store.artifacts import write_manifest
    from tokalign_core.store.atomic import atomic_dir
    from tokalign_core.vocab.tokenizers import load_tokenizer

    cfg = build_config(args)  # --holdout is AlignConfig.holdout: checked there, in [0, 1)
    out = Path(args.out)
    s_tok, t_tok = load_tokenizer(args.source_tokenizer), load_tokenizer(args.target_tokenizer)
    prepared = prepare_alignment(args.source_emb, args.target_emb, s_tok, t_tok, cfg,
                                 source_spec=args.source_tokenizer,
                                 target_spec=args.target_tokenizer,
                                 progress=not args.no_progress)
    result = prepared.output
    _check_fresh_out(out)
    with atomic_dir(out) as tmp:
        prepared.save(tmp)
        write_manifest(tmp)  # readers (init, eval-align, neighbors) verify it
    counts = result.alignment.counts()
    print(json.dumps({"out": str(out.resolve()), "counts": counts,
                      "fallback_counts": result.alignment.meta["fallback_counts"]}))
    return 0


# ------------------------------------------------------------------- neighbors


def _resolve_target(token: str, by_id: bool, tok: Any, n: int) -> int:
    from tokalign.cli import UserError

    if by_id:
        try:
            tid = int(token)
        except ValueError:
            raise UserError(f"--id given but TOKEN {token!r} is not an integer") from None
    elif tok is None:
        raise UserError("no target tokenizer recorded: pass --target-tokenizer or use --id")
    elif token in tok.get_vocab():
        tid = int(tok.convert_tokens_to_ids(token))
    else:
        ids = tok.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            pieces = tok.convert_ids_to_tokens(ids)
            raise UserError(f"{token!r} is not one target token (it encodes to {pieces}); "
                            "pass a vocabulary string or --id")
        tid = int(ids[0])
    if not 0 <= tid < n:
        raise UserError(f"target id {tid} is outside the alignment's range [0, {n})")
    return tid


def neighbours_of(run: Path, tid: int, k: int) -> dict[str, Any]:
    """Top-``k`` source tokens of target ``tid`` from an align output folder."""
    from tokalign.cli import UserError
    from tokalign_core.align.alignment import Alignment, Provenance
    from tokalign_core.align.retrieval import top_neighbours

    ali = Alignment.load(run)
    load = {n: np.load(run / f"{n}.npy", allow_pickle=False) for n in (
        "target_vectors", "source_vectors", "target_token_ids", "source_token_ids",
        "target_r", "source_r")}
    rows = np.flatnonzero(load["target_token_ids"] == tid)
    info = {"target_id": tid, "chosen_source_id": int(ali.source_ids[tid]),
            "provenance": Provenance(int(ali.provenance[tid])).name.lower(),
            "score": float(ali.scores[tid]), "retrieval": ali.meta.get("retrieval", "csls")}
    if not rows.size:
        raise UserError(f"target token {tid} has no vector (provenance "
                        f"{info['provenance']}, source {info['chosen_source_id']})")
    csls = info["retrieval"] == "csls"
    r = int(rows[0])
    idx, scores = top_neighbours(load["target_vectors"][r], load["source_vectors"], k,
                                 float(load["target_r"][r]) if csls else 0.0,
                                 load["source_r"] if csls else None)
    info["neighbours"] = [{"source_id": int(load["source_token_ids"][i]), "score": float(s)}
                          for i, s in zip(idx.tolist(), scores.tolist(), strict=True)]
    return info


def run_neighbors(args: argparse.Namespace) -> int:
    from tokalign.cli import UserError
    from tokalign_core.vocab.tokenizers import load_tokenizer

    opts = config_from_args(args)
    run = Path(args.alignment_run)
    if not (run / "target_vectors.npy").exists():
        raise UserError(f"{run} is not an output folder of `tokalign align` "
                        "(no target_vectors.npy)")
    meta = json.loads((run / "meta.json").read_text())
    t_spec = args.target_tokenizer or meta.get("target_tokenizer")
    s_spec = args.source_tokenizer or meta.get("source_tokenizer")
    t_tok = load_tokenizer(t_spec) if t_spec else None
    s_tok = load_tokenizer(s_spec) if s_spec else None
    tid = _resolve_target(args.token, opts.by_id, t_tok, int(meta["target_size"]))
    info = neighbours_of(run, tid, opts.top)

    def name(tok: Any, i: int) -> str:
        return tok.convert_ids_to_tokens(i) if tok is not None else ""

    info["target_token"] = name(t_tok, tid)
    info["chosen_source_token"] = name(s_tok, info["chosen_source_id"])
    for nb in info["neighbours"]:
        nb["source_token"] = name(s_tok, nb["source_id"])
    if opts.as_json:
        print(json.dumps(info, ensure_ascii=False, indent=1))
        return 0
    print(f"target {tid} {info['target_token']!r} -> source {info['chosen_source_id']} "
          f"{info['chosen_source_token']!r} ({info['provenance']}, score {info['score']:.4f})")
    print(f"{'rank':>4}  {'source_id':>9}  {info['retrieval']:>8}  token")
    for rank, nb in enumerate(info["neighbours"], 1):
        print(f"{rank:>4}  {nb['source_id']:>9}  {nb['score']:8.4f}  {nb['source_token']!r}")
    return 0
