"""Row plans for the adapted model's embeddings: TokAlign's copy-from-alignment and the
baseline initialisations the papers compare against (METHOD.md section 6).

A :class:`RowPlan` says, for every target id t, where its embedding row comes from:

- ``copy_from[t] = s``: copy source row s (shared tokens, an alignment, a permutation);
- ``fvt_pieces[t] = [s1, s2, ...]``: the mean of those source rows (FVT, Gee et al. 2022,
  "Fast Vocabulary Transfer": the source tokenization of the target token's bytes);
- otherwise the plan's ``fill`` statistic of the source rows:
  ``mean`` (every row = the mean source row mu),
  ``random`` (N(0, sigma^2) entries; sigma = the std of all source entries, or a given std),
  ``multivariate`` (rows ~ N(mu, Sigma), Sigma the d x d covariance of the source rows;
  Hewitt 2021 "Initializing new word embeddings for pretrained language models").

The same plan is applied to the input matrix, the output matrix (untied models) and the
LM-head bias, so a target token's input and output rows come from the same source token.
Only the source's *real* rows (``[0, n_source)``, the tokenizer's length) are ever read:
padding rows of a padded source matrix are untrained and never copied or averaged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from tokalign_core.align.alignment import Alignment, Provenance

log = logging.getLogger(__name__)

Fill = Literal["mean", "random", "multivariate"]


@dataclass
class RowPlan:
    """Where each target row comes from.

    - ``copy_from``: int64 [V_t], a source row in ``[0, n_source)`` or -1
    - ``fvt_pieces``: target id -> int64 [k] source rows to average (k >= 1)
    - ``fill``: statistic for rows with neither
    - ``counts``: how many rows each rule produced (reported in the model card)
    """

    copy_from: np.ndarray
    fvt_pieces: dict[int, np.ndarray] = field(default_factory=dict)
    fill: Fill = "mean"
    random_std: float | None = None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def target_size(self) -> int:
        return len(self.copy_from)

    def fill_rows(self) -> np.ndarray:
        """int64 [k]: target ids filled by the ``fill`` statistic."""
        mask = self.copy_from < 0
        if self.fvt_pieces:
            mask[np.fromiter(self.fvt_pieces.keys(), dtype=np.int64)] = False
        return np.flatnonzero(mask)


# --------------------------------------------------------------------------------------
# Token bytes: compare and re-tokenize tokens by the bytes they decode to (METHOD.md s.3)
# --------------------------------------------------------------------------------------


def token_bytes(tokenizer: Any) -> list[bytes | None]:
    """Canonical bytes of every id ``[0, len(tokenizer))`` (:mod:`tokalign_core.vocab.vocab`):
    byte-level pieces through GPT-2's byte alphabet, ``▁`` -> space, ``<0xNN>`` -> that
    byte; None for special tokens (matched by role, never by text) and unused ids."""
    from tokalign_core.vocab.vocab import build_vocab

    return list(build_vocab(tokenizer).token_bytes[: len(tokenizer)])


def encode_bytes(tokenizer: Any, data: Sequence[bytes]) -> list[list[int] | None]:
    """Source-tokenizer ids of each byte string (no special tokens); None when the
    tokenizer cannot represent it.

    Valid UTF-8 goes through the tokenizer in one batch. Invalid UTF-8 (a byte-level token
    holding half a character) is tokenized on the byte alphabet by the BPE model itself
    (byte-level sources) or as ``<0xNN>`` tokens (byte-fallback sources)."""
    out: list[list[int] | None] = [None] * len(data)
    texts, where = [], []
    scheme = None  # detected once, on the first invalid string: it reads the whole vocab
    for i, b in enumerate(data):
        try:
            texts.append(b.decode("utf-8"))
            where.append(i)
        except UnicodeDecodeError:
            scheme = scheme or _scheme(tokenizer)
            out[i] = _encode_invalid_utf8(tokenizer, b, *scheme)
    if texts:
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        for i, seq in zip(where, ids, strict=True):
            out[i] = list(seq) or None
    return out


def _scheme(tokenizer: Any) -> tuple[Any, bool]:
    """(vocabulary scheme, byte_fallback) of a fast tokenizer (seconds for a large vocab)."""
    from tokalign_core.vocab.vocab import detect_scheme, tokenizer_json

    return detect_scheme(tokenizer_json(tokenizer))


def _encode_invalid_utf8(tokenizer: Any, data: bytes, scheme: Any,
                         byte_fallback: bool) -> list[int] | None:
    from tokalign_core.vocab.vocab import Scheme, bytes_to_bytelevel

    if scheme == Scheme.BYTE_LEVEL:
        pieces = tokenizer.backend_tokenizer.model.tokenize(bytes_to_bytelevel(data))
        return [t.id for t in pieces] or None
    if byte_fallback:
        ids = tokenizer.convert_tokens_to_ids([f"<0x{b:02X}>" for b in data])
        if None in ids or (tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids):
            return None
        return ids
    return None


# --------------------------------------------------------------------------------------
# Shared tokens
# --------------------------------------------------------------------------------------

SPECIAL_ROLES = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")


def special_role_pairs(target_tok: Any, source_tok: Any) -> dict[int, int]:
    """target id -> source id for special tokens matched by role (bos, eos, pad, unk).

    A role the source lacks falls back to its eos (Pythia-style tokenizers use one token
    for bos/eos/unk), so a target ``<pad>`` starts as the source's end-of-text row."""
    out: dict[int, int] = {}
    src_eos = getattr(source_tok, "eos_token_id", None)
    for role in SPECIAL_ROLES:
        t = getattr(target_tok, role, None)
        s = getattr(source_tok, role, None)
        s = s if s is not None else src_eos
        if t is not None and s is not None and t not in out:
            out[int(t)] = int(s)
    return out


