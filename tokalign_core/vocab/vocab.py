"""Vocabulary canonicalization: every token id -> the bytes it decodes to; shared tokens.

TokAlign (ACL 2025) section 3 / METHOD.md section 3: tokens present in both vocabularies
form the seed dictionary and map directly. The reference code compares raw vocabulary
strings, so SentencePiece "▁the" never matches byte-level "Ġthe" (only 6.2% of Gemma
matches Pythia). Here tokens are compared by the **bytes they decode to**:

- byte-level BPE (GPT-2, Pythia, tiktoken vocabularies converted to ``tokenizer.json``):
  every character of a token string is one byte under GPT-2's byte-to-unicode alphabet,
  "Ġthe" -> b" the";
- SentencePiece-style (LLaMA-2, Gemma): "▁" is the space, "▁the" -> b" the", and with
  byte fallback ``<0xNN>`` is the single byte 0xNN;
- anything else ("raw", e.g. WordPiece): the token string's UTF-8 (counted in the meta).

The scheme is detected from the tokenizer's JSON (pre_tokenizer / decoder /
normalizer / model.byte_fallback), never from its name. Special tokens are matched by
**role** (bos, eos, pad, unk), never by spelling.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np

from tokalign_core.store.artifacts import atomic_write_bytes

ROLES = ("bos", "eos", "pad", "unk")
# When one target id holds several roles (Pythia: bos = eos = unk), the first role the
# source also has decides. eos first: a GPT-style <|endoftext|> mostly marks document ends.
ROLE_PRIORITY = ("eos", "bos", "pad", "unk")
SPACE_MARKER = "▁"  # U+2581, SentencePiece's word-boundary marker
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class TokenKind(IntEnum):
    """What a vocabulary id is (``Vocab.kind`` uint8 values)."""

    NORMAL = 0  # a piece of the model's vocabulary (BPE/unigram)
    SPECIAL = 1  # a special token (bos, eos, <|im_start|>, ...): never matched by spelling
    BYTE_FALLBACK = 2  # SentencePiece <0xNN>: exactly one byte
    ADDED = 3  # a non-special added token: literal text split out before the model
    UNUSED = 4  # no token: a hole in the id range or an untrained embedding padding row


class Scheme:
    """Byte-canonicalization schemes (plain strings, JSON friendly)."""

    BYTE_LEVEL = "byte_level"
    METASPACE = "metaspace"
    RAW = "raw"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-character table (256 entries).

    Bytes that are printable Latin-1 characters map to themselves; the other 68 bytes
    (controls, space, 0x7F-0xA0, 0xAD) map in increasing order to chr(256), chr(257), ...
    so that "Ġ" (chr(288)) is the space byte 0x20.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table: dict[int, str] = {b: chr(b) for b in keep}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


_BYTE_TO_UNICODE = bytes_to_unicode()
# str.translate table: alphabet char -> the Latin-1 char of its byte; Latin-1 chars outside
# the alphabet (e.g. a raw space) -> a char Latin-1 cannot encode, so they fail loudly.
_DECODE_TABLE = {ord(ch): chr(b) for b, ch in _BYTE_TO_UNICODE.items()}
_DECODE_TABLE.update({c: "\U00100000" for c in range(256) if c not in _DECODE_TABLE})


def bytelevel_to_bytes(token: str) -> bytes | None:
    """Decode a byte-level token string ("Ġthe") to bytes; None if a char is outside the
    alphabet (then the token is not a byte-level piece)."""
    try:
        return token.translate(_DECODE_TABLE).encode("latin-1")
    except UnicodeEncodeError:
        return None


def bytes_to_bytelevel(data: bytes) -> str:
    """Inverse of :func:`bytelevel_to_bytes`: b" the" -> "Ġthe"."""
    return "".join(_BYTE_TO_UNICODE[b] for b in data)


def metaspace_to_bytes(token: str, byte_fallback: bool) -> tuple[bytes, bool]:
    """SentencePiece piece -> (bytes, is_byte_fallback): "▁the" -> b" the", "<0x41>" -> b"A"."""
    m = _BYTE_FALLBACK.match(token) if byte_fallback else None
    if m:
        return bytes([int(m.group(1), 16)]), True
    return token.replace(SPACE_MARKER, " ").encode("utf-8"), False


# ---------------------------------------------------------------------------- detection


def _state(component: Any) -> dict[str, Any] | None:
    """JSON of one tokenizers component (normalizer, pre-tokenizer, decoder)."""
    return None if component is None else json.loads(component.__getstate__())


def tokenizer_json(tokenizer: Any) -> dict[str, Any]:
    """The parts of a fast tokenizer's ``tokenizer.json`` that canonicalization reads:
    normalizer, pre_tokenizer, decoder, model {type, byte_fallback, vocab {piece: id}},
    added_tokens [{id, content, special}]. Read component by component: serializing the
    whole tokenizer (151k merges for Qwen2) costs seconds and is not needed."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if not hasattr(backend, "get_added_tokens_decoder"):
        raise ValueError(
            f"{type(tokenizer).__name__} is not a fast tokenizer; load it with "
            "tokalign_core.vocab.tokenizers.load_tokenizer (transformers fast tokenizers only)"
        )
    model = backend.model
    added = [{"id": int(i), "content": t.content, "special": bool(t.special)}
             for i, t in sorted(backend.get_added_tokens_decoder().items())]
    return {
        "normalizer": _state(backend.normalizer),
        "pre_tokenizer": _state(backend.pre_tokenizer),
        "decoder": _state(backend.decoder),
        "model": {"type": type(model).__name__,
                  "byte_fallback": bool(getattr(model, "byte_fallback", False)),
                  "vocab": backend.get_vocab(with_added_tokens=False)},
        "added_tokens": added,
    }


