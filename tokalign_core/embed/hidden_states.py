"""Token representations from a source LLM's hidden states (TokAlign++ "extract from LLM").

TokAlign++ (journal extension of TokAlign, ACL 2025), METHOD.md section 2.2: feed each
source token, and each target token's text encoded by the source tokenizer, to the source
model and keep the **last layer's hidden state at the last position** ("last token"
pooling beat max/mean pooling in the paper's ablation). Both sets then live in one space,
so alignment needs no corpus.

Choices made here (the paper leaves them open):

- A source token is fed alone as its id, preceded by the tokenizer's own prefix specials
  (BOS when the tokenizer adds one, e.g. LLaMA/Gemma; nothing for Pythia). A suffix the
  tokenizer appends (EOS) is never fed: the last position must be the token itself.
- A target token's text is its canonical bytes (:mod:`tokalign_core.vocab.vocab`) decoded as
  UTF-8. Bytes that are not valid UTF-8 (a partial multi-byte character, common in
  byte-level vocabularies) are encoded straight through the source BPE model when the
  source is byte-level (every byte sequence is representable), or byte by byte as
  ``<0xNN>`` tokens when the source has SentencePiece byte fallback (what SentencePiece
  does for unknown characters); otherwise they get no vector. Special/unused/empty
  target tokens get no vector. Every id without a vector is
  recorded with its reason.
- A source tokenizer that prepends a word marker itself (SentencePiece's dummy prefix)
  would turn " the" into "▁▁the": one leading space is removed first.
- Batches are sorted by length, right-padded and read at each row's last real position;
  with a causal model the real positions never see the padding, so the vectors do not
  depend on the batch size (tested within 1e-5).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tokalign_core.configs.hidden_states import HiddenStatesConfig
from tokalign_core.store.artifacts import ArtifactRef, ArtifactStore
from tokalign_core.vocab.vocab import Scheme, TokenKind, Vocab, build_vocab, bytes_to_bytelevel

log = logging.getLogger(__name__)

MISSING_REASONS = ("special", "unused", "empty", "undecodable", "unspellable")
# "unspellable": the source tokenizer encodes the token's bytes to nothing (SmolLM2's BPE has
# no token for bytes that never occur in UTF-8, such as 0xC0, which Qwen2 keeps as tokens).


@dataclass
class TokenVectors:
    """One side's representations.

    - ``vectors``: float32 [n, d], row i is the vector of token ``token_ids[i]``
    - ``token_ids``: int64 [n]
    - ``missing_ids``: int64 [m], ids that got no vector; ``missing_reason`` uint8 [m]
      (index into :data:`MISSING_REASONS`)
    """

    vectors: np.ndarray
    token_ids: np.ndarray
    missing_ids: np.ndarray
    missing_reason: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def missing_counts(self) -> dict[str, int]:
        return {r: int((self.missing_reason == i).sum()) for i, r in enumerate(MISSING_REASONS)}

    def ordered(self, counts: np.ndarray | None) -> TokenVectors:
        """Rows sorted most-frequent first (ties by id) when ``counts`` (int64 [V]) is
        given; by id otherwise. Ids beyond ``len(counts)`` count 0."""
        if counts is None:
            order = np.argsort(self.token_ids, kind="stable")
            how = "id"
        else:
            counts = np.asarray(counts, dtype=np.int64)
            freq = np.zeros(len(self.token_ids), dtype=np.int64)
            inside = self.token_ids < len(counts)
            freq[inside] = counts[self.token_ids[inside]]
            order = np.lexsort((self.token_ids, -freq))
            how = "frequency"
        return TokenVectors(self.vectors[order], self.token_ids[order], self.missing_ids,
                            self.missing_reason, {**self.meta, "row_order": how})


# -------------------------------------------------------------------------- sequences


def special_prefix(tokenizer: Any, add_bos: bool | None = None) -> list[int]:
    """Ids the tokenizer puts before any text (``add_bos=None``), [bos] (True) or [] (False)."""
    if add_bos is False:
        return []
    if add_bos is True:
        if tokenizer.bos_token_id is None:
            raise ValueError("add_bos=True but the source tokenizer defines no bos token")
        return [int(tokenizer.bos_token_id)]
    with_sp = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    for start in range(len(with_sp) - len(plain) + 1):
        if with_sp[start:start + len(plain)] == plain:
            return [int(i) for i in with_sp[:start]]
    return []


def prepends_space(tokenizer: Any, vocab: Vocab) -> bool:
    """True when encoding "a" yields a first token that decodes with a leading space."""
    ids = tokenizer("a", add_special_tokens=False)["input_ids"]
    first = vocab.token_bytes[ids[0]] if ids else None
    return bool(first) and first.startswith(b" ")


def source_sequences(vocab: Vocab, prefix: Sequence[int]) -> tuple[np.ndarray, list[list[int]]]:
    """(ids int64 [n], sequences): every real source id, alone after ``prefix``."""
    ids = np.flatnonzero(vocab.usable()).astype(np.int64)
    return ids, [[*prefix, int(i)] for i in ids]


def target_sequences(
    source_tokenizer: Any, source_vocab: Vocab, target_vocab: Vocab, prefix: Sequence[int],
    max_length: int = 64,
) -> tuple[np.ndarray, list[list[int]], np.ndarray, np.ndarray]:
    """Source-token sequences for every target token's text.

    Returns (ids int64 [n], sequences, missing_ids int64 [m], missing_reason uint8 [m]).
    Sequences longer than ``max_length`` keep their last tokens (the last position is
    what is read) and the prefix.
    """
    strip = prepends_space(source_tokenizer, source_vocab)
    raw_encode = _raw_encoder(source_tokenizer, source_vocab)
    ids, texts, raw_ids, raw_bytes = [], [], [], []
    missing, reasons = [], []
    for tid in range(target_vocab.size):
        reason = _missing_reason(target_vocab, tid, raw_encode is not None)
        if reason is not None:
            missing.append(tid)
            reasons.append(MISSING_REASONS.index(reason))
            continue
        text = target_vocab.text(tid)
        if text is None:  # not UTF-8, but the source can spell raw bytes
            raw_ids.append(tid)
            raw_bytes.append(target_vocab.token_bytes[tid])
            continue
        ids.append(tid)
        texts.append(text[1:] if strip and text.startswith(" ") and len(text) > 1 else text)
    encoded = source_tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    encoded += [raw_encode(b) for b in raw_bytes] if raw_encode else []
    limit = max(max_length - len(prefix), 1)
    kept, seqs = [], []
    for tid, e in zip(ids + raw_ids, encoded, strict=True):
        if not e:  # nothing to read a hidden state from: a missing row, not a crash
            missing.append(tid)
            reasons.append(MISSING_REASONS.index("unspellable"))
            continue
        kept.append(tid)
        seqs.append([*prefix, *e[-limit:]])
    order = np.argsort(np.array(missing, dtype=np.int64), kind="stable")
    return (np.array(kept, dtype=np.int64), seqs, np.array(missing, dtype=np.int64)[order],
            np.array(reasons, dtype=np.uint8)[order])


def _raw_encoder(tokenizer: Any, vocab: Vocab) -> Callable[[bytes], list[int]] | None:
    """A function spelling arbitrary bytes with source ids, or None if the source cannot."""
    if vocab.scheme == Scheme.BYTE_LEVEL:
        model = tokenizer.backend_tokenizer.model
        return lambda data: [t.id for t in model.tokenize(bytes_to_bytelevel(data))]
    byte_ids = {vocab.token_bytes[i][0]: int(i)
                for i in np.flatnonzero(vocab.kind == TokenKind.BYTE_FALLBACK)}
    if vocab.byte_fallback and len(byte_ids) == 256:
        return lambda data: [byte_ids[b] for b in data]
    return None


def _missing_reason(vocab: Vocab, tid: int, raw_ok: bool) -> str | None:
    kind = vocab.kind[tid]
    if kind == TokenKind.SPECIAL:
        return "special"
    if kind == TokenKind.UNUSED:
        return "unused"
    if not vocab.token_bytes[tid]:
        return "empty"
    if vocab.text(tid) is None and not raw_ok:
        return "undecodable"
    return None


# ---------------------------------------------------------------------------- forward


def _encoder(model: Any) -> Any:
    """The model without its LM head when it exposes one (no [batch, seq, V] logits);
    its ``hidden_states[-1]`` equals the full model's."""
    base = getattr(model, "base_model", None)
    return base if base is not None else model


