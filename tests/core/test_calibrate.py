"""LM-head calibration (issue 14): first-piece head rows, the family log-frequency bias, the
fitted bias, and folding the bias into a plain Hugging Face model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tokalign_core.configs.init import InitConfig
from tokalign_core.model import calibrate as calib
from tokalign_core.model import toy
from tokalign_core.model.baselines import fvt_pieces, shared_source_ids
from tokalign_core.model.init import initialize, is_tied, save_initialized

from .test_init_model import SOURCE_ROWS, build, make_alignment


def test_family_bias_splits_each_first_piece_by_counts():
    first = np.array([0, 0, 1, -1, 2])
    counts = np.array([3, 1, 5, 9, 0])
    b = calib.family_bias(first, counts, n_source=3, alpha=0.5, floor=-12.0)
    # family of piece 0: tokens 0 and 1 (3.5 and 1.5 of 5); piece 1 and 2: alone
    assert b[0] == pytest.approx(math.log(3.5 / 5)) and b[1] == pytest.approx(math.log(1.5 / 5))
    assert b[2] == pytest.approx(0.0) and b[4] == pytest.approx(0.0)
    assert b[3] == -12.0  # no first piece: the floor
    assert np.exp(b[:2]).sum() == pytest.approx(1.0)


def test_fit_bias_matches_the_unigram_distribution():
    g = torch.Generator().manual_seed(0)
    states, rows = torch.randn(400, 8, generator=g), torch.randn(30, 8, generator=g)
    counts = np.arange(30) ** 2
    b, kls = calib.fit_bias(states, rows, counts, np.zeros(30), passes=30, alpha=0.5)
    assert kls[0] > 0.1 and abs(kls[-1]) < 1e-4 and kls[:5] == sorted(kls[:5], reverse=True)
    q = torch.softmax(states @ rows.T + torch.from_numpy(b).float(), -1).mean(0).numpy()
    pi = (counts + 0.5) / (counts + 0.5).sum()
    np.testing.assert_allclose(q, pi, rtol=0.02, atol=1e-5)


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.as_tensor(ids)[None]).logits[0].double()


def test_fold_is_exact_through_a_final_layernorm():
    model = toy.tiny_gpt_neox(50, hidden=16, layers=1, heads=2)
    with torch.no_grad():  # a trained-looking norm: not the default ones / zeros
        norm = calib.final_norm(model)
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_(0, 0.1)
    assert norm is model.gpt_neox.final_layer_norm
    ids = np.arange(1, 40) % 50
    before = _logits(model, ids)
    b = np.random.default_rng(0).uniform(-8, 0, 50)
    how = calib.fold_bias(model, b, calib.head_inputs(model, [ids]))
    assert how == {"fold": "layernorm", "fold_residual": 0.0}
    np.testing.assert_allclose(_logits(model, ids) - before, np.tile(b, (len(ids), 1)),
                               atol=2e-4)


def test_a_layernorm_that_does_not_feed_the_head_is_not_folded_through():
    model = toy.tiny_gpt_neox(50, hidden=16, layers=1, heads=2)
    ids = np.arange(1, 40) % 50
    states = calib.head_inputs(model, [ids])
    norm = calib.final_norm(model)
    assert calib.feeds_head_exactly(norm, states)
    other = torch.nn.LayerNorm(16)  # e.g. a wrongly guessed final norm
    with torch.no_grad():
        other.weight.uniform_(0.5, 1.5)
    assert not calib.feeds_head_exactly(other, states)
    assert not calib.feeds_head_exactly(norm, states + 0.3)


def test_fold_through_rmsnorm_is_approximate_and_reports_its_spread():
    model = toy.tiny_llama(50, hidden=16, layers=1, heads=2, tie=False)
    ids = np.arange(1, 200) % 50
    states = calib.head_inputs(model, [ids])
    before = _logits(model, ids)
    b = np.random.default_rng(0).uniform(-8, 0, 50)
    how = calib.fold_bias(model, b, states)
    assert how["fold"] == "direction" and how["fold_residual"] > 0
    shift = (_logits(model, ids) - before).numpy()  # [n, V] = (h . u) b
    scale = shift @ b / (b @ b)  # per position: h . u
    assert scale.mean() == pytest.approx(1.0, abs=1e-3)
    assert scale.std() == pytest.approx(how["fold_residual"], rel=1e-3)
    np.testing.assert_allclose(shift, np.outer(scale, b), atol=1e-4)


def test_fold_uses_an_lm_head_bias_when_there_is_one():
    model = toy.tiny_llama(50, hidden=16, layers=1, heads=2, tie=False)
    head = torch.nn.Linear(16, 50, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
    model.lm_head = head
    ids = np.arange(1, 30)
    before = _logits(model, ids)
    b = np.linspace(-5, 0, 50)
    assert calib.fold_bias(model, b, calib.head_inputs(model, [ids]))["fold"] == "head-bias"
    np.testing.assert_allclose(_logits(model, ids) - before, np.tile(b, (len(ids), 1)),
                               atol=1e-5)


def _data(sp_tok, texts, n=6):
    ids = [np.asarray(sp_tok(t)["input_ids"][:64], dtype=np.int64) for t in texts[:n]]
    counts = np.bincount(np.concatenate(ids), minlength=len(sp_tok))
    return calib.CalibrationData(counts, ids)


def test_initialize_calibrates_a_tied_model_into_a_plain_untied_one(sp_tok, bpe_tok, texts,
                                                                     tmp_path):
    model = build("llama")
    source_head = model.get_output_embeddings().weight.detach().clone()
    data = _data(sp_tok, texts)
    cfg = InitConfig(calibration_passes=0)
    res = initialize(model, sp_tok, make_alignment(sp_tok, bpe_tok), cfg, bpe_tok, data)
    assert not is_tied(res.model) and not res.report.tied
    counts = res.report.counts
    assert counts["calibration_fold"] == "direction" and counts["calibrated_first_piece"] > 0
    # head rows = first piece's source row + b_t u: recover u from two tokens of one family
    shared = shared_source_ids(sp_tok, bpe_tok)
    first = calib.first_pieces(sp_tok, bpe_tok, shared, SOURCE_ROWS)
    b = calib.family_bias(first, data.counts, SOURCE_ROWS, cfg.calibration_alpha,
                          cfg.calibration_floor)
    head = res.model.get_output_embeddings().weight.detach().double()
    t = np.flatnonzero(first >= 0)
    delta = head[t] - source_head[first[t]].double()
    u = delta[np.argmin(b[t])] / b[t][np.argmin(b[t])]
    np.testing.assert_allclose(delta.numpy(), np.outer(b[t], u.numpy()), atol=1e-4)
    pieces, _ = fvt_pieces(sp_tok, bpe_tok, [int(t[-1])], SOURCE_ROWS)
    assert first[t[-1]] == pieces[int(t[-1])][0]
    # the saved folder reloads as the same untied model
    save_initialized(res.model, sp_tok, tmp_path / "m")
    cfg_json = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg_json["tie_word_embeddings"] is False
    from transformers import AutoModelForCausalLM

    again = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert torch.equal(again.get_output_embeddings().weight, res.model.lm_head.weight)
    assert not is_tied(again)


def test_fitted_passes_lower_the_unigram_gap(sp_tok, bpe_tok, texts):
    data = _data(sp_tok, texts)
    ali = make_alignment(sp_tok, bpe_tok)
    res = initialize(build("gpt_neox"), sp_tok, ali, InitConfig(calibration_passes=3),
                     bpe_tok, data)
    c = res.report.counts
    assert c["calibration_fold"] == "layernorm"
    assert c["calibration_kl_last"] < c["calibration_kl_first"]


def test_calibration_is_off_for_baselines_and_without_data(sp_tok, bpe_tok, texts):
    data = _data(sp_tok, texts)
    fvt = initialize(build("llama"), sp_tok, None, InitConfig(method="fvt"), bpe_tok, data)
    assert is_tied(fvt.model) and "calibration_fold" not in fvt.report.counts
    plain = initialize(build("llama"), sp_tok, make_alignment(sp_tok, bpe_tok), InitConfig(),
                       bpe_tok)
    assert is_tied(plain.model)
    with pytest.raises(ValueError, match="--target-tokens"):
        initialize(build("llama"), sp_tok, make_alignment(sp_tok, bpe_tok),
                   InitConfig(calibrate_head=True), bpe_tok)
    wrong = calib.CalibrationData(np.ones(len(sp_tok) + 5, dtype=np.int64), data.blocks)
    with pytest.raises(ValueError, match="made with the target tokenizer"):
        initialize(build("llama"), sp_tok, make_alignment(sp_tok, bpe_tok), InitConfig(),
                   bpe_tok, wrong)


def test_calibration_data_from_a_tokens_artifact(tmp_path):
    from tokalign_core.train.data import write_tokens_artifact

    docs = [[list(range(i, i + 40)) for i in range(5)], [list(range(3, 23))]]
    write_tokens_artifact(tmp_path / "tok", docs, vocab_size=100)
    data = calib.CalibrationData.from_tokens(tmp_path / "tok", n_blocks=4, block_len=16)
    assert len(data.blocks) == 4 and all(len(b) == 16 for b in data.blocks)
    assert data.counts.sum() == 5 * 40 + 20
    with pytest.raises(ValueError, match="not a tokens artifact"):
        calib.CalibrationData.from_tokens(tmp_path)


def test_cli_init_calibrates_with_target_tokens(sp_tok, bpe_tok, texts, tmp_path, capsys):
    from tokalign import cli
    from tokalign_core.train.data import write_tokens_artifact

    src, tgt = tmp_path / "src", tmp_path / "tgt"
    build("llama").save_pretrained(src)
    bpe_tok.save_pretrained(src)
    sp_tok.save_pretrained(tgt)
    make_alignment(sp_tok, bpe_tok).save(tmp_path / "al")
    docs = [[sp_tok(t)["input_ids"] for t in texts[k::2][:20]] for k in range(2)]
    write_tokens_artifact(tmp_path / "tok", docs, vocab_size=len(sp_tok))
    base = ["init", "--model", str(src), "--target-tokenizer", str(tgt), "--alignment",
            str(tmp_path / "al")]
    assert cli.main([*base, "--out", str(tmp_path / "plain")]) == 0
    assert "not calibrated" in capsys.readouterr().err
    assert cli.main([*base, "--target-tokens", str(tmp_path / "tok"), "--calibration-passes",
                     "1", "--out", str(tmp_path / "cal")]) == 0
    counts = json.loads(capsys.readouterr().out)["counts"]
    assert counts["calibration_fold"] == "direction" and "calibration_kl_last" in counts
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["tie_word_embeddings"]
    assert not json.loads((tmp_path / "cal" / "config.json").read_text())["tie_word_embeddings"]
    # a folder that is not a tokens artifact: one clear line, nothing written
    bad = [*base, "--target-tokens", str(tmp_path / "al"), "--out", str(tmp_path / "bad")]
    assert cli.main(bad) == 2
    err = capsys.readouterr().err
    assert "--target-tokens" in err and "not a tokens artifact" in err
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
