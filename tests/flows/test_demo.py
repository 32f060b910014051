"""``tokalign demo --quick`` end to end in a fresh process, twice: the first run builds
everything, the second is served from the cache (slow: minutes on 2 cores)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _demo(run_dir: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "tokalign_core", "demo", "--quick",
                           "--run-dir", str(run_dir)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=3600)


@pytest.mark.slow
def test_quick_demo_runs_then_reruns_from_cache(tmp_path):
    from mlflow import MlflowClient

    first = _demo(tmp_path / "demo")
    assert first.returncode == 0, first.stderr[-4000:]
    for title in ("Bits per byte by method", "Compression per language", "Alignment metrics",
                  "aligned (init)", "aligned (adapted)", "distilled", "mlflow ui",
                  "models:", "MLflow store: sqlite:///"):
        assert title in first.stdout, title
    models = tmp_path / "demo" / "models"
    assert f"{models / 'aligned-adapted'}" in first.stdout
    assert (models / "aligned-adapted" / "README.md").read_text().startswith("---\n")
    assert "Loading weights" not in first.stdout + first.stderr  # no transformers bars
    second = _demo(tmp_path / "demo")
    assert second.returncode == 0, second.stderr[-4000:]
    line = next(x for x in second.stdout.splitlines() if x.startswith("demo finished"))
    done, total = line.split("(")[1].split(" stages")[0].split("/")
    assert done == total, line
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'demo' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tokalign")
    runs = client.search_runs([exp.experiment_id], max_results=500)
    # search_runs lists the newest first: sort, so demos[0] is the run that computed
    # (the rerun's nested runs are cache records without metrics).
    demos = sorted((r for r in runs if r.data.tags.get("tokalign.flow") == "demo"),
                   key=lambda r: r.info.start_time)
    assert demos[0].info.run_name == "demo: micro (pretrained here) -> qwen2 (tokalign++)"
    assert len(demos) == 2 and all(r.info.status == "FINISHED" for r in demos)
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == demos[0].info.run_id]
    assert any(r.data.metrics for r in nested)
    # A stage's nested run has the same name whether it computed or came from the cache.
    cached = {r.info.run_name for r in runs
              if r.data.tags.get("mlflow.parentRunId") == demos[1].info.run_id}
    computed = {r.info.run_name for r in nested}
    assert {"glove:source", "glove:target", "pretrain:source", "adapt"} <= computed
    assert computed <= cached, sorted(computed - cached)
    assert client.list_artifacts(demos[0].info.run_id, "plots")
