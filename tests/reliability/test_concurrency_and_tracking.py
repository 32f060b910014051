"""Concurrency and tracking faults (issue 8, item 2): identical writers racing on one
store leave one intact artifact; the MLflow server being down does not stop a run, whose
metrics stay in the local JSONL log."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tokalign_core.store.artifacts import MANIFEST, ArtifactRef, verify

ROOT = Path(__file__).resolve().parents[2]

RACER = r"""
import sys, time
import pytest

from tokalign_core.store.artifacts import ArtifactStore
store = ArtifactStore(sys.argv[1])
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.005)
with store.writer("race", meta={"same": True}) as w:
    for i in range(50):
        w.path(f"f{i}.bin").write_bytes(bytes([i]) * 20000)
print(w.ref.model_dump_json())
"""


def test_identical_writers_racing_leave_one_intact_artifact(tmp_path):
    import time

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = str(time.time() + 2.5)  # both processes start writing at the same moment
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), start], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    refs = {ArtifactRef.model_validate_json(o.strip().splitlines()[-1]) for o, _ in outs}
    assert len(refs) == 1  # same content -> same digest -> same folder for everyone
    ref = refs.pop()
    verify(ref)
    assert [p.name for p in (tmp_path / "race").iterdir()] == [Path(ref.path).name]
    assert not any((tmp_path / ".tmp").iterdir())  # losers cleaned their temp folders
    assert len(json.loads((Path(ref.path) / MANIFEST).read_text())) == 51


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the with block ends


@pytest.mark.slow  # importing mlflow takes 10-25 s on a loaded machine
def test_mlflow_down_keeps_metrics_locally_and_says_so(tmp_path):
    """A run attached to an MLflow server that is not there: logging does not raise, the
    JSONL log has every step, and one warning says metrics continue locally."""
    script = f"""
import json, logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
from tokalign_core.runtime.tracking import default_logger
lg = default_logger({str(tmp_path / "m.jsonl")!r}, prefix="t/")
for step in range(5):
    lg.log({{"loss": 1.0 / (step + 1)}}, step)
lg.close()
print(json.dumps([type(x).__name__ for x in lg.loggers]))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_RUN_ID": "0" * 32,
           "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{_closed_port()}",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["JsonlLogger", "MlflowLogger"]
    rows = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert out.stderr.count("metrics continue in the local JSONL log") == 1
