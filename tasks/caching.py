"""Content-hash caching for Prefect tasks.

Prefect's default cache key contains the flow-run id (nothing is reused across runs), its
task-source hash ignores the library code the task calls, and a ``Path`` input is hashed
by its string. :class:`ContentHashPolicy` keys a task run instead on

    task name + the task wrapper's source + every input, where
      - an :class:`~tokalign_core.store.artifacts.ArtifactRef` counts by its content sha256
        (never its path),
      - a ``pathlib.Path`` (or a string naming an existing local file/folder, also inside a
        config) counts by the sha256 of its bytes (:func:`tokalign_core.store.hashing.sha256_tree`),
      - a :class:`~tokalign_core.configs.base.FrozenConfig` counts by its canonical JSON,
      - a :class:`Workspace` (run folder, cluster address, MLflow run) does not count,
    + :func:`tokalign_core.store.hashing.code_hash` (the library's source),

with no run id, so an unchanged rerun reuses every result across processes and days, and
changing a file's bytes under the same path or the library's code recomputes.

A cache record is only trusted when every artifact it references still exists and matches
its manifest in content (:func:`tokalign_core.store.artifacts.verify`, full sha256, with the
per-process hash memo so a file is read once per process). A stale
record (artifact deleted, truncated) is skipped by moving to a derived key
``sha256(key:n)``, so the stage recomputes and the new result is stored under that key.
Records are JSON (:mod:`tasks.records`); one that is not ours, is group/world-writable or
names a pickle serializer is refused before any of its bytes is deserialised.
"""

from __future__ import annotations

import errno
import hashlib
import inspect
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext

from tasks.locking import COMPUTE_LOCKS
from tasks.records import record_problem, refuse
from tokalign_core.configs.base import FrozenConfig
from tokalign_core.store import hashing
from tokalign_core.store.artifacts import ArtifactRef, CorruptArtifactError, quarantine, verify

log = logging.getLogger(__name__)

# How many derived keys to try past stale records before giving up on caching this run.
MAX_GENERATIONS = 64


class Workspace(FrozenConfig):
    """Where and how a run executes: never part of a cache key.

    ``run_dir`` holds artifacts, Prefect results, logs and the MLflow SQLite store.
    ``dask_address`` points tasks at an existing Dask scheduler (``tcp://host:8786``);
    ``None`` starts a LocalCluster of ``workers`` processes inside the task when
    ``workers > 1``. ``tracking_uri`` overrides MLflow's store (default: ``MLFLOW_TRACKING_URI``
    or ``sqlite:///<run_dir>/mlflow.db``); ``parent_run_id`` is filled in by the flow.
    """

    run_dir: str = "runs/default"
    dask_address: str | None = None
    workers: int = 1
    tracking_uri: str | None = None
    experiment: str = "tokalign"
    parent_run_id: str | None = None
    progress: bool = False
    # The flow's label for the stage a task runs (``glove:source``), set by the flow's
    # runner: the nested MLflow run's name, the same whether the stage computes or is
    # served from the cache. Not part of any cache key (workspaces never are).
    stage_label: str | None = None

    @property
    def root(self) -> Path:
        return Path(self.run_dir).expanduser().resolve()

    @property
    def artifact_root(self) -> Path:
        return self.root / "artifacts"

    @property
    def results_dir(self) -> Path:
        return self.root / "prefect-results"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"


# ---------------------------------------------------------------------------------- hashing


def _looks_like_path(text: str) -> bool:
    # Only strings that clearly name a local file: avoids hashing "tiny" or "builtin:qwen2"
    # when a file of that name happens to sit in the working directory.
    if not text or len(text) > 4096 or "\n" in text or ":" in text.split("/")[0]:
        return False
    return (os.sep in text or text.startswith("~")) and Path(text).expanduser().exists()


def path_fingerprint(path: str | Path) -> dict[str, str]:
    """``{"path_sha256": ...}`` of a file's or folder's bytes (names + contents)."""
    return {"path_sha256": hashing.sha256_tree(Path(path).expanduser())}


