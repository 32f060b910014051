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
        "seed": Opt(also=("vecmap.seed",)), "batch_size": Opt(also=("vecmap.batch_size",)),
        **{f"vecmap.{name}": Opt(names=(f"--{name.replace('_', '-')}",)) for name in (
            "init", "init_size", "vocab_cutoff", "max_iterations")}})
    p.add_argument("--holdout", type=float, default=0.0,
                   help="hide this fraction of the byte-matched shared pairs from the seed "
                   "dictionary and the overrides; they are saved as heldout_pairs.npz for "
                   "`tokalign eval-align --heldout-pairs` (default: %(default)s)")
    add_common_flags(p, config="AlignConfig")
    p.set_defaults(func=run_align)


def _register_neighbors(subparsers: Any) -> None:
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
    p.add_argument("-k", "--top", type=int, default=5,
                   help="how many source tokens to list (default: %(default)s)")
    p.add_argument("--id", action="store_true", help="TOKEN is a target token id")
    p.add_argument("--source-tokenizer", metavar="SPEC", default=None,
                   help="override the source tokenizer recorded by align (default: recorded)")
    p.add_argument("--target-tokenizer", metavar="SPEC", default=None,
                   help="override the target tokenizer recorded by align (default: recorded)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_common_flags(p, progress=False)
    p.set_defaults(func=run_neighbors)


# ----------------------------------------------------------------------- align


def build_config(args: argparse.Namespace) -> Any:
    """The config file (if any) with the flags the user set laid over it."""
    return config_from_args(args)


def tokenization_fallbacks(missing: np.ndarray, target_vocab: Any,
                           source_tok: Any) -> dict[int, list[int]]:
    """target id -> source ids of the token's text under the source tokenizer, for the
    ``missing`` target ids whose bytes are valid text."""
    texts = {int(t): target_vocab.text(int(t)) for t in missing}
    texts = {t: s for t, s in texts.items() if s}
    if not texts:
        return {}
    enc = source_tok(list(texts.values()), add_special_tokens=False)["input_ids"]
    return {t: list(ids) for t, ids in zip(texts, enc, strict=True) if ids}


def _check_fresh_out(path: Path) -> None:
    from tokalign.cli import UserError

    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"--out {path} already exists and is not empty; choose a new folder")


def run_align(args: argparse.Namespace) -> int:
    from tokalign.cli import UserError
    from tokalign_core.align.build import build_alignment, check_embedding_tokenizers
    from tokalign_core.embed.artifact import Embeddings
    from tokalign_core.store.artifacts import write_manifest
    from tokalign_core.store.atomic import atomic_dir
    from tokalign_core.vocab.tokenizers import load_tokenizer
    from tokalign_core.vocab.vocab import build_vocab, shared_tokens, split_shared

    if not 0.0 <= args.holdout < 1.0:
        raise UserError(f"--holdout must be in [0, 1), got {args.holdout}")
    cfg = build_config(args)
    out = Path(args.out)
    source, target = Embeddings.load(args.source_emb), Embeddings.load(args.target_emb)
    s_tok, t_tok = load_tokenizer(args.source_tokenizer), load_tokenizer(args.target_tokenizer)
    digests = check_embedding_tokenizers(source, target, s_tok, t_tok)
    s_vocab, t_vocab = build_vocab(s_tok), build_vocab(t_tok)
    shared = shared_tokens(s_vocab, t_vocab)
    seed_pairs, heldout = split_shared(shared, args.holdout, cfg.seed)
    t_size, s_size = len(t_tok), len(s_tok)
    have = np.zeros(t_size, bool)
    have[target.token_ids[target.token_ids < t_size]] = True
    have[seed_pairs.target_ids] = True
    fallbacks = tokenization_fallbacks(np.flatnonzero(~have), t_vocab, s_tok)
    result = build_alignment(source, target, seed_pairs, t_size, s_size, cfg, fallbacks,
                             progress=not args.no_progress)
    result.alignment.meta.update({
        "source_tokenizer": args.source_tokenizer, "target_tokenizer": args.target_tokenizer,
        "source_emb": str(Path(args.source_emb).resolve()),
        "target_emb": str(Path(args.target_emb).resolve()),
        "n_shared": len(shared), "n_heldout": len(heldout), "holdout": args.holdout,
        **digests})
    _check_fresh_out(out)
    with atomic_dir(out) as tmp:
        result.save(tmp)
        if len(heldout):
            heldout.save(tmp / "heldout_pairs.npz")
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

    run = Path(args.alignment_run)
    if not (run / "target_vectors.npy").exists():
        raise UserError(f"{run} is not an output folder of `tokalign align` "
                        "(no target_vectors.npy)")
    if args.top < 1:
        raise UserError(f"-k must be >= 1, got {args.top}")
    meta = json.loads((run / "meta.json").read_text())
    t_spec = args.target_tokenizer or meta.get("target_tokenizer")
    s_spec = args.source_tokenizer or meta.get("source_tokenizer")
    t_tok = load_tokenizer(t_spec) if t_spec else None
    s_tok = load_tokenizer(s_spec) if s_spec else None
    tid = _resolve_target(args.token, args.id, t_tok, int(meta["target_size"]))
    info = neighbours_of(run, tid, args.top)

    def name(tok: Any, i: int) -> str:
        return tok.convert_ids_to_tokens(i) if tok is not None else ""

    info["target_token"] = name(t_tok, tid)
    info["chosen_source_token"] = name(s_tok, info["chosen_source_id"])
    for nb in info["neighbours"]:
        nb["source_token"] = name(s_tok, nb["source_id"])
    if args.json:
        print(json.dumps(info, ensure_ascii=False, indent=1))
        return 0
    print(f"target {tid} {info['target_token']!r} -> source {info['chosen_source_id']} "
          f"{info['chosen_source_token']!r} ({info['provenance']}, score {info['score']:.4f})")
    print(f"{'rank':>4}  {'source_id':>9}  {info['retrieval']:>8}  token")
    for rank, nb in enumerate(info["neighbours"], 1):
        print(f"{rank:>4}  {nb['source_id']:>9}  {nb['score']:8.4f}  {nb['source_token']!r}")
    return 0
