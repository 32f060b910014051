"""Stage tasks take a per-cache-key compute lock on a miss (tasks/locking.py): of two
identical task runs at once one computes and the other waits and is served ``Cached``;
other keys are not blocked; a holder killed with SIGKILL does not make the rerun wait."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tasks import locking
from tasks.caching import CONTENT_HASH, Workspace
from tasks.common import stage_task
from tasks.runtime import store
from tokalign_core.store import locks
from tokalign_core.store.artifacts import ArtifactRef, verify

REPO = Path(__file__).resolve().parents[2]
CODE_HASH = "compute-lock-test"

# Set per test: "inside" is set by a held run once it computes, "go" lets it finish.
GATE: dict[str, threading.Event] = {}


@stage_task("toy-gated", retries=0)
def gated(ws: Workspace, src: Path, hold: bool = False) -> ArtifactRef:
    """Upper-case ``src`` into an artifact, logging each execution to <run_dir>/calls.txt;
    with ``hold`` it waits inside the compute (lock held) until GATE["go"] is set."""
    ws.root.mkdir(parents=True, exist_ok=True)
    with open(ws.root / "calls.txt", "a") as fh:
        fh.write(f"{Path(src).name} {os.getpid()}\n")
    if hold:
        GATE["inside"].set()
        if not GATE["go"].wait(120):
            raise RuntimeError("the test never opened the gate")
        if "fail" in GATE and GATE["fail"].is_set():
            GATE["fail"].clear()  # only the first run through fails
            raise RuntimeError("injected failure inside the compute")
    with store(ws).writer("gated") as w:
        w.path("u.txt").write_text(Path(src).read_text().upper())
    return w.ref


def calls(ws: Workspace) -> list[str]:
    f = ws.root / "calls.txt"
    return f.read_text().splitlines() if f.exists() else []


def wait_for(predicate: Any, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def setup(prefect_api, tmp_path, monkeypatch) -> tuple[Workspace, Any, list[str]]:
    """A workspace, the gated task bound to its result storage, and the list the lock
    manager's waiting lines go to."""
    from tokalign_core.store import hashing

    monkeypatch.setattr(hashing, "code_hash", lambda: CODE_HASH)
    GATE.clear()
    GATE.update(inside=threading.Event(), go=threading.Event())
    waits: list[str] = []
    monkeypatch.setattr(locking, "_notify", waits.append)
    ws = Workspace(run_dir=str(tmp_path / "run"))
    return ws, gated.with_options(result_storage=ws.results_dir), waits


def test_policy_is_serializable_with_the_compute_locks():
    assert str(CONTENT_HASH.isolation_level) in {"SERIALIZABLE", "IsolationLevel.SERIALIZABLE"}
    assert CONTENT_HASH.lock_manager is locking.COMPUTE_LOCKS


def _start(task: Any, ws: Any, src: Path, states: dict[str, Any],
           name: str) -> threading.Thread:
    """Run the gated ``task`` on ``src`` in a thread; its final state lands in
    ``states[name]``."""
    def run() -> None:
        states[name] = task(ws, src, True, return_state=True)

    thread = threading.Thread(target=run, name=name)
    thread.start()
    return thread


def test_twin_runs_one_computes_the_other_is_cached(setup, tmp_path):
    """Run 1 computes and is held inside its compute; its twin (same key) blocks on the
    lock and reports the holder; a run with another key completes meanwhile; once run 1
    finishes, the twin is served from run 1's record without computing."""
    ws, task, waits = setup
    src, other = tmp_path / "in.txt", tmp_path / "other.txt"
    src.write_text("hello")
    other.write_text("other")
    states: dict[str, Any] = {}
    first = _start(task, ws, src, states, "first")
    assert GATE["inside"].wait(120)
    lock_files = list((ws.results_dir / locking.LOCK_DIR).glob("*.lock"))
    assert len(lock_files) == 1
    holder = locks.read_holder(lock_files[0])
    assert holder.pid == os.getpid() and "toy-gated" in holder.label

    twin = _start(task, ws, src, states, "twin")
    wait_for(lambda: waits, "the twin to wait for the lock")
    assert waits[0].startswith(f"waiting for PID {os.getpid()} computing stage 'toy-gated'")
    assert str(lock_files[0]) in waits[0]

    # Another key: not blocked by the held one.
    third = task(ws, other, False, return_state=True)
    assert third.name == "Completed" and "first" not in states and "twin" not in states

    GATE["go"].set()
    first.join(120)
    twin.join(120)
    assert states["first"].name == "Completed"
    assert states["twin"].name == "Cached"
    ref = states["twin"].result()
    assert ref == states["first"].result()
    verify(ref, full=True)
    assert [c.split()[0] for c in calls(ws)] == ["in.txt", "other.txt"]  # twin never ran
    assert not list((ws.results_dir / locking.LOCK_DIR).glob("*.lock"))  # all released


def test_a_failed_holder_lets_the_twin_compute(setup, tmp_path):
    """If the first run fails inside its compute, the lock is released and the waiting twin
    finds no record, so it computes itself."""
    ws, task, waits = setup
    src = tmp_path / "in.txt"
    src.write_text("abc")
    states: dict[str, Any] = {}
    first = _start(task, ws, src, states, "first")
    assert GATE["inside"].wait(120)
    GATE["fail"] = threading.Event()
    GATE["fail"].set()
    twin = _start(task, ws, src, states, "twin")
    wait_for(lambda: waits, "the twin to wait for the lock")
    GATE["go"].set()
    first.join(120)
    twin.join(120)
    assert states["first"].is_failed()
    assert states["twin"].name == "Completed", states["twin"]
    assert len(calls(ws)) == 2


CHILD = r"""
import sys
from pathlib import Path
from tokalign_core.store import hashing
hashing.code_hash = lambda: sys.argv[3]
from tasks.caching import Workspace
from tests.tasks.test_compute_lock import GATE, gated
import threading
GATE.update(inside=threading.Event(), go=threading.Event())   # never opened: held till killed
ws = Workspace(run_dir=sys.argv[1])
gated.with_options(result_storage=ws.results_dir)(ws, Path(sys.argv[2]), True)
"""


def test_holder_killed_with_sigkill_does_not_make_the_rerun_wait(setup, prefect_api, tmp_path):
    """A child process computes the stage (lock held) and is SIGKILLed; the rerun takes
    the lock at once (no waiting line), computes, and is not served the dead run's work."""
    ws, task, waits = setup
    src = tmp_path / "in.txt"
    src.write_text("kill me")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": prefect_api,
           "PREFECT_LOGGING_LEVEL": "WARNING", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(ws.root), str(src), CODE_HASH],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    lock_dir = ws.results_dir / locking.LOCK_DIR
    try:
        wait_for(lambda: calls(ws) or proc.poll() is not None, "the child to compute", 300)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        [lock_file] = list(lock_dir.glob("*.lock"))
        assert locks.read_holder(lock_file).pid == proc.pid
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(60)
    assert lock_file.exists()  # a killed holder cannot clean up: the file stays, unlocked

    GATE["go"].set()
    started = time.monotonic()
    state = task(ws, src, True, return_state=True)
    assert state.name == "Completed"
    assert not waits, waits
    assert time.monotonic() - started < 60  # the default wait would be 24 h
    assert [c.split()[1] for c in calls(ws)] == [str(proc.pid), str(os.getpid())]
    verify(state.result(), full=True)
    assert not lock_file.exists()
