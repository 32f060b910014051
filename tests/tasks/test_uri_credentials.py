"""Credentials inside an MLflow tracking URI (``http://user:password@host``) never reach a
log line, ``logs/lineage.jsonl``, MLflow params or the flow's serialised Workspace
parameter (reliability round 2, defect 6); the process itself keeps the full URI."""

from __future__ import annotations

import json
import logging

from tasks.caching import Workspace
from tasks.lineage import Lineage, stage_run
from tokalign_core.configs.base import flatten, redact_userinfo
from tokalign_core.configs.glove import GloveConfig

SECRET = "s3cretPW"
URI = f"http://alice:{SECRET}@127.0.0.1:9/mlflow"  # closed port: MLflow fails at once


def test_dead_server_with_credentials_logs_no_password(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    ws = Workspace(run_dir=str(tmp_path), tracking_uri=URI)
    with caplog.at_level(logging.WARNING), stage_run(ws, "glove", GloveConfig()) as run:
        run.metrics({"glove.cost": 1.0}, 0)
    lineage = (ws.logs_dir / "lineage.jsonl").read_text()
    assert "mlflow_unavailable" in lineage
    assert "MLflow at http://***@127.0.0.1:9/mlflow failed" in caplog.text
    assert SECRET not in caplog.text and SECRET not in lineage
    assert Lineage(ws).subprocess_env(None)["MLFLOW_TRACKING_URI"] == URI  # still usable


def test_workspace_parameter_is_serialised_without_the_password():
    """Prefect stores flow parameters through FastAPI's jsonable_encoder (and deployments
    through model_dump(mode="json")); MLflow params come from flatten()."""
    from fastapi.encoders import jsonable_encoder

    from flows.align import align_flow

    ws = Workspace(tracking_uri=URI)
    assert ws.tracking_uri == URI  # the object keeps it
    for dumped in (
        ws.model_dump(mode="json"),
        jsonable_encoder(ws),
        align_flow.serialize_parameters({"ws": ws})["ws"],
        ws.flat(),
    ):
        assert dumped["tracking_uri"] == "http://***@127.0.0.1:9/mlflow"
    assert SECRET not in json.dumps(flatten({"db": {"url": f"postgresql://u:{SECRET}@db/x"}}))


def test_redact_userinfo_only_touches_userinfo():
    assert (
        redact_userinfo("see s3://k:v@bucket/a and http://h:5000/x")
        == "see s3://***@bucket/a and http://h:5000/x"
    )
    assert redact_userinfo("user@example.com runs/default") == "user@example.com runs/default"
    assert GloveConfig().digest() == GloveConfig().digest()


def test_redaction_keeps_the_serialisation_schema():
    """The JSON-mode serializer must not blank the configs' JSON schema (forms, docs)."""
    schema = Workspace.model_json_schema(mode="serialization")
    assert {"run_dir", "tracking_uri"} <= set(schema["properties"])
