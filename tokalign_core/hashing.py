"""Content hashes: files, folders and the library's own source (for cache keys)."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """sha256 hex of a file's bytes, streamed in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_tree(path: str | Path, pattern: str = "*") -> str:
    """Hash of a file or of every file below a folder (relative names + bytes, sorted).

    Renaming a file inside the folder changes the hash; touching mtimes does not.
    """
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.exists():
        raise FileNotFoundError(f"cannot hash {path}: it does not exist")
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob(pattern) if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if "__pycache__" in rel:
            continue
        h.update(rel.encode() + b"\0" + sha256_file(file).encode() + b"\n")
    return h.hexdigest()


@lru_cache(maxsize=1)
def code_hash() -> str:
    """Hash of every ``.py`` file of tokalign_core: part of every cache key, so changing
    the library's code (not just the task wrapper) invalidates cached results."""
    return sha256_tree(Path(__file__).parent, "*.py")
