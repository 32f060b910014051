"""Build the target -> source alignment (TokAlign / TokAlign++, METHOD.md section 4).

For every target id, the source row whose parameters it will copy:

- ``vecmap`` (TokAlign++): map both embedding spaces into one with VecMap self-learning
  (Artetxe et al. 2018; unsupervised or seeded by the shared tokens), then the CSLS argmax
  (Conneau et al. 2018) over every source token that has a vector.
- ``relative`` (TokAlign, the conference method; relative representations, Moschella et
  al. 2023): each token is represented by its cosines to 300 seeded shared anchor tokens
  (same anchors on both sides), then the cosine argmax.
- ``cosine``: plain cosine after normalisation, no mapping (both sides already live in
  one space, e.g. hidden states of the source model).

Then shared tokens (provenance SHARED) and special tokens matched by role (SPECIAL)
override the retrieval; target ids without a vector get an explicit fallback (FALLBACK):
the rarest source token with a vector among the pieces of the token's text under the
source tokenizer when that tokenization is provided (see :func:`_specific_pick`), else a
seeded random choice among the source rows that have a vector. Candidates are only source
ids with a vector, so an untrained padding row can never be chosen. The reverse source ->
target lexicon comes from the same similarity pass.
Deterministic: the same inputs and seed give a byte-identical ``alignment.npz``.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tokalign_core.align.alignment import Alignment, Provenance
from tokalign_core.align.retrieval import normalize_rows, retrieve_both
from tokalign_core.configs.align import AlignConfig
from tokalign_core.embed.artifact import Embeddings
from tokalign_core.store.artifacts import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

ROLE_REASON = 1  # SharedTokens.ROLE in tokalign_core.vocab.vocab: a special token matched by role


class SharedPairs(Protocol):
    """Shape of ``tokalign_core.vocab.vocab.SharedTokens``: pair i is (target_ids[i],
    source_ids[i]); optional ``reason`` uint8 [n] (1 = special role)."""

    target_ids: np.ndarray
    source_ids: np.ndarray


@dataclass
class AlignOutput:
    """The alignment plus what ``tokalign neighbors`` and the metrics need.

    - ``target_vectors`` float32 [n_t, d], ``source_vectors`` float32 [n_s, d]: the rows
      in the space where retrieval ran (mapped / relative / normalised)
    - ``target_r`` float32 [n_t], ``source_r`` float32 [n_s]: CSLS neighbour means
    - ``target_token_ids``/``source_token_ids`` int64: token id of each row
    """

    alignment: Alignment
    target_vectors: np.ndarray
    source_vectors: np.ndarray
    target_token_ids: np.ndarray
    source_token_ids: np.ndarray
    target_r: np.ndarray
    source_r: np.ndarray
    history: list[dict[str, Any]] = field(default_factory=list)

    def save(self, folder: str | Path) -> Path:
        """Write the alignment files plus the retrieval space (float32 .npy), each file
        atomically. Use a fresh folder (e.g. an ``ArtifactStore.writer``)."""
        folder = Path(folder)
        self.alignment.save(folder)
        arrays = {"target_vectors": self.target_vectors, "source_vectors": self.source_vectors,
                  "target_token_ids": self.target_token_ids,
                  "source_token_ids": self.source_token_ids,
                  "target_r": self.target_r, "source_r": self.source_r}
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
            atomic_write_bytes(folder / f"{name}.npy", buf.getvalue())
        atomic_write_text(folder / "history.json", json.dumps(self.history, indent=1))
        return folder


# ----------------------------------------------------------------- validation


def _check_ids(emb: Embeddings, size: int, side: str) -> None:
    if len(emb.token_ids) and (emb.token_ids.min() < 0 or emb.token_ids.max() >= size):
        raise ValueError(
            f"{side} embeddings hold token id {int(emb.token_ids.max())} but the {side} "
            f"tokenizer has {size} tokens; were they built with another tokenizer?"
        )


def _check_pairs(shared: SharedPairs | None, target_size: int, source_size: int) -> None:
    if shared is None or len(shared.target_ids) == 0:
        return
    if shared.target_ids.max() >= target_size or shared.source_ids.max() >= source_size:
        raise ValueError(
            f"shared tokens reference ids beyond the vocabularies (target < {target_size}, "
            f"source < {source_size}); recompute them for these tokenizers"
        )


def seed_rows(shared: SharedPairs | None, t_rows: np.ndarray,
              s_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shared pairs as (target rows, source rows), keeping pairs with vectors on both
    sides, in input order. int64 [m] each."""
    if shared is None:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    tr = t_rows[np.asarray(shared.target_ids, np.int64)]
    sr = s_rows[np.asarray(shared.source_ids, np.int64)]
    ok = (tr >= 0) & (sr >= 0)
    return tr[ok], sr[ok]


# ----------------------------------------------------------- representations


