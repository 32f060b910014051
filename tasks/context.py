"""The small context every stage task gets instead of a bare workspace: the workspace
(run folder, MLflow parent run, the flow's label for the stage), the run's artifact store,
a Dask/serial executor, the Prefect run logger and the progress switch.

Built once per flow run (:class:`flows.common.Runner`) and passed as each task's first
argument. Like a :class:`~tasks.caching.Workspace` it is never part of a cache key
(``in_cache_key = False``, see :func:`tasks.caching.fingerprint`): the same inputs hit the
same cache record whichever run folder, cluster or label a run uses.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from tasks.caching import Workspace
from tasks.lineage import StageRun, stage_run
from tasks.runtime import executor, run_logger
from tokalign_core.configs.base import FrozenConfig
from tokalign_core.runtime.executor import Executor
from tokalign_core.store.artifacts import ArtifactStore


@dataclass(frozen=True)
class StageContext:
    """What a stage needs besides its inputs (see the module docstring)."""

    ws: Workspace
    store: ArtifactStore

    # Dropped from cache keys by tasks.caching.fingerprint, as a Workspace is.
    in_cache_key: ClassVar[bool] = False

    @classmethod
    def of(cls, ws: Workspace | StageContext) -> StageContext:
        """The context of a workspace (a context is returned as it is)."""
        if isinstance(ws, StageContext):
            return ws
        return cls(ws=ws, store=ArtifactStore(ws.artifact_root))

    def for_stage(self, label: str) -> StageContext:
        """The same context for the stage the flow labels ``label`` (``glove:source``)."""
        return replace(self, ws=self.ws.model_copy(update={"stage_label": label}))

    @property
    def stage_label(self) -> str | None:
        return self.ws.stage_label

    @property
    def progress(self) -> bool:
        return self.ws.progress

    @property
    def logger(self) -> logging.Logger | logging.LoggerAdapter:
        """Prefect's logger of the calling task run (this process's outside a run)."""
        return run_logger()

    def executor(self, workers: int | None = None) -> Any:
        """Context manager of the run's executor (:func:`tasks.runtime.executor`)."""
        return executor(self.ws, workers)

    @contextmanager
    def run(self, stage: str, config: FrozenConfig | None = None,
            inputs: dict[str, Any] | None = None) -> Iterator[StageRun]:
        """The stage's nested MLflow run (:func:`tasks.lineage.stage_run`)."""
        with stage_run(self.ws, stage, config, inputs) as run:
            yield run

    @contextmanager
    def run_on_executor(self, stage: str, config: FrozenConfig | None = None,
                        inputs: dict[str, Any] | None = None
                        ) -> Iterator[tuple[StageRun, Executor]]:
        """:meth:`run` and :meth:`executor` together, for stages that fan out on Dask."""
        with self.run(stage, config, inputs) as run, self.executor() as ex:
            yield run, ex
