"""MLflow lineage for Prefect runs: one parent run per pipeline run, a nested run per stage.

Every run records the flattened config (secrets redacted), the config digest, the content
hashes of its input and output artifacts, the Prefect flow/task run ids and the
``tokalign_core`` code hash as tags, so a model in MLflow can be traced back to the exact
corpus, tokenizers and code that produced it. Datasets (corpus, tokenizers) are logged with
``log_inputs`` and their digests; metrics with steps come from the core loops through a
:class:`tokalign_core.runtime.tracking.MetricsLogger`; plots are logged as artifacts.

Only the thread-safe ``MlflowClient`` API is used (no fluent ``active_run`` stack), because
Prefect runs submitted tasks in worker threads. MLflow is imported lazily. If the tracking
server is unreachable, or goes away mid-run, the run keeps going: every lineage event is
also appended to ``<run_dir>/logs/lineage.jsonl`` and a single warning says so.

Writes nobody waits for (the nested run of a stage served from the cache) go to one
background thread per process, in order, and :func:`parent_run` waits for them before it
ends the parent run, so a cached rerun does not spend two SQLite commits per stage on its
critical path. :func:`prewarm` starts importing MLflow and opening the store on that thread
while Prefect's temporary server starts; the client and the experiment id are shared by
every :class:`Lineage` of a process.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tasks.caching import Workspace
from tasks.runtime import run_logger, warm_imports
from tokalign_core.configs.base import FrozenConfig, redact_uris, redact_userinfo
from tokalign_core.configs.pipeline import is_unset
from tokalign_core.runtime.tracking import JsonlLogger, MetricsLogger, MlflowLogger, MultiLogger
from tokalign_core.store import hashing
from tokalign_core.store.artifacts import ArtifactRef

log = logging.getLogger(__name__)

MAX_PARAM_LEN = 500  # MLflow rejects longer param values
# MLflow's UI opens an experiment in the mode this tag names; without it, a new store's
# experiment opens in GenAI mode (traces, prompts) instead of model training (runs, models).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
NOTE_TAG = "mlflow.note.content"  # the run's description in MLflow's UI
# Files of a model folder logged with its MLflow model (the card and what describes the
# model); the weights stay in the run folder's artifact store, named by a tag.
MODEL_FILES = ("README.md", "config.json", "generation_config.json", "tokenizer_config.json",
               "special_tokens_map.json", "training.json")
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
            url = flow_run_url(str(flow_run.id))
            if url:
                out["prefect.flow_run_url"] = url
        if task_run.id:
            out["prefect.task_run_id"] = str(task_run.id)
    except Exception:  # noqa: BLE001 - lineage tags are best effort
        pass
    return out


def metric_name(name: str) -> str:
    """One ``/`` per name, so MLflow groups a stage's charts by what they measure:
    ``count.shared -> count/shared``, ``bleu1.t2s.bleu1 -> bleu1/t2s_bleu1``."""
    head, _, rest = name.partition(".")
    return f"{head}/{rest.replace('.', '_')}" if rest else name


def flow_run_url(flow_run_id: str) -> str | None:
    """The flow run's page in the Prefect UI (None when no UI URL is known, e.g. the
    temporary server of a one-off command)."""
    try:
        from prefect.settings import PREFECT_UI_URL

        base = PREFECT_UI_URL.value()
    except Exception:  # noqa: BLE001 - a link is best effort
        return None
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}" if base else None


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
        row = redact_uris({"time": time.time(), "event": event, **data})
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
                "kept locally in %s", redact_userinfo(self.uri), what,
                redact_userinfo(str(exc)), self.local,
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
        """The experiment's id, looked up (or created) once per process and store."""
        if self._experiment_id is None:
            key = (self.uri, self.ws.experiment)
            with _EXPERIMENTS_LOCK:
                if key not in _EXPERIMENTS:
                    with self._store_lock():
                        found = self._call("experiment", self._get_or_create_experiment)
                    if found is None:  # MLflow is down: nothing to remember
                        return None
                    _EXPERIMENTS[key] = found
                self._experiment_id = _EXPERIMENTS[key]
        return self._experiment_id

    def _forget_experiment(self) -> None:
        self._experiment_id = None
        with _EXPERIMENTS_LOCK:
            _EXPERIMENTS.pop((self.uri, self.ws.experiment), None)

    def _get_or_create_experiment(self) -> str:
        exp = self.client.get_experiment_by_name(self.ws.experiment)
        if exp is not None:
            if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG,
                                               EXPERIMENT_KIND)
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:"):  # keep artifacts next to the SQLite store
            location = (self.ws.root / "mlartifacts").as_uri()
        try:
            return self.client.create_experiment(self.ws.experiment, artifact_location=location,
                                                 tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except Exception:  # created concurrently by a sibling task
            return self.client.get_experiment_by_name(self.ws.experiment).experiment_id

    # ------------------------------------------------------------------ runs
    @staticmethod
    def run_tags(parent_run_id: str | None, tags: dict[str, str] | None) -> dict[str, str]:
        """Code hash + Prefect ids of the calling context + ``tags`` (+ the parent link).

        Call it in the thread that runs the stage: Prefect's run context is thread-local."""
        all_tags = {"tokalign.code_hash": hashing.code_hash(), **prefect_ids(), **(tags or {})}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        return all_tags

    def start_run(
        self, name: str, parent_run_id: str | None = None, tags: dict[str, str] | None = None
    ) -> str | None:
        """Create a run (nested under ``parent_run_id``); its id, or None when MLflow is down."""
        return self._create_run(name, parent_run_id, self.run_tags(parent_run_id, tags))

    def _create_run(self, name: str, parent_run_id: str | None,
                    all_tags: dict[str, str]) -> str | None:
        self._record("start_run", name=name, parent=parent_run_id, tags=all_tags)
        exp = self.experiment_id()
        if exp is None:
            return None
        try:
            run = self.client.create_run(exp, run_name=name, tags=all_tags)
        except Exception:  # noqa: BLE001 - retried once below, then absorbed by _call
            # The remembered experiment id may be stale (the store was recreated under the
            # same URI since): look it up again, once; a dead server fails in _call as before.
            self._forget_experiment()
            exp = self.experiment_id()
            if exp is None:
                return None
            run = self._call("create_run", self.client.create_run, exp, run_name=name,
                             tags=all_tags)
        return None if run is None else run.info.run_id

    def record_finished(self, name: str, parent_run_id: str | None,
                        tags: dict[str, str]) -> Future:
        """A finished run (e.g. a stage served from the cache), written in the background.

        The tags are taken now, in the caller's thread; the two MLflow writes (create,
        terminate) run on the lineage thread. :func:`flush` (called by :func:`parent_run`)
        waits for them. Returns the future of the new run's id."""
        all_tags = self.run_tags(parent_run_id, tags)

        def write() -> str | None:
            run_id = self._create_run(name, parent_run_id, all_tags)
            self.end_run(run_id)
            return run_id

        return defer(write)

    def end_run(self, run_id: str | None, status: str = "FINISHED") -> None:
        self._record("end_run", run_id=run_id, status=status)
        if run_id:
            self._call("set_terminated", self.client.set_terminated, run_id, status=status)

    def log_config(self, run_id: str | None, config: FrozenConfig | None, prefix: str = "") -> None:
        """Params = the flattened config; tag = its digest."""
        if config is None:
            return
        # Placeholders a later stage fills in say nothing about this run: left out.
        flat = {k: str(v)[:MAX_PARAM_LEN] for k, v in config.flat(prefix).items()
                if not is_unset(str(v))}
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
        """Stepped metrics, named with one separator (:func:`metric_name`)."""
        clean = {metric_name(k): float(v) for k, v in metrics.items() if is_number(v)}
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

    def describe(self, run_id: str | None, markdown: str) -> None:
        """``markdown`` as the run's description (MLflow's note)."""
        self.set_tags(run_id, {NOTE_TAG: markdown})

    def log_dict(self, run_id: str | None, data: Any, name: str) -> None:
        if run_id:
            self._call("log_dict", self.client.log_dict, run_id, data, name)

    def log_model(self, run_id: str | None, name: str, folder: Path,
                  tags: dict[str, str] | None = None,
                  params: dict[str, str] | None = None) -> str | None:
        """An MLflow model named ``name`` produced by ``run_id``: its card and config files
        (:data:`MODEL_FILES`) as the model's artifacts, the full folder's path as the
        ``tokalign.model_path`` tag (the weights are not copied). Returns the model id."""
        if not run_id or self.experiment_id() is None:
            return None
        import tempfile

        from mlflow.entities import LoggedModelOutput

        tags = {"tokalign.model_path": str(folder), **(tags or {})}
        model = self._call("create_logged_model", self.client.create_logged_model,
                           self.experiment_id(), name=name, source_run_id=run_id, tags=tags,
                           params=params, model_type="transformers causal LM")
        if model is None:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            for fname in MODEL_FILES:
                if (folder / fname).is_file():
                    (Path(tmp) / fname).write_bytes((folder / fname).read_bytes())
            self._call("log_model_artifacts", self.client.log_model_artifacts,
                       model.model_id, tmp)
        self._call("finalize_logged_model", self.client.finalize_logged_model,
                   model.model_id, "READY")
        self._call("log_outputs", self.client.log_outputs, run_id,
                   [LoggedModelOutput(model.model_id, 0)])
        self._record("model", run_id=run_id, name=name, model_id=model.model_id)
        return model.model_id

    def register(self, name: str, model_id: str | None, run_id: str | None,
                 description: str = "") -> Any:
        """A new version of registered model ``name`` from a logged model."""
        if not model_id:
            return None
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self._call("create_registered_model", self.client.create_registered_model, name,
                       description=description)
        return self._call("create_model_version", self.client.create_model_version, name,
                          source=f"models:/{model_id}", run_id=run_id, model_id=model_id,
                          description=description)

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
_EXPERIMENTS: dict[tuple[str, str], str] = {}  # (tracking URI, experiment name) -> id
_EXPERIMENTS_LOCK = threading.Lock()
_WRITER: ThreadPoolExecutor | None = None
_WRITER_LOCK = threading.Lock()


def defer(fn: Callable[[], Any]) -> Future:
    """Run ``fn`` on the process's single lineage thread, after every earlier deferred call.

    An exception is logged, never raised into the pipeline (lineage is best effort; MLflow
    errors are already absorbed by :meth:`Lineage._call`)."""
    global _WRITER
    with _WRITER_LOCK:
        if _WRITER is None:
            # Its worker is joined at interpreter exit, so queued writes are not lost.
            _WRITER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokalign-lineage")
        return _WRITER.submit(_logged, fn)


def _logged(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - a lineage bug must not fail the pipeline
        log.exception("deferred lineage write failed")
        return None


def flush() -> None:
    """Wait until every deferred lineage write queued so far has been made."""
    if _WRITER is not None:
        defer(lambda: None).result()  # one worker: runs after everything queued before it


def prewarm(ws: Workspace) -> Future:
    """Start importing MLflow, opening ``ws``'s store and resolving its experiment on the
    lineage thread, so that cost overlaps whatever the caller does next (e.g. Prefect
    starting its temporary server) instead of delaying the flow's first MLflow write."""
    lineage = Lineage(ws)
    return defer(lineage.experiment_id)


def _client_for(uri: str) -> Any:
    """One MlflowClient per tracking URI and process: a new client on SQLite opens a new
    engine and re-checks the schema (~0.5 s), which dominated cached reruns."""
    with _CLIENTS_LOCK:
        if uri not in _CLIENTS:
            from mlflow import MlflowClient

            _CLIENTS[uri] = MlflowClient(tracking_uri=uri)
        return _CLIENTS[uri]


def is_number(value: Any, finite: bool = True) -> bool:
    """True for a real number (Python or numpy int/float; never a bool or a string), and
    with ``finite`` only for a finite one (MLflow rejects NaN and inf)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    return not finite or math.isfinite(value)


def flat_numbers(data: Any, prefix: str = "", depth: int | None = None) -> dict[str, float]:
    """The numeric leaves of a nested result as flat metric names: ``{"a": {"b": 1}}`` ->
    ``{"a.b": 1.0}``. Dicts, typed results (their ``to_dict()``) and plain objects (their
    attributes) are walked ``depth`` levels deep (None: all the way); strings, lists and
    bools are left out, NaN kept (:meth:`Lineage.log_metrics` drops it). ``@`` and spaces
    in names become ``_at_`` and ``_`` (MLflow's metric-name rules)."""
    out: dict[str, float] = {}
    if hasattr(data, "to_dict") and not isinstance(data, type):
        data = data.to_dict()
    elif not isinstance(data, dict) and hasattr(data, "__dict__") and not isinstance(data, type):
        data = vars(data)
    if isinstance(data, dict) and depth != 0:
        for k, v in data.items():
            if is_number(v, finite=False):
                out[f"{prefix}{k}"] = float(v)
            else:
                out.update(flat_numbers(v, f"{prefix}{k}.", None if depth is None else depth - 1))
    return {k.replace("@", "_at_").replace(" ", "_"): v for k, v in out.items()}


class StageRun:
    """Handle a task uses inside :func:`stage_run`."""

    def __init__(self, lineage: Lineage, run_id: str | None, stage: str):
        self.lineage = lineage
        self.run_id = run_id
        self.stage = stage
        self.last: dict[str, float] = {}  # the latest value of each metric (for the log)

    def metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        self.lineage.log_metrics(self.run_id, metrics, step)
        self.last.update({k: float(v) for k, v in metrics.items() if is_number(v)})

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
    """A nested MLflow run under ``ws.parent_run_id`` for one stage, ended FAILED on error.
    Named by the flow's label for the stage (``ws.stage_label``, as its cache records are)
    when there is one, else ``stage``; the ``tokalign.stage`` tag keeps ``stage``.

    Entered only by a stage that really executes, so it also warms transformers' lazy
    imports for the stage (:func:`tasks.runtime.warm_imports`)."""
    warm_imports()
    lineage = Lineage(ws)
    tags = {"tokalign.stage": stage, **ref_tags("input", inputs or {})}
    run_id = lineage.start_run(ws.stage_label or stage, parent_run_id=ws.parent_run_id,
                               tags=tags)
    lineage.log_config(run_id, config)
    handle = StageRun(lineage, run_id, stage)
    start = time.perf_counter()
    try:
        yield handle
    except BaseException:
        lineage.end_run(run_id, "FAILED")
        raise
    lineage.end_run(run_id, "FINISHED")
    run_logger().info("%s done in %.1f s%s", ws.stage_label or stage,
                      time.perf_counter() - start, key_numbers(handle.last))


# How many of a stage's metrics its "done" log line shows (the rest are in MLflow).
LOG_NUMBERS = 8


def key_numbers(metrics: dict[str, float]) -> str:
    """``"; loss=3.214, count.aligned=19143"``: a stage's last metric values, rounded, for
    the Prefect log (at most :data:`LOG_NUMBERS`; '' when there are none)."""
    if not metrics:
        return ""
    shown = [f"{k}={v:.4g}" for k, v in list(metrics.items())[:LOG_NUMBERS]]
    more = len(metrics) - LOG_NUMBERS
    return "; " + ", ".join(shown) + (f" (+{more} more in MLflow)" if more > 0 else "")


def _pipeline_of(config: Any) -> Any:
    """The pipeline config inside ``config`` (itself, or e.g. the demo's ``.pipeline``)."""
    for candidate in (config, getattr(config, "pipeline", None)):
        if candidate is not None and hasattr(candidate, "key_params"):
            return candidate
    return None


def run_title(flow: str, config: Any) -> str:
    """A parent run's name: what ran (``SmolLM2-135M -> qwen2 (tokalign++)``), with the
    flow's name when it is not the whole pipeline (``demo: ...``, ``align: ...``)."""
    pipe = _pipeline_of(config)
    if pipe is None:
        return flow
    title = pipe.title()
    pretrained = getattr(config, "source", None)  # the demo's micro source, built here
    if pretrained is not None and hasattr(pretrained, "preset"):
        from tokalign_core.configs.pipeline import short_name

        title = title.replace(short_name(pipe.source_model),
                              f"{pretrained.preset} (pretrained here)", 1)
    return title if flow == "pipeline" else f"{flow}: {title}"


def log_parent_config(lineage: Lineage, run_id: str | None, config: Any) -> None:
    """A pipeline's key settings as params (a few tens) and the whole config as
    ``config.json``; any other config flattened as a stage's is."""
    pipe = _pipeline_of(config)
    if pipe is None:
        lineage.log_config(run_id, config)
        return
    from mlflow.entities import Param, RunTag

    params = {k: v[:MAX_PARAM_LEN] for k, v in pipe.key_params().items()}
    lineage._record("params", run_id=run_id, params=params, digest=config.digest())
    if run_id:
        lineage._call("log_params", lineage.client.log_batch, run_id,
                      params=[Param(k, v) for k, v in sorted(params.items())],
                      tags=[RunTag("tokalign.config_digest", config.digest())])
    lineage.log_dict(run_id, config.model_dump(mode="json"), "config.json")


# Where `mlflow ui` serves a run folder's SQLite store (the command the demo prints).
LOCAL_MLFLOW_UI = "http://127.0.0.1:5000"


def mlflow_run_url(uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in MLflow's UI: on the tracking server itself, or on `mlflow ui`'s
    default local address for a SQLite / file store."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_MLFLOW_UI
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def link_to_mlflow(lineage: Lineage, run_id: str | None) -> None:
    """From Prefect to MLflow: a log line and a link artifact on the flow run naming the
    MLflow run (the MLflow run has the Prefect flow-run id as a tag, the other way)."""
    if not run_id or lineage.experiment_id() is None:
        return
    url = mlflow_run_url(lineage.uri, lineage.experiment_id(), run_id)
    run_logger().info("MLflow run %s in %s: %s", run_id, lineage.uri, url)
    try:
        from prefect.artifacts import create_link_artifact
        from prefect.context import FlowRunContext

        if FlowRunContext.get() is not None:
            create_link_artifact(url, link_text=f"MLflow run {run_id[:8]}",
                                 description=f"MLflow store: {lineage.uri}")
    except Exception as exc:  # noqa: BLE001 - a link must never fail the run
        log.debug("no Prefect link artifact: %s", exc)


@contextmanager
def parent_run(ws: Workspace, name: str, config: FrozenConfig | None = None) -> Iterator[Workspace]:
    """The pipeline's parent run; yields the workspace with ``parent_run_id`` filled in.

    When ``ws.parent_run_id`` is already set (a subflow inside the pipeline), nothing new is
    created and the same workspace is yielded."""
    if ws.parent_run_id:
        yield ws
        return
    lineage = Lineage(ws)
    run_id = lineage.start_run(run_title(name, config), tags={"tokalign.flow": name})
    log_parent_config(lineage, run_id, config)
    link_to_mlflow(lineage, run_id)
    try:
        yield ws.model_copy(update={"parent_run_id": run_id})
    except BaseException:
        flush()  # the cached stages' runs, before the parent is closed
        lineage.end_run(run_id, "FAILED")
        raise
    flush()
    lineage.end_run(run_id, "FINISHED")
