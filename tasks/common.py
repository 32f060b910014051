"""Shared plumbing of the stage tasks: the task decorator, the artifact store and the
executor of a :class:`~tasks.caching.Workspace`.

Every stage task is a Prefect task with the content-hash cache policy, persisted results
(small refs and dicts only, as JSON: :mod:`tasks.records`), and retries for transient
I/O errors only.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from prefect import task

from tasks.caching import CONTENT_HASH, Workspace, retry_on_transient_io
from tasks.records import JSON_RESULTS
from tokalign_core.runtime.executor import Executor, make_executor
from tokalign_core.store.artifacts import ArtifactStore

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger(__name__)

RETRIES = 2
RETRY_DELAY_SECONDS = 5


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


def stage_run_name(parameters: dict[str, Any]) -> str:
    """A task run's name: the flow's label for the stage (``glove:source``, ``init:mean``,
    ``evaluate:distilled``) from the workspace argument, else the task's name."""
    ws = parameters.get("ctx", parameters.get("ws"))
    label = ws.get("stage_label") if isinstance(ws, dict) else getattr(ws, "stage_label", None)
    if label:
        return str(label)
    from prefect.runtime import task_run

    return str(task_run.task_name or "stage")


def stage_task(name: str, **options: Any) -> Callable[[F], F]:
    """``@task`` with content-hash caching, persisted results, I/O-only retries, and runs
    named by the flow's stage label (:func:`stage_run_name`)."""
    defaults: dict[str, Any] = {
        "name": name,
        "task_run_name": stage_run_name,
        "cache_policy": CONTENT_HASH,
        "persist_result": True,
        "result_serializer": JSON_RESULTS,  # never pickle: see tasks/records.py
        "retries": RETRIES,
        "retry_delay_seconds": RETRY_DELAY_SECONDS,
        "retry_condition_fn": retry_on_transient_io,
        "log_prints": True,
    }
    defaults.update(options)
    return lambda fn: task(**defaults)(with_context(fn))  # type: ignore[return-value]


def with_context(fn: F) -> F:
    """``fn`` called with its first argument as it declares it: a task whose first
    parameter is ``ctx`` gets a :class:`~tasks.context.StageContext` (built from a bare
    :class:`Workspace` when a caller passes one), one whose first parameter is ``ws`` gets
    the Workspace. The signature and source stay ``fn``'s (``functools.wraps``), so Prefect
    binds the same parameters and the cache key's task source is ``fn``'s own."""
    first = next(iter(inspect.signature(fn).parameters))

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        from tasks.context import StageContext

        def adapt(value: Any) -> Any:
            if first == "ctx":
                return StageContext.of(value)
            return value.ws if isinstance(value, StageContext) else value

        if first in kwargs:
            kwargs[first] = adapt(kwargs[first])
        elif args:
            args = (adapt(args[0]), *args[1:])
        return fn(*args, **kwargs)

    return call  # type: ignore[return-value]


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