def shared_source_ids(
    target_tok: Any | None,
    source_tok: Any | None,
    alignment: Alignment | None = None,
    n_source: int | None = None,
) -> np.ndarray:
    """int64 [V_t]: the source row of every target token both vocabularies share, else -1.

    From the alignment's SHARED/SPECIAL provenance when given, otherwise
    :func:`tokalign_core.vocab.vocab.shared_tokens`: equal canonical bytes, byte-fallback tokens
    by byte value, special tokens by role."""
    if alignment is not None:
        keep = np.isin(alignment.provenance, (Provenance.SHARED, Provenance.SPECIAL))
        return np.where(keep, alignment.source_ids, -1).astype(np.int64)
    if target_tok is None or source_tok is None:
        raise ValueError(
            "reusing shared tokens needs an alignment or both tokenizers; pass "
            "source_tokenizer=... or set InitConfig(reuse_shared=False)"
        )
    from tokalign_core.vocab.vocab import build_vocab, shared_tokens

    pairs = shared_tokens(build_vocab(source_tok), build_vocab(target_tok))
    out = np.full(len(target_tok), -1, dtype=np.int64)
    n_source = len(source_tok) if n_source is None else n_source
    ok = (pairs.target_ids < len(out)) & (pairs.source_ids < n_source)
    out[pairs.target_ids[ok]] = pairs.source_ids[ok]
    return out


# --------------------------------------------------------------------------------------
# FVT
# --------------------------------------------------------------------------------------


def fvt_pieces(
    target_tok: Any, source_tok: Any, target_ids: Sequence[int] | None = None,
    n_source: int | None = None,
) -> tuple[dict[int, np.ndarray], int]:
    """FVT: target id -> int64 [k] source ids of its bytes' source tokenization.

    Special target tokens take the source row of the same role. Returns the pieces and the
    number of requested ids that got none (empty / unrepresentable / out of range): those
    are left to the plan's fill statistic and counted."""
    n_source = len(source_tok) if n_source is None else n_source
    ids = list(range(len(target_tok))) if target_ids is None else [int(t) for t in target_ids]
    roles = special_role_pairs(target_tok, source_tok)
    all_bytes = token_bytes(target_tok)
    plain = [t for t in ids if t not in roles and all_bytes[t] is not None]
    encoded = encode_bytes(source_tok, [all_bytes[t] for t in plain])
    pieces: dict[int, np.ndarray] = {}
    for t, seq in zip(plain, encoded, strict=True):
        if seq and max(seq) < n_source:
            pieces[t] = np.asarray(seq, dtype=np.int64)
    for t in ids:
        if t in roles and roles[t] < n_source:
            pieces[t] = np.asarray([roles[t]], dtype=np.int64)
    return pieces, len(ids) - len(pieces)


# --------------------------------------------------------------------------------------
# Plans
# --------------------------------------------------------------------------------------


