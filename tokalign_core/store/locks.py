"""Per-key compute locks that die with their process.

Two identical runs that start at once should compute each stage once: the first takes the
lock of the stage's cache key, computes and writes its cache record; the second waits,
re-checks the cache and reuses the record. The lock must never outlive its holder, or a
``kill -9`` would leave every later run waiting forever (Prefect's FileSystemLockManager
writes lock files with no expiry and has exactly that problem).

Mechanism: ``<root>/<key>.lock`` held with an exclusive ``flock(2)``. The kernel drops a
flock when the last descriptor of the open file goes away, i.e. when the holder releases
it or dies, however it dies. The file also records who holds it (pid, host, label, start
time) so a waiter can say what it is waiting for. Details that make this safe:

* the descriptor is opened ``O_CLOEXEC`` (not inherited by ``exec``'d subprocesses) and
  closed in ``fork``'ed children (``os.register_at_fork``), so no child keeps a lock alive
  after its parent died;
* release unlinks the file *while still holding it*; an acquirer that locked an inode which
  has since been unlinked or replaced sees the mismatch (``stat`` vs ``fstat``) and retries,
  so two holders of one key are impossible and the folder only lists live or killed
  holders;
* lock files are opened ``O_NOFOLLOW`` and must be regular files before they are
  truncated and written (a planted symlink is refused, never followed), in a folder
  created owner-only (0700);
* waiting polls with ``LOCK_NB`` (a blocking flock cannot time out) and raises
  :class:`LockTimeoutError` naming the lock file and its holder after ``timeout`` seconds.

flock is per open file description, so two threads of one process exclude each other too.
On NFSv4 Linux emulates flock with POSIX locks, which also die with the process; file
systems without lock support raise :class:`LockUnsupportedError`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import socket
import stat
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = ".lock"
TIMEOUT_ENV = "TOKALIGN_LOCK_TIMEOUT"
# A stage may legitimately compute for hours (GloVe or training at paper scale); the lock
# can never be stale (it dies with its holder), so the default only bounds a stuck holder.
DEFAULT_TIMEOUT_S = 24 * 3600.0
REPORT_EVERY_S = 60.0
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class LockTimeoutError(RuntimeError):
    """Waited ``timeout`` seconds for a key's lock; ``path`` and ``holder`` say whose."""

    def __init__(self, message: str, path: Path, holder: Holder | None):
        super().__init__(message)
        self.path, self.holder = path, holder


class LockUnsupportedError(OSError):
    """The file system under the lock folder does not implement ``flock``."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as written into its file by the holder."""

    pid: int
    host: str
    label: str
    since: float  # unix time the lock was taken

    def alive(self) -> bool | None:
        """Whether the process still exists (None: another host, cannot tell)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def describe(self) -> str:
        where = "" if self.host == socket.gethostname() else f" on {self.host}"
        what = f" computing {self.label}" if self.label else ""
        return f"PID {self.pid}{where}{what} (locked {time.time() - self.since:.0f} s ago)"


def default_timeout() -> float:
    """Seconds to wait for a lock: ``$TOKALIGN_LOCK_TIMEOUT`` or 24 h."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from exc


def lock_path(root: str | Path, key: str) -> Path:
    """``<root>/<key>.lock``; keys are cache keys (hex digests), never paths."""
    if not _KEY.fullmatch(key):
        raise ValueError(f"lock key {key!r} must be 1-200 of [A-Za-z0-9_.-], not start with '.'")
    return Path(root) / f"{key}{SUFFIX}"


