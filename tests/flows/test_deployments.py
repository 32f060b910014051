"""Deployments, triggers, the tokenizer watcher, the CLI commands and the compose stack,
checked without a Docker engine or a real server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SERVICES = {"prefect-db", "prefect-server", "mlflow-db", "mlflow", "dask-scheduler",
            "dask-worker", "prefect-worker"}


def test_compose_parses_and_names_every_service():
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == SERVICES
    for name in ("prefect-db", "prefect-server", "mlflow-db", "mlflow", "dask-scheduler",
                 "prefect-worker"):
        assert "healthcheck" in services[name], name
    for svc in services.values():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{port} must bind to loopback only"
    text = (REPO / "docker" / "compose.yaml").read_text()
    assert "${POSTGRES_PASSWORD:?" in text and "${MLFLOW_DB_PASSWORD:?" in text
    assert "postgresql" in services["mlflow"]["command"]
    assert "mlflow-artifacts:/mlartifacts" in services["mlflow"]["volumes"]


def test_dockerfiles_install_the_right_stacks():
    cpu = (REPO / "docker" / "Dockerfile.cpu").read_text()
    gpu = (REPO / "docker" / "Dockerfile.gpu").read_text()
    assert "whl/cpu" in cpu and "HEALTHCHECK" in cpu
    assert gpu.startswith("# ") and "nvidia/cuda" in gpu and ".[gpu" in gpu
    assert "HEALTHCHECK" in gpu


def test_prefect_yaml_has_a_deployment_per_flow_with_importable_entrypoints():
    import importlib

    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    deps = {d["name"]: d for d in spec["deployments"]}
    assert {"align", "pipeline", "adapt", "distill", "evaluate", "demo",
            "watch-tokenizers"} <= set(deps)
    for d in deps.values():
        path, attr = d["entrypoint"].split(":")
        module = path.removesuffix(".py").replace("/", ".")
        assert hasattr(importlib.import_module(module), attr), d["entrypoint"]
    assert {d["work_pool"]["name"] for d in deps.values()} == {"cpu", "gpu"}
    trig = deps["pipeline"]["triggers"][0]
    assert trig["expect"] == ["tokalign.tokenizer.landed"]
    assert trig["parameters"] == {"target_tokenizer": "{{ event.payload.spec }}"}
    assert "triggers" not in deps["align"], "one run per landed tokenizer by default"
    assert deps["pipeline"]["schedules"][0]["cron"]
    for name in ("align", "pipeline", "adapt", "distill", "evaluate"):
        assert deps[name]["entrypoint"].startswith("flows/forms.py:"), name
        assert deps[name]["parameters"]["advanced"]["run_dir"] == "runs/deployed", name


def test_served_deployments_carry_trigger_and_schedule(tmp_path):
    from deployments.serve import build_deployments

    deps = {d.name: d for d in build_deployments(None, str(tmp_path), str(tmp_path))}
    assert {"align", "pipeline", "adapt", "distill", "evaluate", "demo", "demo-quick",
            "watch-tokenizers"} == set(deps)
    trig = deps["pipeline"].triggers[0]
    assert trig.expect == {"tokalign.tokenizer.landed"}
    assert trig.parameters == {"target_tokenizer": "{{ event.payload.spec }}"}
    assert not deps["align"].triggers, "one run per landed tokenizer by default"
    assert deps["pipeline"].schedules and deps["watch-tokenizers"].schedules
    # --run-dir reaches every flow (one MLflow store per run folder).
    for name in ("align", "pipeline", "adapt", "distill", "evaluate"):
        assert deps[name].parameters["advanced"]["run_dir"] == str(tmp_path.resolve()), name
    for name in ("demo", "demo-quick"):
        assert deps[name].parameters["ws"]["run_dir"] == str(tmp_path.resolve()), name
    assert deps["demo-quick"].parameters["cfg"]["student_layers"] == 1  # the quick demo
    again = {d.name: d for d in build_deployments(None, str(tmp_path), None,
                                                  align_on_event=True)}
    assert again["align"].triggers and "watch-tokenizers" not in again


def test_served_forms_are_short_and_hide_internals(tmp_path):
    import json

    from deployments.serve import build_deployments

    deps = {d.name: d for d in build_deployments(None, str(tmp_path), None)}
    top = {name: list(deps[name]._parameter_openapi_schema.properties)
           for name in ("pipeline", "align", "adapt", "distill", "evaluate")}
    assert top["pipeline"] == ["preset", "source_model", "target_tokenizer", "corpus", "steps",
                               "advanced"]
    assert top["align"] == ["preset", "source_model", "target_tokenizer", "corpus",
                            "advanced"]
    for name, schema in ((n, deps[n]._parameter_openapi_schema) for n in top):
        text = json.dumps(schema.model_dump())
        for internal in ("parent_run_id", "stage_label", "sha256", "tracking_uri"):
            assert internal not in text, (name, internal)
        # Only the optional `advanced` section holds the full pipeline settings.
        required = set(schema.required or ())
        assert "advanced" not in required and "preset" not in required, name


def test_with_target_overrides_only_the_target():
    from flows.common import with_target
    from tokalign_core.configs.pipeline import PipelineConfig

    cfg = PipelineConfig.preset("tiny")
    assert with_target(cfg, None) is cfg
    new = with_target(cfg, "/tok/new")
    assert new.target_tokenizer == "/tok/new"
    assert new.model_dump(exclude={"target_tokenizer"}) == cfg.model_dump(
        exclude={"target_tokenizer"})


def _tok_folder(path: Path, content: str = "{}") -> Path:
    path.mkdir(parents=True)
    (path / "tokenizer.json").write_text(content)
    return path


def test_watcher_emits_once_per_new_or_changed_tokenizer(prefect_api, tmp_path, monkeypatch):
    import flows.watch as watch

    emitted: list[str] = []
    monkeypatch.setattr(watch, "emit_tokenizer_landed",
                        lambda spec, source: emitted.append(spec) or {"spec": spec})
    a = _tok_folder(tmp_path / "a")
    (tmp_path / "ranks.tiktoken").write_text("YQ== 0\n")
    (tmp_path / "notes.txt").write_text("not a tokenizer")
    watch.watch_tokenizers(str(tmp_path))
    assert sorted(emitted) == sorted([str(a.resolve()), str((tmp_path / "ranks.tiktoken")
                                                            .resolve())])
    emitted.clear()
    watch.watch_tokenizers(str(tmp_path))
    assert emitted == [], "seen tokenizers are remembered"
    (a / "tokenizer.json").write_text('{"changed": true}')
    b = _tok_folder(tmp_path / "b")
    watch.watch_tokenizers(str(tmp_path))
    assert sorted(emitted) == sorted([str(a.resolve()), str(b.resolve())])
    seen = json.loads((tmp_path / ".tokalign-seen.json").read_text())
    assert len(seen) == 3


def test_tokenizer_identity_hashes_paths_by_bytes(tmp_path):
    from tasks.events import tokenizer_identity

    a = _tok_folder(tmp_path / "a", '{"v": 1}')
    first = tokenizer_identity(str(a))
    (a / "tokenizer.json").write_text('{"v": 2}')
    assert tokenizer_identity(str(a))["digest"] != first["digest"]
    assert tokenizer_identity("builtin:qwen2") == {
        "spec": "builtin:qwen2", "kind": "name",
        "digest": tokenizer_identity("builtin:qwen2")["digest"]}
    with pytest.raises(ValueError, match="empty tokenizer spec"):
        tokenizer_identity("  ")


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    full = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "tokalign_core", *args], cwd=REPO,
                          env=full, capture_output=True, text=True, timeout=300)


def test_register_without_server_is_a_user_error():
    out = _cli("tokenizer", "register", "builtin:qwen2")
    assert out.returncode == 2
    assert "PREFECT_API_URL is not set" in out.stderr
    assert "Traceback" not in out.stderr


def test_demo_and_register_help_explain_options():
    demo = _cli("demo", "--help")
    assert demo.returncode == 0
    for flag in ("--target", "--run-dir", "--workers", "--dask-address", "--quick"):
        assert flag in demo.stdout
    assert "builtin:qwen2" in demo.stdout
    reg = _cli("tokenizer", "register", "--help")
    assert reg.returncode == 0 and "PATH_OR_HUB_ID" in reg.stdout


def test_demo_retarget_moves_the_target_only_and_the_full_demo_uses_the_real_model():
    from flows.demo import DemoConfig, retarget

    cfg = retarget(DemoConfig.make(quick=True), "/tok/llama3")
    assert cfg.pipeline.target_tokenizer == "/tok/llama3"
    assert cfg.source.tokenizer == DemoConfig.make(quick=True).source.tokenizer
    full = DemoConfig.make()
    assert full.source is None and full.source_model == "builtin:smollm2-135m"
    assert full.pipeline.source_model == "builtin:smollm2-135m"
    assert full.pipeline.adapt.total_steps > cfg.pipeline.adapt.total_steps
