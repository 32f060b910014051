"""MLflow lineage: nested runs with params, tags and stepped metrics in the run folder's
SQLite store; a dead tracking server never stops a stage."""

from __future__ import annotations

import json

import pytest

from tasks.caching import Workspace
from tasks.lineage import Lineage, parent_run, ref_tags, stage_run, tracking_uri
from tokalign_core.artifacts import ArtifactStore
from tokalign_core.configs.glove import GloveConfig


def test_default_store_is_sqlite_in_run_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ws = Workspace(run_dir=str(tmp_path))
    assert tracking_uri(ws) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    assert tracking_uri(ws) == "http://example:5000"
    assert tracking_uri(ws.model_copy(update={"tracking_uri": "sqlite:///x.db"})) == \
        "sqlite:///x.db"


def test_parent_and_nested_runs_with_lineage(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = ArtifactStore(tmp_path / "a")
    with store.writer("cooccur") as w:
        w.path("x.bin").write_bytes(b"abc")
    cfg = GloveConfig(dim=8)
    ws = Workspace(run_dir=str(tmp_path / "run"))
    with parent_run(ws, "pipeline", cfg) as pws, \
            stage_run(pws, "glove", cfg, {"cooccur": w.ref}) as run:
        logger = run.logger()
        for step, cost in enumerate([3.0, 2.0, 1.5]):
            logger.log({"glove.cost": cost}, step)
        logger.close()
        run.outputs(embeddings=w.ref)
        run.dataset("corpus", "d" * 64, "/data/corpus")
    client = MlflowClient(tracking_uri=tracking_uri(ws))
    parent = client.get_run(pws.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["dim"] == "8"
    assert parent.data.tags["tokalign.config_digest"] == cfg.digest()
    child = client.get_run(run.run_id)
    assert child.data.tags["mlflow.parentRunId"] == pws.parent_run_id
    assert child.data.tags["input.cooccur.sha256"] == w.ref.sha256
    assert child.data.tags["output.embeddings.sha256"] == w.ref.sha256
    assert [m.value for m in client.get_metric_history(run.run_id, "glove.cost")] == \
        [3.0, 2.0, 1.5]
    assert child.inputs.dataset_inputs[0].dataset.name == "corpus"
    lines = (ws.logs_dir / "glove.jsonl").read_text().splitlines()
    assert [json.loads(x)["glove.cost"] for x in lines] == [3.0, 2.0, 1.5]


def test_failed_stage_marks_run_failed(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ws = Workspace(run_dir=str(tmp_path))
    with pytest.raises(ZeroDivisionError), stage_run(ws, "align") as run:
        1 / 0  # noqa: B018
    assert MlflowClient(tracking_uri(ws)).get_run(run.run_id).info.status == "FAILED"


def test_dead_tracking_server_keeps_the_stage_going(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    ws = Workspace(run_dir=str(tmp_path), tracking_uri="http://127.0.0.1:9")  # closed port
    with stage_run(ws, "glove", GloveConfig()) as run:
        run.metrics({"glove.cost": 1.0}, 0)
        result = "computed"
    assert result == "computed" and run.run_id is None
    events = [json.loads(x) for x in (ws.logs_dir / "lineage.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert "mlflow_unavailable" in kinds and "metrics" in kinds


def test_ref_tags_hash_paths_by_content(tmp_path):
    f = tmp_path / "tok.json"
    f.write_text("{}")
    tags = ref_tags("input", {"tok": str(f), "n": 3, "none": None})
    assert tags["input.tok.sha256"] == \
        "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    assert tags["input.n"] == "3" and "input.none" not in tags
    assert Lineage(Workspace(run_dir=str(tmp_path))).failed is False