def _components(node: Any) -> list[dict[str, Any]]:
    """Flatten a (possibly Sequence-nested) normalizer/pre_tokenizer/decoder node."""
    if not isinstance(node, dict):
        return []
    for key in ("decoders", "pretokenizers", "normalizers"):
        if key in node:
            return [c for child in node[key] for c in _components(child)]
    return [node]


def _replaces_marker(comp: dict[str, Any], pattern: str, content: str) -> bool:
    pat = comp.get("pattern") or {}
    return comp.get("type") == "Replace" and pat.get("String") == pattern and (
        comp.get("content") == content
    )


def detect_scheme(tj: dict[str, Any]) -> tuple[str, bool]:
    """(scheme, byte_fallback) from a tokenizer JSON.

    Byte-level when the decoder or pre-tokenizer is ByteLevel (GPT-2, tiktoken
    conversions); metaspace when the decoder/pre-tokenizer is Metaspace or a Replace
    "▁" <-> " " appears in the decoder/normalizer (LLaMA-2, Gemma); otherwise raw.
    """
    model = tj.get("model") or {}
    decoders = _components(tj.get("decoder"))
    pretoks = _components(tj.get("pre_tokenizer"))
    norms = _components(tj.get("normalizer"))
    byte_fallback = bool(model.get("byte_fallback")) or any(
        d.get("type") == "ByteFallback" for d in decoders
    )
    if any(c.get("type") == "ByteLevel" for c in decoders + pretoks):
        return Scheme.BYTE_LEVEL, byte_fallback
    if any(c.get("type") == "Metaspace" for c in decoders + pretoks) or any(
        _replaces_marker(d, SPACE_MARKER, " ") for d in decoders
    ) or any(_replaces_marker(n, " ", SPACE_MARKER) for n in norms):
        return Scheme.METASPACE, byte_fallback
    return Scheme.RAW, byte_fallback


# ------------------------------------------------------------------------------ Vocab


