"""MLflow lineage: nested runs with params, tags and stepped metrics in the run folder's
SQLite store; a dead tracking server never stops a stage."""

from __future__ import annotations

import json

import pytest

from tasks.caching import Workspace
from tasks.lineage import Lineage, parent_run, ref_tags, stage_run, tracking_uri
from tokalign_core.configs.glove import GloveConfig
from tokalign_core.store.artifacts import ArtifactStore


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


def test_deferred_runs_land_before_the_parent_ends(tmp_path, monkeypatch):
    """Cached stages' runs are written on the lineage thread; leaving ``parent_run`` waits
    for every one of them, so the parent is never closed with children still missing."""
    import threading

    from mlflow import MlflowClient

    from tasks import lineage as lineage_mod

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ws = Workspace(run_dir=str(tmp_path))
    gate = threading.Event()
    lineage_mod.defer(lambda: gate.wait(60))  # hold the lineage thread: writes stay queued
    with parent_run(ws, "pipeline") as pws:
        futures = [Lineage(pws).record_finished(f"stage{i}", pws.parent_run_id,
                                                {"tokalign.cached": "true"}) for i in range(3)]
        assert not any(f.done() for f in futures)
        gate.set()
    assert all(f.done() for f in futures)
    client = MlflowClient(tracking_uri=tracking_uri(ws))
    parent = client.get_run(pws.parent_run_id)
    for i, f in enumerate(futures):
        child = client.get_run(f.result())
        assert child.info.run_name == f"stage{i}" and child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == pws.parent_run_id
        assert child.data.tags["tokalign.cached"] == "true"
        assert child.info.end_time <= parent.info.end_time


def test_experiment_is_looked_up_once_per_process(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    calls = []
    real = MlflowClient.get_experiment_by_name
    monkeypatch.setattr(MlflowClient, "get_experiment_by_name",
                        lambda self, name: calls.append(name) or real(self, name))
    ws = Workspace(run_dir=str(tmp_path))
    ids = [Lineage(ws).start_run(f"s{i}") for i in range(3)]
    assert all(ids) and len(set(ids)) == 3
    assert calls == ["tokalign"]


def test_stale_remembered_experiment_is_looked_up_again(tmp_path, monkeypatch):
    """A store recreated under the same URI invalidates the remembered experiment id: the
    run is still created (in the real experiment) and lineage does not degrade."""
    from mlflow import MlflowClient

    from tasks import lineage as lineage_mod

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ws = Workspace(run_dir=str(tmp_path))
    monkeypatch.setitem(lineage_mod._EXPERIMENTS, (tracking_uri(ws), ws.experiment), "987654")
    lineage = Lineage(ws)
    run_id = lineage.start_run("glove")
    assert run_id and not lineage.failed
    client = MlflowClient(tracking_uri=tracking_uri(ws))
    exp = client.get_experiment_by_name(ws.experiment)
    assert client.get_run(run_id).info.experiment_id == exp.experiment_id


def test_cached_record_keeps_the_flow_run_id(prefect_api, tmp_path, monkeypatch):
    """The tags of a deferred run are taken in the flow's thread: the Prefect flow-run id
    (thread-local context) is on it although MLflow is written from another thread."""
    from mlflow import MlflowClient
    from prefect import flow
    from prefect.runtime import flow_run

    from flows.common import record_cached

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = ArtifactStore(tmp_path / "a")
    with store.writer("glove") as w:
        w.path("v.bin").write_bytes(b"v")

    @flow(name="record-cached")
    def record(ws: Workspace) -> tuple[str, str]:
        with parent_run(ws, "pipeline") as pws:
            future = record_cached(pws, "glove:source", {"emb": w.ref})
        return future.result(), str(flow_run.id)

    run_id, flow_run_id = record(Workspace(run_dir=str(tmp_path / "run")))
    child = MlflowClient(tracking_uri=tracking_uri(Workspace(run_dir=str(tmp_path / "run"))))\
        .get_run(run_id)
    assert child.data.tags["prefect.flow_run_id"] == flow_run_id
    assert child.data.tags["tokalign.cached"] == "true"
    assert child.data.tags["output.0.sha256"] == w.ref.sha256


def test_cached_path_never_imports_transformers():
    """A Runner and the lineage module do not import transformers (3-6 s): only a stage
    that executes does, through ``warm_imports``."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys\nfrom flows.common import Runner\nfrom tasks.caching import Workspace\n"
            "from tasks import lineage, runtime\nRunner(Workspace(run_dir=sys.argv[1]))\n"
            "before = 'transformers' in sys.modules\nruntime.warm_imports()\n"
            "print(before, 'transformers' in sys.modules)")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code, "/tmp/unused-run"], cwd=root,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True"]
