"""The toy bake-off's ``--target-tokens``: alignment rows get the default calibrated LM head,
``--uncalibrated NAME`` keeps an uncalibrated row, and the cached parts tell them apart."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tokalign_core.train.data import write_tokens_artifact

from .test_init_model import build, make_alignment

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bakeoff  # noqa: E402


@pytest.fixture
def setup(sp_tok, bpe_tok, texts, tmp_path):
    """A saved tiny source model (bpe_tok), an alignment into sp_tok and a target tokens
    artifact of sp_tok."""
    src = tmp_path / "src"
    build("gpt_neox").save_pretrained(src)
    bpe_tok.save_pretrained(src)
    make_alignment(sp_tok, bpe_tok).save(tmp_path / "al")
    docs = [[sp_tok(t)["input_ids"] for t in texts[k::2][:20]] for k in range(2)]
    write_tokens_artifact(tmp_path / "tok", docs, vocab_size=len(sp_tok))
    return src, tmp_path / "al", tmp_path / "tok"


def args_for(*extra: str):
    return bakeoff.parse_args(["--window", "32", "--batch-size", "2", "--no-progress",
                               *extra])


def test_target_tokens_calibrates_alignment_rows_and_keeps_an_uncalibrated_one(
        setup, sp_tok, bpe_tok, texts):
    src, al, tok = setup
    args = args_for("--target-tokens", str(tok), "--uncalibrated", "x")
    rows = bakeoff.alignment_rows({"x": al}, args)
    assert [(n, c.calibrate_head) for n, _, c in rows] == [("x", None),
                                                          ("x, uncalibrated", False)]
    data, digest = bakeoff.calibration_input(args)
    assert data is not None and len(digest) == 64
    groups = {"en": texts[:3]}
    res = {}
    for name, folder, cfg in rows:
        from tokalign_core.align.alignment import Alignment

        res[name] = bakeoff.run_method(name, src, bpe_tok, sp_tok, Alignment.load(folder),
                                       groups, args, cfg,
                                       data if cfg.calibrate_head is not False else None)
    assert res["x"]["counts"]["calibrated_first_piece"] > 0
    assert "calibration_fold" not in res["x, uncalibrated"]["counts"]
    assert res["x"]["macro"]["bits_per_byte"] != res["x, uncalibrated"]["macro"]["bits_per_byte"]
    # the cached parts: calibrated and uncalibrated rows, or other target tokens, never share
    (name, folder, cal), (_, _, uncal) = rows
    keys = {bakeoff.part_key(name, src, folder, groups, args, cal, digest),
            bakeoff.part_key(name, src, folder, groups, args, uncal, ""),
            bakeoff.part_key(name, src, folder, groups, args, cal, "0" * 64)}
    assert len(keys) == 3


def test_calibration_digest_follows_the_token_ids(setup, sp_tok, texts, tmp_path):
    _, _, tok = setup
    _, before = bakeoff.calibration_input(args_for("--target-tokens", str(tok)))
    docs = [[sp_tok(t)["input_ids"] for t in texts[k::2][:20]] for k in range(2)]
    docs[1][0] = docs[1][0][::-1]  # same counts, other order: other calibration blocks
    write_tokens_artifact(tmp_path / "tok2", docs, vocab_size=len(sp_tok))
    _, after = bakeoff.calibration_input(args_for("--target-tokens", str(tmp_path / "tok2")))
    assert before != after
    assert bakeoff.calibration_input(args_for()) == (None, "")


def test_bad_calibration_flags_are_one_line_errors(setup, tmp_path):
    _, al, tok = setup
    with pytest.raises(SystemExit, match="--target-tokens .*not a tokens artifact"):
        bakeoff.calibration_input(args_for("--target-tokens", str(tmp_path)))
    with pytest.raises(SystemExit, match="--uncalibrated 'y' is not an alignment row"):
        bakeoff.alignment_rows({"x": al}, args_for("--target-tokens", str(tok),
                                                   "--uncalibrated", "y"))
    with pytest.raises(SystemExit, match="--uncalibrated needs --target-tokens"):
        bakeoff.alignment_rows({"x": al}, args_for("--uncalibrated", "x"))
