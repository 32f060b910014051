"""Real servers on loopback (``-m integration``): a Prefect server with the served
deployments, where ``tokalign tokenizer register`` produces a completed align run; an MLflow
server receiving parent and nested runs with metrics and artifacts; headless Chromium
loading the MLflow UI page of that run and finding a logged metric."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} not healthy after {timeout} s")


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    fh = open(log, "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # our own session: the server and its children
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def prefect_server(tmp_path):
    port = free_port()
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_API_URL="")
    env.pop("PREFECT_API_URL")
    proc = start([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                  "--port", str(port)], env, tmp_path / "prefect-server.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health", 300, proc)
        yield f"http://127.0.0.1:{port}/api", env
    finally:
        stop(proc)


def _flow_runs(api: str, deployment: str) -> list[dict]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with get_client(sync_client=True, httpx_settings={"base_url": api}) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(
            name=DeploymentFilterName(any_=[deployment])))
    return [{"state": r.state_type.value if r.state_type else None,
             "start": r.start_time, "params": r.parameters} for r in runs]


def test_landed_event_starts_a_completed_align_run(prefect_server, tmp_path, texts, bpe_tok,
                                                   sp_tok):
    from tests.flows.tiny import tiny_inputs

    api, env = prefect_server
    cfg = tiny_inputs(tmp_path / "inputs", texts[:200], bpe_tok, sp_tok)
    cfg.save(tmp_path / "pipeline.json")
    env = dict(env, PREFECT_API_URL=api, OMP_NUM_THREADS="1")
    serve = start([sys.executable, "-m", "deployments.serve", "--config",
                   str(tmp_path / "pipeline.json"), "--run-dir", str(tmp_path / "run"),
                   "--limit", "2", "--align-on-event"], env, tmp_path / "serve.log")
    try:
        _wait_for_deployments(api, env, serve)
        target = Path(cfg.target_tokenizer)
        emitted = time.time()
        reg = subprocess.run([sys.executable, "-m", "tokalign_core", "tokenizer", "register",
                              str(target)], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=120)
        assert reg.returncode == 0, reg.stderr
        assert json.loads(reg.stdout)["spec"] == str(target.resolve())
        run = _wait_for_run(api, "align", 900)
        assert run["state"] == "COMPLETED"
        assert run["params"]["target_tokenizer"] == str(target.resolve())
        latency = run["start"].timestamp() - emitted
        (tmp_path / "latency.txt").write_text(f"{latency:.2f}\n")
        print(f"event -> started run: {latency:.1f} s")
    finally:
        stop(serve)


def _wait_for_deployments(api: str, env: dict, serve: subprocess.Popen) -> None:
    from prefect.client.orchestration import get_client

    deadline = time.time() + 300
    while time.time() < deadline:
        assert serve.poll() is None, "deployments.serve exited"
        with get_client(sync_client=True, httpx_settings={"base_url": api}) as client:
            names = {d.name for d in client.read_deployments()}
        if {"align", "pipeline"} <= names:
            time.sleep(5)  # let the trigger automations register
            return
        time.sleep(2)
    raise TimeoutError("served deployments never appeared")


def _wait_for_run(api: str, deployment: str, timeout: float) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        runs = _flow_runs(api, deployment)
        done = [r for r in runs if r["state"] in ("COMPLETED", "FAILED", "CRASHED")]
        if done:
            return done[0]
        time.sleep(3)
    raise TimeoutError(f"no finished {deployment} run after {timeout} s")


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
               MLFLOW_DISABLE_TELEMETRY="true")
    proc = start([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                  f"sqlite:///{tmp_path / 'mlflow.db'}", "--artifacts-destination",
                  str(tmp_path / "mlartifacts"), "--host", "127.0.0.1", "--port", str(port),
                  "--workers", "1"], env, tmp_path / "mlflow.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 180, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def chromium() -> str:
    """Debian's chromium, installed with apt-get when missing (skips if that fails)."""
    exe = shutil.which("chromium")
    if exe is None:
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                       capture_output=True, timeout=900,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium is not installed and apt-get could not install it")
    return exe


def test_mlflow_server_receives_lineage_and_ui_shows_metric(mlflow_server, tmp_path):
    from mlflow import MlflowClient

    from flows.pipeline import bpb_figure
    from tasks.caching import Workspace
    from tasks.lineage import Lineage, parent_run, stage_run
    from tokalign_core.configs.glove import GloveConfig

    ws = Workspace(run_dir=str(tmp_path / "run"), tracking_uri=mlflow_server)
    with parent_run(ws, "pipeline", GloveConfig()) as pws:
        with stage_run(pws, "glove", GloveConfig()) as run:
            logger = run.logger()
            for step in range(5):
                logger.log({"glove.cost": 10.0 - step}, step)
            logger.close()
        fig = bpb_figure([{"model": "aligned", "bits_per_byte": 1.5},
                          {"model": "random", "bits_per_byte": 3.0}])
        Lineage(pws).log_figure(pws.parent_run_id, fig, "bits_per_byte.png")
    client = MlflowClient(tracking_uri=mlflow_server)
    child = client.get_run(run.run_id)
    assert child.data.tags["mlflow.parentRunId"] == pws.parent_run_id
    assert len(client.get_metric_history(run.run_id, "glove.cost")) == 5
    arts = [a.path for a in client.list_artifacts(pws.parent_run_id, "plots")]
    assert arts == ["plots/bits_per_byte.png"]

    exp = child.info.experiment_id
    url = f"{mlflow_server}/#/experiments/{exp}/runs/{run.run_id}"
    dom = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=30000",
         "--dump-dom", url],
        capture_output=True, text=True, timeout=180)
    assert "glove.cost" in dom.stdout, dom.stderr[-2000:]