def last_hidden_states(
    model: Any, sequences: Sequence[Sequence[int]], batch_size: int = 32,
    device: str | None = None, progress: bool = True, desc: str = "hidden states",
) -> np.ndarray:
    """Last layer's hidden state at each sequence's last position.

    ``sequences``: n lists of token ids (each non-empty). Returns float32 [n, d] in input
    order. Right padding with id 0 under an attention mask; lengths sorted to waste little.
    """
    import torch
    from tqdm.auto import tqdm

    from tokalign_core.runtime.backend import torch_device

    if any(len(s) == 0 for s in sequences):
        raise ValueError("every sequence needs at least one token")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = device or torch_device()
    model = model.to(device).eval()
    encoder = _encoder(model)
    order = np.argsort([len(s) for s in sequences], kind="stable")
    out: np.ndarray | None = None
    starts = range(0, len(order), batch_size)
    with torch.inference_mode():
        for start in tqdm(starts, desc=desc, disable=not progress, unit="batch"):
            rows = order[start:start + batch_size]
            vecs = _batch_last(encoder, [sequences[i] for i in rows], device)
            if out is None:
                out = np.empty((len(sequences), vecs.shape[1]), dtype=np.float32)
            out[rows] = vecs
    if out is None:
        hidden = int(getattr(model.config, "hidden_size", 0))
        return np.empty((0, hidden), dtype=np.float32)
    return out