@dataclass
class Vocab:
    """A tokenizer's vocabulary in canonical form.

    - ``tokens``: list[str | None] [size], the vocabulary strings (None for UNUSED ids)
    - ``token_bytes``: list[bytes | None] [size], the bytes each token decodes to; None for
      special and unused ids (they are not text)
    - ``kind``: uint8 [size], :class:`TokenKind` values
    - ``roles``: {"bos"|"eos"|"pad"|"unk": id}, only the roles the tokenizer defines
    - ``scheme``: "byte_level" | "metaspace" | "raw"; ``byte_fallback``: bool
    - ``n_tokens``: ``len(tokenizer)``; ids in ``[n_tokens, size)`` are padding rows of a
      model's embedding matrix (Pythia: 50,277 tokens, 50,304 rows) and are UNUSED.
    """

    tokens: list[str | None]
    token_bytes: list[bytes | None]
    kind: np.ndarray
    roles: dict[str, int]
    scheme: str
    byte_fallback: bool
    n_tokens: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.kind)

    def usable(self) -> np.ndarray:
        """bool [size]: ids that are real tokens (never an untrained padding row)."""
        return self.kind != TokenKind.UNUSED

    def text_ids(self) -> np.ndarray:
        """int64: ids whose ``token_bytes`` is text (normal, added, byte-fallback)."""
        keep = np.isin(self.kind, [TokenKind.NORMAL, TokenKind.ADDED, TokenKind.BYTE_FALLBACK])
        return np.flatnonzero(keep).astype(np.int64)

    def text(self, token_id: int) -> str | None:
        """The token's bytes as str; None for special/unused ids and for byte sequences
        that are not valid UTF-8 (a partial multi-byte character)."""
        data = self.token_bytes[token_id]
        if data is None:
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return None


