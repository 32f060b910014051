"""The Dask executor's local cluster: started lazily, workers forked from this process
(issue 18, item 4: spawned workers re-imported everything, 4-10 s per run)."""

from __future__ import annotations

import os

import pytest

from tokalign_core.runtime import executor as ex_mod

# Set after the executor is created but before its first map: only a worker forked at the
# first map (not one spawned, nor forked at construction) sees it.
MARK: dict[str, int] = {}


def _seen(_: int) -> tuple[int, int | None]:
    return os.getpid(), MARK.get("parent")


def test_serial_executor_is_not_distributed():
    ex = ex_mod.make_executor(1)
    assert ex.distributed is False and ex.n_workers == 1
    assert ex.map(lambda x: x * 2, [1, 2]) == [2, 4]


def test_unknown_start_method_is_refused():
    with pytest.raises(ValueError, match="start_method 'thread'"):
        ex_mod.DaskExecutor(start_method="thread")


def test_a_process_with_threads_is_never_forked():
    """Forking while another thread holds a lock hangs the child (the full test suite hung
    in LocalCluster start-up this way): with a second thread alive, workers spawn."""
    import threading

    assert ex_mod.resolve_start_method("fork") == "fork"  # an explicit choice is kept
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)
    other.start()
    try:
        assert ex_mod.resolve_start_method(None) == "spawn"
    finally:
        stop.set()
        other.join()
    if threading.active_count() == 1:
        assert ex_mod.resolve_start_method(None) == "fork"


@pytest.mark.slow  # starts a LocalCluster
def test_local_cluster_starts_on_first_map_with_forked_workers():
    ex = ex_mod.DaskExecutor(n_workers=2, progress=False, start_method="fork")
    try:
        assert ex._client is None and ex.distributed  # nothing started yet
        MARK["parent"] = os.getpid()
        out = ex.map(_seen, [0, 1, 2, 3])
        assert all(pid != os.getpid() for pid, _ in out)  # ran in worker processes
        assert all(mark == os.getpid() for _, mark in out)  # forked after MARK was set
        assert ex.n_workers == 2
    finally:
        ex.close()
        MARK.clear()


def test_concurrent_first_use_starts_one_cluster(monkeypatch):
    """A stage's map in one thread and a monitor calling ``.client`` in another (the
    worker-kill test does this) must share one LocalCluster, not start two."""
    import threading
    import time

    ex = ex_mod.DaskExecutor(n_workers=2, progress=False)
    calls = []

    def slow_connect():
        calls.append(threading.get_ident())
        time.sleep(0.2)  # cluster start takes seconds: both threads get here first
        ex._client = object()

    monkeypatch.setattr(ex, "_connect", slow_connect)
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(ex.client)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and seen[0] is seen[1]
    ex._client = None  # nothing real to close
