"""What a person sees in Prefect: task runs named by stage, progress and key numbers in
the log, rounded table artifacts (issue 17, items 3 and 7)."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys

from prefect import flow

from flows.common import Runner
from tasks.caching import Workspace
from tasks.common import stage_run_name, stage_task
from tasks.lineage import key_numbers, stage_run
from tasks.runtime import store
from tasks.stages import follow_training, step_line
from tokalign_core.evaluate.tables import rounded


@stage_task("ux-toy", retries=0)
def _toy(ws: Workspace, text: str) -> object:
    with stage_run(ws, "ux-toy") as run, store(ws).writer("toy") as w:
        w.path("t.txt").write_text(text)
        run.metrics({"chars": len(text), "loss": 0.123456})
        logging.getLogger("tokalign_core.embed.glove").info("glove iteration 1: cost %d", len(text))
    return w.ref


@flow(name="ux-toy-flow")
def _toy_flow(ws: Workspace) -> str:
    from prefect.runtime import flow_run

    r = Runner(ws)
    r.run("glove:source", _toy, "abc")
    r.run("glove:target", _toy, "defg")
    return str(flow_run.id)


def test_task_runs_are_named_by_stage_and_log_key_numbers(prefect_api, tmp_path, caplog,
                                                          monkeypatch):
    import io

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from tokalign.cli import _RunAwareFormatter

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    printed = io.StringIO()
    handler = logging.StreamHandler(printed)
    handler.setFormatter(_RunAwareFormatter("%(name)s: %(message)s"))
    core_log = logging.getLogger("tokalign_core.embed.glove")
    core_log.addHandler(handler)
    try:
        with caplog.at_level(logging.INFO):
            flow_run_id = _toy_flow(Workspace(run_dir=str(tmp_path / "run")))
    finally:
        core_log.removeHandler(handler)
    # A library line inside a stage is labelled with the stage (source vs target GloVe).
    assert "tokalign_core.embed.glove: task 'glove:source': glove iteration 1: cost 3" in \
        printed.getvalue()
    assert "task 'glove:target': glove iteration 1: cost 4" in printed.getvalue()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[flow_run_id])))
    assert sorted(r.name for r in runs) == ["glove:source", "glove:target"]
    done = [r.getMessage() for r in caplog.records if " done in " in r.getMessage()]
    assert any(m.startswith("glove:target done in") and "chars=4" in m and "loss=0.1235" in m
               for m in done), done


def test_stage_run_name_reads_the_label_from_the_workspace():
    assert stage_run_name({"ws": Workspace(stage_label="init:mean")}) == "init:mean"
    assert stage_run_name({"ws": {"stage_label": "adapt"}}) == "adapt"


def test_key_numbers_are_rounded_and_capped():
    text = key_numbers({f"m{i}": 1 / 3 for i in range(10)})
    assert text.startswith("; m0=0.3333, m1=0.3333") and "(+2 more in MLflow)" in text
    assert key_numbers({}) == ""


def test_table_artifact_values_are_rounded():
    assert rounded(3.14159265) == 3.142 and rounded(20710.0) == 20710
    assert rounded(math.nan) is None and rounded("x") == "x" and rounded(7) == 7


def test_training_progress_is_logged_while_it_runs(tmp_path, caplog):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"step": 99, "loss": 9.0}) + "\n")  # a previous attempt
    script = (
        "import json, time, sys\n"
        "p = sys.argv[1]\n"
        "for step in (1, 2, 3):\n"
        "    open(p, 'a').write(json.dumps({'step': step, 'stage': 1, 'loss': 4.0 - step,\n"
        "                                   'lr': 0.00064}) + '\\n')\n"
        "    time.sleep(0.3)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(metrics)])
    with caplog.at_level(logging.INFO):
        assert follow_training(proc, metrics, "adapt", 3, every=0.1) == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("adapt:")]
    assert len(lines) >= 2, lines  # progress during the run, not only at the end
    assert lines[-1] == "adapt: step 3/3 (stage 1), loss 1, lr 0.00064"
    assert not any("99" in line for line in lines)


def test_step_line_formats_distillation_numbers():
    row = {"step": 5, "loss": 2.5, "kl": 0.25, "tokens_per_s": 1234.4}
    assert step_line(row, 24) == "step 5/24, loss 2.5, kl 0.25, 1234 tokens/s"
