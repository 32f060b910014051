"""Per-key compute locks (tokalign_core.store.locks): one holder per key across threads and
processes, released by the kernel when the holder dies (also after SIGKILL, also when the
holder forked a child), different keys independent, waits that time out with a message
naming the lock file and its holder."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tokalign_core.store import locks

ROOT = Path(__file__).resolve().parents[2]
KEY = "a" * 64


def _python(script: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", script, *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _read_line(proc: subprocess.Popen, prefix: str, timeout: float = 60) -> str:
    """The first stdout line of ``proc`` starting with ``prefix`` (its remainder)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if line.startswith(prefix):
            return line[len(prefix):].strip()
        if not line and proc.poll() is not None:
            break
    proc.kill()
    pytest.fail(f"child never printed {prefix!r}: {proc.stderr.read()[-2000:]}")


# A child that computes-or-reuses one cached value guarded by the key's lock, as the
# Prefect transaction does: check the cache, lock, re-check, compute + write, unlock.
COMPUTE_OR_REUSE = r"""
import sys, time
from pathlib import Path
from tokalign_core.store import locks

root, cache, start = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
while time.time() < start:
    time.sleep(0.002)
if cache.exists():
    print("RESULT reused-before-lock"); sys.exit()
with locks.acquire(root, sys.argv[4], label="stage 'toy'", timeout=60):
    if cache.exists():
        print("RESULT reused"); sys.exit()
    time.sleep(0.5)  # the computation
    tmp = cache.with_suffix(f".{time.time_ns()}")
    tmp.write_text("value")
    tmp.rename(cache)
print("RESULT computed")
"""


def test_racing_processes_on_one_key_compute_once(tmp_path):
    """Three processes released at the same instant: exactly one computes, the others
    wait for it and reuse its result; the lock file is gone afterwards."""
    start = str(time.time() + 1.5)
    procs = [_python(COMPUTE_OR_REUSE, str(tmp_path / "locks"), str(tmp_path / "cache"),
                     start, KEY) for _ in range(3)]
    results = sorted(_read_line(p, "RESULT ") for p in procs)
    for p in procs:
        assert p.wait(timeout=60) == 0, p.stderr.read()
    assert results.count("computed") == 1, results
    assert all(r.startswith("reused") for r in results if r != "computed"), results
    assert (tmp_path / "cache").read_text() == "value"
    assert not locks.lock_path(tmp_path / "locks", KEY).exists()


def test_threads_of_one_process_exclude_each_other(tmp_path):
    """flock is per open file, so threads contend like processes. A non-atomic
    read-modify-write under the lock never interleaves (also across release/unlink and
    re-creation of the lock file)."""
    counter, inside, overlaps = tmp_path / "n", [0], []
    counter.write_text("0")

    def work() -> None:
        for _ in range(40):
            with locks.acquire(tmp_path, KEY, timeout=30):
                inside[0] += 1
                overlaps.append(inside[0])
                value = int(counter.read_text())
                time.sleep(0.0005)
                counter.write_text(str(value + 1))
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert int(counter.read_text()) == 160
    assert max(overlaps) == 1


def test_locking_a_file_its_holder_just_unlinked_is_not_a_lock(tmp_path, monkeypatch):
    """The release race, forced: B opens the lock file, then A releases (unlinks it) and C
    creates and locks a fresh file, then B's flock on the orphaned inode succeeds. B must
    notice the path now names another file and report the key as busy (C holds it)."""
    a = locks.try_acquire(tmp_path, KEY, label="A")
    real, c = locks._flock, {}

    def racing(fd: int, flags: int) -> bool:
        if not c:  # B has opened A's file and is about to lock it
            c["started"] = True
            a.release()
            c["lock"] = locks.try_acquire(tmp_path, KEY, label="C")
        return real(fd, flags)

    monkeypatch.setattr(locks, "_flock", racing)
    b = locks.try_acquire(tmp_path, KEY, label="B")
    assert c["lock"] is not None and c["lock"].held
    assert b is None, "two holders of one key"
    assert locks.read_holder(c["lock"].path).label == "C"
    c["lock"].release()


