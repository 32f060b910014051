"""Map a pure per-shard function over shards: serially, or on a Dask cluster.

Core stages are written as ``per_shard(item) -> result`` plus an explicit merge, and take
an :class:`Executor`. :class:`SerialExecutor` is the single-process reference; the Dask
executor (dask imported lazily) uses a LocalCluster by default or an existing scheduler
address, so the CLI can run one stage on a cluster without Prefect.

Start-up is most of what two local workers cost on a short run (issue 18): spawned
workers re-import Dask, NumPy, numba kernels and the tokenizer (4-10 s on 2 shared cores).
So the LocalCluster starts on the first :meth:`DaskExecutor.map`, after the stage has
loaded its tokenizer and compiled kernels, and its workers are *forked* from this process
when that is safe (POSIX, and no other thread running at that moment): they inherit all of
that and are up in ~0.3 s. A process with threads (a Prefect flow's task runner, a test
harness, MLflow's lineage thread) is never forked: a lock held by another thread at the
fork stays locked in the child forever, and the cluster start hangs. Those spawn.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Executor(Protocol):
    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]: ...

    def close(self) -> None: ...


class SerialExecutor:
    """Run in this process, in order. The reference every parallel result must equal."""

    n_workers = 1
    #: Runs in this process (nothing to warm up or hand over to other processes).
    distributed = False

    def __init__(self, progress: bool = False, desc: str = "shards"):
        self.progress = progress
        self.desc = desc

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        it: Iterable[Any] = items
        if self.progress:
            from tqdm.auto import tqdm

            it = tqdm(items, desc=self.desc, unit="shard")
        return [fn(x) for x in it]

    def close(self) -> None:
        return None


def _pin_threads() -> None:
    # Two cores oversubscribed make torch/BLAS 4-6x slower: one thread per worker.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    # Only an already imported torch needs pinning: a later import reads OMP_NUM_THREADS=1,
    # and importing torch here costs every worker ~5-10 s of start-up for nothing.
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


# A LocalCluster on the cores that do the work: Dask's sampling profiler (a thread walking
# every worker's stack each 10 ms) and its 0.5 s system monitors cost CPU the shards need
# (issue 18, item 4); nothing here reads their output (no dashboard).
LOCAL_QUIET = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.interval": "5s",
}


def resolve_start_method(requested: str | None) -> str:
    """``requested``, or for None: ``fork`` when it is safe (POSIX, this is the only thread
    running), else ``spawn``."""
    if requested is not None:
        return requested
    return "fork" if os.name == "posix" and threading.active_count() == 1 else "spawn"


class DaskExecutor:
    """Dask ``Client.map`` + gather, results in input order.

    ``address=None`` starts a LocalCluster (processes, one thread each, bound to
    127.0.0.1) on the first :meth:`map`, its workers started by ``start_method``
    (``fork``: inherit this process's imports and caches; ``spawn``: Dask's default, what
    a process with threads that must not be forked needs; ``None``: fork when this
    process runs no other thread at that moment, else spawn); otherwise connects to the
    given scheduler (``tcp://host:8786``) at once, so a wrong address fails early.
    """

    #: Workers are other processes: results go through the artifact root, not memory.
    distributed = True

    def __init__(self, address: str | None = None, n_workers: int = 2, progress: bool = True,
                 start_method: str | None = None):
        try:
            import dask.distributed  # noqa: F401
        except ImportError as exc:  # pragma: no cover - dask is a core dependency
            raise ImportError("the Dask executor needs `pip install dask[distributed]`") from exc
        if os.name != "posix":  # no fork outside POSIX
            start_method = "spawn"
        if start_method not in (None, "fork", "spawn", "forkserver"):
            raise ValueError(f"start_method {start_method!r}: choose fork, spawn or forkserver")
        self._cluster = None
        self._client = None
        self._address = address
        self._local_workers = n_workers
        self._start_method = start_method
        #: How the LocalCluster's workers were started (``fork``/``spawn``/...), once they
        #: are; None before, and for a remote scheduler.
        self.start_method: str | None = None
        self.progress = progress
        # The first use may come from two threads at once (a stage's map and a monitor):
        # one cluster for both.
        self._lock = threading.Lock()
        if address:
            self._connect()

    def _connect(self) -> None:
        from dask.distributed import Client, LocalCluster

        if self._address:
            self._client = Client(self._address)
        else:
            import dask

            self.start_method = resolve_start_method(self._start_method)
            if self.start_method != "fork" and self._start_method is None:
                # worth knowing: spawned workers re-import everything (seconds per worker)
                log.info("LocalCluster workers spawn (threads running here: %s)",
                         [t.name for t in threading.enumerate()])
            with dask.config.set({"distributed.worker.multiprocessing-method":
                                  self.start_method, **LOCAL_QUIET}):
                self._cluster = LocalCluster(
                    n_workers=self._local_workers, threads_per_worker=1, processes=True,
                    host="127.0.0.1", dashboard_address=None,
                )
            self._client = Client(self._cluster)
        self._client.run(_pin_threads)

    @property
    def client(self) -> Any:
        """The Dask client (starts the LocalCluster when it is not running yet)."""
        with self._lock:
            if self._client is None:
                self._connect()
            return self._client

    @property
    def n_workers(self) -> int:
        """Workers the work is spread over (the cluster's current count once connected)."""
        if self._client is None:
            return self._local_workers
        return max(1, len(self._client.scheduler_info().get("workers", {})))

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        futures = self.client.map(fn, list(items), pure=False)
        if self.progress:
            import contextlib
            import sys

            from dask.distributed import progress

            # Dask's text bar writes to stdout, where the commands print the artifact path
            # that scripts read: it goes to stderr, like every other progress bar here.
            with contextlib.redirect_stdout(sys.stderr):
                progress(futures, notebook=False)
        return self.client.gather(futures)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_executor(
    workers: int = 1, address: str | None = None, progress: bool = False
) -> Executor:
    """Serial for ``workers <= 1`` and no address; Dask otherwise."""
    if address or workers > 1:
        return DaskExecutor(address=address, n_workers=max(workers, 1), progress=progress)
    return SerialExecutor(progress=progress)
