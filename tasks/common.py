"""The stage task decorator: :func:`stage_task` and how a task receives its
:class:`~tasks.context.StageContext` (the store, executor and logger live in
:mod:`tasks.runtime`).

Every stage task is a Prefect task with the content-hash cache policy, persisted results
(small refs and dicts only, as JSON: :mod:`tasks.records`), and retries for transient
I/O errors only.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from prefect import task

from tasks.caching import CONTENT_HASH, retry_on_transient_io
from tasks.context import StageContext
from tasks.records import JSON_RESULTS

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger(__name__)

RETRIES = 2
RETRY_DELAY_SECONDS = 5


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
