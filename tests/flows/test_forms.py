"""The form flows' settings: top-level fields over a preset, this machine's text and
SmolLM2-135M when left empty (issue 17, items 2-3)."""

from __future__ import annotations

from flows.demo import SOURCE_MODEL, TEXT_CORPUS
from flows.forms import Advanced, form_config, model_ref
from tokalign_core.configs.pipeline import PipelineConfig


def test_empty_form_runs_the_quick_preset_on_this_machine():
    cfg, demo = form_config("quick", SOURCE_MODEL, "builtin:qwen2", [], None, Advanced())
    assert cfg.source_model == SOURCE_MODEL
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
    from tokalign_core.artifacts import ArtifactStore
    from tokalign_core.model_card import publish_folder

    with ArtifactStore(tmp_path / "a").writer("model") as w:
        (w.dir / "model").mkdir()
        (w.dir / "model" / "config.json").write_text("{}")
    published = publish_folder(w.ref.dir / "model", tmp_path / "models" / "x", "card\n")
    assert model_ref(str(published)) == w.ref
    assert model_ref(w.ref.path) == w.ref
