"""Baseline initialisations: each gives its documented statistics (issue 4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokalign_core.configs.init import InitConfig
from tokalign_core.model import toy
from tokalign_core.model.baselines import (
    RowPlan,
    fvt_pieces,
    materialize,
    plan_statistical,
    shared_source_ids,
    token_bytes,
)
from tokalign_core.model.init import initialize, initialize_model

# ----------------------------------------------------------------------------------------
# Hand-built tokenizers: every expected id below is derived from these vocabularies.
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hand_source():
    """Byte-level BPE: id 0 <|endoftext|>, ids 1..256 the 256 bytes in byte order,
    257 'Ġt', 258 'he', 259 'Ġa'. So ' the' -> ['Ġt', 'he'] = [257, 258]."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tokalign_core.vocab.vocab import bytes_to_unicode

    table = bytes_to_unicode()
    vocab = {"<|endoftext|>": 0}
    for b in range(256):
        vocab[table[b]] = len(vocab)
    merges = [("Ġ", "t"), ("h", "e"), ("Ġ", "a")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    eos = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eos, eos_token=eos,
                                   unk_token=eos)


@pytest.fixture(scope="module")
def hand_target():
    """SentencePiece-style BPE: <unk> 0, <s> 1, </s> 2, '▁' 3, t 4, h 5, e 6, a 7, '▁t' 8,
    'he' 9, '▁the' 10, '▁a' 11, '<0xE4>' 12."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "<s>", "</s>", "▁", "t", "h", "e", "a", "▁t", "he", "▁the", "▁a",
              "<0xE4>"]
    merges = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("▁", "a")]
    tok = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=merges,
                               unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                           normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def test_token_bytes_canonical(hand_target, hand_source):
    tb = token_bytes(hand_target)
    assert tb[:3] == [None, None, None]  # specials are matched by role, never by text
    assert tb[10] == b" the" and tb[12] == b"\xe4"
    sb = token_bytes(hand_source)
    assert sb[257] == b" t" and sb[1 + ord("A")] == b"A" and sb[1 + 0xE4] == b"\xe4"


def test_shared_tokens_match_by_bytes_and_role(hand_target, hand_source):
    shared = shared_source_ids(hand_target, hand_source)
    # '▁t' and 'Ġt' are the same bytes b" t"; '▁the' has no single source twin.
    assert shared[8] == 257 and shared[9] == 258 and shared[11] == 259
    assert shared[10] == -1
    assert shared[4] == 1 + ord("t") and shared[12] == 1 + 0xE4
    assert shared[2] == 0  # </s> <-> <|endoftext|> by the eos role


def test_fvt_pieces_hand_derived(hand_target, hand_source):
    pieces, missing = fvt_pieces(hand_target, hand_source)
    assert missing == 0
    assert pieces[10].tolist() == [257, 258]  # ' the' -> 'Ġt' + 'he'
    assert pieces[12].tolist() == [1 + 0xE4]  # a lone byte (invalid UTF-8) -> its byte token


def test_fvt_row_is_the_mean_of_the_source_pieces(hand_target, hand_source):
    model = toy.tiny_gpt_neox(len(hand_source), hidden=16, layers=1, heads=2)
    src = model.get_input_embeddings().weight.detach().clone()
    src_out = model.get_output_embeddings().weight.detach().clone()
    result = initialize(model, hand_target, None, InitConfig(method="fvt"), hand_source)
    new = model.get_input_embeddings().weight.detach()
    new_out = model.get_output_embeddings().weight.detach()
    assert torch.allclose(new[10], (src[257] + src[258]) / 2, atol=1e-6)
    assert torch.allclose(new_out[10], (src_out[257] + src_out[258]) / 2, atol=1e-6)
    assert torch.equal(new[8], src[257])  # single-piece tokens are plain copies
    assert result.report.counts == {"copied": 12, "fvt_mean": 1, "mean_fill": 0}


# ----------------------------------------------------------------------------------------
# Statistical baselines on the conftest tokenizers (600-token source, 700-token target)
# ----------------------------------------------------------------------------------------


def _source(bpe_tok):
    model = toy.tiny_gpt_neox(640, hidden=32, layers=1, heads=2, seed=3)
    real = model.get_input_embeddings().weight.detach()[: len(bpe_tok)].clone()
    real_out = model.get_output_embeddings().weight.detach()[: len(bpe_tok)].clone()
    return model, real, real_out


def test_mean_init_rows_equal_the_source_mean(sp_tok, bpe_tok):
    model, real, real_out = _source(bpe_tok)
    initialize_model(model, sp_tok, None, InitConfig(method="mean", reuse_shared=False), bpe_tok)
    new = model.get_input_embeddings().weight.detach()
    new_out = model.get_output_embeddings().weight.detach()
    n = len(sp_tok)
    assert torch.allclose(new[:n], real.mean(0).expand(n, -1), atol=1e-6)
    assert torch.allclose(new_out[:n], real_out.mean(0).expand(n, -1), atol=1e-6)


def test_mean_init_reuses_shared_rows(sp_tok, bpe_tok):
    model, real, _ = _source(bpe_tok)
    shared = shared_source_ids(sp_tok, bpe_tok)
    result = initialize(model, sp_tok, None, InitConfig(method="mean"), bpe_tok)
    new = model.get_input_embeddings().weight.detach()
    hit = np.flatnonzero(shared >= 0)
    miss = np.flatnonzero(shared < 0)
    assert len(hit) > 50 and result.report.counts["shared_reused"] == len(hit)
    assert torch.equal(new[hit], real[torch.from_numpy(shared[hit])])
    assert torch.allclose(new[miss], real.mean(0).expand(len(miss), -1), atol=1e-6)


def test_permutation_rows_are_a_permutation_of_source_rows(sp_tok, bpe_tok):
    model, real, real_out = _source(bpe_tok)
    initialize_model(model, sp_tok, None,
                     InitConfig(method="random-permutation", reuse_shared=False, seed=5), bpe_tok)
    new = model.get_input_embeddings().weight.detach()
    new_out = model.get_output_embeddings().weight.detach()
    first = new[: len(bpe_tok)]  # 700 targets > 600 sources: the first 600 are one permutation
    order = torch.cdist(first, real).argmin(1)
    assert torch.equal(first, real[order])
    assert sorted(order.tolist()) == list(range(len(bpe_tok)))
    assert torch.equal(new_out[: len(bpe_tok)], real_out[order])  # same source token in/out
    assert not torch.equal(order, torch.arange(len(bpe_tok)))  # really shuffled


def test_permutation_plan_is_seeded_and_injective():
    a = plan_statistical("random-permutation", 500, 600, None, seed=1)
    b = plan_statistical("random-permutation", 500, 600, None, seed=1)
    c = plan_statistical("random-permutation", 500, 600, None, seed=2)
    assert np.array_equal(a.copy_from, b.copy_from) and not np.array_equal(a.copy_from,
                                                                           c.copy_from)
    assert len(set(a.copy_from.tolist())) == 500 and a.copy_from.max() < 600


def _plan(fill: str, k: int, std: float | None = None) -> RowPlan:
    return RowPlan(np.full(k, -1, dtype=np.int64), {}, fill, std)  # type: ignore[arg-type]


def test_fvt_rows_are_the_means_of_pieces_of_any_length():
    gen = torch.Generator().manual_seed(1)
    src = torch.randn(50, 6, generator=gen)
    pieces = {0: np.array([3]), 2: np.array([4, 4, 9]), 5: np.array([1, 2, 3, 4, 5, 6, 7]),
              3: np.array([49, 0])}
    copy = np.array([-1, 7, -1, -1, -1, -1, 8], dtype=np.int64)
    rows = materialize(RowPlan(copy, pieces, "mean"), src)
    for t, ids in pieces.items():
        assert torch.allclose(rows[t], src[torch.from_numpy(ids)].mean(0), atol=1e-6), t
    assert torch.equal(rows[1], src[7]) and torch.equal(rows[6], src[8])
    assert torch.allclose(rows[4], src.mean(0), atol=1e-6)  # neither: the mean fill


def test_random_rows_have_zero_mean_and_the_source_std():
    gen = torch.Generator().manual_seed(0)
    src = torch.randn(3000, 8, generator=gen) * 0.3 + 1.0
    rows = materialize(_plan("random", 20000), src, seed=4)
    assert abs(float(rows.mean())) < 0.01
    assert abs(float(rows.std()) - float(src.std())) < 0.01 * float(src.std())
    explicit = materialize(_plan("random", 20000, std=2.0), src, seed=4)
    assert abs(float(explicit.std()) - 2.0) < 0.03
    assert torch.equal(rows, materialize(_plan("random", 20000), src, seed=4))


def test_multivariate_rows_match_source_mean_and_covariance():
    gen = torch.Generator().manual_seed(0)
    mix = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.5, 0.0], [-0.3, 0.2, 0.4]])
    src = torch.randn(4000, 3, generator=gen) @ mix.T + torch.tensor([0.5, -1.0, 2.0])
    rows = materialize(_plan("multivariate", 60000), src, seed=7)
    src_cov = torch.cov(src.T)
    assert torch.allclose(rows.mean(0), src.mean(0), atol=0.02)
    assert torch.allclose(torch.cov(rows.T), src_cov, atol=0.03)
    assert torch.equal(rows, materialize(_plan("multivariate", 60000), src, seed=7))
    assert not torch.equal(rows, materialize(_plan("multivariate", 60000), src, seed=8))


def test_multivariate_with_fewer_rows_than_dims_still_samples():
    src = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    rows = materialize(_plan("multivariate", 100), src, seed=0)
    assert torch.isfinite(rows).all()


def test_random_init_keeps_shared_rows_and_is_seeded(sp_tok, bpe_tok):
    shared = shared_source_ids(sp_tok, bpe_tok)
    hit = np.flatnonzero(shared >= 0)
    outs = []
    for seed in (0, 0, 1):
        model, real, _ = _source(bpe_tok)
        initialize_model(model, sp_tok, None, InitConfig(method="random", seed=seed), bpe_tok)
        new = model.get_input_embeddings().weight.detach().clone()
        assert torch.equal(new[hit], real[torch.from_numpy(shared[hit])])
        outs.append(new)
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


def test_random_std_only_with_random_method():
    with pytest.raises(ValueError, match="random_std"):
        InitConfig(method="mean", random_std=0.1)
