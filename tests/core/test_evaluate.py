"""Tokenizer-independent evaluation: normalised perplexity, bits per byte, compression,
windows, text loading, the CLI and the lm-eval extra (issue 4)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from tokalign import cli
from tokalign_core.configs.evaluate import EvalConfig
from tokalign_core.evaluate.perplexity import (
    NLL_KEYS,
    EvalResult,
    GroupMetrics,
    GroupStats,
    MeanMetrics,
    evaluate_model,
    format_table,
    load_texts,
    nll_sum,
    score_documents,
    windows,
)
from tokalign_core.evaluate.tables import cell
from tokalign_core.model import toy

DOCS = ["def add(a, b):\n    return a + b", "The quick brown fox jumps over the lazy dog.",
        "Der schnelle braune Fuchs springt über den faulen Hund."]


@pytest.fixture(scope="module")
def source_model(bpe_tok):
    torch.manual_seed(0)
    return toy.tiny_gpt_neox(640, hidden=32, layers=1, heads=2, max_positions=256)


@pytest.mark.parametrize("n,window,stride", [(2, 8, 4), (9, 8, 4), (50, 8, 3), (50, 8, 8),
                                             (50, 8, 20), (33, 16, 15), (7, 7, 1)])
def test_windows_score_every_position_exactly_once(n, window, stride):
    seen = []
    for begin, end, k in windows(n, window, stride):
        assert 0 < end - begin <= window and 1 <= k <= end - begin - 1
        assert end - k - 1 >= begin  # the input predicting the first new target is inside
        seen.extend(range(end - k, end))
    assert seen == list(range(1, n))


def test_cfg_rejects_stride_above_window():
    with pytest.raises(ValueError, match="stride"):
        EvalConfig(window=8, stride=9)


def test_full_window_nll_equals_the_models_own_loss(source_model, bpe_tok):
    cfg = EvalConfig(window=256)
    [(nll, k)] = score_documents(source_model, bpe_tok, DOCS[:1], cfg, progress=False)
    ids = [bpe_tok.eos_token_id] + bpe_tok(DOCS[0], add_special_tokens=False).input_ids
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = source_model(input_ids=x).logits[0, :-1, : len(bpe_tok)]
    expected = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum")
    assert k == len(ids) - 1
    assert nll == pytest.approx(float(expected), rel=1e-5)


def test_windowed_scoring_counts_and_batch_independence(source_model, bpe_tok):
    long_doc = " ".join(DOCS * 6)
    n = len(bpe_tok(long_doc, add_special_tokens=False).input_ids)
    a = score_documents(source_model, bpe_tok, [long_doc, DOCS[1]],
                        EvalConfig(window=32, stride=10, batch_size=1))
    b = score_documents(source_model, bpe_tok, [long_doc, DOCS[1]],
                        EvalConfig(window=32, stride=10, batch_size=5))
    assert n > 32 and a[0][1] == n  # every text token scored once (BOS prefix)
    for (x, kx), (y, ky) in zip(a, b, strict=True):
        assert kx == ky and x == pytest.approx(y, rel=1e-4)


def test_normalised_ppl_with_own_tokenizer_equals_ordinary_ppl(source_model, bpe_tok):
    res = evaluate_model(source_model, bpe_tok, {"mix": DOCS}, bpe_tok,
                         EvalConfig(window=64))
    m = res.groups["mix"]
    assert m.n_ref_tokens == m.n_tokens == m.n_scored
    assert m.norm_ppl == pytest.approx(m.ppl, rel=1e-12)
    assert m.length_change == 0.0


def test_normalised_ppl_uses_the_reference_count(source_model, bpe_tok, sp_tok):
    res = evaluate_model(source_model, bpe_tok, {"mix": DOCS}, sp_tok,
                         EvalConfig(window=64))
    m = res.groups["mix"]
    n_ref = sum(len(sp_tok(d, add_special_tokens=False).input_ids) for d in DOCS)
    assert m.n_ref_tokens == n_ref
    assert m.norm_ppl == pytest.approx(math.exp(m.nll / n_ref))
    assert m.length_change == pytest.approx(m.n_tokens / n_ref - 1)


def test_bits_per_byte_hand_check_with_a_uniform_model(bpe_tok):
    model = toy.tiny_gpt_neox(640, hidden=16, layers=1, heads=2)
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()  # every logit 0: uniform over the vocab
    text = "abc abc"
    n_tok = len(bpe_tok(text, add_special_tokens=False).input_ids)
    res = evaluate_model(model, bpe_tok, {"t": [text]}, None, EvalConfig())
    m = res.groups["t"]
    # Uniform over the 600 real tokens (the 40 padding columns are cut), 7 UTF-8 bytes.
    assert m.n_bytes == 7
    assert m.nll == pytest.approx(n_tok * math.log(600), rel=1e-6)
    assert m.bits_per_byte == pytest.approx(n_tok * math.log2(600) / 7, rel=1e-6)
    assert m.tokens_per_byte == pytest.approx(n_tok / 7)


def test_group_stats_metrics_hand_check():
    s = GroupStats(n_docs=1, n_bytes=8, n_tokens=4, n_ref_tokens=2, n_scored=4,
                   nll=4 * math.log(2)).metrics()
    assert s.ppl == pytest.approx(2.0) and s.norm_ppl == pytest.approx(4.0)
    assert s.bits_per_byte == pytest.approx(0.5) and s.length_change == pytest.approx(1.0)


@pytest.mark.parametrize("chunk", [1, 3, 7, 32, 100])
def test_nll_sum_equals_cross_entropy_for_every_chunk_size(chunk):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 50, generator=gen) * 4
    targets = torch.randint(0, 50, (7,), generator=gen)
    expected = torch.nn.functional.cross_entropy(logits.double(), targets, reduction="sum")
    assert nll_sum(logits, targets, chunk) == pytest.approx(float(expected), rel=1e-6)
    # A non-contiguous slice of padded logits (the cut to len(tokenizer)) gives the same.
    padded = torch.cat([logits, torch.full((7, 5), 30.0)], dim=1)
    assert nll_sum(padded[:, :50], targets, chunk) == pytest.approx(float(expected), rel=1e-6)


def test_score_groups_limits_nll_metrics_and_keeps_compression_everywhere(
        source_model, bpe_tok, sp_tok):
    groups = {"code": DOCS[:1], "en": DOCS[1:2], "de": DOCS[2:]}
    full = evaluate_model(source_model, bpe_tok, groups, sp_tok, EvalConfig(window=64))
    part = evaluate_model(source_model, bpe_tok, groups, sp_tok,
                          EvalConfig(window=64, score_groups=("de", "code")))
    assert part.scored_groups == ("de", "code") and full.scored_groups == tuple(groups)
    for g in ("code", "de"):  # scored exactly as without the restriction
        assert part.groups[g] == full.groups[g]
    en = part.groups["en"]
    assert not set(NLL_KEYS) & set(en.to_dict()) and not en.scored
    for key in ("n_tokens", "n_ref_tokens", "n_bytes", "tokens_per_byte", "length_change"):
        assert getattr(en, key) == getattr(full.groups["en"], key)
    # NLL means over the scored groups only; compression means over every group.
    bpb = (full.groups["code"].bits_per_byte + full.groups["de"].bits_per_byte) / 2
    assert part.macro.bits_per_byte == pytest.approx(bpb)
    assert part.macro.length_change == pytest.approx(full.macro.length_change)
    en_row = format_table(part).splitlines()[-2]  # rows: code, de, en, (mean)
    assert en_row == (f"| en | {en.n_docs} | {en.n_tokens} |  |  |  | "
                      f"{cell(en.tokens_per_byte)} | {cell(en.length_change)} |")


def test_score_groups_skips_missing_groups_and_rejects_none_present(
        source_model, bpe_tok, caplog):
    groups = {"en": DOCS[1:2], "de": DOCS[2:]}
    res = evaluate_model(source_model, bpe_tok, groups, None,
                         EvalConfig(window=64, score_groups=("ja", "de")))
    assert res.scored_groups == ("de",) and res.groups["en"].bits_per_byte is None
    assert "ja" in caplog.text
    with pytest.raises(ValueError, match="none of score_groups"):
        evaluate_model(source_model, bpe_tok, groups, None, EvalConfig(score_groups=("ja",)))


def test_cfg_rejects_empty_or_duplicate_score_groups():
    with pytest.raises(ValueError, match="score_groups is empty"):
        EvalConfig(score_groups=())
    with pytest.raises(ValueError, match="duplicates"):
        EvalConfig(score_groups=("en", "en"))


def test_unscored_group_stats_have_no_nll_metrics():
    s = GroupStats(n_docs=1, n_bytes=8, n_tokens=4, n_ref_tokens=2, scored=False).metrics()
    assert not set(NLL_KEYS) & set(s.to_dict()) and "scored" not in s.to_dict()
    assert s.tokens_per_byte == pytest.approx(0.5) and s.length_change == 1.0


def test_load_texts_groups_by_label(tmp_path):
    (tmp_path / "en.txt").write_text("first para\nstill first\n\nsecond para\n\n\n")
    (tmp_path / "mixed.jsonl").write_text(
        json.dumps({"text": "x = 1"}) + "\n\n" + json.dumps({"text": "Hallo", "label": "de"})
        + "\n" + json.dumps({"text": "  "}) + "\n")
    (tmp_path / "ignored.csv").write_text("a,b")
    groups = load_texts(tmp_path)
    assert groups == {"en": ["first para\nstill first", "second para"], "mixed": ["x = 1"],
                      "de": ["Hallo"]}
    assert load_texts(tmp_path / "en.txt", "line", max_docs=2) == {
        "en": ["first para", "still first"]}
    with pytest.raises(FileNotFoundError, match="does not exist|do not exist"):
        load_texts(tmp_path / "nope")
    (tmp_path / "bad.jsonl").write_text('{"txt": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_texts(tmp_path)


def test_cli_eval_model_writes_json(source_model, bpe_tok, tmp_path, capsys):
    source_model.save_pretrained(tmp_path / "m")
    bpe_tok.save_pretrained(tmp_path / "m")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "code.txt").write_text(DOCS[0])
    (tmp_path / "texts" / "de.txt").write_text(DOCS[2])
    out = tmp_path / "res.json"
    rc = cli.main(["eval-model", str(tmp_path / "m"), "--texts", str(tmp_path / "texts"),
                   "--window", "32", "--output", str(out), "--no-progress"])
    assert rc == 0
    raw = json.loads(out.read_text())
    assert raw["model"] == str(tmp_path / "m") and raw["reference_tokenizer"]
    res = EvalResult.from_dict(raw)
    assert res.to_dict() == {k: v for k, v in raw.items()
                             if k not in ("model", "reference_tokenizer")}
    assert set(res.groups) == {"code", "de"}
    assert res.groups["de"].norm_ppl == pytest.approx(res.groups["de"].ppl)
    printed = capsys.readouterr().out  # the markdown table of the result it wrote
    assert format_table(res) in printed and "| code | " in printed
    rc = cli.main(["eval-model", str(tmp_path / "m"), "--texts", str(tmp_path / "texts"),
                   "--window", "32", "--output", str(out), "--no-progress",
                   "--score-groups", " de, "])
    res = json.loads(out.read_text())
    assert rc == 0 and res["scored_groups"] == ["de"]
    assert "bits_per_byte" not in res["groups"]["code"]
    assert cli.main(["eval-model", str(tmp_path / "m"), "--texts", str(tmp_path / "texts"),
                     "--score-groups", " , "]) == 2
    assert "--score-groups is empty" in capsys.readouterr().err


def test_lm_eval_missing_extra_is_a_clear_error(monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_lm_eval(name, *args, **kwargs):
        if name == "lm_eval" or name.startswith("lm_eval."):
            raise ImportError("No module named 'lm_eval'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lm_eval)
    rc = cli.main(["lm-eval", "some/model", "--tasks", "arc_easy, piqa"])
    assert rc == 2
    assert "pip install 'tokalign[eval]'" in capsys.readouterr().err


def test_lm_eval_argument_handling(capsys, monkeypatch, tmp_path):
    """The flags reach lm-evaluation-harness through LmEvalConfig: tasks split on commas,
    a limit from 1 up as a count (int), below 1 as a fraction; bad values are one line."""
    from tokalign_core.evaluate import perplexity

    calls = []

    class FakeHarness:
        @staticmethod
        def simple_evaluate(**kwargs):
            calls.append(kwargs)
            return {"results": {"piqa": {"acc": 0.5}}, "versions": {"piqa": 1}}

    monkeypatch.setattr(perplexity, "import_lm_eval", lambda: FakeHarness)
    out = tmp_path / "r.json"
    assert cli.main(["lm-eval", "org/m", "--tasks", "arc_easy, piqa,,boolq ", "--limit", "20",
                     "--num-fewshot", "2", "--batch-size", "3", "--trust-remote-code",
                     "--output", str(out)]) == 0
    kw = calls.pop()
    assert kw["tasks"] == ["arc_easy", "piqa", "boolq"] and kw["limit"] == 20
    assert isinstance(kw["limit"], int) and kw["num_fewshot"] == 2 and kw["batch_size"] == 3
    assert kw["device"] == "cpu" and kw["model_args"] == "pretrained=org/m,trust_remote_code=True"
    assert json.loads(out.read_text())["results"]["piqa"]["acc"] == 0.5
    assert cli.main(["lm-eval", "org/m", "--tasks", "piqa", "--limit", "0.25"]) == 0
    assert calls.pop()["limit"] == 0.25
    capsys.readouterr()
    assert cli.main(["lm-eval", "m", "--tasks", " , "]) == 2
    assert "--tasks is empty" in capsys.readouterr().err
    assert cli.main(["lm-eval", "m", "--tasks", "piqa", "--limit", "-1"]) == 2
    assert "--limit -1.0: Input should be greater than 0" in capsys.readouterr().err
    assert not calls


# A result as the evaluate stage cached it before the typed results (JSON of the old dicts):
# one scored group, one compression-only group, the means and the config.
OLD_JSON = {
    "groups": {
        "de": {"n_docs": 2, "n_bytes": 120, "n_tokens": 40, "n_ref_tokens": 50, "n_scored": 40,
               "nll": 83.2, "ppl": 8.0063, "norm_ppl": 5.2823, "bits_per_byte": 1.0002,
               "tokens_per_byte": 0.3333, "ref_tokens_per_byte": 0.4167, "length_change": -0.2},
        "ja": {"n_docs": 1, "n_bytes": 300, "n_tokens": 90, "n_ref_tokens": 150,
               "tokens_per_byte": 0.3, "ref_tokens_per_byte": 0.5, "length_change": -0.4},
    },
    "macro": {"norm_ppl": 5.2823, "bits_per_byte": 1.0002, "ppl": 8.0063,
              "tokens_per_byte": 0.31665, "length_change": -0.3},
    "scored_groups": ["de"],
    "config": {"window": 64, "score_groups": ["de"]},
}
# format_table's markdown for OLD_JSON: house rounding (4 significant digits), sorted
# groups, the unscored group's NLL cells and the means' counts empty.
OLD_TABLE = "\n".join([
    "| group | n_docs | n_tokens | norm_ppl | ppl | bits_per_byte | tokens_per_byte "
    "| length_change |",
    "|---|---|---|---|---|---|---|---|",
    "| de | 2 | 40 | 5.282 | 8.006 | 1 | 0.3333 | -0.2 |",
    "| ja | 1 | 90 |  |  |  | 0.3 | -0.4 |",
    "| (mean) |  |  | 5.282 | 8.006 | 1 | 0.3166 | -0.3 |",
])


def test_eval_result_round_trips_through_json():
    res = EvalResult.from_dict(json.loads(json.dumps(OLD_JSON)))
    assert res.groups["de"].bits_per_byte == 1.0002 and res.groups["de"].scored
    assert res.groups["ja"].bits_per_byte is None and not res.groups["ja"].scored
    assert res.macro.length_change == -0.3 and res.scored_groups == ("de",)
    assert json.loads(json.dumps(res.to_dict())) == OLD_JSON
    assert EvalResult.from_dict(res.to_dict()) == res
    # Unknown top-level keys (the CLI's provenance) are ignored, not an error.
    assert EvalResult.from_dict({**OLD_JSON, "model": "m"}) == res


def test_eval_table_is_the_markdown_table_of_the_typed_result():
    res = EvalResult.from_dict(OLD_JSON)
    assert format_table(res) == OLD_TABLE
    # The same builder as every other table: a changed value changes its cell.
    de = dataclasses.replace(res.groups["de"], ppl=9.25)
    changed = dataclasses.replace(res, groups={**res.groups, "de": de})
    de_row = "| de | 2 | 40 | 5.282 | 9.25 | 1 | 0.3333 | -0.2 |"
    assert format_table(changed).splitlines()[2] == de_row


def test_evaluate_model_result_round_trips(source_model, bpe_tok, sp_tok):
    res = evaluate_model(source_model, bpe_tok, {"en": DOCS[1:2], "de": DOCS[2:]}, sp_tok,
                         EvalConfig(window=64, score_groups=("de",)))
    assert isinstance(res.groups["de"], GroupMetrics) and isinstance(res.macro, MeanMetrics)
    again = EvalResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert again == res and format_table(again) == format_table(res)
