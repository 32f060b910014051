"""Temporary spill folders (co-occurrence runs, GloVe buckets) that a killed run cannot leak.

Each folder holds ``.lock``, flock-ed by its owner for as long as it is in use. The lock
dies with the process (kill -9 included), so a folder whose lock can be taken belongs to no
live process, in this PID namespace or any other, and is deleted when the next spill folder
is made under the same root. Nothing is judged by host name or PID.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK = ".lock"


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on ``path``, or None when another holder has it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def sweep(root: Path) -> list[Path]:
    """Delete the spill folders under ``root`` whose owner is gone; returns them."""
    gone = []
    for folder in root.iterdir() if root.is_dir() else []:
        lock = folder / LOCK
        if folder.is_symlink() or not folder.is_dir() or not lock.exists():
            continue  # a folder still being created has no lock file yet: not ours to judge
        fd = _try_lock(lock)
        if fd is None:
            continue
        try:
            shutil.rmtree(folder, ignore_errors=True)
            gone.append(folder)
        finally:
            os.close(fd)
    return gone


@contextmanager
def spill_folder(root: str | Path, prefix: str) -> Iterator[Path]:
    """A fresh folder under ``root`` for the duration of the block, deleted afterwards (also
    on error); stale folders of killed runs are swept first."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    sweep(root)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)
