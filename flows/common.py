"""Helpers the flows share: bind tasks to a workspace's result storage, run them while
recording which were served from the cache, and publish Prefect artifacts.

Transformers is imported by the first stage that executes (:func:`tasks.runtime.warm_imports`),
not here: a fully cached run never needs it."""

from __future__ import annotations

import logging
import re
from concurrent.futures import Future
from typing import Any

from prefect import Task

from flows.env import embedded_defaults  # noqa: F401 - re-exported
from tasks.caching import Workspace
from tasks.context import StageContext
from tasks.records import result_storage
from tokalign_core.configs.pipeline import PipelineConfig
from tokalign_core.evaluate.tables import rounded

log = logging.getLogger(__name__)


class Runner:
    """Submit tasks with the workspace's result storage and the flow run's stage context
    (built once here, labelled per stage; never part of a cache key); remember each
    stage's final state name (``Completed`` or ``Cached``) for the summary and the
    benchmarks."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self.ctx = StageContext.of(ws)
        self.states: dict[str, str] = {}
        self._bound: dict[int, tuple[Task, Task]] = {}  # id(task) -> (task, bound copy)

    def bind(self, task: Task) -> Task:
        # Results (small refs) live in the run folder, so a rerun in a new process or a
        # served deployment finds them wherever its Prefect home is. One copy per task:
        # with_options rebuilds the whole task (~5-10 ms), and evaluate runs six times.
        if id(task) not in self._bound:
            storage = result_storage(self.ws.results_dir)  # 0700, records 0600, checked
            self._bound[id(task)] = (task, task.with_options(result_storage=storage))
        return self._bound[id(task)][1]

    def submit(self, label: str, task: Task, *args: Any, **kwargs: Any) -> Any:
        ctx = self.ctx.for_stage(label)
        return _Tracked(self, label, self.bind(task).submit(ctx, *args, **kwargs))

    def run(self, label: str, task: Task, *args: Any, **kwargs: Any) -> Any:
        return self.submit(label, task, *args, **kwargs).result()

    def cached(self) -> list[str]:
        return [k for k, v in self.states.items() if v == "Cached"]


class _Tracked:
    def __init__(self, runner: Runner, label: str, future: Any):
        self.runner, self.label, self.future = runner, label, future

    def result(self) -> Any:
        value = self.future.result()
        state = self.future.state.name
        if self.label not in self.runner.states and state == "Cached":
            record_cached(self.runner.ws, self.label, value)
        self.runner.states[self.label] = state
        return value


def record_cached(ws: Workspace, label: str, value: Any) -> Future:
    """A nested MLflow run for a stage served from the cache, tagged with the artifacts it
    reused, so every parent run shows its full lineage.

    Written in the background (:meth:`tasks.lineage.Lineage.record_finished`); the parent
    run waits for it before it ends. Returns the future of the run id."""
    from tasks.caching import artifact_refs
    from tasks.lineage import Lineage, ref_tags

    refs = {f"{i}": ref for i, ref in enumerate(artifact_refs(value))}
    return Lineage(ws).record_finished(
        label, ws.parent_run_id,
        {"tokalign.stage": label, "tokalign.cached": "true", **ref_tags("output", refs)})


def with_target(cfg: PipelineConfig, target_tokenizer: str | None) -> PipelineConfig:
    """``cfg`` with the target tokenizer replaced (event-triggered runs pass it alone)."""
    if not target_tokenizer:
        return cfg
    return PipelineConfig.model_validate({**cfg.model_dump(), "target_tokenizer": target_tokenizer})


def artifact_key(text: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:100] or "tokalign"


def publish_markdown(key: str, markdown: str, description: str = "") -> None:
    """A markdown artifact on the flow run (skipped with a warning outside Prefect)."""
    _publish("create_markdown_artifact", markdown=markdown, key=artifact_key(key),
             description=description)


def publish_table(key: str, rows: list[dict[str, Any]], description: str = "") -> None:
    """A table artifact, floats rounded to 4 significant digits (as the markdown tables)."""
    table = [{k: rounded(v) for k, v in row.items()} for row in rows]
    _publish("create_table_artifact", table=table, key=artifact_key(key),
             description=description)


def _publish(fn_name: str, **kwargs: Any) -> None:
    from prefect import artifacts

    try:
        getattr(artifacts, fn_name)(**kwargs)
    except Exception as exc:  # noqa: BLE001 - a report must never fail the pipeline
        log.warning("could not publish Prefect artifact %s: %s", kwargs.get("key"), exc)
