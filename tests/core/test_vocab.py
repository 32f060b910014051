"""Byte canonicalization, shared tokens by bytes and by role, overlap stats, held-out split."""

from __future__ import annotations

import base64
import copy

import numpy as np
import pytest

from tokalign_core.vocab.vocab import (
    Scheme,
    SharedTokens,
    TokenKind,
    build_vocab,
    bytelevel_to_bytes,
    bytes_to_bytelevel,
    bytes_to_unicode,
    detect_scheme,
    overlap_stats,
    shared_tokens,
    split_shared,
)


@pytest.fixture(scope="module")
def bpe_vocab(bpe_tok):
    return build_vocab(bpe_tok, n_rows=len(bpe_tok) + 24)  # Pythia-style padding rows


@pytest.fixture(scope="module")
def sp_vocab(sp_tok):
    return build_vocab(sp_tok)


def _no_roles(tok):
    """The same backend with no bos/eos/unk/pad roles assigned."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=copy.deepcopy(tok.backend_tokenizer))


def _tiny_tiktoken(tmp_path):
    """A tiktoken rank file (256 bytes + " t", "he", " the") converted like Qwen2/LLaMA3."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = [bytes([i]) for i in range(256)] + [b" t", b"he", b" the"]
    path = tmp_path / "tiny.tiktoken"
    path.write_text("".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(ranks)))
    conv = TikTokenConverter(vocab_file=str(path), extra_special_tokens=["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=conv.converted(), eos_token="<|endoftext|>")


def test_byte_alphabet_is_gpt2s():
    table = bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("A")] == "A"
    # 68 remapped bytes (0-32, 127-160, 173) in order from chr(256): 0 -> "Ā", 173 -> chr(323)
    assert table[0] == "Ā" and table[0x7F] == chr(256 + 33) and table[0xAD] == "Ń"
    assert bytelevel_to_bytes("Ġthe") == b" the"
    assert bytelevel_to_bytes("▁the") is None  # not in the byte alphabet
    data = bytes(range(256))
    assert bytelevel_to_bytes(bytes_to_bytelevel(data)) == data


def test_bytelevel_the(bpe_tok, bpe_vocab):
    tid = bpe_tok.convert_tokens_to_ids("Ġthe")
    assert bpe_vocab.scheme == Scheme.BYTE_LEVEL and not bpe_vocab.byte_fallback
    assert bpe_vocab.token_bytes[tid] == b" the"
    assert bpe_vocab.kind[tid] == TokenKind.NORMAL
    # Pythia-style: one special for bos = eos = unk, bytes None, never text.
    assert bpe_vocab.roles == {"bos": 0, "eos": 0, "unk": 0}
    assert bpe_vocab.kind[0] == TokenKind.SPECIAL and bpe_vocab.token_bytes[0] is None


def test_sentencepiece_the_and_byte_fallback(sp_tok, sp_vocab):
    assert sp_vocab.scheme == Scheme.METASPACE and sp_vocab.byte_fallback
    assert sp_vocab.token_bytes[sp_tok.convert_tokens_to_ids("▁the")] == b" the"
    for byte in (0x00, 0x41, 0x80, 0xFF):
        tid = sp_tok.convert_tokens_to_ids(f"<0x{byte:02X}>")
        # the trainer flags <0xNN> special; they are still exactly one byte
        assert sp_vocab.kind[tid] == TokenKind.BYTE_FALLBACK
        assert sp_vocab.token_bytes[tid] == bytes([byte])
    assert int((sp_vocab.kind == TokenKind.BYTE_FALLBACK).sum()) == 256
    for name in ("<unk>", "<s>", "</s>"):
        assert sp_vocab.kind[sp_tok.convert_tokens_to_ids(name)] == TokenKind.SPECIAL
    assert sp_vocab.roles == {"bos": 1, "eos": 2, "unk": 0}


def test_tiktoken_form_the(tmp_path):
    tok = _tiny_tiktoken(tmp_path)
    vocab = build_vocab(tok)
    (tid,) = tok.encode(" the", add_special_tokens=False)
    assert vocab.scheme == Scheme.BYTE_LEVEL
    assert vocab.tokens[tid] == "Ġthe" and vocab.token_bytes[tid] == b" the"
    assert vocab.token_bytes[0x80] == b"\x80"  # single raw bytes, not UTF-8
    assert vocab.roles == {"eos": 259} and vocab.kind[259] == TokenKind.SPECIAL


@pytest.mark.slow  # loading the converted 151k-rank tokenizer takes 5-10 s
def test_real_qwen2_the():
    tio = pytest.importorskip("tokalign_core.vocab.tokenizers")
    try:
        tok = tio.load_tokenizer("builtin:qwen2")
    except Exception as exc:  # package or resource missing on this machine
        pytest.skip(f"builtin:qwen2 unavailable: {exc}")
    vocab = build_vocab(tok)
    (tid,) = tok.encode(" the", add_special_tokens=False)
    assert vocab.scheme == Scheme.BYTE_LEVEL and vocab.token_bytes[tid] == b" the"
    assert vocab.size == 151_646 and int((vocab.kind == TokenKind.SPECIAL).sum()) == 3


@pytest.mark.parametrize("tj, expected", [
    ({"model": {}, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split"}, {"type": "ByteLevel"}]}}, (Scheme.BYTE_LEVEL, False)),
    ({"model": {"byte_fallback": True}, "decoder": {"type": "Metaspace"}},
     (Scheme.METASPACE, True)),
    # Gemma: normalizer " " -> "▁", decoder Replace + ByteFallback + Fuse, no pre-tokenizer
    ({"model": {"byte_fallback": False},
      "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
      "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}]}},
     (Scheme.METASPACE, True)),
    ({"model": {"type": "WordPiece"}, "decoder": {"type": "WordPiece"}}, (Scheme.RAW, False)),
])
def test_scheme_from_json_not_name(tj, expected):
    assert detect_scheme(tj) == expected


def test_padding_rows_are_unused(bpe_tok, bpe_vocab):
    n = len(bpe_tok)
    assert bpe_vocab.size == n + 24 and bpe_vocab.n_tokens == n
    assert (bpe_vocab.kind[n:] == TokenKind.UNUSED).all()
    assert not bpe_vocab.usable()[n:].any() and bpe_vocab.usable()[:n].all()
    with pytest.raises(ValueError, match="embedding rows"):
        build_vocab(bpe_tok, n_rows=n - 1)


def test_shared_by_bytes_across_schemes(bpe_tok, sp_tok, bpe_vocab, sp_vocab):
    shared = shared_tokens(bpe_vocab, sp_vocab)
    pairs = dict(zip(shared.target_ids.tolist(), shared.source_ids.tolist(), strict=True))
    assert pairs[sp_tok.convert_tokens_to_ids("▁the")] == bpe_tok.convert_tokens_to_ids("Ġthe")
    # every byte-matched pair really has equal bytes; no source padding row is chosen
    for t, s, r in zip(shared.target_ids, shared.source_ids, shared.reason, strict=True):
        assert s < len(bpe_tok)
        if r == SharedTokens.BYTES:
            assert sp_vocab.token_bytes[t] == bpe_vocab.token_bytes[s]
    assert len(np.unique(shared.target_ids)) == len(shared)


def test_byte_fallback_matches_by_byte_value(bpe_tok, sp_tok, bpe_vocab, sp_vocab):
    shared = shared_tokens(bpe_vocab, sp_vocab)
    pairs = dict(zip(shared.target_ids.tolist(), shared.source_ids.tolist(), strict=True))
    assert pairs[sp_tok.convert_tokens_to_ids("<0x41>")] == bpe_tok.convert_tokens_to_ids("A")
    # 0x80 is no UTF-8 text: only the byte-level single-byte token ("Ģ" ... ) means it
    s80 = pairs[sp_tok.convert_tokens_to_ids("<0x80>")]
    assert bpe_vocab.token_bytes[s80] == b"\x80"
    off = shared_tokens(bpe_vocab, sp_vocab, match_byte_fallback=False)
    assert not np.isin(off.target_ids, np.flatnonzero(sp_vocab.kind == TokenKind.BYTE_FALLBACK)
                       ).any()
    assert len(shared) - len(off) == 256


def test_specials_match_by_role(bpe_vocab, sp_vocab):
    # LLaMA-style target, Pythia-style source: every role lands on <|endoftext|>
    shared = shared_tokens(bpe_vocab, sp_vocab)
    role = shared.reason == SharedTokens.ROLE
    got = dict(zip(shared.target_ids[role].tolist(), shared.source_ids[role].tolist(),
                   strict=True))
    assert got == {0: 0, 1: 0, 2: 0}  # <unk>, <s>, </s> -> <|endoftext|>
    # Pythia-style target (bos = eos = unk) against LLaMA source: eos wins
    back = shared_tokens(sp_vocab, bpe_vocab)
    role = back.reason == SharedTokens.ROLE
    assert dict(zip(back.target_ids[role].tolist(), back.source_ids[role].tolist(),
                    strict=True)) == {0: 2}


def test_specials_never_match_by_spelling(bpe_tok, bpe_vocab):
    # identical vocabularies, but the target's <|endoftext|> has no role: not shared
    target = build_vocab(_no_roles(bpe_tok))
    assert target.roles == {} and target.kind[0] == TokenKind.SPECIAL
    shared = shared_tokens(bpe_vocab, target)
    assert 0 not in shared.target_ids.tolist()
    assert len(shared) == len(bpe_tok) - 1  # every other token matches itself
    assert (shared.target_ids == shared.source_ids).all()


def test_added_tokens_are_text(bpe_tok, sp_tok):
    src_tok, tgt_tok = copy.deepcopy(bpe_tok), copy.deepcopy(sp_tok)
    src_tok.add_tokens(["qwertyuiop", " the"])  # " the" duplicates the normal "Ġthe"
    tgt_tok.add_tokens(["qwertyuiop"])
    src, tgt = build_vocab(src_tok), build_vocab(tgt_tok)
    s_added = src_tok.convert_tokens_to_ids("qwertyuiop")
    assert src.kind[s_added] == TokenKind.ADDED and src.token_bytes[s_added] == b"qwertyuiop"
    shared = shared_tokens(src, tgt)
    pairs = dict(zip(shared.target_ids.tolist(), shared.source_ids.tolist(), strict=True))
    assert pairs[tgt_tok.convert_tokens_to_ids("qwertyuiop")] == s_added
    # the normal token wins over an added duplicate of the same bytes
    assert pairs[tgt_tok.convert_tokens_to_ids("▁the")] == bpe_tok.convert_tokens_to_ids("Ġthe")


def test_overlap_stats_add_up(bpe_vocab, sp_vocab):
    shared = shared_tokens(bpe_vocab, sp_vocab)
    st = overlap_stats(bpe_vocab, sp_vocab, shared)
    assert sum(st["target_shared_by_kind"].values()) == st["n_shared"] == len(shared)
    assert sum(st["shared_by_reason"].values()) == len(shared)
    assert sum(st["target_by_kind"].values()) == sp_vocab.size
    assert sum(st["source_by_kind"].values()) == bpe_vocab.size
    assert st["source_by_kind"]["unused"] == 24
    assert st["target_shared_by_kind"]["special"] == st["shared_by_reason"]["role"] == 3
    assert st["target_shared_by_kind"]["byte_fallback"] == 256
    assert st["target_share"] == pytest.approx(len(shared) / sp_vocab.size)
    distinct = len(np.unique(shared.source_ids))
    assert st["source_share"] == pytest.approx(distinct / (bpe_vocab.size - 24))
    assert 0 < st["target_share"] <= 1 and 0 < st["source_share"] <= 1


def test_split_shared(bpe_vocab, sp_vocab, tmp_path):
    shared = shared_tokens(bpe_vocab, sp_vocab)
    seed, held = split_shared(shared, holdout=0.2, seed=3)
    n_text = int((shared.reason != SharedTokens.ROLE).sum())
    assert len(held) == round(0.2 * n_text) and len(seed) + len(held) == len(shared)
    assert not set(seed.target_ids.tolist()) & set(held.target_ids.tolist())
    assert (held.reason != SharedTokens.ROLE).all()  # roles always stay seeds
    again, _ = split_shared(shared, 0.2, seed=3)
    other, _ = split_shared(shared, 0.2, seed=4)
    assert np.array_equal(again.target_ids, seed.target_ids)
    assert not np.array_equal(other.target_ids, seed.target_ids)
    assert len(split_shared(shared, 0.0)[1]) == 0
    with pytest.raises(ValueError, match="holdout"):
        split_shared(shared, 1.0)
    path = held.save(tmp_path / "held.npz")
    back = SharedTokens.load(path)
    assert np.array_equal(back.target_ids, held.target_ids)
    assert np.array_equal(back.source_ids, held.source_ids)
    assert back.target_ids.dtype == np.int64