HOLDER = r"""
import os, sys, time
from tokalign_core.store import locks

lock = locks.acquire(sys.argv[1], sys.argv[2], label="stage 'glove'")
if len(sys.argv) > 3:             # fork a child that outlives us (Dask/multiprocessing-like)
    pid = os.fork()
    if pid == 0:
        time.sleep(120)
        os._exit(0)
    print(f"CHILD {pid}", flush=True)
print(f"HELD {os.getpid()}", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("fork_child", [False, True], ids=["plain", "with-forked-child"])
def test_holder_killed_with_sigkill_frees_the_lock_at_once(tmp_path, fork_child):
    """SIGKILL the holder mid-compute: the next acquirer gets the lock immediately (no
    expiry to wait for), even when the holder forked a child that is still running."""
    args = (str(tmp_path), KEY) + (("fork",) if fork_child else ())
    proc = _python(HOLDER, *args)
    child = int(_read_line(proc, "CHILD ")) if fork_child else None
    pid = int(_read_line(proc, "HELD "))
    try:
        assert locks.is_locked(tmp_path, KEY)
        assert locks.try_acquire(tmp_path, KEY) is None
        holder = locks.read_holder(locks.lock_path(tmp_path, KEY))
        assert holder is not None and (holder.pid, holder.label) == (pid, "stage 'glove'")
        os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
        if child is not None:
            os.kill(child, 0)  # the forked child is alive and still has the file open
        started = time.monotonic()
        with locks.acquire(tmp_path, KEY, label="rerun", timeout=10) as lock:
            assert time.monotonic() - started < 2.0
            assert locks.read_holder(lock.path).pid == os.getpid()  # dead holder's record replaced
    finally:
        for p in (pid, child):
            if p is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
        proc.wait(timeout=30)
    assert not locks.is_locked(tmp_path, KEY)


def test_different_keys_are_held_at_the_same_time(tmp_path):
    """Two threads each take a different key and then meet at a barrier while holding it:
    if keys blocked each other, the barrier would break."""
    barrier, held = threading.Barrier(2, timeout=10), []

    def hold(key: str) -> None:
        with locks.acquire(tmp_path, key, timeout=5) as lock:
            barrier.wait()
            held.append(lock.held)

    threads = [threading.Thread(target=hold, args=(k,)) for k in ("a" * 64, "b" * 64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert held == [True, True]


def test_waiting_reports_the_holder_and_times_out_with_a_clear_message(tmp_path):
    lines: list[str] = []
    with locks.acquire(tmp_path, KEY, label="stage 'cooccur'") as lock:
        started = time.monotonic()
        with pytest.raises(locks.LockTimeoutError) as err:
            locks.acquire(tmp_path, KEY, label="twin", timeout=0.4, notify=lines.append,
                          report_every=0.1)
        waited = time.monotonic() - started
        assert lock.held
    assert 0.4 <= waited < 3.0
    message = str(err.value)
    assert str(lock.path) in message and f"PID {os.getpid()}" in message
    assert "stage 'cooccur'" in message and locks.TIMEOUT_ENV in message
    assert err.value.holder.pid == os.getpid() and err.value.path == lock.path
    # The first progress line comes at once, then about every report_every seconds.
    assert len(lines) >= 2
    assert lines[0].startswith(f"waiting for PID {os.getpid()} computing stage 'cooccur'")
    assert str(lock.path) in lines[0]


def test_release_unlinks_and_is_idempotent(tmp_path):
    lock = locks.try_acquire(tmp_path, KEY, label="x")
    assert lock is not None and lock.held and lock.path.exists()
    assert locks.try_acquire(tmp_path, KEY) is None
    lock.release()
    lock.release()
    assert not lock.held and not lock.path.exists()
    assert not locks.is_locked(tmp_path, KEY)
    assert locks.wait_until_free(tmp_path, KEY, timeout=0.1)
    again = locks.try_acquire(tmp_path, KEY)
    assert again is not None
    assert not locks.wait_until_free(tmp_path, KEY, timeout=0.2)
    again.release()


@pytest.mark.parametrize("key", ["", "../etc/passwd", ".hidden", "a/b", "x" * 201])
def test_keys_that_are_not_plain_names_are_rejected(tmp_path, key):
    with pytest.raises(ValueError, match="lock key"):
        locks.lock_path(tmp_path, key)


def test_default_timeout_from_the_environment(monkeypatch):
    monkeypatch.delenv(locks.TIMEOUT_ENV, raising=False)
    assert locks.default_timeout() == locks.DEFAULT_TIMEOUT_S
    monkeypatch.setenv(locks.TIMEOUT_ENV, "12.5")
    assert locks.default_timeout() == 12.5
    monkeypatch.setenv(locks.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match=locks.TIMEOUT_ENV):
        locks.default_timeout()
