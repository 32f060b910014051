"""Model initialisation for the target vocabulary: copied rows, tying, padding, special
ids, bias, save/reload/generate (issue 4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokalign_core.align.alignment import Alignment, Provenance
from tokalign_core.configs.init import InitConfig
from tokalign_core.model import toy
from tokalign_core.model.baselines import fvt_pieces, shared_source_ids
from tokalign_core.model.init import (
    initialize,
    initialize_model,
    is_tied,
    padded_rows,
    save_initialized,
)

SOURCE_ROWS = 640  # bpe_tok has 600 tokens: a padded source like Pythia (50,277 / 50,304)


def make_alignment(sp_tok, bpe_tok, seed: int = 0, n_fallback: int = 7) -> Alignment:
    """Shared tokens map to their twins; the rest to seeded random real source rows; the
    last ``n_fallback`` non-shared ids are marked FALLBACK."""
    shared = shared_source_ids(sp_tok, bpe_tok)
    rng = np.random.default_rng(seed)
    src = np.where(shared >= 0, shared, rng.integers(0, len(bpe_tok), len(sp_tok)))
    prov = np.where(shared >= 0, Provenance.SHARED, Provenance.ALIGNED).astype(np.uint8)
    prov[[sp_tok.bos_token_id, sp_tok.eos_token_id, sp_tok.unk_token_id]] = Provenance.SPECIAL
    non_shared = np.flatnonzero(prov == Provenance.ALIGNED)
    prov[non_shared[-n_fallback:]] = Provenance.FALLBACK
    return Alignment(src, np.ones(len(src)), prov, np.full(len(bpe_tok), -1), {"method": "test"})


def snapshot(model):
    emb_in, emb_out = model.get_input_embeddings(), model.get_output_embeddings()
    return emb_in.weight.detach().clone(), emb_out.weight.detach().clone()


@pytest.fixture(params=["gpt_neox", "llama"])
def family(request):
    return request.param


def build(family: str, rows: int = SOURCE_ROWS):
    if family == "gpt_neox":
        return toy.tiny_gpt_neox(rows, hidden=32, layers=1, heads=2)
    return toy.tiny_llama(rows, hidden=32, layers=1, heads=2)


def test_copied_rows_equal_aligned_source_rows(family, sp_tok, bpe_tok):
    model = build(family)
    src_in, src_out = snapshot(model)
    al = make_alignment(sp_tok, bpe_tok)
    cfg = InitConfig(fallback="copy")
    result = initialize(model, sp_tok, al, cfg, bpe_tok)
    new_in, new_out = snapshot(result.model)
    idx = torch.from_numpy(al.source_ids)
    assert torch.equal(new_in[: len(sp_tok)], src_in[idx])
    assert torch.equal(new_out[: len(sp_tok)], src_out[idx])
    assert result.report.counts["copied"] == len(sp_tok)


def test_resized_to_padding_multiple_with_mean_rows(family, sp_tok, bpe_tok):
    model = initialize_model(build(family), sp_tok, make_alignment(sp_tok, bpe_tok),
                             InitConfig(pad_to_multiple_of=64), bpe_tok)
    n = len(sp_tok)  # 700 -> 704 rows
    assert padded_rows(n, 64) == 704
    new_in, new_out = snapshot(model)
    assert new_in.shape[0] == new_out.shape[0] == model.config.vocab_size == 704
    for mat in (new_in, new_out):
        expected = mat[:n].mean(0)
        assert torch.allclose(mat[n:], expected.expand(704 - n, -1), atol=1e-6)


def test_tied_model_stays_tied(sp_tok, bpe_tok):
    model = build("llama")
    assert is_tied(model)
    initialize_model(model, sp_tok, make_alignment(sp_tok, bpe_tok), InitConfig(), bpe_tok)
    assert is_tied(model)
    emb_in, emb_out = model.get_input_embeddings(), model.get_output_embeddings()
    assert emb_in.weight.data_ptr() == emb_out.weight.data_ptr()


def test_untied_model_stays_untied(sp_tok, bpe_tok):
    model = build("gpt_neox")
    assert not is_tied(model)
    initialize_model(model, sp_tok, make_alignment(sp_tok, bpe_tok), InitConfig(), bpe_tok)
    new_in, new_out = snapshot(model)
    assert not is_tied(model)
    assert not torch.equal(new_in, new_out)


@pytest.mark.parametrize("method", ["aligned", "random", "random-permutation", "mean",
                                    "multivariate", "fvt"])
def test_padding_rows_of_the_source_are_never_read(method, sp_tok, bpe_tok):
    model = build("gpt_neox")
    with torch.no_grad():  # poison the untrained padding rows 600..639
        model.get_input_embeddings().weight[len(bpe_tok):] = float("nan")
        model.get_output_embeddings().weight[len(bpe_tok):] = float("nan")
    al = make_alignment(sp_tok, bpe_tok) if method == "aligned" else None
    initialize_model(model, sp_tok, al, InitConfig(method=method), bpe_tok)
    new_in, new_out = snapshot(model)
    assert torch.isfinite(new_in).all() and torch.isfinite(new_out).all()


def test_alignment_into_padding_rows_is_refused(sp_tok, bpe_tok):
    al = make_alignment(sp_tok, bpe_tok)
    bad = Alignment(np.where(np.arange(len(sp_tok)) == 50, 620, al.source_ids), al.scores,
                    al.provenance, np.full(SOURCE_ROWS, -1))
    with pytest.raises(ValueError, match="600"):
        initialize_model(build("gpt_neox"), sp_tok, bad, InitConfig(fallback="copy"), bpe_tok)


def test_special_ids_follow_the_target_tokenizer(family, sp_tok, bpe_tok):
    model = build(family)
    model.config.eos_token_id = model.generation_config.eos_token_id = 0  # Pythia's 0/0
    initialize_model(model, sp_tok, make_alignment(sp_tok, bpe_tok), InitConfig(), bpe_tok)
    for cfg in (model.config, model.generation_config):
        assert cfg.bos_token_id == sp_tok.bos_token_id == 1
        assert cfg.eos_token_id == sp_tok.eos_token_id == 2
    assert model.config.pad_token_id is None  # sp_tok has no pad: the config does not invent one
    assert model.generation_config.pad_token_id == 2  # generate() pads with eos


def test_fallback_rows_get_the_fvt_mean(sp_tok, bpe_tok):
    model = build("gpt_neox")
    src_in, src_out = snapshot(model)
    al = make_alignment(sp_tok, bpe_tok)
    fb = np.flatnonzero(al.provenance == Provenance.FALLBACK)
    result = initialize(model, sp_tok, al, InitConfig(fallback="fvt"), bpe_tok)
    new_in, new_out = snapshot(model)
    pieces, _ = fvt_pieces(sp_tok, bpe_tok, fb)
    assert result.report.counts["fallback_fvt"] == len(pieces) > 0
    for t, ids in pieces.items():
        assert torch.allclose(new_in[t], src_in[torch.from_numpy(ids)].mean(0), atol=1e-6)
        assert torch.allclose(new_out[t], src_out[torch.from_numpy(ids)].mean(0), atol=1e-6)
    others = np.setdiff1d(np.arange(len(sp_tok)), list(pieces))
    assert torch.equal(new_in[others], src_in[torch.from_numpy(al.source_ids[others])])


def test_lm_head_bias_follows_the_plan(sp_tok, bpe_tok):
    model = build("gpt_neox")
    head = torch.nn.Linear(32, SOURCE_ROWS, bias=True)
    torch.nn.init.normal_(head.bias)
    model.set_output_embeddings(head)
    old_bias = head.bias.detach().clone()
    al = make_alignment(sp_tok, bpe_tok)
    initialize_model(model, sp_tok, al, InitConfig(fallback="copy"), bpe_tok)
    bias = model.get_output_embeddings().bias.detach()
    n = len(sp_tok)
    assert bias.shape[0] == 704
    assert torch.equal(bias[:n], old_bias[torch.from_numpy(al.source_ids)])
    assert torch.allclose(bias[n:], bias[:n].mean().expand(704 - n))


def test_alignment_size_mismatch_is_a_clear_error(sp_tok, bpe_tok):
    al = make_alignment(sp_tok, bpe_tok)
    short = Alignment(al.source_ids[:650], al.scores[:650], al.provenance[:650], al.reverse)
    with pytest.raises(ValueError, match="700 tokens but the alignment covers 650"):
        initialize_model(build("gpt_neox"), sp_tok, short, InitConfig(), bpe_tok)


def test_model_without_lm_head_is_refused(sp_tok, bpe_tok):
    base = build("gpt_neox").gpt_neox  # the bare transformer, no LM head
    with pytest.raises(ValueError, match="AutoModelForCausalLM"):
        initialize_model(base, sp_tok, make_alignment(sp_tok, bpe_tok), InitConfig(), bpe_tok)


def test_aligned_needs_an_alignment(sp_tok, bpe_tok):
    with pytest.raises(ValueError, match="needs an alignment"):
        initialize_model(build("gpt_neox"), sp_tok, None, InitConfig(), bpe_tok)


def test_saved_folder_reloads_and_generation_stops_at_target_eos(family, sp_tok, bpe_tok,
                                                                 tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = build(family)
    model.config.eos_token_id = model.generation_config.eos_token_id = 0  # Pythia's 0/0
    al = make_alignment(sp_tok, bpe_tok)
    result = initialize(model, sp_tok, al, InitConfig(), bpe_tok)
    out = save_initialized(result.model, sp_tok, tmp_path / "m",
                           {"method": "aligned", "counts": result.report.counts})
    assert (out / "model.safetensors").exists() and (out / "README.md").exists()
    with pytest.raises(FileExistsError):
        save_initialized(result.model, sp_tok, out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == len(sp_tok) and tok.eos_token_id == 2
    assert is_tied(reloaded) == (family == "llama")
    assert torch.equal(snapshot(reloaded)[0], snapshot(result.model)[0])
    ids = tok("def f(x):", return_tensors="pt").input_ids
    gen = reloaded.generate(ids, max_new_tokens=10, do_sample=False,
                            logits_processor=[_AlwaysPredict(tok.eos_token_id)])
    # The model now always predicts id 2: generation must stop after one token because the
    # saved generation_config says eos = 2 (the source model's was 0).
    assert gen.shape[1] == ids.shape[1] + 1 and int(gen[0, -1]) == 2


class _AlwaysPredict:
    """A logits processor that makes one id the only possible next token."""

    def __init__(self, token_id: int):
        self.token_id = token_id

    def __call__(self, input_ids, scores):
        out = torch.full_like(scores, float("-inf"))
        out[:, self.token_id] = 0.0
        return out


def test_cli_init_writes_model_and_card(sp_tok, bpe_tok, tmp_path, capsys):
    import json

    from tokalign import cli
    from tokalign_core.configs.init import InitConfig as Cfg

    src = tmp_path / "src"
    build("gpt_neox").save_pretrained(src)
    bpe_tok.save_pretrained(src)
    tgt = tmp_path / "tgt"
    sp_tok.save_pretrained(tgt)
    al = make_alignment(sp_tok, bpe_tok)
    al.save(tmp_path / "al")
    out = tmp_path / "out"
    args = ["init", "--model", str(src), "--target-tokenizer", str(tgt), "--alignment",
            str(tmp_path / "al"), "--out", str(out)]
    assert cli.main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["embedding_rows"] == 704
    card = (out / "README.md").read_text()
    counts = al.counts()
    assert f"| alignment_shared | {counts['shared']} |" in card
    assert f"| alignment_fallback | {counts['fallback']} |" in card
    assert Cfg().digest() in card  # the config digest
    from tokalign_core.store.hashing import sha256_tree

    assert sha256_tree(tmp_path / "al") in card and sha256_tree(src) in card
    assert cli.main(args) == 2  # refuses to overwrite a non-empty folder
    assert "overwrite" in capsys.readouterr().err
    no_al = ["init", "--model", str(src), "--target-tokenizer", str(tgt), "--out",
             str(tmp_path / "o2")]
    assert cli.main(no_al) == 2
    assert "--alignment" in capsys.readouterr().err


def test_model_card_renders_eval_and_metrics():
    from tokalign_core.model.card import CardInfo, as_card_info, render

    text = render(CardInfo(method="aligned", source_model="pythia", target_tokenizer="qwen2",
                           counts={"shared": 3}, alignment_metrics={"bleu1": 0.41},
                           eval_results={"groups": {"en": {"norm_ppl": 12.5, "n_docs": 2}}},
                           input_hashes={"alignment": "sha256:abc"}, config_digest="d1g"))
    assert "| en | 2 | 12.5 |" in text and "| bleu1 | 0.41 |" in text
    assert "sha256:abc" in text and "`d1g`" in text and "AutoModelForCausalLM" in text
    with pytest.raises(ValueError, match="unknown model card fields"):
        as_card_info({"methd": "x"})


@pytest.mark.parametrize("family", ["llama", "neox"])
def test_keep_layers_builds_a_shallower_model_that_reloads_and_generates(tmp_path, family,
                                                                        bpe_tok):
    from transformers import AutoModelForCausalLM

    from tokalign_core.model.init import keep_layers, kept_layer_ids

    assert kept_layer_ids(30, 15) == [0, 2, 4, 6, 8, 10, 12, 14, 17, 19, 21, 23, 25, 27, 29]
    assert kept_layer_ids(4, 1) == [3]
    with pytest.raises(ValueError, match="cannot keep 5 of 4"):
        kept_layer_ids(4, 5)
    build = toy.tiny_llama if family == "llama" else toy.tiny_gpt_neox
    model = build(len(bpe_tok), hidden=32, layers=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert keep_layers(model, 2) == [0, 3]
    assert model.config.num_hidden_layers == 2
    prefix = "model.layers" if family == "llama" else "gpt_neox.layers"
    after = model.state_dict()
    for new, old in ((0, 0), (1, 3)):  # the kept blocks are the old first and last ones
        for key, value in after.items():
            if key.startswith(f"{prefix}.{new}."):
                assert torch.equal(value, before[key.replace(f".{new}.", f".{old}.", 1)]), key
    assert not any(k.startswith(f"{prefix}.2.") for k in after)
    model.save_pretrained(tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    ids = torch.tensor([[1, 5, 9]])
    torch.testing.assert_close(reloaded(ids).logits, model.eval()(ids).logits)
    assert reloaded.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, 6)


def hold_out_shared(al: Alignment, sp_tok, bpe_tok, n: int = 20) -> np.ndarray:
    """What ``tokalign align --holdout`` does to ``n`` shared tokens: they leave the seed
    dictionary and come back retrieved (ALIGNED) with some other source row."""
    shared = np.flatnonzero(al.provenance == Provenance.SHARED)[:n]
    al.provenance[shared] = Provenance.ALIGNED
    al.source_ids[shared] = (al.source_ids[shared] + 1) % len(bpe_tok)
    al.meta["n_heldout"] = n
    return shared


def test_shared_tokens_held_out_by_the_alignment_are_still_copied(sp_tok, bpe_tok):
    model = build("gpt_neox")
    src_in, src_out = snapshot(model)
    al = make_alignment(sp_tok, bpe_tok)
    own = shared_source_ids(sp_tok, bpe_tok)
    held = hold_out_shared(al, sp_tok, bpe_tok)
    result = initialize(model, sp_tok, al, InitConfig(fallback="copy"), bpe_tok)
    new_in, new_out = snapshot(model)
    rows = torch.from_numpy(own[held])
    assert torch.equal(new_in[held], src_in[rows])
    assert torch.equal(new_out[held], src_out[rows])
    assert result.report.counts["shared_restored"] == len(held)


def test_held_out_alignment_without_tokenizers_is_a_clear_error(sp_tok, bpe_tok):
    al = make_alignment(sp_tok, bpe_tok)
    hold_out_shared(al, sp_tok, bpe_tok)
    with pytest.raises(ValueError, match="held out 20 shared tokens"):
        initialize(build("gpt_neox"), sp_tok, al, InitConfig(fallback="copy"))


def test_low_score_aligned_rows_get_the_fvt_mean(sp_tok, bpe_tok):
    model = build("gpt_neox")
    src_in, _ = snapshot(model)
    al = make_alignment(sp_tok, bpe_tok)
    aligned = np.flatnonzero(al.provenance == Provenance.ALIGNED)
    al.scores[aligned] = np.linspace(0.0, 1.0, len(aligned))
    result = initialize(model, sp_tok, al, InitConfig(fallback="copy", min_score=0.5,
                                                     gate_quantile=None), bpe_tok)
    new_in, _ = snapshot(model)
    low, high = aligned[al.scores[aligned] < 0.5], aligned[al.scores[aligned] >= 0.5]
    pieces, _ = fvt_pieces(sp_tok, bpe_tok, low)
    assert result.report.counts["gated_fvt"] == len(pieces) > 0
    for t, ids in pieces.items():
        assert torch.allclose(new_in[t], src_in[torch.from_numpy(ids)].mean(0), atol=1e-6)
    assert torch.equal(new_in[high], src_in[torch.from_numpy(al.source_ids[high])])


def test_fallback_mean_rows_get_the_source_mean(sp_tok, bpe_tok):
    model = build("gpt_neox")
    src_in, _ = snapshot(model)
    al = make_alignment(sp_tok, bpe_tok)
    fb = np.flatnonzero(al.provenance == Provenance.FALLBACK)
    result = initialize(model, sp_tok, al, InitConfig(fallback="mean"), bpe_tok)
    new_in, _ = snapshot(model)
    mu = src_in[: len(bpe_tok)].mean(0)
    assert result.report.counts["fallback_mean"] == len(fb) > 0
    assert torch.allclose(new_in[fb], mu.expand(len(fb), -1), atol=1e-6)


def test_min_score_needs_the_aligned_method():
    with pytest.raises(ValueError, match="min_score only applies"):
        InitConfig(method="fvt", min_score=0.3)


def test_cli_init_flags_reach_the_config():
    import argparse

    from tokalign.commands import init as init_cmd

    parser = argparse.ArgumentParser()
    init_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["init", "--model", "m", "--target-tokenizer", "t", "--out", "o",
                              "--fallback", "mean", "--min-score", "0.3",
                              "--gate-quantile", "0"])
    cfg = init_cmd.build_config(args)
    assert cfg.fallback == "mean" and cfg.min_score == 0.3 and cfg.gate_quantile == 0


def test_default_keeps_only_the_most_confident_tenth_of_aligned_rows(sp_tok, bpe_tok):
    model = build("gpt_neox")
    src_in, _ = snapshot(model)
    al = make_alignment(sp_tok, bpe_tok)
    aligned = np.flatnonzero(al.provenance == Provenance.ALIGNED)
    al.scores[aligned] = np.linspace(0.0, 1.0, len(aligned))
    result = initialize(model, sp_tok, al, InitConfig(fallback="copy"), bpe_tok)
    new_in, _ = snapshot(model)
    cut = np.quantile(al.scores[aligned], 0.9)
    kept, low = aligned[al.scores[aligned] >= cut], aligned[al.scores[aligned] < cut]
    assert 0 < len(kept) <= 0.11 * len(aligned)
    assert torch.equal(new_in[kept], src_in[torch.from_numpy(al.source_ids[kept])])
    pieces, _ = fvt_pieces(sp_tok, bpe_tok, low)
    assert result.report.counts["gated_fvt"] == len(pieces) > 0.8 * len(aligned)
    for t, ids in list(pieces.items())[:20]:
        assert torch.allclose(new_in[t], src_in[torch.from_numpy(ids)].mean(0), atol=1e-6)
    ungated = initialize(build("gpt_neox"), sp_tok, al,
                         InitConfig(fallback="copy", gate_quantile=None), bpe_tok)
    assert "gated_fvt" not in ungated.report.counts