def _batch_last(encoder: Any, batch: list[Sequence[int]], device: str) -> np.ndarray:
    """float32 [b, d]: hidden_states[-1] at each row's last real position."""
    import torch

    lengths = torch.tensor([len(s) for s in batch])
    width = int(lengths.max())
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, seq in enumerate(batch):
        ids[r, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[r, : len(seq)] = 1
    result = encoder(input_ids=ids.to(device), attention_mask=mask.to(device),
                     output_hidden_states=True)
    last = result.hidden_states[-1]
    picked = last[torch.arange(len(batch), device=last.device), (lengths - 1).to(last.device)]
    return picked.float().cpu().numpy()


# --------------------------------------------------------------------------- pipeline


def extract_hidden_states(
    model: Any, source_tokenizer: Any, target_tokenizer: Any,
    cfg: HiddenStatesConfig = HiddenStatesConfig(), *, progress: bool = True,
) -> tuple[TokenVectors, TokenVectors]:
    """(source, target) representations from ``model`` (any HF causal LM) whose own
    tokenizer is ``source_tokenizer``, run as ``cfg`` says (batch size, device, BOS prefix,
    longest target encoding). Rows ordered by id (see :meth:`TokenVectors.ordered`).
    Source padding rows (ids >= len(source_tokenizer)) get no vector."""
    rows = model.get_input_embeddings().weight.shape[0]
    s_vocab = build_vocab(source_tokenizer, n_rows=rows)  # raises if rows < tokens
    t_vocab = build_vocab(target_tokenizer)
    prefix = special_prefix(source_tokenizer, cfg.add_bos)
    s_ids, s_seqs = source_sequences(s_vocab, prefix)
    t_ids, t_seqs, t_missing, t_reason = target_sequences(
        source_tokenizer, s_vocab, t_vocab, prefix, cfg.max_length)
    kw = {"batch_size": cfg.batch_size, "device": cfg.device, "progress": progress}
    s_vec = last_hidden_states(model, s_seqs, desc="source tokens", **kw)
    t_vec = last_hidden_states(model, t_seqs, desc="target tokens", **kw)
    meta = {"method": "hidden-states", "prefix_ids": prefix, "max_length": cfg.max_length,
            "layer": "last", "pooling": "last-token"}
    s_missing = np.flatnonzero(~s_vocab.usable()).astype(np.int64)
    source = TokenVectors(s_vec, s_ids, s_missing,
                          np.full(len(s_missing), MISSING_REASONS.index("unused"), np.uint8),
                          {**meta, "side": "source"})
    target = TokenVectors(t_vec, t_ids, t_missing, t_reason, {**meta, "side": "target"})
    order = np.argsort(target.token_ids, kind="stable")
    target = TokenVectors(t_vec[order], t_ids[order], t_missing, t_reason, target.meta)
    for tv in (source, target):
        log.info("%s: %d vectors, missing %s", tv.meta["side"], len(tv.token_ids),
                 tv.missing_counts())
    return source, target


def write_embeddings(store: ArtifactStore, vectors: TokenVectors,
                     meta: dict[str, Any] | None = None) -> ArtifactRef:
    """Write an **embeddings** artifact (ARCHITECTURE.md): ``vectors.npy`` float32 [n, d],
    ``token_ids.npy`` int64 [n], plus ``missing_ids.npy`` int64 / ``missing_reason.npy``
    uint8 [m] and ``meta.json``. Atomic (nothing is kept on error)."""
    full_meta = {**vectors.meta, **(meta or {}), "n": int(len(vectors.token_ids)),
                 "dim": int(vectors.vectors.shape[1]) if vectors.vectors.ndim == 2 else 0,
                 "missing": vectors.missing_counts(), "missing_reasons": list(MISSING_REASONS)}
    with store.writer("embeddings", full_meta) as w:
        np.save(w.path("vectors.npy"), vectors.vectors.astype(np.float32), allow_pickle=False)
        np.save(w.path("token_ids.npy"), vectors.token_ids.astype(np.int64), allow_pickle=False)
        np.save(w.path("missing_ids.npy"), vectors.missing_ids.astype(np.int64),
                allow_pickle=False)
        np.save(w.path("missing_reason.npy"), vectors.missing_reason.astype(np.uint8),
                allow_pickle=False)
    assert w.ref is not None
    return w.ref
