"""Prefect lock manager over :mod:`tokalign_core.store.locks`: one stage computes, its twins reuse.

With ``isolation_level="SERIALIZABLE"`` Prefect's task engine, for every cached task run,

1. computes the cache key (:class:`tasks.caching.ContentHashPolicy`),
2. ``acquire_lock(key)`` -- blocks while another run computes the same key,
3. re-checks the result store: a record written meanwhile makes this run ``Cached``,
4. otherwise runs the task and writes the record,
5. ``release_lock(key)`` on commit, rollback or failure.

So the lock is held around one stage's compute + record write, never across stages, and
different keys never block each other. Prefect's own ``FileSystemLockManager`` writes
lock files with no expiry, so a ``kill -9`` would leave reruns waiting; here every lock is
a ``flock`` that dies with its process (see :mod:`tokalign_core.store.locks`).

Locks live next to the records they guard: ``<result storage>/.locks/<key>.lock`` (for the
flows that is ``<run_dir>/prefect-results/.locks``). Runs on different result stores never
share locks, exactly as they never share records.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

from prefect.locking.protocol import LockManager

from tasks.records import secure_dir
from tokalign_core.store import locks

log = logging.getLogger(__name__)

LOCK_DIR = ".locks"


def _context() -> tuple[Any, Any]:
    """(result store, task run context) of the calling Prefect run, or Nones outside one."""
    from prefect.context import TaskRunContext
    from prefect.results import get_result_store

    return get_result_store(), TaskRunContext.get()


def lock_root(store: Any) -> Path:
    """``<basepath>/.locks`` of a local result storage; ``$PREFECT_HOME/locks`` otherwise
    (remote storage: then only runs on this host exclude each other)."""
    base = getattr(getattr(store, "result_storage", None), "basepath", None)
    if base:
        return secure_dir(Path(str(base)).expanduser().resolve() / LOCK_DIR)  # 0700
    from prefect.settings import PREFECT_HOME

    return Path(PREFECT_HOME.value()).expanduser() / "locks"


def _label(ctx: Any) -> str:
    """``stage 'corpus' (task run corpus-3fa)`` for the waiting and timeout messages."""
    if ctx is None:
        return ""
    return f"stage {ctx.task.name!r} (task run {ctx.task_run.name})"


def _notify(message: str) -> None:
    """Log a waiting line on the task run's logger (shown in the UI) when there is one."""
    try:
        from prefect.logging import get_run_logger

        get_run_logger().info(message)
    except Exception:  # noqa: BLE001 - outside a run context
        log.info(message)


class ComputeLockManager(LockManager):
    """Prefect ``LockManager`` whose locks are :class:`tokalign_core.store.locks.ComputeLock`.

    ``holder`` is the Prefect transaction's id; locks are tracked per (key, holder) so two
    transactions of one process on one key exclude each other like two processes do.
    ``hold_timeout`` is ignored: a lock lives exactly as long as its holder's stage or
    process. ``acquire_timeout`` defaults to :func:`tokalign_core.store.locks.default_timeout`.
    One instance serves the whole process (copies share it).
    """

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], locks.ComputeLock] = {}
        self._mutex = threading.Lock()
        self._unsupported_warned = False

    def __deepcopy__(self, memo: dict[int, Any]) -> ComputeLockManager:
        return self  # CachePolicy.configure deep-copies; the held-lock table must be shared

    def __copy__(self) -> ComputeLockManager:
        return self

    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                     hold_timeout: float | None = None) -> bool:
        if self.is_lock_holder(key, holder):
            return True
        store, ctx = _context()
        try:
            lock = locks.acquire(lock_root(store), key, _label(ctx), timeout=acquire_timeout,
                                 notify=_notify)
        except locks.LockUnsupportedError as exc:
            self._warn_unsupported(exc)
            return True  # duplicate computes are safe (content-addressed), hangs are not
        with self._mutex:
            self._held[(key, holder)] = lock
        return True

    async def aacquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                            hold_timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.acquire_lock, key, holder, acquire_timeout,
                                       hold_timeout)

    def release_lock(self, key: str, holder: str) -> None:
        with self._mutex:
            lock = self._held.pop((key, holder), None)
        if lock is not None:
            lock.release()

    def is_locked(self, key: str) -> bool:
        try:
            return locks.is_locked(lock_root(_context()[0]), key)
        except locks.LockUnsupportedError:
            return False

    def is_lock_holder(self, key: str, holder: str) -> bool:
        with self._mutex:
            lock = self._held.get((key, holder))
        return lock is not None and lock.held

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        try:
            return locks.wait_until_free(lock_root(_context()[0]), key, timeout)
        except locks.LockUnsupportedError:
            return True

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.wait_for_lock, key, timeout)

    def _warn_unsupported(self, exc: OSError) -> None:
        if not self._unsupported_warned:
            self._unsupported_warned = True
            log.warning("%s: identical concurrent runs will each compute their stages", exc)


COMPUTE_LOCKS = ComputeLockManager()