def _roles(tokenizer: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for role in ROLES:
        tid = getattr(tokenizer, f"{role}_token_id", None)
        if isinstance(tid, int) and tid >= 0:
            out[role] = tid
    return out


def _canonical(token: str, scheme: str, byte_fallback: bool) -> tuple[bytes, TokenKind, bool]:
    """(bytes, kind, used_raw) of one model-vocabulary piece under a scheme."""
    if byte_fallback and _BYTE_FALLBACK.match(token):
        data, _ = metaspace_to_bytes(token, True)
        return data, TokenKind.BYTE_FALLBACK, False
    if scheme == Scheme.BYTE_LEVEL:
        data = bytelevel_to_bytes(token)
        if data is not None:
            return data, TokenKind.NORMAL, False
    elif scheme == Scheme.METASPACE:
        return metaspace_to_bytes(token, False)[0], TokenKind.NORMAL, False
    # Raw scheme, or a byte-level piece outside the alphabet: its UTF-8 (counted).
    return token.encode("utf-8"), TokenKind.NORMAL, True


def build_vocab(tokenizer: Any, n_rows: int | None = None) -> Vocab:
    """Canonicalize every id of a transformers fast tokenizer.

    ``n_rows``: the model's embedding rows (>= ``len(tokenizer)``); the extra ids become
    UNUSED padding rows. Byte-fallback ``<0xNN>`` tokens are BYTE_FALLBACK even when the
    tokenizer flags them special (the tokenizers library's trainer does).
    """
    tj = tokenizer_json(tokenizer)
    scheme, byte_fallback = detect_scheme(tj)
    n_tokens = len(tokenizer)
    size = max(n_tokens, n_rows or 0)
    tokens: list[str | None] = [None] * size
    data: list[bytes | None] = [None] * size
    kind = np.full(size, TokenKind.UNUSED, dtype=np.uint8)
    n_raw = 0
    for piece, tid in tj["model"]["vocab"].items():
        if tid >= size:
            continue
        tokens[tid] = piece
        data[tid], kind[tid], raw = _canonical(piece, scheme, byte_fallback)
        n_raw += raw
    special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for added in tj.get("added_tokens", []):
        _apply_added(added, special_ids, byte_fallback, tokens, data, kind)
    for tid in special_ids:
        if 0 <= tid < size and kind[tid] != TokenKind.BYTE_FALLBACK:
            kind[tid], data[tid] = TokenKind.SPECIAL, None
    if n_rows is not None and n_rows < n_tokens:
        raise ValueError(
            f"the model has {n_rows} embedding rows but the tokenizer has {n_tokens} tokens; "
            "is this the model's own tokenizer?"
        )
    meta = {"n_raw_fallback": n_raw, "n_rows": size}
    return Vocab(tokens, data, kind, _roles(tokenizer), scheme, byte_fallback, n_tokens, meta)


def _apply_added(added: dict[str, Any], special_ids: set[int], byte_fallback: bool,
                 tokens: list, data: list, kind: np.ndarray) -> None:
    """Added tokens hold literal text (not byte-level encoded)."""
    tid, content = int(added["id"]), added["content"]
    if tid >= len(kind):
        return
    tokens[tid] = content
    if byte_fallback and _BYTE_FALLBACK.match(content):
        data[tid], kind[tid] = metaspace_to_bytes(content, True)[0], TokenKind.BYTE_FALLBACK
    elif added.get("special") or tid in special_ids:
        data[tid], kind[tid] = None, TokenKind.SPECIAL
    elif kind[tid] == TokenKind.UNUSED:  # a new piece, not a re-declared vocab entry
        data[tid], kind[tid] = content.encode("utf-8"), TokenKind.ADDED


# ----------------------------------------------------------------------- shared tokens


@dataclass
class SharedTokens:
    """Pairs of tokens that map directly (the seed dictionary).

    - ``target_ids``, ``source_ids``: int64 [n], pair i is (target_ids[i], source_ids[i]);
      a target id appears at most once, a source id may appear several times
    - ``reason``: uint8 [n], 0 same bytes, 1 special role, 2 byte fallback by byte value
    """

    target_ids: np.ndarray
    source_ids: np.ndarray
    reason: np.ndarray

    BYTES, ROLE, BYTE_VALUE = 0, 1, 2

    def __post_init__(self) -> None:
        self.target_ids = np.asarray(self.target_ids, dtype=np.int64)
        self.source_ids = np.asarray(self.source_ids, dtype=np.int64)
        self.reason = np.asarray(self.reason, dtype=np.uint8)
        if not len(self.target_ids) == len(self.source_ids) == len(self.reason):
            raise ValueError("shared-token arrays must have the same length")

    def __len__(self) -> int:
        return len(self.target_ids)

    def subset(self, index: np.ndarray) -> SharedTokens:
        return SharedTokens(self.target_ids[index], self.source_ids[index], self.reason[index])

    def save(self, path: str | Path) -> Path:
        """Write an ``.npz`` (target_ids, source_ids, reason) atomically."""
        import io

        buf = io.BytesIO()
        np.savez(buf, target_ids=self.target_ids, source_ids=self.source_ids,
                 reason=self.reason)
        return atomic_write_bytes(Path(path), buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> SharedTokens:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"shared-token pairs file {path} does not exist")
        with np.load(path, allow_pickle=False) as z:
            return cls(z["target_ids"], z["source_ids"], z["reason"])


def _text_index(vocab: Vocab) -> dict[bytes, int]:
    """bytes -> preferred id among NORMAL/ADDED tokens (NORMAL first, then lowest id)."""
    index: dict[bytes, int] = {}
    for wanted in (TokenKind.NORMAL, TokenKind.ADDED):
        for tid in np.flatnonzero(vocab.kind == wanted).tolist():
            index.setdefault(vocab.token_bytes[tid], tid)
    return index


def _byte_index(vocab: Vocab) -> dict[int, int]:
    """byte value -> the source id that means exactly that byte (a <0xNN> token first,
    else the single-byte text token)."""
    out: dict[int, int] = {}
    for tid in np.flatnonzero(vocab.kind == TokenKind.BYTE_FALLBACK):
        out.setdefault(vocab.token_bytes[tid][0], int(tid))
    for data, tid in _text_index(vocab).items():
        if len(data) == 1:
            out.setdefault(data[0], tid)
    return out


def _role_pairs(source: Vocab, target: Vocab) -> dict[int, int]:
    pairs: dict[int, int] = {}
    for role in ROLE_PRIORITY:
        if role in target.roles and role in source.roles:
            pairs.setdefault(target.roles[role], source.roles[role])
    return pairs


def shared_tokens(source: Vocab, target: Vocab, match_byte_fallback: bool = True) -> SharedTokens:
    """Target/source pairs with the same bytes and kind, plus special tokens by role.

    Kinds: NORMAL and ADDED (non-special) tokens are both literal text and match each
    other by bytes. Special tokens match **only** by role (bos<->bos, eos<->eos, pad,
    unk; priority eos, bos, pad, unk when an id holds several roles), never by spelling:
    Pythia's ``<|endoftext|>`` pairs with LLaMA's ``</s>`` as eos and with ``<s>`` as bos.
    Byte-fallback ``<0xNN>`` target tokens (``match_byte_fallback``) pair with the source
    token that means exactly that byte (a source ``<0xNN>``, else its single-byte text
    token, e.g. byte-level "A" for ``<0x41>``): both stand for the same byte in context.
    Never pairs with an UNUSED source id.
    """
    by_bytes = _text_index(source)
    by_byte = _byte_index(source) if match_byte_fallback else {}
    roles = _role_pairs(source, target)
    rows: list[tuple[int, int, int]] = []
    text_kinds = (TokenKind.NORMAL, TokenKind.ADDED)
    # plain Python lists: numpy scalar indexing costs seconds over 150k+ ids
    for tid, (k, data) in enumerate(zip(target.kind.tolist(), target.token_bytes,
                                        strict=True)):
        if k in text_kinds:
            sid = by_bytes.get(data)
            if sid is not None:
                rows.append((tid, sid, SharedTokens.BYTES))
        elif k == TokenKind.BYTE_FALLBACK and data[0] in by_byte:
            rows.append((tid, by_byte[data[0]], SharedTokens.BYTE_VALUE))
        elif tid in roles:
            rows.append((tid, roles[tid], SharedTokens.ROLE))
    arr = np.array(rows, dtype=np.int64).reshape(-1, 3)
    return SharedTokens(arr[:, 0], arr[:, 1], arr[:, 2])


def overlap_stats(source: Vocab, target: Vocab, shared: SharedTokens) -> dict[str, Any]:
    """Counts by kind and the share of each vocabulary covered by the shared pairs.

    ``target_shared_by_kind[k]`` counts shared target ids of kind k (they sum to
    ``n_shared``); shares are over each side's usable (non-UNUSED) ids.
    """
    t_kind = target.kind[shared.target_ids] if len(shared) else np.array([], np.uint8)
    n_src_distinct = len(np.unique(shared.source_ids))
    t_usable, s_usable = int(target.usable().sum()), int(source.usable().sum())
    return {
        "n_shared": len(shared),
        "n_shared_source_distinct": n_src_distinct,
        "target_size": target.size,
        "source_size": source.size,
        "target_usable": t_usable,
        "source_usable": s_usable,
        "target_share": len(shared) / max(t_usable, 1),
        "source_share": n_src_distinct / max(s_usable, 1),
        "target_shared_by_kind": {k.name.lower(): int((t_kind == k).sum()) for k in TokenKind},
        "target_by_kind": _kind_counts(target),
        "source_by_kind": _kind_counts(source),
        "shared_by_reason": {
            "bytes": int((shared.reason == SharedTokens.BYTES).sum()),
            "role": int((shared.reason == SharedTokens.ROLE).sum()),
            "byte_value": int((shared.reason == SharedTokens.BYTE_VALUE).sum()),
        },
        "target_scheme": target.scheme,
        "source_scheme": source.scheme,
    }


def _kind_counts(vocab: Vocab) -> dict[str, int]:
    return {k.name.lower(): int((vocab.kind == k).sum()) for k in TokenKind}


def split_shared(shared: SharedTokens, holdout: float = 0.2,
                 seed: int = 0) -> tuple[SharedTokens, SharedTokens]:
    """(seed_pairs, heldout_pairs): hide ``holdout`` of the byte-matched pairs for the
    held-out precision@1. Role pairs always stay in the seed dictionary (they are not
    predictable from text). Deterministic for a seed; both parts keep the input order."""
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    candidates = np.flatnonzero(shared.reason != SharedTokens.ROLE)
    rng = np.random.default_rng(seed)
    n_hide = int(round(holdout * len(candidates)))
    hidden = np.zeros(len(shared), dtype=bool)
    hidden[rng.choice(candidates, size=n_hide, replace=False)] = True
    return shared.subset(~hidden), shared.subset(hidden)