def plan_aligned(
    alignment: Alignment, fallback: str = "fvt", target_tok: Any = None, source_tok: Any = None,
    n_source: int | None = None, min_score: float | None = None,
    gate_quantile: float | None = None,
) -> RowPlan:
    """Copy ``alignment.source_ids[t]``, except:

    - tokens both vocabularies share are always copied from their own source row, also
      when the alignment held some of them out of its seed dictionary (``--holdout``) and
      retrieved another row for them (``shared_restored`` counts those);
    - FALLBACK rows (no vector) get the FVT mean of their source tokenization
      (``fallback='fvt'``), the source mean (``'mean'``) or keep the alignment's row
      (``'copy'``);
    - with ``min_score``, ALIGNED rows scored below it get the FVT mean instead
      (``gated_fvt``): where the alignment is unsure, the piece mean is the better guess;
      ``gate_quantile`` q does the same below the q-quantile of the ALIGNED rows' scores
      (the stricter of the two thresholds applies).

    Rows whose bytes the source tokenizer cannot represent keep the alignment's own
    (seeded, recorded) choice; counted as ``fallback_copied`` / ``gated_kept``."""
    copy = alignment.source_ids.copy()
    prov = alignment.provenance.copy()
    counts = {f"alignment_{k}": v for k, v in alignment.counts().items()}
    have_toks = target_tok is not None and source_tok is not None
    if have_toks:
        shared = shared_source_ids(target_tok, source_tok, None, n_source)
        restore = (shared >= 0) & ~np.isin(prov, (Provenance.SHARED, Provenance.SPECIAL))
        copy[restore] = shared[restore]
        prov[restore] = Provenance.SHARED
        counts["shared_restored"] = int(restore.sum())
    elif int(alignment.meta.get("n_heldout", 0) or 0):
        raise ValueError(
            f"the alignment held out {alignment.meta['n_heldout']} shared tokens from its seed "
            "dictionary; pass source_tokenizer=... so init copies them from their own rows"
        )
    fb = np.flatnonzero(prov == Provenance.FALLBACK)
    gated = np.zeros(0, dtype=np.int64)
    aligned = prov == Provenance.ALIGNED
    threshold = -np.inf if min_score is None else min_score
    if gate_quantile and aligned.any():
        threshold = max(threshold, float(np.quantile(alignment.scores[aligned], gate_quantile)))
    gating = threshold > -np.inf
    if gating:
        gated = np.flatnonzero(aligned & (alignment.scores < threshold))
    need_pieces = np.concatenate([fb if fallback == "fvt" else fb[:0], gated])
    if len(need_pieces) and not have_toks:
        raise ValueError(
            f"{len(need_pieces)} alignment rows need the FVT mean (fallback='fvt' or "
            "gating) and that needs both tokenizers: pass source_tokenizer=... or set "
            "fallback='copy', gate_quantile=None and min_score=None"
        )
    pieces: dict[int, np.ndarray] = {}
    if len(need_pieces):
        pieces, _ = fvt_pieces(target_tok, source_tok, need_pieces, n_source)
        for t in pieces:
            copy[t] = -1
    if fallback == "mean":
        copy[fb] = -1
    fb_fvt = int(sum(int(t) in pieces for t in fb))
    counts["fallback_fvt"] = fb_fvt
    counts["fallback_mean"] = int(len(fb)) if fallback == "mean" else 0
    counts["fallback_copied"] = int(len(fb) - fb_fvt - counts["fallback_mean"])
    if gating:
        counts["gate_threshold"] = threshold
        counts["gated_fvt"] = int(sum(int(t) in pieces for t in gated))
        counts["gated_kept"] = int(len(gated) - counts["gated_fvt"])
    counts["copied"] = int((copy >= 0).sum())
    return RowPlan(copy, pieces, "mean", counts=counts)


def plan_fvt(target_tok: Any, source_tok: Any, n_source: int | None = None) -> RowPlan:
    """FVT for every target id; tokens without a source tokenization get the source mean."""
    if source_tok is None:
        raise ValueError("method='fvt' needs the source tokenizer: pass source_tokenizer=...")
    pieces, missing = fvt_pieces(target_tok, source_tok, None, n_source)
    copy = np.full(len(target_tok), -1, dtype=np.int64)
    # One-piece tokens are plain copies: cheaper, and counted as such.
    for t in [t for t, p in pieces.items() if len(p) == 1]:
        copy[t] = pieces.pop(t)[0]
    counts = {"copied": int((copy >= 0).sum()), "fvt_mean": len(pieces), "mean_fill": missing}
    return RowPlan(copy, pieces, "mean", counts=counts)


