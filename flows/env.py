"""Environment defaults for self-contained local runs. Import and call this *before*
anything imports Prefect: Prefect reads its settings once, at import time.

The embedded default is a temporary Prefect server whose SQLite database lives in the
run folder's Prefect home. Two runs on one run folder started together would open (and
migrate) that one database at once and fail with ``database is locked``; so a run holds an
``flock`` on ``<run_dir>/.prefect/.in-use.lock`` for its lifetime, and a run that finds it
held gets a private home under ``<run_dir>/.prefect-concurrent/`` instead (removed when the
run ends; one left by a killed run is removed by the next run that needs one). Artifacts,
cache records and MLflow lineage stay shared: only the Prefect UI history of such a
concurrent run is private to it."""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from tokalign_core.store.artifacts import claim_private_dir, sweep_abandoned

# A fresh PREFECT_HOME migrates a new SQLite database on first start: minutes on a busy
# 2-core machine, far beyond Prefect's 20 s default.
STARTUP_TIMEOUT_SECONDS = "300"
SHARED_HOME = ".prefect"
CONCURRENT_HOMES = ".prefect-concurrent"
IN_USE = ".in-use.lock"


@dataclass
class PrefectHome:
    """A Prefect home this process uses: ``fd`` holds its lock until :meth:`release`."""

    home: Path
    fd: int
    private: bool  # a concurrent run's own home, deleted on release

    def release(self) -> None:
        """Drop the lock (idempotent); a private home is deleted first."""
        if self.fd < 0:
            return
        if self.private:
            shutil.rmtree(self.home, ignore_errors=True)
        os.close(self.fd)
        self.fd = -1


def claim_prefect_home(run_dir: str | Path) -> PrefectHome:
    """``<run_dir>/.prefect`` if no live process uses it, else a private home under
    ``<run_dir>/.prefect-concurrent/`` (the lock dies with its process, however it ends)."""
    root = Path(run_dir).expanduser().resolve()
    shared = root / SHARED_HOME
    shared.mkdir(parents=True, exist_ok=True)
    fd = os.open(shared / IN_USE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return PrefectHome(shared, fd, private=False)
    except BlockingIOError:
        os.close(fd)  # a live run holds it
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            os.close(fd)
            raise
        return PrefectHome(shared, fd, private=False)  # no flock here: as before
    parent = root / CONCURRENT_HOMES
    sweep_abandoned(parent)
    home, fd = claim_private_dir(parent, "prefect")
    return PrefectHome(home, fd, private=True)


_CLAIMED: PrefectHome | None = None


def embedded_defaults(run_dir: str | Path) -> None:
    """A temporary Prefect server whose home is this run's (see the module docstring;
    unless an API URL or PREFECT_HOME is already set), a generous startup timeout, no
    analytics or telemetry."""
    global _CLAIMED
    if not os.environ.get("PREFECT_API_URL") and not os.environ.get("PREFECT_HOME"):
        _CLAIMED = claim_prefect_home(run_dir)
        # Registered before Prefect is imported, so it runs after Prefect's own exit
        # handlers have stopped the temporary server (atexit runs last-in, first-out).
        atexit.register(_CLAIMED.release)
        os.environ["PREFECT_HOME"] = str(_CLAIMED.home)
        if _CLAIMED.private:
            with contextlib.suppress(OSError):
                print(f"another run is using {_CLAIMED.home.parent.parent / SHARED_HOME}; "
                      f"this run's Prefect history goes to {_CLAIMED.home} (removed at exit)",
                      file=sys.stderr)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
                          STARTUP_TIMEOUT_SECONDS)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
