"""Produced models under readable names with hub-ready cards, logged in MLflow as models
(the final one registered), and the parent run named and described (issue 17, 4-5)."""

from __future__ import annotations

import pytest
import yaml

from tasks.caching import Workspace
from tokalign_core.configs.pipeline import PipelineConfig
from tokalign_core.evaluate.results import ADAPTED, EvalResult, ModelKey
from tokalign_core.store.artifacts import ArtifactStore


@pytest.fixture()
def produced(tmp_path, bpe_tok, sp_tok):
    """Two model artifacts (an init and an adapted model) with the target tokenizer."""
    from tokalign_core.model import toy

    store = ArtifactStore(tmp_path / "run" / "artifacts")
    refs = {}
    for key, seed in ((ModelKey.init("aligned"), 0), (ADAPTED, 1)):
        with store.writer("model", {"label": key.label}) as w:
            model = toy.tiny_llama(len(sp_tok), hidden=16, layers=1, heads=2)
            model.config.seed_marker = seed  # distinct bytes -> distinct artifacts
            model.save_pretrained(w.dir / "model")
            sp_tok.save_pretrained(w.dir / "model")
            (w.dir / "model" / "README.md").write_text("old card\n")
        refs[key] = w.ref
    with store.writer("alignment") as w:
        w.path("alignment.json").write_text("{}")
    return refs, w.ref


def _evaluation(bpb: float) -> EvalResult:
    counts = {"n_docs": 1, "n_bytes": 10, "n_tokens": 3, "n_ref_tokens": 4}
    return EvalResult.from_dict(
        {"macro": {"bits_per_byte": bpb, "norm_ppl": 100.0},
         "groups": {"en": {**counts, "bits_per_byte": bpb - 1, "tokens_per_byte": 0.2},
                    "de": {**counts, "bits_per_byte": bpb + 1}}})


def test_models_land_under_readable_names_with_hub_cards_and_in_mlflow(tmp_path, produced,
                                                                       monkeypatch):
    from mlflow import MlflowClient
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flows.publish import publish_models
    from tasks.lineage import parent_run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    refs, alignment = produced
    cfg = PipelineConfig.preset("tokalign++", source_model="HuggingFaceTB/SmolLM2-135M",
                                target_tokenizer="builtin:qwen2")
    evaluation = {ModelKey.init("aligned"): _evaluation(4.0), ADAPTED: _evaluation(3.5)}
    ws = Workspace(run_dir=str(tmp_path / "run"))
    with parent_run(ws, "pipeline", cfg) as pws:
        paths = publish_models(pws, cfg, refs, evaluation, alignment)
    root = ws.root / "models"
    assert paths == {ModelKey.init("aligned"): root / "aligned-init",
                     ADAPTED: root / "aligned-adapted"}
    folder = paths[ADAPTED]
    AutoModelForCausalLM.from_pretrained(folder)  # a normal Hugging Face folder
    AutoTokenizer.from_pretrained(folder)
    card = (folder / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M"
    assert meta["license"] and "tokalign++" in meta["tags"]
    metrics = meta["model-index"][0]["results"][0]["metrics"]
    assert {"type": "bits_per_byte", "name": "bits per byte (en)", "value": 2.5} in metrics
    assert "method unknown" not in card and alignment.sha256 in card
    assert "two-stage adaptation" in card
    # The artifact's own files are untouched (the folder is a view of the store).
    assert (refs[ADAPTED].dir / "model" / "README.md").read_text() == "old card\n"

    client = MlflowClient(tracking_uri=f"sqlite:///{ws.root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tokalign")
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    logged = client.search_logged_models(experiment_ids=[exp.experiment_id])
    assert {m.name for m in logged} == {"aligned-init", "aligned-adapted"}
    assert {m.source_run_id for m in logged} == {pws.parent_run_id}
    [version] = client.search_model_versions("name='SmolLM2-135M-qwen2-tokalign'")
    final = next(m for m in logged if m.name == "aligned-adapted")
    assert version.source == f"models:/{final.model_id}" and version.run_id == pws.parent_run_id
    tags = client.get_run(pws.parent_run_id).data.tags
    assert tags["tokalign.alignment.sha256"] == alignment.sha256
    assert tags["tokalign.source_model.sha256"] == "hub:HuggingFaceTB/SmolLM2-135M"
    assert tags["tokalign.final_model"] == str(folder)
    files = {a.path for a in client.list_logged_model_artifacts(final.model_id)}
    assert "README.md" in files and "config.json" in files


def test_parent_run_named_by_what_ran_with_few_params(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from tasks.lineage import parent_run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = PipelineConfig.preset("tokalign++", source_model="HuggingFaceTB/SmolLM2-135M",
                                target_tokenizer="builtin:qwen2")
    ws = Workspace(run_dir=str(tmp_path / "run"))
    with parent_run(ws, "pipeline", cfg) as pws:
        pass
    client = MlflowClient(tracking_uri=f"sqlite:///{ws.root / 'mlflow.db'}")
    run = client.get_run(pws.parent_run_id)
    assert run.info.run_name == "SmolLM2-135M -> qwen2 (tokalign++)"
    params = run.data.params
    assert 10 <= len(params) <= 60, sorted(params)
    assert params["source_model"] == "HuggingFaceTB/SmolLM2-135M"
    assert params["align.method"] == "vecmap"
    assert not any("(set by the pipeline)" in v for v in params.values())
    assert run.data.tags["tokalign.flow"] == "pipeline"
    assert "config.json" in {a.path for a in client.list_artifacts(pws.parent_run_id)}


def test_mlflow_run_url_points_at_the_server_or_the_local_ui():
    from tasks.lineage import mlflow_run_url

    assert mlflow_run_url("http://mlflow:5000/", "3", "ab") == \
        "http://mlflow:5000/#/experiments/3/runs/ab"
    assert mlflow_run_url("sqlite:///x/mlflow.db", "1", "cd") == \
        "http://127.0.0.1:5000/#/experiments/1/runs/cd"
