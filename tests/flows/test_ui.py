"""The two UIs as a user meets them, in headless Chromium driven over the DevTools protocol
(``-m integration``, slow):

- the MLflow UI on the quick demo's own store (``mlflow ui`` as the README says): the
  demo's parent run page shows the logged model, the run description (``summary.md``) and
  the lineage tags;
- the Prefect UI of the served deployments: a person fills the ``pipeline`` deployment's
  form (the target tokenizer), submits it, and the run it starts completes with that value.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.browser import Page
from tests.flows.test_integration import (
    _wait_for_deployments,
    free_port,
    start,
    stop,
    wait_http,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------- MLflow


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory) -> Path:
    """The run folder of one ``tokalign demo --quick`` (a few minutes on 2 cores)."""
    run_dir = tmp_path_factory.mktemp("ui") / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "tokalign_core", "demo", "--quick",
                           "--run-dir", str(run_dir)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-4000:]
    return run_dir


@pytest.fixture
def mlflow_ui(quick_demo, tmp_path):
    """``mlflow ui`` on the demo's store, as the README tells a user to browse it."""
    port = free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
               MLFLOW_DISABLE_TELEMETRY="true")
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = start([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
                  f"sqlite:///{quick_demo / 'mlflow.db'}", "--host", "127.0.0.1",
                  "--port", str(port), "--workers", "1"], env, tmp_path / "mlflow-ui.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 180, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def _parent_run(store: str):
    """The demo's parent run: the one run of the store without a parent."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    return client, parents[0]


def test_mlflow_ui_shows_the_demo_runs_model_description_and_lineage(quick_demo, mlflow_ui,
                                                                     tmp_path):
    client, parent = _parent_run(f"sqlite:///{quick_demo / 'mlflow.db'}")
    run_id, exp = parent.info.run_id, parent.info.experiment_id
    tags = parent.data.tags
    page = Page(tmp_path / "chrome")
    try:
        page.goto(f"{mlflow_ui}/#/experiments/{exp}/runs/{run_id}")
        page.wait_for_text(parent.info.run_name)
        # Lineage: the code hash and the Prefect flow run that produced the run, as tags.
        page.wait_for_text(tags["tokalign.code_hash"])
        page.wait_for_text(tags["prefect.flow_run_id"])
        # The run description is summary.md (the headline table), shown on the run page.
        summary = Path(client.download_artifacts(run_id, "summary.md", str(tmp_path)))
        description = tags.get("mlflow.note.content", "")
        assert description.strip() == summary.read_text().strip(), "no summary.md description"
        heading = next(line.strip("# ") for line in description.splitlines() if line.strip())
        page.wait_for_text(heading)
        # The produced models are MLflow models of this run; the page lists them by name.
        models = client.search_logged_models([exp], filter_string=f"source_run_id = '{run_id}'")
        assert models, "the demo's parent run has no logged model"
        for model in models:
            page.wait_for_text(model.name)
    finally:
        page.screenshot(tmp_path / "mlflow-run.png")
        page.close()


# ------------------------------------------------------------------------------ Prefect

@pytest.fixture
def prefect_server(tmp_path):
    """``prefect server start`` on a free port. The UI is told its API URL: it otherwise
    assumes port 4200 ("Can't connect to Server API at http://127.0.0.1:4200/api")."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect-home"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_API_URL=api)
    env.pop("PREFECT_API_URL", None)
    proc = start([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                  "--port", str(port)], env, tmp_path / "prefect-server.log")
    try:
        wait_http(f"{api}/health", 300, proc)
        yield api, env
    finally:
        stop(proc)


# The label of a form field, normalised as a person reads it: "target_tokenizer (Optional)"
# and "Target Tokenizer (Optional)" are both "target tokenizer".
_FIELD_INPUT = """((want) => {
  const norm = s => s.toLowerCase().replace(/_/g, ' ').replace(/\\(optional\\)/, '').trim();
  for (const span of document.querySelectorAll('.schema-form-property__label')) {
    if (norm(span.innerText) !== want) continue;
    // The label's "for" names no element: take the field from the property's own body.
    const body = span.closest('.schema-form-property').querySelector('.p-label__body');
    const el = body && body.querySelector('textarea, input[type=text]');
    if (!el || !el.offsetParent) continue;
    el.setAttribute('data-test-field', want);
    return `[data-test-field="${want}"]`;
  }
  return null;
})"""


def fill_field(page: Page, label: str, value: str) -> None:
    """Type ``value`` into the first visible text field labelled ``label``."""
    selector = page.wait_for(f"{_FIELD_INPUT}({json.dumps(label.lower())})", 60,
                             what=f"a text field labelled {label!r}")
    page.type_into(selector, value)


def _deployment_id(api: str, name: str) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True, httpx_settings={"base_url": api}) as client:
        return str(next(d.id for d in client.read_deployments() if d.name == name))


def _runs_with(api: str, deployment: str, value: str) -> list:
    """Flow runs of ``deployment`` whose parameters contain ``value`` anywhere."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True, httpx_settings={"base_url": api}) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(
            id=DeploymentFilterId(any_=[_deployment_id(api, deployment)])))
    return [r for r in runs if value in json.dumps(r.parameters)]


def test_prefect_form_fills_and_starts_a_pipeline_run(prefect_server, tmp_path, texts,
                                                      bpe_tok, sp_tok):
    from tests.flows.tiny import tiny_inputs, tiny_models

    api, env = prefect_server
    cfg = tiny_inputs(tmp_path / "inputs", texts[:200], bpe_tok, sp_tok)
    cfg, _ = tiny_models(tmp_path / "inputs", cfg, bpe_tok, sp_tok)
    cfg.save(tmp_path / "pipeline.json")
    typed = tmp_path / "typed-target"  # the tokenizer the user types in: not the default
    sp_tok.save_pretrained(typed)
    env = dict(env, PREFECT_API_URL=api, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    serve = start([sys.executable, "-m", "deployments.serve", "--config",
                   str(tmp_path / "pipeline.json"), "--run-dir", str(tmp_path / "run"),
                   "--limit", "1"], env, tmp_path / "serve.log")
    page = Page(tmp_path / "chrome")
    try:
        _wait_for_deployments(api, env, serve)
        ui = api.removesuffix("/api")
        page.goto(f"{ui}/deployments/deployment/{_deployment_id(api, 'pipeline')}/run")
        page.wait_for_text("Submit")
        fill_field(page, "Target Tokenizer", str(typed))
        page.click_text("Submit")
        deadline = time.time() + 60
        while not (runs := _runs_with(api, "pipeline", str(typed))) and time.time() < deadline:
            time.sleep(1)
        assert len(runs) == 1, "submitting the form started no run with the typed tokenizer"
        # The UI moves on to the new run's page.
        page.wait_for_text(runs[0].name, 60)
        run = _wait_finished(api, runs[0].id, 1200)
        assert run.state_type.value == "COMPLETED", (tmp_path / "serve.log").read_text()[-3000:]
    finally:
        page.screenshot(tmp_path / "prefect-form.png")
        page.close()
        stop(serve)


def _wait_finished(api: str, run_id, timeout: float):
    from prefect.client.orchestration import get_client

    deadline = time.time() + timeout
    while time.time() < deadline:
        with get_client(sync_client=True, httpx_settings={"base_url": api}) as client:
            run = client.read_flow_run(run_id)
        if run.state_type and run.state_type.value in ("COMPLETED", "FAILED", "CRASHED",
                                                        "CANCELLED"):
            return run
        time.sleep(3)
    raise TimeoutError(f"flow run {run_id} not finished after {timeout} s")
