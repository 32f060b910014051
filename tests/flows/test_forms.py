"""The form flows' settings: top-level fields over a preset, this machine's text and
SmolLM2-135M when left empty (issue 17, items 2-3)."""

from __future__ import annotations

import pytest

from flows.demo import SOURCE_MODEL, TEXT_CORPUS
from flows.forms import Advanced, form_config, model_ref
from tokalign_core.configs.pipeline import PipelineConfig


def test_empty_form_runs_the_quick_preset_on_this_machine():
    cfg, demo = form_config("quick", None, None, [], None, Advanced())
    assert cfg.source_model == SOURCE_MODEL and cfg.target_tokenizer == "builtin:qwen2"
    assert [s.path for s in cfg.corpus.sources] == [TEXT_CORPUS]
    assert cfg.adapt.total_steps == 4 and demo.student_layers == 1


def test_top_level_fields_override_the_preset():
    cfg, _ = form_config("tokalign++", "org/model", "/tok", ["a.jsonl", "hf:wiki"], 7,
                         Advanced(teacher="org/teacher"))
    assert (cfg.source_model, cfg.target_tokenizer) == ("org/model", "/tok")
    assert [s.path for s in cfg.corpus.sources] == ["a.jsonl", "hf:wiki"]
    assert cfg.adapt.total_steps == cfg.distill.total_steps == 7
    assert cfg.distill.distill.teacher == "org/teacher"
    assert cfg.align.method == "vecmap" and cfg.glove.dim == 300


def test_advanced_pipeline_replaces_the_preset_but_keeps_its_own_corpus():
    base = PipelineConfig.preset("tiny", source_model="m")
    cfg, _ = form_config("quick", None, "builtin:qwen2", [], None, Advanced(pipeline=base))
    assert cfg.corpus == base.corpus and cfg.glove == base.glove
    assert cfg.target_tokenizer == "builtin:qwen2"


def test_model_ref_accepts_a_published_folder(tmp_path, bpe_tok):
    from tokalign_core.model.card import publish_folder
    from tokalign_core.store.artifacts import ArtifactStore

    with ArtifactStore(tmp_path / "a").writer("model") as w:
        (w.dir / "model").mkdir()
        (w.dir / "model" / "config.json").write_text("{}")
    published = publish_folder(w.ref.dir / "model", tmp_path / "models" / "x", "card\n")
    assert model_ref(str(published)) == w.ref
    assert model_ref(w.ref.path) == w.ref


@pytest.mark.slow
def test_pipeline_form_runs_and_names_its_parent_run(prefect_api, tmp_path, texts, bpe_tok,
                                                     sp_tok, monkeypatch):
    from mlflow import MlflowClient

    from flows.forms import pipeline_form
    from tests.flows.tiny import tiny_inputs, tiny_models

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tiny_inputs(tmp_path / "in", texts[:200], bpe_tok, sp_tok)
    cfg, teacher = tiny_models(tmp_path / "in", cfg, bpe_tok, sp_tok)
    cfg = PipelineConfig.model_validate({**cfg.model_dump(), "baselines": ("mean",)})
    run_dir = tmp_path / "run"
    out = pipeline_form(preset="quick", source_model=None, target_tokenizer=None, corpus=[],
                        steps=2, advanced=Advanced(pipeline=cfg, teacher=teacher,
                                                   run_dir=str(run_dir), workers=1))
    assert {k.label for k in out["published"]} == {"aligned (init)", "mean (init)",
                                                   "aligned (adapted)", "distilled"}
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    [parent] = client.search_runs(
        [client.get_experiment_by_name("tokalign").experiment_id],
        "tags.`tokalign.flow` = 'pipeline'")
    assert parent.info.run_name == f"src_model -> tgt_tok ({cfg.method_name})"
    assert parent.data.tags["mlflow.note.content"].startswith("## Bits per byte")
    assert parent.data.tags["prefect.flow_run_id"]
