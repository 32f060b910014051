"""Runs sharing a machine (and a run folder) must not share one Prefect SQLite database
(issue 16 item 13): the embedded default gives each live run its own Prefect home."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows import env

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import os, sys, time
from pathlib import Path
from flows.env import embedded_defaults
Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)  # as `tokalign demo` does
embedded_defaults(sys.argv[1])
from prefect import flow, task

@task
def add(x):
    return x + 1

@flow
def tiny():  # many task runs: both servers write their states at once
    return sum(f.result() for f in add.map(range(40)))

gate = Path(sys.argv[2])
(gate / f"ready-{os.getpid()}").touch()
while not (gate / "go").exists():
    time.sleep(0.01)
print("HOME", os.environ["PREFECT_HOME"], flush=True)
print("RESULT", tiny(), flush=True)
"""


def _clean_env(monkeypatch) -> None:
    for name in ("PREFECT_HOME", "PREFECT_API_URL"):
        monkeypatch.delenv(name, raising=False)


def test_a_second_live_run_gets_its_own_home_and_dead_ones_are_swept(tmp_path, monkeypatch):
    _clean_env(monkeypatch)
    run = tmp_path / "run"
    first = env.claim_prefect_home(run)
    assert first.home == run / ".prefect"
    second = env.claim_prefect_home(run)  # the first is still held: a concurrent run
    assert second.home != first.home and second.home.parent == run / env.CONCURRENT_HOMES
    assert second.home.is_dir()
    second.release()
    assert not second.home.exists()  # a concurrent home goes away with its run
    first.release()
    assert first.home.is_dir()  # the shared home keeps its history
    again = env.claim_prefect_home(run)
    assert again.home == run / ".prefect"  # free again: reused
    # A concurrent run killed with SIGKILL leaves its home; the next claim sweeps it.
    code = ("import sys, os\nfrom flows import env\nh = env.claim_prefect_home(sys.argv[1])\n"
            "print(h.home, flush=True)\nos.kill(os.getpid(), 9)\n")
    out = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    left = Path(out.stdout.strip())
    assert left.parent == run / env.CONCURRENT_HOMES and left.is_dir(), out.stderr
    third = env.claim_prefect_home(run)
    assert not left.exists()
    third.release()
    again.release()


def test_embedded_defaults_respects_an_explicit_home_or_server(tmp_path, monkeypatch):
    _clean_env(monkeypatch)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "mine"))
    env.embedded_defaults(tmp_path / "run")
    assert os.environ["PREFECT_HOME"] == str(tmp_path / "mine")
    _clean_env(monkeypatch)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    env.embedded_defaults(tmp_path / "run")
    assert "PREFECT_HOME" not in os.environ
    assert not (tmp_path / "run" / ".prefect").exists()


@pytest.mark.slow
@pytest.mark.integration
def test_two_flows_started_together_on_one_run_folder(tmp_path):
    """Before: both ephemeral servers migrated one ``<run>/.prefect/prefect.db`` at once
    and start-up logged ``sqlite3.OperationalError: database is locked``."""
    run, gate = tmp_path / "run", tmp_path / "gate"
    gate.mkdir()
    child_env = {k: v for k, v in os.environ.items()
                 if k not in ("PREFECT_HOME", "PREFECT_API_URL")}
    # A fresh home migrates its database on first start: minutes on a loaded 2-core box.
    child_env.update(PYTHONPATH=str(ROOT), PREFECT_LOGGING_LEVEL="INFO",
                     PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="900")
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(run), str(gate)], cwd=ROOT,
                              env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    deadline = time.time() + 300
    while len(list(gate.glob("ready-*"))) < 2:
        assert all(p.poll() is None for p in procs), [p.stderr.read() for p in procs]
        assert time.time() < deadline, "children never reached the barrier"
        time.sleep(0.02)
    (gate / "go").touch()
    outs = [p.communicate(timeout=900) for p in procs]
    homes = set()
    for proc, (stdout, stderr) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, stderr[-3000:]
        assert "RESULT 820" in stdout, stdout
        assert "database is locked" not in stderr, stderr[-3000:]
        assert "OperationalError" not in stderr, stderr[-3000:]
        homes.add(next(ln.split(" ", 1)[1] for ln in stdout.splitlines()
                       if ln.startswith("HOME ")))
    assert len(homes) == 2 and str(run / ".prefect") in homes
    assert not list((run / env.CONCURRENT_HOMES).glob("*")), "concurrent home left behind"
