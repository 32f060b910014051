"""MLflow lineage for Prefect runs: one parent run per pipeline run, a nested run per stage.

Every run records the flattened config (secrets redacted), the config digest, the content
hashes of its input and output artifacts, the Prefect flow/task run ids and the
``tokalign_core`` code hash as tags, so a model in MLflow can be traced back to the exact
corpus, tokenizers and code that produced it. Datasets (corpus, tokenizers) are logged with
``log_inputs`` and their digests; metrics with steps come from the core loops through a
:class:`tokalign_core.tracking.MetricsLogger`; plots are logged as artifacts.

Only the thread-safe ``MlflowClient`` API is used (no fluent ``active_run`` stack), because
Prefect runs submitted tasks in worker threads. MLflow is imported lazily. If the tracking
server is unreachable, or goes away mid-run, the run keeps going: every lineage event is
also appended to ``<run_dir>/logs/lineage.jsonl`` and a single warning says so.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tasks.caching import Workspace
from tokalign_core import hashing
from tokalign_core.artifacts import ArtifactRef
from tokalign_core.config import FrozenConfig
from tokalign_core.tracking import JsonlLogger, MetricsLogger, MlflowLogger, MultiLogger

log = logging.getLogger(__name__)

MAX_PARAM_LEN = 500  # MLflow rejects longer param values
BATCH = 100  # MLflow's log_batch accepts at most 100 params per call


def tracking_uri(ws: Workspace) -> str:
    """``ws.tracking_uri``, else ``MLFLOW_TRACKING_URI``, else SQLite in the run folder."""
    if ws.tracking_uri:
        return ws.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{ws.root / 'mlflow.db'}"


def prefect_ids() -> dict[str, str]:
    """Prefect flow-run / task-run ids of the calling context (empty outside Prefect)."""
    out: dict[str, str] = {}
    try:
        from prefect.runtime import flow_run, task_run

        if flow_run.id:
            out["prefect.flow_run_id"] = str(flow_run.id)
            out["prefect.flow_name"] = str(flow_run.flow_name)
        if task_run.id:
            out["prefect.task_run_id"] = str(task_run.id)
    except Exception:  # noqa: BLE001 - lineage tags are best effort
        pass
    return out


def ref_tags(prefix: str, refs: dict[str, Any]) -> dict[str, str]:
    """``{prefix.name.sha256: digest}`` for every artifact ref (or path) in ``refs``."""
    tags: dict[str, str] = {}
    for name, value in refs.items():
        if isinstance(value, ArtifactRef):
            tags[f"{prefix}.{name}.sha256"] = value.sha256
            tags[f"{prefix}.{name}.kind"] = value.kind
        elif isinstance(value, (str, Path)) and Path(value).exists():
            tags[f"{prefix}.{name}.sha256"] = hashing.sha256_tree(value)
        elif value is not None:
            tags[f"{prefix}.{name}"] = str(value)[:MAX_PARAM_LEN]
    return tags


class Lineage:
    """MLflow client for one workspace, degrading to local JSONL when MLflow fails."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self.uri = tracking_uri(ws)
        self.failed = False
        self.local = ws.logs_dir / "lineage.jsonl"
        self._client: Any = None
        self._experiment_id: str | None = None

    # ------------------------------------------------------------------ plumbing
    def _record(self, event: str, **data: Any) -> None:
        self.local.parent.mkdir(parents=True, exist_ok=True)
        row = {"time": time.time(), "event": event, **data}
        with open(self.local, "a") as fh:
            fh.write(json.dumps(row, default=str) + "\n")

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self.failed:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tracking must never stop the pipeline
            self.failed = True
            log.warning(
                "MLflow at %s failed during %s (%s); the pipeline continues and lineage is "
                "kept locally in %s", self.uri, what, exc, self.local,
            )
            self._record("mlflow_unavailable", what=what, error=str(exc))
            return None

    @property
    def client(self) -> Any:
        if self._client is None:
            import mlflow

            self.ws.root.mkdir(parents=True, exist_ok=True)
            mlflow.set_tracking_uri(self.uri)
            self._client = _client_for(self.uri)
        return self._client

    @contextmanager
    def _store_lock(self) -> Iterator[None]:
        """Serialise the first use of a SQLite store across processes: two flow runs
        starting together (an event triggers align and pipeline at once) would otherwise
        both run MLflow's schema migrations on the same file and one would fail."""
        if not self.uri.startswith("sqlite:"):
            yield
            return
        import fcntl

        self.ws.root.mkdir(parents=True, exist_ok=True)
        with open(self.ws.root / ".mlflow.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def experiment_id(self) -> str | None:
        if self._experiment_id is None:
            with self._store_lock():
                self._experiment_id = self._call("experiment", self._get_or_create_experiment)
        return self._experiment_id

    def _get_or_create_experiment(self) -> str:
        exp = self.client.get_experiment_by_name(self.ws.experiment)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:"):  # keep artifacts next to the SQLite store
            location = (self.ws.root / "mlartifacts").as_uri()
        try:
            return self.client.create_experiment(self.ws.experiment, artifact_location=location)
        except Exception:  # created concurrently by a sibling task
            return self.client.get_experiment_by_name(self.ws.experiment).experiment_id

    # ------------------------------------------------------------------ runs
    def start_run(
        self, name: str, parent_run_id: str | None = None, tags: dict[str, str] | None = None
    ) -> str | None:
        """Create a run (nested under ``parent_run_id``); its id, or None when MLflow is down."""
        all_tags = {"tokalign.code_hash": hashing.code_hash(), **prefect_ids(), **(tags or {})}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        self._record("start_run", name=name, parent=parent_run_id, tags=all_tags)
        exp = self.experiment_id()
        if exp is None:
            return None
        run = self._call("create_run", self.client.create_run, exp, run_name=name, tags=all_tags)
        return None if run is None else run.info.run_id

    def end_run(self, run_id: str | None, status: str = "FINISHED") -> None:
        self._record("end_run", run_id=run_id, status=status)
        if run_id:
            self._call("set_terminated", self.client.set_terminated, run_id, status=status)

    def log_config(self, run_id: str | None, config: FrozenConfig | None, prefix: str = "") -> None:
        """Params = the flattened config; tag = its digest."""
        if config is None:
            return
        flat = {k: str(v)[:MAX_PARAM_LEN] for k, v in config.flat(prefix).items()}
        self._record("params", run_id=run_id, params=flat, digest=config.digest())
        if not run_id:
            return
        from mlflow.entities import Param, RunTag

        items = [Param(k, v) for k, v in sorted(flat.items())]
        tag = RunTag(f"tokalign.config_digest{'.' + prefix.rstrip('.') if prefix else ''}",
                     config.digest())
        for i in range(0, max(len(items), 1), BATCH):
            tags = [tag] if i == 0 else []
            self._call("log_params", self.client.log_batch, run_id,
                       params=items[i:i + BATCH], tags=tags)

    def set_tags(self, run_id: str | None, tags: dict[str, str]) -> None:
        self._record("tags", run_id=run_id, tags=tags)
        if run_id and tags:
            from mlflow.entities import RunTag

            batch = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
            self._call("set_tags", self.client.log_batch, run_id, tags=batch)

    def log_metrics(self, run_id: str | None, metrics: dict[str, float], step: int = 0) -> None:
        clean = {k: float(v) for k, v in metrics.items() if _is_number(v)}
        self._record("metrics", run_id=run_id, step=step, metrics=clean)
        if run_id and clean:
            from mlflow.entities import Metric

            ts = int(time.time() * 1000)
            batch = [Metric(k, v, ts, step) for k, v in clean.items()]
            self._call("log_metrics", self.client.log_batch, run_id, metrics=batch)

    def log_dataset(self, run_id: str | None, name: str, digest: str, source: str,
                    context: str = "input") -> None:
        """``log_inputs`` a dataset (corpus, tokenizer) by name, digest and source."""
        self._record("dataset", run_id=run_id, name=name, digest=digest, source=source)
        if not run_id:
            return
        from mlflow.entities import Dataset, DatasetInput, InputTag

        ds = Dataset(name=name, digest=digest[:36], source_type="local",
                     source=json.dumps({"uri": source}))
        inp = DatasetInput(ds, tags=[InputTag("mlflow.data.context", context)])
        self._call("log_inputs", self.client.log_inputs, run_id, datasets=[inp])

    def log_figure(self, run_id: str | None, figure: Any, name: str) -> None:
        if run_id:
            self._call("log_figure", self.client.log_figure, run_id, figure, f"plots/{name}")

    def log_text(self, run_id: str | None, text: str, name: str) -> None:
        if run_id:
            self._call("log_text", self.client.log_text, run_id, text, name)

    def metrics_logger(self, run_id: str | None, stage: str) -> MetricsLogger:
        """JSONL (always) + MLflow (when the run exists) logger for a core loop."""
        loggers: list[MetricsLogger] = [JsonlLogger(self.ws.logs_dir / f"{stage}.jsonl")]
        if run_id and not self.failed:
            self.client  # noqa: B018 - sets the tracking URI the MLflow logger uses
            loggers.append(MlflowLogger(run_id=run_id))
        return MultiLogger(*loggers)

    def subprocess_env(self, run_id: str | None) -> dict[str, str]:
        """Environment for a child process (training) that logs into ``run_id``."""
        env = {"MLFLOW_TRACKING_URI": self.uri}
        if run_id:
            env["MLFLOW_RUN_ID"] = run_id
        return env


_CLIENTS: dict[str, Any] = {}
_CLIENTS_LOCK = threading.Lock()


def _client_for(uri: str) -> Any:
    """One MlflowClient per tracking URI and process: a new client on SQLite opens a new
    engine and re-checks the schema (~0.5 s), which dominated cached reruns."""
    with _CLIENTS_LOCK:
        if uri not in _CLIENTS:
            from mlflow import MlflowClient

            _CLIENTS[uri] = MlflowClient(tracking_uri=uri)
        return _CLIENTS[uri]


def _is_number(value: Any) -> bool:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return False
    return f == f and f not in (float("inf"), float("-inf"))


class StageRun:
    """Handle a task uses inside :func:`stage_run`."""

    def __init__(self, lineage: Lineage, run_id: str | None, stage: str):
        self.lineage = lineage
        self.run_id = run_id
        self.stage = stage

    def metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        self.lineage.log_metrics(self.run_id, metrics, step)

    def outputs(self, **refs: Any) -> None:
        self.lineage.set_tags(self.run_id, ref_tags("output", refs))

    def dataset(self, name: str, digest: str, source: str) -> None:
        self.lineage.log_dataset(self.run_id, name, digest, source)

    def figure(self, figure: Any, name: str) -> None:
        self.lineage.log_figure(self.run_id, figure, name)

    def logger(self) -> MetricsLogger:
        return self.lineage.metrics_logger(self.run_id, self.stage)

    def env(self) -> dict[str, str]:
        return self.lineage.subprocess_env(self.run_id)


@contextmanager
def stage_run(
    ws: Workspace,
    stage: str,
    config: FrozenConfig | None = None,
    inputs: dict[str, Any] | None = None,
) -> Iterator[StageRun]:
    """A nested MLflow run under ``ws.parent_run_id`` for one stage, ended FAILED on error."""
    lineage = Lineage(ws)
    tags = {"tokalign.stage": stage, **ref_tags("input", inputs or {})}
    run_id = lineage.start_run(stage, parent_run_id=ws.parent_run_id, tags=tags)
    lineage.log_config(run_id, config)
    handle = StageRun(lineage, run_id, stage)
    try:
        yield handle
    except BaseException:
        lineage.end_run(run_id, "FAILED")
        raise
    lineage.end_run(run_id, "FINISHED")


@contextmanager
def parent_run(ws: Workspace, name: str, config: FrozenConfig | None = None) -> Iterator[Workspace]:
    """The pipeline's parent run; yields the workspace with ``parent_run_id`` filled in.

    When ``ws.parent_run_id`` is already set (a subflow inside the pipeline), nothing new is
    created and the same workspace is yielded."""
    if ws.parent_run_id:
        yield ws
        return
    lineage = Lineage(ws)
    run_id = lineage.start_run(name, tags={"tokalign.flow": name})
    lineage.log_config(run_id, config)
    try:
        yield ws.model_copy(update={"parent_run_id": run_id})
    except BaseException:
        lineage.end_run(run_id, "FAILED")
        raise
    lineage.end_run(run_id, "FINISHED")
