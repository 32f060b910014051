"""Building the alignment: overrides, padding rows, fallbacks, determinism, methods, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tokalign_core.align.alignment import Alignment, Provenance
from tokalign_core.align.build import Embeddings, build_alignment
from tokalign_core.configs.align import AlignConfig, VecMapConfig
from tokalign_core.vocab.vocab import SharedTokens

T_SIZE, S_SIZE = 130, 120  # source ids 100..119 are "padding": no vectors


def spaces(seed: int = 0, rotate: bool = True):
    """Source vectors for ids 0..99; target ids 0..109 (110..129 have no vector) whose
    vector is source id truth[t] rotated (+ noise). Rows sorted by id (frequency)."""
    rng = np.random.default_rng(seed)
    src = rng.standard_normal((100, 16)).astype(np.float32) * np.linspace(2, .5, 16)
    truth = rng.permutation(100)[np.arange(110) % 100]
    q = np.linalg.qr(rng.standard_normal((16, 16)))[0] if rotate else np.eye(16)
    tgt = src[truth] @ q + 0.01 * rng.standard_normal((110, 16))
    source = Embeddings(src, np.arange(100))
    target = Embeddings(tgt.astype(np.float32), np.arange(110))
    return source, target, truth


def shared_pairs(truth, ids):
    ids = np.asarray(ids)
    return SharedTokens(ids, truth[ids], np.zeros(len(ids), np.uint8))


SEEDED = AlignConfig(vecmap=VecMapConfig(init="shared", vocab_cutoff=200,
                                         stochastic_interval=3))


def test_vecmap_alignment_recovers_truth_and_shared_override():
    source, target, truth = spaces()
    shared = shared_pairs(truth, np.arange(0, 110, 3))
    # one shared pair deliberately "wrong" by retrieval, and one special-role pair
    shared = SharedTokens(np.r_[shared.target_ids, 4, 125], np.r_[shared.source_ids, 7, 99],
                          np.r_[shared.reason, 0, 1])
    ali = build_alignment(source, target, shared, T_SIZE, S_SIZE, SEEDED).alignment
    aligned = ali.provenance == Provenance.ALIGNED
    assert aligned.sum() > 60
    assert (ali.source_ids[aligned] == truth[np.flatnonzero(aligned)]).mean() > 0.97
    assert ali.source_ids[4] == 7 and ali.provenance[4] == Provenance.SHARED
    assert ali.source_ids[125] == 99 and ali.provenance[125] == Provenance.SPECIAL
    assert ali.scores[4] == 1.0
    # shared pairs override the reverse lexicon too; a source id shared twice keeps the first
    first = shared.target_ids[np.flatnonzero(shared.source_ids == 7)[0]]
    assert ali.reverse[7] == first
    assert (ali.reverse[100:] == -1).all() and (ali.reverse[:100] >= 0).all()


def test_no_padding_row_and_counted_seeded_fallback(tmp_path):
    source, target, truth = spaces(1)
    cfg = AlignConfig(method="cosine", retrieval="csls", seed=3)
    out = build_alignment(source, target, None, T_SIZE, S_SIZE, cfg)
    ali = out.alignment
    assert ali.source_ids.max() < 100  # ids 100..119 have no vector: never chosen
    fb = ali.provenance == Provenance.FALLBACK
    assert np.flatnonzero(fb).tolist() == list(range(110, 130))
    assert ali.meta["fallback_counts"] == {"tokenization": 0, "random": 20}
    assert ali.meta["fallback_seed"] == 3
    again = build_alignment(source, target, None, T_SIZE, S_SIZE, cfg).alignment
    other = build_alignment(source, target, None, T_SIZE, S_SIZE,
                            cfg.model_copy(update={"seed": 4})).alignment
    assert np.array_equal(again.source_ids, ali.source_ids)
    assert not np.array_equal(other.source_ids[fb], ali.source_ids[fb])
    assert np.array_equal(other.source_ids[~fb], ali.source_ids[~fb])


def test_tokenization_fallback_prefers_the_most_specific_piece():
    source, target, _ = spaces(2)
    tok = {110: [50, 5, 60], 111: [115, 30], 112: [119], 113: [500]}
    ali = build_alignment(source, target, None, T_SIZE, S_SIZE,
                          AlignConfig(method="cosine"), fallback_source_ids=tok).alignment
    assert ali.source_ids[110] == 60  # highest row = rarest = most specific piece
    assert ali.source_ids[111] == 30  # ids with a vector beat ids without
    assert ali.source_ids[112] == 119  # a real token id of the tokenizer, kept
    assert ali.meta["fallback_counts"] == {"tokenization": 3, "random": 17}


def test_same_seed_byte_identical_file(tmp_path):
    source, target, truth = spaces(3)
    shared = shared_pairs(truth, np.arange(0, 110, 4))
    for name in ("a", "b"):
        build_alignment(source, target, shared, T_SIZE, S_SIZE, SEEDED).save(tmp_path / name)
    a = (tmp_path / "a" / "alignment.npz").read_bytes()
    assert a == (tmp_path / "b" / "alignment.npz").read_bytes()
    assert Alignment.load(tmp_path / "a").target_size == T_SIZE


def test_relative_method_is_rotation_invariant():
    source, target, truth = spaces(4)
    shared = shared_pairs(truth, np.arange(0, 110, 2))
    out = build_alignment(source, target, shared, T_SIZE, S_SIZE,
                          AlignConfig(method="relative", n_anchors=40))
    ali = out.alignment
    aligned = np.flatnonzero(ali.provenance == Provenance.ALIGNED)
    assert (ali.source_ids[aligned] == truth[aligned]).mean() > 0.95
    assert out.target_vectors.shape == (110, 40) and ali.meta["n_anchors"] == 40
    with pytest.raises(ValueError, match="anchor"):
        build_alignment(source, target, None, T_SIZE, S_SIZE, AlignConfig(method="relative"))


def test_cosine_method_needs_one_space():
    source, target, truth = spaces(5, rotate=False)
    ali = build_alignment(source, target, None, T_SIZE, S_SIZE,
                          AlignConfig(method="cosine")).alignment
    assert (ali.source_ids[:110] == truth).all()
    bad = Embeddings(target.vectors[:, :8], target.token_ids)
    with pytest.raises(ValueError, match="one space"):
        build_alignment(source, bad, None, T_SIZE, S_SIZE, AlignConfig(method="cosine"))


def test_bad_inputs_are_clear_errors():
    source, target, _ = spaces(6)
    with pytest.raises(ValueError, match="tokenizer has 50 tokens"):
        build_alignment(source, target, None, T_SIZE, 50, AlignConfig(method="cosine"))
    with pytest.raises(ValueError, match="duplicates"):
        Embeddings(np.zeros((2, 3)), [1, 1])
    with pytest.raises(FileNotFoundError, match="embeddings artifact"):
        Embeddings.load("/nonexistent")


def _write_emb(folder, vectors, ids):
    folder.mkdir(parents=True)
    np.save(folder / "vectors.npy", vectors.astype(np.float32))
    np.save(folder / "token_ids.npy", np.asarray(ids, np.int64))


def test_cli_align_and_neighbors(tmp_path, bpe_tok, sp_tok, capsys):
    from tokalign.cli import main

    bpe_tok.save_pretrained(tmp_path / "src_tok")
    sp_tok.save_pretrained(tmp_path / "tgt_tok")
    rng = np.random.default_rng(0)
    base = rng.standard_normal((len(bpe_tok), 12))
    _write_emb(tmp_path / "src", base[:500], np.arange(500))
    tgt_ids = np.arange(600)
    _write_emb(tmp_path / "tgt", base[tgt_ids % 500] + 0.01, tgt_ids)
    args = ["align", "--source-emb", str(tmp_path / "src"), "--target-emb",
            str(tmp_path / "tgt"), "--source-tokenizer", str(tmp_path / "src_tok"),
            "--target-tokenizer", str(tmp_path / "tgt_tok"), "--method", "cosine",
            "--retrieval", "csls", "--holdout", "0.2", "--no-progress",
            "--out", str(tmp_path / "run")]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    ali = Alignment.load(tmp_path / "run")
    assert ali.target_size == len(sp_tok) and ali.source_size == len(bpe_tok)
    assert summary["counts"]["shared"] > 0 and summary["counts"]["special"] > 0
    assert summary["fallback_counts"]["tokenization"] > 0  # ids >= 600 have no vector
    assert (tmp_path / "run" / "heldout_pairs.npz").exists()
    assert main(args) == 2  # refuses to overwrite
    capsys.readouterr()
    tid = 150
    assert main(["neighbors", str(tid), "--id", "--alignment-run", str(tmp_path / "run"),
                 "-k", "3", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert len(info["neighbours"]) == 3
    assert info["neighbours"][0]["source_id"] == tid % 500
    scores = [n["score"] for n in info["neighbours"]]
    assert scores == sorted(scores, reverse=True)


def test_cli_help_lists_options(capsys):
    from tokalign.cli import main

    with pytest.raises(SystemExit):
        main(["align", "--help"])
    text = capsys.readouterr().out
    for opt in ("--method", "--init", "--holdout", "--vocab-cutoff", "default"):
        assert opt in text


def test_removed_batch_size_in_an_old_config_is_a_clear_error(tmp_path):
    # batch_size never changed results nor memory (retrieval tiles are fixed) yet changed
    # cache keys: it is gone, and an old saved config naming it fails with the fix.
    from tokalign_core.configs.pipeline import PipelineConfig

    assert "batch_size" not in AlignConfig.model_fields
    assert "batch_size" not in VecMapConfig.model_fields
    for data in ({"batch_size": 4096}, {"vecmap": {"batch_size": 4096}}):
        with pytest.raises(ValueError, match="batch_size was removed.*delete it"):
            AlignConfig.model_validate(data)
    old = tmp_path / "pipeline.yaml"
    old.write_text("align:\n  batch_size: 512\n")
    with pytest.raises(ValueError, match=r"(?s)pipeline\.yaml.*align\.batch_size was removed"):
        PipelineConfig.load(old)
