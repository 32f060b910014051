"""PipelineConfig presets and cross-field rules."""

from __future__ import annotations

import pytest

from tokalign_core.configs.pipeline import PRESETS, SET_BY_PIPELINE, PipelineConfig


@pytest.mark.parametrize("name", PRESETS)
def test_presets_validate_and_differ(name):
    cfg = PipelineConfig.preset(name)
    assert PipelineConfig.model_validate(cfg.model_dump()) == cfg


def test_presets_follow_the_papers():
    assert PipelineConfig.preset("tokalign").align.method == "relative"
    assert PipelineConfig.preset("tokalign++").align.method == "vecmap"
    paper = PipelineConfig.preset("paper-scale")
    assert paper.glove.dim == 300 and paper.glove.iterations == 15
    assert paper.adapt.seq_len == 2048 and paper.adapt.tokens_per_step == 2_097_152
    assert paper.adapt.precision == "bf16" and paper.adapt.zero_stage == 1
    assert len({PipelineConfig.preset(n).digest() for n in PRESETS}) == len(PRESETS)


def test_train_for_fills_runtime_paths_and_keeps_hyperparameters():
    cfg = PipelineConfig.preset("tiny", target_tokenizer="builtin:qwen2")
    run = cfg.train_for("adapt", "/m", "/t", "/o")
    assert (run.model, run.tokens, run.out_dir) == ("/m", "/t", "/o")
    assert run.tokenizer == "builtin:qwen2"
    assert run.total_steps == cfg.adapt.total_steps
    assert cfg.adapt.model == SET_BY_PIPELINE


def test_run_fields_are_filled_in_one_place():
    from tokalign_core.configs.pipeline import bind_run_fields, is_unset

    cfg = PipelineConfig.preset("tiny")
    assert is_unset(cfg.adapt.model) and is_unset(cfg.distill.distill.teacher)
    assert not is_unset("/m") and not is_unset(None)
    run = bind_run_fields(cfg.adapt, model="/m", tokens="/t", out_dir="/o")
    assert (run.model, run.tokens, run.out_dir) == ("/m", "/t", "/o")
    assert run.model_dump(exclude={"model", "tokens", "out_dir"}) == cfg.adapt.model_dump(
        exclude={"model", "tokens", "out_dir"})
    student = bind_run_fields(cfg.distill, teacher="/teacher")
    assert student.distill.teacher == "/teacher" and is_unset(student.model)
    with pytest.raises(ValueError, match="no distill section"):
        bind_run_fields(cfg.adapt, teacher="/teacher")
    with pytest.raises(ValueError, match="not run-time fields"):
        bind_run_fields(cfg.adapt, total_steps="3")


def test_cross_field_rules():
    with pytest.raises(ValueError, match="unknown baselines"):
        PipelineConfig(baselines=("zeros",))
    with pytest.raises(ValueError, match="init.method must be 'aligned'"):
        PipelineConfig(init={"method": "mean"})
    with pytest.raises(ValueError, match="unknown pipeline preset"):
        PipelineConfig.preset("huge")
    cfg = PipelineConfig(adapt=None)
    with pytest.raises(ValueError, match="no 'adapt' section"):
        cfg.train_for("adapt", "m", "t", "o")


def test_tokenize_configs_share_the_policy():
    cfg = PipelineConfig(source_model="m", add_eos=True)
    s, t = cfg.tokenize_config("source"), cfg.tokenize_config("target")
    assert (s.tokenizer, t.tokenizer) == ("m", "builtin:qwen2")
    assert s.add_eos and t.add_eos


def test_stage_fields_are_never_dropped(tmp_path):
    # The presets build their stage configs directly: a field a stage config lacks is an
    # error naming it, never silently dropped (the tiny preset once passed progress=False
    # to InitConfig and EvalConfig, which have no such field, through a filter).
    from tokalign_core.configs import pipeline

    assert not hasattr(pipeline, "_known")
    bad = tmp_path / "pipeline.yaml"
    bad.write_text("evaluate:\n  progress: false\n")
    with pytest.raises(ValueError, match=r"evaluate\.progress"):
        PipelineConfig.load(bad)
    with pytest.raises(ValueError, match="progress"):
        PipelineConfig.preset("tiny", init={"progress": False})
