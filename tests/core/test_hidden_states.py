"""Hidden-state token representations: shapes, determinism, equality with a manual
forward pass, batch/padding invariance, missing tokens, artifact round trip, CLI."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from tokalign_core.configs.hidden_states import HiddenStatesConfig
from tokalign_core.embed.artifact import Embeddings
from tokalign_core.embed.hidden_states import (
    MISSING_REASONS,
    TokenVectors,
    extract_hidden_states,
    last_hidden_states,
    special_prefix,
    target_sequences,
    write_embeddings,
)
from tokalign_core.model import toy
from tokalign_core.store.artifacts import ArtifactStore, verify

PAD_ROWS = 16  # Pythia-style: embedding rows beyond the tokenizer's length


@pytest.fixture(scope="module")
def neox(bpe_tok):
    return toy.tiny_gpt_neox(len(bpe_tok) + PAD_ROWS, hidden=32, layers=2, heads=4)


@pytest.fixture(scope="module")
def extracted(neox, bpe_tok, sp_tok):
    return extract_hidden_states(neox, bpe_tok, sp_tok, HiddenStatesConfig(batch_size=64),
                                 progress=False)


def _manual_last(model, ids):
    """hidden_states[-1] at the last position of one unpadded sequence (the full model)."""
    import torch

    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return out.hidden_states[-1][0, -1].numpy()


def test_shapes_and_missing(extracted, bpe_tok, sp_tok):
    source, target = extracted
    n_src = len(bpe_tok)
    assert source.vectors.shape == (n_src, 32) and source.vectors.dtype == np.float32
    assert np.array_equal(source.token_ids, np.arange(n_src))  # padding rows never fed
    assert np.array_equal(source.missing_ids, np.arange(n_src, n_src + PAD_ROWS))
    assert source.missing_counts()["unused"] == PAD_ROWS
    # byte-level source spells every byte: only the 3 specials of the target are missing
    assert sorted(target.missing_ids.tolist()) == [0, 1, 2]
    assert target.missing_counts() == {"special": 3, "unused": 0, "empty": 0,
                                       "undecodable": 0, "unspellable": 0}
    assert np.array_equal(target.token_ids, np.arange(3, len(sp_tok)))
    assert target.vectors.shape == (len(sp_tok) - 3, 32)
    assert np.isfinite(source.vectors).all() and np.isfinite(target.vectors).all()


def test_deterministic(neox, bpe_tok, sp_tok, extracted):
    again = extract_hidden_states(neox, bpe_tok, sp_tok, HiddenStatesConfig(batch_size=64),
                                 progress=False)
    assert np.array_equal(again[0].vectors, extracted[0].vectors)
    assert np.array_equal(again[1].vectors, extracted[1].vectors)


def test_equals_manual_forward(neox, bpe_tok, sp_tok, extracted):
    source, target = extracted
    for tid in (0, 5, bpe_tok.convert_tokens_to_ids("Ġthe"), len(bpe_tok) - 1):
        row = int(np.flatnonzero(source.token_ids == tid)[0])
        np.testing.assert_allclose(source.vectors[row], _manual_last(neox, [tid]), atol=1e-5)
    # target "▁the" is the source encoding of " the"; "<0x41>" is "A"
    longest = max((p for p in sp_tok.get_vocab() if p.startswith("▁")), key=len)
    for piece, text in (("▁the", " the"), ("<0x41>", "A"), (longest, longest.replace("▁", " "))):
        t_id = sp_tok.convert_tokens_to_ids(piece)
        row = int(np.flatnonzero(target.token_ids == t_id)[0])
        ids = bpe_tok(text, add_special_tokens=False)["input_ids"]
        np.testing.assert_allclose(target.vectors[row], _manual_last(neox, ids), atol=1e-5)


def test_undecodable_bytes_spelled_by_byte_model(neox, bpe_tok, sp_tok, extracted):
    # <0x80> is not UTF-8 text; the byte-level source spells it as its own byte token
    _, target = extracted
    t_id = sp_tok.convert_tokens_to_ids("<0x80>")
    row = int(np.flatnonzero(target.token_ids == t_id)[0])
    s_id = bpe_tok.convert_tokens_to_ids("Ģ")  # GPT-2 alphabet: byte 0x80 is chr(256+34)
    np.testing.assert_allclose(target.vectors[row], _manual_last(neox, [s_id]), atol=1e-5)


@pytest.mark.parametrize("family", ["neox", "llama"])
def test_batch_size_and_padding_invariance(family):
    model = (toy.tiny_gpt_neox if family == "neox" else toy.tiny_llama)(97, hidden=32)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 97, size=rng.integers(1, 12)).tolist() for _ in range(23)]
    one = last_hidden_states(model, seqs, batch_size=1, progress=False)
    seven = last_hidden_states(model, seqs, batch_size=7, progress=False)
    assert one.shape == (23, 32)
    np.testing.assert_allclose(one, seven, atol=1e-5)
    np.testing.assert_allclose(one[3], _manual_last(model, seqs[3]), atol=1e-5)


def test_sentencepiece_source_with_bos(sp_tok, bpe_tok):
    """A LLaMA-style source that adds BOS: every sequence starts with it; target bytes
    that are not UTF-8 are spelled with <0xNN> byte-fallback tokens."""
    from tokenizers import processors

    src = copy.deepcopy(sp_tok)
    src.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)])
    assert special_prefix(src) == [1]
    assert special_prefix(src, add_bos=False) == []
    assert special_prefix(bpe_tok) == []
    with pytest.raises(ValueError, match="no bos"):
        special_prefix(_without_bos(bpe_tok), add_bos=True)
    model = toy.tiny_llama(len(src), hidden=32)
    source, target = extract_hidden_states(model, src, bpe_tok, HiddenStatesConfig(batch_size=50),
                                             progress=False)
    assert source.meta["prefix_ids"] == [1]
    row = int(np.flatnonzero(source.token_ids == 100)[0])
    np.testing.assert_allclose(source.vectors[row], _manual_last(model, [1, 100]), atol=1e-5)
    t_id = bpe_tok.convert_tokens_to_ids("Ģ")  # the single byte 0x80
    row = int(np.flatnonzero(target.token_ids == t_id)[0])
    byte80 = src.convert_tokens_to_ids("<0x80>")
    np.testing.assert_allclose(target.vectors[row], _manual_last(model, [1, byte80]),
                               atol=1e-5)
    # the dummy-prefix source: " the" is encoded as "the" -> "▁the", not "▁▁the"
    t_the = bpe_tok.convert_tokens_to_ids("Ġthe")
    row = int(np.flatnonzero(target.token_ids == t_the)[0])
    the = src.convert_tokens_to_ids("▁the")
    np.testing.assert_allclose(target.vectors[row], _manual_last(model, [1, the]), atol=1e-5)
    assert target.missing_counts()["special"] == 1  # <|endoftext|>


def _without_bos(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=copy.deepcopy(tok.backend_tokenizer))


def test_model_smaller_than_tokenizer_is_an_error(bpe_tok, sp_tok):
    model = toy.tiny_gpt_neox(len(bpe_tok) - 10, hidden=16)
    with pytest.raises(ValueError, match="embedding rows"):
        extract_hidden_states(model, bpe_tok, sp_tok, progress=False)


def test_ordered_by_counts():
    tv = TokenVectors(np.arange(8, dtype=np.float32).reshape(4, 2),
                      np.array([3, 1, 7, 2]), np.zeros(0, np.int64), np.zeros(0, np.uint8))
    counts = np.array([0, 5, 9, 5, 0, 0])  # id 7 beyond counts: frequency 0
    by_freq = tv.ordered(counts)
    assert by_freq.token_ids.tolist() == [2, 1, 3, 7]  # 9, then 5/5 by id, then 0
    assert by_freq.vectors[:, 0].tolist() == [6.0, 2.0, 0.0, 4.0]  # rows move with ids
    assert by_freq.meta["row_order"] == "frequency"
    assert tv.ordered(None).token_ids.tolist() == [1, 2, 3, 7]


def test_embeddings_artifact_round_trip(extracted, tmp_path):
    _, target = extracted
    store = ArtifactStore(tmp_path / "art")
    ref = write_embeddings(store, target, {"model": "tiny"})
    verify(ref)
    assert ref.kind == "embeddings"
    meta = ref.meta()
    assert meta["n"] == len(target.token_ids) and meta["dim"] == 32
    assert meta["missing"]["special"] == 3 and meta["missing_reasons"] == list(MISSING_REASONS)
    back = Embeddings.load(ref.path)
    assert back.vectors.dtype == np.float32 and back.token_ids.dtype == np.int64
    assert np.array_equal(back.vectors, target.vectors)
    assert np.array_equal(back.missing_ids, target.missing_ids)


def test_cli_hidden_states(tmp_path, bpe_tok, sp_tok, capsys):
    from tokalign.cli import main

    model = toy.tiny_gpt_neox(len(bpe_tok), hidden=16)
    model.save_pretrained(tmp_path / "model")
    bpe_tok.save_pretrained(tmp_path / "src")
    sp_tok.save_pretrained(tmp_path / "tgt")
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    counts = np.zeros(len(sp_tok), np.int64)
    counts[sp_tok.convert_tokens_to_ids("▁the")] = 100
    np.save(tokens / "counts.npy", counts)
    code = main(["hidden-states", str(tmp_path / "model"), str(tmp_path / "src"),
                 str(tmp_path / "tgt"), "--out", str(tmp_path / "art"), "--batch-size", "40",
                 "--target-counts", str(tokens), "--no-progress", "--max-length", "7",
                 "--add-bos", "yes", "--device", "cpu"])
    assert code == 0
    refs = json.loads(capsys.readouterr().out)
    src = Embeddings.load(refs["source"]["path"])
    tgt = Embeddings.load(refs["target"]["path"])
    # the HiddenStatesConfig the flags built is the one the extraction ran with
    assert tgt.meta["max_length"] == 7 and tgt.meta["prefix_ids"] == [bpe_tok.bos_token_id]
    assert src.vectors.shape == (len(bpe_tok), 16)
    assert tgt.token_ids[0] == sp_tok.convert_tokens_to_ids("▁the")  # most frequent first
    assert tgt.meta["row_order"] == "frequency" and src.meta["row_order"] == "id"
    bad = main(["hidden-states", str(tmp_path / "model"), str(tmp_path / "src"),
                str(tmp_path / "tgt"), "--out", str(tmp_path / "art"),
                "--source-counts", str(tmp_path / "nope")])
    assert bad == 2


def test_bytes_the_source_cannot_spell_are_missing_rows_not_a_crash():
    """Qwen2 keeps byte tokens such as 0xC0 that SmolLM2's BPE has no token for: the source
    tokenizer encodes them to nothing. Such a target token has no hidden state to read; it is
    a missing row ("unspellable"), and every other sequence is non-empty. (The real run on
    SmolLM2-135M -> Qwen2 stopped with "every sequence needs at least one token".)"""
    from tokalign_core.vocab.tokenizers import load_tokenizer
    from tokalign_core.vocab.vocab import build_vocab

    src, tgt = load_tokenizer("builtin:smollm2-135m"), load_tokenizer("builtin:qwen2")
    s_vocab, t_vocab = build_vocab(src), build_vocab(tgt)
    ids, seqs, missing, reasons = target_sequences(src, s_vocab, t_vocab, [])
    assert len(ids) == len(seqs) and all(seqs)
    unspellable = set(missing[reasons == MISSING_REASONS.index("unspellable")].tolist())
    c0 = t_vocab.token_bytes.index(b"\xc0")
    assert c0 in unspellable and c0 not in set(ids.tolist())
    assert not src(["\x04"], add_special_tokens=False)["input_ids"][0] or \
        t_vocab.token_bytes.index(b"\x04") not in unspellable
    assert np.all(np.diff(missing) > 0)  # ids in order, each once
    assert len(ids) + len(missing) == t_vocab.size
