"""Content hashes: files, folders and the library's own source (for cache keys).

:func:`sha256_tree` remembers, within one process, the digest of every file it has read,
keyed by the file's identity and stat signature (device, inode, size, mtime_ns, ctime_ns).
A cached rerun names the same tokenizer and model folders in many stages' inputs; each is
read once per process instead of once per stage. The key stays content-based: any write to
a file moves its ctime (which user space cannot set back), and files changed within
:data:`RACY_NS` of the moment they were hashed are never remembered, because a second write
inside the filesystem's timestamp granularity could leave every stat field unchanged (git's
"racy clean" problem). :func:`sha256_file` itself always reads the bytes.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from functools import lru_cache
from pathlib import Path

CHUNK = 1 << 20

# Files whose last change (mtime or ctime) is younger than this when hashed are re-read next
# time: coarse kernel clocks tick every 1-10 ms, network filesystems cache attributes for
# seconds.
RACY_NS = 3_000_000_000

_MEMO: dict[str, tuple[tuple[int, ...], str]] = {}
_MEMO_LOCK = threading.Lock()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """sha256 hex of a file's bytes, streamed in 1 MiB chunks (always reads the file)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _signature(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _settled(st: os.stat_result) -> bool:
    """True when the file last changed long enough ago that a change now must move its stat."""
    return time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_NS


def sha256_file_memo(path: str | Path) -> str:
    """:func:`sha256_file`, remembered in this process while the file's stat is unchanged."""
    key = os.path.abspath(path)
    sig = _signature(os.stat(key))
    with _MEMO_LOCK:
        hit = _MEMO.get(key)
    if hit is not None and hit[0] == sig:
        return hit[1]
    digest = sha256_file(key)
    after = os.stat(key)
    # Remember only a file that did not change while it was read and is not racy.
    if _signature(after) == sig and _settled(after):
        with _MEMO_LOCK:
            _MEMO[key] = (sig, digest)
    return digest


def clear_memo() -> None:
    """Forget every remembered file digest (tests; long-lived servers that want a bound)."""
    with _MEMO_LOCK:
        _MEMO.clear()


def sha256_tree(path: str | Path, pattern: str = "*") -> str:
    """Hash of a file or of every file below a folder (relative names + bytes, sorted).

    Renaming a file inside the folder changes the hash; touching mtimes does not.
    """
    path = Path(path)
    if path.is_file():
        return sha256_file_memo(path)
    if not path.exists():
        raise FileNotFoundError(f"cannot hash {path}: it does not exist")
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob(pattern) if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if "__pycache__" in rel:
            continue
        h.update(rel.encode() + b"\0" + sha256_file_memo(file).encode() + b"\n")
    return h.hexdigest()


@lru_cache(maxsize=1)
def code_hash() -> str:
    """Hash of every ``.py`` file of tokalign_core: part of every cache key, so changing
    the library's code (not just the task wrapper) invalidates cached results."""
    return sha256_tree(Path(__file__).parent, "*.py")