def relative_representation(vectors: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Cosine of every row [n, d] to the anchor rows ``anchors`` (int64 [A]):
    float32 [n, A] (Moschella et al. 2023; TokAlign's token representation)."""
    v = normalize_rows(vectors)
    return np.ascontiguousarray(v @ v[anchors].T, dtype=np.float32)


def choose_anchors(pairs: tuple[np.ndarray, np.ndarray], n: int,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded sample of ``n`` seed pairs (all when fewer), sorted by target row."""
    tr, sr = pairs
    if len(tr) == 0:
        raise ValueError(
            "method 'relative' needs shared anchor tokens with vectors on both sides, "
            "found none; check the shared tokens or use method 'vecmap'"
        )
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(tr), size=min(n, len(tr)), replace=False))
    return tr[pick], sr[pick]


def represent(source: Embeddings, target: Embeddings, pairs: tuple[np.ndarray, np.ndarray],
              cfg: AlignConfig, callback: Callable[[Any], None] | None = None,
              progress: bool = False) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(target rows, source rows, meta) in one space, by ``cfg.method``."""
    if cfg.method == "vecmap":
        from tokalign_core.align import vecmap

        res = vecmap.fit(target.vectors, source.vectors, cfg.vecmap,
                         seed_pairs=pairs if cfg.vecmap.init == "shared" else None,
                         callback=callback, progress=progress)
        return res.x_mapped, res.z_mapped, {"vecmap": res.meta,
                                            "history": [vars(h) for h in res.history]}
    if cfg.method == "relative":
        ta, sa = choose_anchors(pairs, cfg.n_anchors, cfg.seed)
        meta = {"n_anchors": len(ta), "anchor_target_ids": target.token_ids[ta].tolist()}
        return (relative_representation(target.vectors, ta),
                relative_representation(source.vectors, sa), meta)
    if target.vectors.shape[1] != source.vectors.shape[1]:
        raise ValueError(
            f"method 'cosine' needs both sides in one space, but target vectors have "
            f"{target.vectors.shape[1]} dims and source vectors {source.vectors.shape[1]}; "
            "use method 'vecmap' for independently trained spaces"
        )
    return normalize_rows(target.vectors), normalize_rows(source.vectors), {}


# ---------------------------------------------------------------- fallbacks


def _specific_pick(candidates: Sequence[int], s_rows: np.ndarray) -> int | None:
    """The rarest source id among ``candidates`` that has a vector (highest frequency row),
    as the most specific piece of the target token's text.

    Why the rarest, not the most frequent: frequent pieces are shared by thousands of
    targets (for CJK text under an English byte-level BPE the most frequent piece is a UTF-8
    lead byte such as 0xE5), so picking them turns a few source tokens into hubs. Ids
    without a vector rank after those with one (then by position); None when no candidate
    is a valid id. The model initialiser uses the FVT mean of all pieces for these rows.
    """
    best, best_key = None, None
    for pos, sid in enumerate(candidates):
        sid = int(sid)
        if not 0 <= sid < len(s_rows):
            continue
        row = int(s_rows[sid])
        key = (0, -row, pos) if row >= 0 else (1, 0, pos)
        if best_key is None or key < best_key:
            best, best_key = sid, key
    return best


def fill_fallbacks(source_ids: np.ndarray, missing: np.ndarray, trained: np.ndarray,
                   s_rows: np.ndarray, cfg: AlignConfig,
                   tokenized: Mapping[int, Sequence[int]] | None) -> dict[str, int]:
    """Fill ``source_ids[missing]`` in place; return counts by fallback kind.

    Tokenization fallback first (when ``cfg.fallback == 'tokenization'`` and a mapping
    target id -> source ids of its text is given), then a seeded random trained row."""
    counts = {"tokenization": 0, "random": 0}
    still = []
    for tid in missing.tolist():
        pick = None
        if cfg.fallback == "tokenization" and tokenized is not None and tid in tokenized:
            pick = _specific_pick(tokenized[tid], s_rows)
        if pick is None:
            still.append(tid)
        else:
            source_ids[tid] = pick
            counts["tokenization"] += 1
    if still:
        rng = np.random.default_rng(cfg.seed)
        source_ids[np.asarray(still)] = rng.choice(trained, size=len(still))
        counts["random"] = len(still)
    return counts


# ------------------------------------------------------------------- assembly


def _apply_shared(source_ids, scores, prov, reverse, shared: SharedPairs | None) -> None:
    if shared is None or len(shared.target_ids) == 0:
        return
    tids = np.asarray(shared.target_ids, np.int64)
    sids = np.asarray(shared.source_ids, np.int64)
    reason = np.asarray(getattr(shared, "reason", np.zeros(len(tids))), np.int64)
    source_ids[tids] = sids
    scores[tids] = 1.0
    prov[tids] = np.where(reason == ROLE_REASON, Provenance.SPECIAL, Provenance.SHARED)
    # Reverse: a source id shared with several targets keeps its first pair.
    reverse[sids[::-1]] = tids[::-1]


def check_embedding_tokenizers(source: Embeddings, target: Embeddings, source_tok: Any,
                               target_tok: Any) -> dict[str, str]:
    """Check that each embeddings artifact was built for its side's tokenizer (the
    recorded ``tokenizer_digest``; swapped --source-emb / --target-emb are named as such)
    and return the digests to record in the alignment's meta:
    ``{"source_tokenizer_digest": ..., "target_tokenizer_digest": ...}``."""
    from tokalign_core.store.inputs import TokenizerMismatchError, check_same_tokenizer, digest_of

    digests = {"source": digest_of(source_tok), "target": digest_of(target_tok)}
    recorded = {"source": source.tokenizer_digest(), "target": target.tokenizer_digest()}
    if (recorded["source"] and recorded["target"] and recorded["source"] != digests["source"]
            and recorded == {"source": digests["target"], "target": digests["source"]}):
        raise TokenizerMismatchError(
            "the source and target embeddings are swapped: the source embeddings were built "
            "with the target tokenizer and the other way round; exchange --source-emb and "
            "--target-emb")
    for side, emb, tok in (("source", source, source_tok), ("target", target, target_tok)):
        check_same_tokenizer(
            recorded[side], tok, what=f"the {side} embeddings",
            recorded_name=repr(emb.meta.get("tokenizer", "?")),
            given_name=repr(getattr(tok, "name_or_path", "") or f"the {side} tokenizer"),
            fix=f"give the embeddings built from the {side} tokenizer's tokens, or the "
                f"{side} tokenizer they were built with")
    return {f"{side}_tokenizer_digest": d for side, d in digests.items()}


def build_alignment(source: Embeddings, target: Embeddings, shared: SharedPairs | None,
                    target_size: int, source_size: int, cfg: AlignConfig | None = None,
                    fallback_source_ids: Mapping[int, Sequence[int]] | None = None,
                    callback: Callable[[Any], None] | None = None,
                    progress: bool = False) -> AlignOutput:
    """Align every target id in ``[0, target_size)`` to a source id in
    ``[0, source_size)`` (the tokenizers' sizes; model padding rows beyond them are never
    chosen). ``shared``: pairs from ``tokalign_core.vocab.vocab.shared_tokens`` (override the
    retrieval; role pairs become SPECIAL). ``fallback_source_ids``: target id -> source ids
    of the token's text under the source tokenizer, for targets without a vector.
    ``callback`` receives VecMap's per-iteration stats."""
    cfg = cfg or AlignConfig()
    _check_ids(source, source_size, "source")
    _check_ids(target, target_size, "target")
    _check_pairs(shared, target_size, source_size)
    t_rows, s_rows = target.rows_of(target_size), source.rows_of(source_size)
    pairs = seed_rows(shared, t_rows, s_rows)
    tv, sv, rep_meta = represent(source, target, pairs, cfg, callback, progress)
    method = cfg.retrieval_method()
    fwd, bwd = retrieve_both(tv, sv, method, cfg.csls_k, cfg.candidates, cfg.batch_size,
                             progress=progress)
    source_ids = np.full(target_size, -1, np.int64)
    scores = np.zeros(target_size, np.float32)
    prov = np.full(target_size, Provenance.FALLBACK, np.uint8)
    reverse = np.full(source_size, -1, np.int64)
    source_ids[target.token_ids] = source.token_ids[fwd.indices]
    scores[target.token_ids] = fwd.scores
    prov[target.token_ids] = Provenance.ALIGNED
    reverse[source.token_ids] = target.token_ids[bwd.indices]
    _apply_shared(source_ids, scores, prov, reverse, shared)
    missing = np.flatnonzero(source_ids < 0)
    fb = fill_fallbacks(source_ids, missing, np.sort(source.token_ids), s_rows, cfg,
                        fallback_source_ids)
    meta = {"method": cfg.method, "retrieval": method, "config": cfg.model_dump(mode="json"),
            "config_digest": cfg.digest(), "fallback_seed": cfg.seed, "fallback_counts": fb,
            "n_seed_pairs": int(len(pairs[0])), "target_rows": int(len(target.token_ids)),
            "source_rows": int(len(source.token_ids)),
            "recomputed": {"forward": fwd.n_recomputed, "backward": bwd.n_recomputed},
            **{k: v for k, v in rep_meta.items() if k != "history"}}
    log.info("alignment: %s; fallbacks %s", _count_line(prov), fb)
    ali = Alignment(source_ids, scores, prov, reverse, meta)
    return AlignOutput(ali, tv, sv, target.token_ids, source.token_ids, fwd.r_queries,
                       fwd.r_keys, rep_meta.get("history", []))


def _count_line(prov: np.ndarray) -> str:
    return ", ".join(f"{p.name.lower()} {int((prov == p).sum())}" for p in Provenance)