def plan_statistical(
    method: str, target_size: int, n_source: int, shared: np.ndarray | None, seed: int,
    random_std: float | None = None,
) -> RowPlan:
    """random / random-permutation / mean / multivariate, shared rows reused when given.

    ``random-permutation``: the non-shared target ids take source rows in the order of a
    seeded permutation of ``[0, n_source)`` (repeated with fresh permutations when there are
    more target ids than source rows), so with no shared tokens and V_t <= n_source the rows
    are V_t distinct source rows."""
    copy = np.full(target_size, -1, dtype=np.int64) if shared is None else shared.copy()
    if len(copy) != target_size:
        raise ValueError(f"shared map has {len(copy)} entries for {target_size} target ids")
    n_shared = int((copy >= 0).sum())
    fill: Fill = "mean"
    if method == "random-permutation":
        todo = np.flatnonzero(copy < 0)
        rng = np.random.default_rng(seed)
        reps = -(-len(todo) // n_source) if len(todo) else 0
        order = np.concatenate([rng.permutation(n_source) for _ in range(reps)] or [[]])
        copy[todo] = order[: len(todo)].astype(np.int64)
    elif method in ("random", "mean", "multivariate"):
        fill = method  # type: ignore[assignment]
    else:
        raise ValueError(f"unknown statistical init method {method!r}")
    counts = {"shared_reused": n_shared, "copied": int((copy >= 0).sum()),
              f"{fill if method != 'random-permutation' else 'permuted'}":
              int(target_size - n_shared)}
    return RowPlan(copy, {}, fill, random_std, counts)


# --------------------------------------------------------------------------------------
# Materialising a plan on one matrix
# --------------------------------------------------------------------------------------


def source_statistics(src):
    """(mu [d], sigma scalar, Sigma [d, d]) of source rows ``src`` float [n, d] (torch)."""
    import torch

    mu = src.mean(0)
    centred = src - mu
    cov = centred.T @ centred / max(src.shape[0] - 1, 1)
    return mu, src.std(), cov.to(torch.float64)


def materialize(plan: RowPlan, src, seed: int = 0):
    """Apply ``plan`` to source rows ``src`` (torch float [n_source, d]; a bias is [n, 1]).

    Returns torch float32 [V_t, d]. Random draws use a torch generator seeded with
    ``seed``, so the same plan + seed gives identical rows."""
    import torch

    src = src.detach().to(torch.float32)
    out = torch.empty(plan.target_size, src.shape[1], dtype=torch.float32)
    copy = torch.from_numpy(plan.copy_from)
    rows = copy >= 0
    out[rows] = src[copy[rows]]
    if plan.fvt_pieces:
        targets, means = _piece_means(plan.fvt_pieces, src)
        out[targets] = means
    fill = torch.from_numpy(plan.fill_rows())
    if len(fill):
        out[fill] = _fill_rows(plan, src, len(fill), seed)
    return out


def _piece_means(pieces: dict[int, np.ndarray], src):
    """(target ids int64 [m], mean source row of each one's pieces float32 [m, d]).

    One segment sum over all pieces (index_add_) instead of a Python loop of m small
    means: 125k FVT rows of a 151k vocabulary take seconds that way."""
    import torch

    targets = torch.tensor(list(pieces), dtype=torch.long)
    lengths = torch.tensor([len(v) for v in pieces.values()], dtype=torch.long)
    flat = torch.from_numpy(np.concatenate(list(pieces.values())).astype(np.int64))
    segment = torch.repeat_interleave(torch.arange(len(targets)), lengths)
    sums = torch.zeros(len(targets), src.shape[1], dtype=torch.float32)
    sums.index_add_(0, segment, src[flat])
    return targets, sums / lengths[:, None].to(torch.float32)


def _fill_rows(plan: RowPlan, src, k: int, seed: int):
    import torch

    gen = torch.Generator().manual_seed(seed)
    mu, sigma, cov = source_statistics(src)
    if plan.fill == "mean":
        return mu.expand(k, -1)
    if plan.fill == "random":
        std = float(plan.random_std) if plan.random_std is not None else float(sigma)
        return torch.randn(k, src.shape[1], generator=gen) * std
    # multivariate: mu + z L^T with L L^T = Sigma; jitter only if Sigma is singular
    # (fewer source rows than dimensions), and the jitter is logged.
    chol = _cholesky_with_jitter(cov)
    z = torch.randn(k, src.shape[1], generator=gen, dtype=torch.float64)
    return (mu.to(torch.float64) + z @ chol.T).to(torch.float32)


def _cholesky_with_jitter(cov):
    import torch

    eye = torch.eye(cov.shape[0], dtype=cov.dtype)
    scale = float(cov.diagonal().mean().clamp_min(1e-12))
    for jitter in (0.0, 1e-8, 1e-6, 1e-4, 1e-2):
        chol, info = torch.linalg.cholesky_ex(cov + jitter * scale * eye)
        if int(info) == 0:
            if jitter:
                log.warning("source covariance is singular; added %.0e x mean variance", jitter)
            return chol
    raise ValueError("source embedding covariance is not positive semi-definite (NaN rows?)")
