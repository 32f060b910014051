"""Where the stage tasks run: the artifact store and the executor of a
:class:`~tasks.caching.Workspace`, the run's logger, the environment of training
subprocesses, and the one-time transformers import."""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tasks.caching import Workspace
from tokalign_core.runtime.executor import Executor, make_executor
from tokalign_core.store.artifacts import ArtifactStore

log = logging.getLogger(__name__)


_WARM_LOCK = threading.Lock()
_WARM = False


def warm_imports() -> None:
    """Import transformers' lazy attributes once per process, under a lock.

    Its lazy module loader is not thread-safe: two stages resolving ``AutoTokenizer`` at the
    same moment in Prefect's worker threads can fail with ImportError. Called when a stage
    really executes (:func:`tasks.lineage.stage_run`), never for one served from the cache:
    a fully cached rerun does not import transformers or torch at all (3-6 s here)."""
    global _WARM
    if _WARM:
        return
    with _WARM_LOCK:
        if _WARM:
            return
        try:
            from transformers import (  # noqa: F401
                AutoConfig,
                AutoModelForCausalLM,
                AutoTokenizer,
                PreTrainedTokenizerFast,
            )
        except ImportError as exc:  # a broken install fails later with the stage's own error
            log.warning("could not pre-import transformers: %s", exc)
        _WARM = True


def store(ws: Workspace) -> ArtifactStore:
    """The run's content-addressed artifact store (``<run_dir>/artifacts``)."""
    return ArtifactStore(ws.artifact_root)


_CLUSTER_LOCK = threading.Lock()
_CLUSTERS: dict[int, Any] = {}


def shared_local_cluster(n_workers: int) -> str:
    """Address of one Dask LocalCluster per process and size, started on first use and
    closed at exit: concurrent tasks (both tokenizations, both co-occurrences) share it
    instead of each starting worker processes on the same cores."""
    with _CLUSTER_LOCK:
        if n_workers not in _CLUSTERS:
            from dask.distributed import LocalCluster

            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                   host="127.0.0.1", dashboard_address=None)
            atexit.register(cluster.close)
            _CLUSTERS[n_workers] = cluster
        return _CLUSTERS[n_workers].scheduler_address


@contextmanager
def executor(ws: Workspace, workers: int | None = None) -> Iterator[Executor]:
    """Serial, a Dask LocalCluster (``workers > 1``, threads pinned) or ``ws.dask_address``.

    ``TOKALIGN_DASK_ADDRESS`` (set by the compose stack) is used when the workspace names
    no scheduler. Dask lives only inside tasks: each task opens and closes its own client,
    so Prefect's task runner never ships work to Dask workers (which would start a Prefect
    server each).
    """
    n = ws.workers if workers is None else workers
    address = ws.dask_address or os.environ.get("TOKALIGN_DASK_ADDRESS") or None
    if address is None and n > 1:
        address = shared_local_cluster(n)
    ex = make_executor(workers=n, address=address, progress=ws.progress)
    try:
        yield ex
    finally:
        ex.close()


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's logger of the calling task/flow run (its lines reach the Prefect UI), or
    this module's logger outside a run."""
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a Prefect run context
        return log


def pinned_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with math threads pinned (for training subprocesses)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra or {})
    return env