def read_holder(path: Path) -> Holder | None:
    """The holder recorded in a lock file (None: no file, or not written yet)."""
    try:
        fd = _open_lock_file(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return Holder(**json.loads(os.read(fd, 1 << 16)))
    except (OSError, ValueError, TypeError):
        return None
    finally:
        os.close(fd)


# Held locks of this process, closed in forked children (see _close_in_child).
_HELD: weakref.WeakSet[ComputeLock] = weakref.WeakSet()


class ComputeLock:
    """An exclusive flock on ``path``, held until :meth:`release` or the process ends."""

    def __init__(self, path: Path, fd: int, holder: Holder):
        self.path, self.fd, self.holder = path, fd, holder
        self.pid = os.getpid()
        _HELD.add(self)

    @property
    def held(self) -> bool:
        return self.fd >= 0 and self.pid == os.getpid()

    def release(self) -> None:
        """Unlink the file while still holding it, then drop the lock. Idempotent."""
        if not self.held:
            return
        try:
            with contextlib.suppress(FileNotFoundError):  # someone removed the folder
                os.unlink(self.path)
        finally:
            os.close(self.fd)
            self.fd = -1
            _HELD.discard(self)

    def __del__(self) -> None:  # a dropped, still-held lock must not stay held forever
        with contextlib.suppress(OSError):
            self.release()

    def __enter__(self) -> ComputeLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"ComputeLock({str(self.path)!r}, held={self.held})"


def _close_in_child() -> None:
    # A forked child shares the parent's open file description; closing its copy leaves
    # the parent's lock intact but means the lock dies when the parent does.
    for lock in list(_HELD):
        if lock.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(lock.fd)
            lock.fd = -1


os.register_at_fork(after_in_child=_close_in_child)


def _flock(fd: int, flags: int) -> bool:
    """``flock(fd, flags | LOCK_NB)``: True when taken, False when someone else holds it."""
    try:
        fcntl.flock(fd, flags | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            raise LockUnsupportedError(exc.errno, f"flock is not supported here: {exc}") from exc
        raise


def _same_file(path: Path, fd: int) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


class UnsafeLockFileError(OSError):
    """A lock path is a symlink or not a regular file: never followed, truncated or written."""


def _make_lock_root(root: Path) -> None:
    """Create the lock folder owner-only (0700): other users can neither plant symlinks
    nor files in it. An existing folder is left as it is."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)


def _open_lock_file(path: Path, flags: int) -> int:
    """Open a lock file without following a symlink (``O_NOFOLLOW``) and refuse anything
    that is not a regular file, before the caller truncates and writes it: a planted
    ``<key>.lock -> ~/.bashrc`` must not be emptied."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeLockFileError(
                errno.ELOOP, f"lock file {path} is a symbolic link; refusing to follow it "
                "(remove it: lock files are plain files this program creates)") from exc
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeLockFileError(
            errno.EINVAL, f"lock file {path} is not a regular file; remove it and rerun")
    return fd


def try_acquire(root: str | Path, key: str, label: str = "") -> ComputeLock | None:
    """Take the lock of ``key`` under ``root`` now, or return None if someone holds it."""
    path = lock_path(root, key)
    _make_lock_root(path.parent)
    while True:
        fd = _open_lock_file(path, os.O_RDWR | os.O_CREAT)
        try:
            if not _flock(fd, fcntl.LOCK_EX):
                os.close(fd)
                return None
            if _same_file(path, fd):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # locked a file its holder unlinked on release: retry on the new one
    holder = Holder(pid=os.getpid(), host=socket.gethostname(), label=label, since=time.time())
    try:  # the file may hold a killed holder's record: replace it
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(holder)).encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return ComputeLock(path, fd, holder)


def _waiting_message(path: Path, holder: Holder | None) -> str:
    if holder is None:
        who = "another process (no holder recorded yet)"
    else:
        who = holder.describe()
        if holder.alive() is False:
            who += " [that PID has exited: a process it forked outside Python holds the file]"
    return f"waiting for {who} (lock {path})"


def acquire(
    root: str | Path,
    key: str,
    label: str = "",
    timeout: float | None = None,
    notify: Callable[[str], None] | None = None,
    report_every: float = REPORT_EVERY_S,
) -> ComputeLock:
    """Take the lock of ``key`` under ``root``, waiting up to ``timeout`` seconds
    (default :func:`default_timeout`). ``notify`` (default: log INFO) receives a line when
    waiting starts and every ``report_every`` seconds. Raises :class:`LockTimeoutError`."""
    timeout = default_timeout() if timeout is None else timeout
    say = notify or log.info
    path, start, delay, next_report = lock_path(root, key), time.monotonic(), 0.01, 0.0
    while True:
        lock = try_acquire(root, key, label)
        if lock is not None:
            return lock
        waited = time.monotonic() - start
        holder = read_holder(path)
        if waited >= timeout:
            raise LockTimeoutError(_timeout_message(path, holder, timeout), path, holder)
        if waited >= next_report:
            say(_waiting_message(path, holder))
            next_report = waited + report_every
        time.sleep(min(delay, max(timeout - waited, 0.0)))
        delay = min(delay * 1.5, 0.5)  # ~0.5 s latency once the holder releases


def _timeout_message(path: Path, holder: Holder | None, timeout: float) -> str:
    who = holder.describe() if holder else "another process (no holder recorded yet)"
    return (
        f"gave up after {timeout:.0f} s waiting for lock {path}, held by {who}. The lock is "
        f"released when that process finishes the stage or exits; if it is stuck, stop it "
        f"(kill {holder.pid if holder else '<pid>'}), or wait longer with {TIMEOUT_ENV}=<seconds>"
    )


def is_locked(root: str | Path, key: str) -> bool:
    """Whether some live process holds the lock of ``key`` right now."""
    path = lock_path(root, key)
    try:
        fd = _open_lock_file(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        # A shared probe conflicts only with the exclusive holder, never with other probes.
        free = _flock(fd, fcntl.LOCK_SH)
        return not free
    finally:
        os.close(fd)  # also drops the probe's shared lock


def wait_until_free(root: str | Path, key: str, timeout: float | None = None) -> bool:
    """Wait until nobody holds ``key``'s lock; False if still held after ``timeout`` s."""
    timeout = default_timeout() if timeout is None else timeout
    start, delay = time.monotonic(), 0.01
    while is_locked(root, key):
        waited = time.monotonic() - start
        if waited >= timeout:
            return False
        time.sleep(min(delay, timeout - waited))
        delay = min(delay * 1.5, 0.5)
    return True
