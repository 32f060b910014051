"""``tokalign run``: the whole pipeline on your model and tokenizer in one command
(issue 17, item 1)."""

from __future__ import annotations

import json

import pytest

from tokalign import cli


def _args(*argv: str):
    return cli.build_parser().parse_args(["run", *argv])


def test_flags_overlay_the_preset(tmp_path):
    from tokalign.commands.run import build_config

    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "x"}\n')
    cfg = build_config(_args("--preset", "tiny", "--source-model", "org/model",
                             "--target-tokenizer", "builtin:qwen2", "--corpus", str(corpus),
                             "--corpus", "hf:wiki", "--steps", "3", "--byte-budget", "1000"))
    assert cfg.source_model == "org/model" and cfg.target_tokenizer == "builtin:qwen2"
    assert [s.path for s in cfg.corpus.sources] == [str(corpus), "hf:wiki"]
    assert cfg.corpus.byte_budget == 1000
    assert cfg.adapt.total_steps == 3 and cfg.distill.total_steps == 3
    assert cfg.glove.dim == 16  # the rest is the tiny preset's


def test_teacher_turns_distillation_on_and_config_file_is_read(tmp_path):
    from tokalign.commands.run import build_config
    from tokalign_core.configs.pipeline import PipelineConfig

    path = tmp_path / "pipeline.json"
    path.write_text(PipelineConfig.preset("tokalign++").model_dump_json())
    cfg = build_config(_args("--config", str(path), "--teacher", "org/teacher"))
    assert cfg.distill is not None and cfg.distill.mode == "distill"
    assert cfg.distill.distill.teacher == "org/teacher"
    assert cfg.distill.total_steps == cfg.adapt.total_steps == 1000


@pytest.mark.parametrize(("argv", "message"), [
    (("--preset", "tokalign++", "--source-model", "org/m"), "corpus source 'data/corpus'"),
    (("--preset", "nope"), "unknown --preset 'nope'"),
    (("--preset", "tiny", "--config", "x.json"), "--config or --preset"),
    (("--config", "missing.json"), "--config missing.json: no such file"),
    (("--preset", "tiny", "--corpus", "README.md"), "--source-model is not set"),
    (("--source-model", "./no/such/model", "--corpus", "README.md"),
     "--source-model ./no/such/model: no such file or folder"),
    (("--preset", "tiny", "--workers", "0"),  # the run folder's settings are checked first
     "invalid run folder settings: --workers 0: Input should be greater than or equal to 1"),
])
def test_bad_inputs_fail_before_any_server_starts(argv, message, capsys, tmp_path):
    assert cli.main(["run", "--run-dir", str(tmp_path / "r"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_run_command_runs_the_pipeline_and_says_where_things_are(prefect_api, tmp_path, texts,
                                                                 bpe_tok, sp_tok, capsys,
                                                                 monkeypatch):
    from transformers import AutoModelForCausalLM

    from tests.flows.tiny import tiny_inputs, tiny_models

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tiny_inputs(tmp_path / "in", texts[:200], bpe_tok, sp_tok)
    cfg, teacher = tiny_models(tmp_path / "in", cfg, bpe_tok, sp_tok)
    path = tmp_path / "pipeline.json"
    data = json.loads(cfg.model_dump_json())
    data["baselines"] = ["mean"]
    path.write_text(json.dumps(data))
    run_dir = tmp_path / "run"
    assert cli.main(["run", "--config", str(path), "--teacher", teacher, "--steps", "2",
                     "--run-dir", str(run_dir), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "## Bits per byte by method" in out
    for name in ("aligned-init", "mean-init", "aligned-adapted", "distilled"):
        assert str(run_dir / "models" / name) in out
    AutoModelForCausalLM.from_pretrained(run_dir / "models" / "distilled")
    assert f"MLflow store: sqlite:///{run_dir / 'mlflow.db'}" in out