def fingerprint(value: Any) -> Any:
    """A JSON-able stand-in for ``value`` that changes exactly when its content does.

    Artifact refs by content hash, paths by bytes, configs by canonical JSON plus the bytes
    of every local path they name, workspaces dropped (``None``).
    """
    if isinstance(value, Workspace):
        return None
    if isinstance(value, ArtifactRef):
        return {"artifact": value.kind, "sha256": value.sha256}
    if isinstance(value, FrozenConfig):
        return {"config": type(value).__name__, "json": fingerprint(value.model_dump(mode="json"))}
    if isinstance(value, Path):
        return path_fingerprint(value)
    if isinstance(value, str):
        return {"str": value, **path_fingerprint(value)} if _looks_like_path(value) else value
    if isinstance(value, dict):
        return {str(k): fingerprint(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [fingerprint(v) for v in items]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if hasattr(value, "model_dump"):  # other pydantic models (e.g. ArtifactRef subclasses)
        return {"model": type(value).__name__, "json": fingerprint(value.model_dump(mode="json"))}
    raise TypeError(
        f"cannot build a content cache key from a {type(value).__name__}: pass artifact refs, "
        "paths, configs or plain values to cached tasks (never arrays or models)"
    )


def _source_of(fn: Callable[..., Any] | None) -> str:
    if fn is None:
        return ""
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        return getattr(fn, "__qualname__", repr(fn))


def content_key(task_name: str, inputs: dict[str, Any], task_fn: Callable | None = None) -> str:
    """The base cache key (sha256 hex) of one task call; see the module docstring."""
    payload = {
        "task": task_name,
        "task_source": hashlib.sha256(_source_of(task_fn).encode()).hexdigest(),
        "code": hashing.code_hash(),
        "inputs": fingerprint(dict(inputs)),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


# ------------------------------------------------------------------------- trust a record


def artifact_refs(value: Any) -> list[ArtifactRef]:
    """Every :class:`ArtifactRef` inside a (nested) task result."""
    if isinstance(value, ArtifactRef):
        return [value]
    if isinstance(value, dict):
        return [r for v in value.values() for r in artifact_refs(v)]
    if isinstance(value, (list, tuple)):
        return [r for v in value for r in artifact_refs(v)]
    return []


def result_is_intact(value: Any) -> bool:
    """True when every artifact a cached result references matches its manifest (sha256).

    A damaged artifact is quarantined (never deleted), so the recomputed stage can write
    the same content back to the same content-addressed path."""
    for ref in artifact_refs(value):
        try:
            # Content, not sizes: a same-size flipped byte must not be trusted forever.
            # Files already hashed in this process are not re-read (hashing memo).
            verify(ref, full=True, memo=True)
        except (CorruptArtifactError, OSError, ValueError) as exc:
            moved = quarantine(ref)
            log.warning("cached result is stale (%s)%s; recomputing the stage", exc,
                        f"; damaged copy moved to {moved}" if moved else "")
            return False
    return True


def derived_key(key: str, generation: int) -> str:
    return key if generation == 0 else hashlib.sha256(f"{key}:{generation}".encode()).hexdigest()


def _record_path(store: Any, key: str) -> Path | None:
    """Where a local result storage keeps ``key``'s record (None: remote storage)."""
    resolve = getattr(getattr(store, "result_storage", None), "_resolve_path", None)
    return Path(resolve(key)) if resolve is not None else None


def _local_record_problem(store: Any, key: str) -> str | None:
    path = _record_path(store, key)
    return None if path is None else record_problem(path)


def first_trusted_key(key: str, store: Any) -> str:
    """The first of ``key``, ``derived_key(key, 1)``, ... that has no record or an intact one.

    ``store`` is a Prefect ``ResultStore`` (``exists``/``read``)."""
    for generation in range(MAX_GENERATIONS):
        candidate = derived_key(key, generation)
        # Check the file before Prefect reads it: even ``exists`` deserialises the record.
        problem = _local_record_problem(store, candidate)
        if problem == "missing":
            return candidate
        if problem is not None:
            refuse(_record_path(store, candidate), problem)
            continue
        if not store.exists(candidate):
            return candidate
        try:
            record = store.read(candidate)
        except Exception as exc:  # unreadable record (e.g. pickled class moved): recompute
            log.warning("cannot read cache record %s (%s); recomputing", candidate, exc)
            continue
        if result_is_intact(record.result):
            return candidate
    raise RuntimeError(
        f"{MAX_GENERATIONS} stale cache records for key {key}; clear the Prefect result "
        "storage of this run (<run_dir>/prefect-results) and rerun"
    )


@dataclass
class ContentHashPolicy(CachePolicy):
    """Prefect cache policy: content of inputs + library code, never the run id."""

    verify_records: bool = True
    ignore: tuple[str, ...] = field(default_factory=tuple)

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        kept = {k: v for k, v in inputs.items() if k not in self.ignore}
        key = content_key(task_ctx.task.name, kept, getattr(task_ctx.task, "fn", None))
        if not self.verify_records:
            return key
        return first_trusted_key(key, task_ctx.result_store)


# SERIALIZABLE: a cache miss takes the key's compute lock (tasks/locking.py), re-checks the
# store, then computes or reuses; so of two identical concurrent runs one computes each
# stage and the other is served from its record. Locks die with their process.
CONTENT_HASH = ContentHashPolicy(isolation_level="SERIALIZABLE", lock_manager=COMPUTE_LOCKS)


# ---------------------------------------------------------------------------------- retries

# errno values that mean "try again later" (network filesystems, busy devices), never
# "your input is wrong" or "the disk is full".
TRANSIENT_ERRNOS = {
    errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED,
    errno.ECONNABORTED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ESTALE, errno.EINTR,
}


def is_transient(exc: BaseException | None) -> bool:
    """True for I/O errors worth retrying (timeouts, dropped connections, stale NFS handles).

    Maths errors, bad inputs, corrupt artifacts and a full disk are never retried.
    """
    if exc is None or isinstance(exc, (CorruptArtifactError, FileNotFoundError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError):
        return exc.errno in TRANSIENT_ERRNOS
    name = type(exc).__name__
    return name in {"ReadTimeout", "ConnectTimeout", "RemoteProtocolError", "ConnectError"}


def retry_on_transient_io(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only :func:`is_transient` failures."""
    try:
        exc = state.result(raise_on_failure=False)
    except BaseException as err:  # noqa: BLE001 - the failure itself may re-raise
        exc = err
    return isinstance(exc, BaseException) and is_transient(exc)
