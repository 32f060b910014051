"""Prefect cache records that cannot run code: JSON records in an owner-only folder.

Prefect's default result serializer is pickle, and every cache lookup deserialises the
record it finds (``ResultStore.exists`` already does), so a file planted in
``<run_dir>/prefect-results`` would run code at the next lookup. Here:

* :class:`RefJSONSerializer` (type ``tokalign-json``) writes plain JSON; the only object
  it rebuilds is :class:`~tokalign_core.store.artifacts.ArtifactRef` (a frozen model of three
  strings), never a class named by the record, so reading a record imports nothing;
* :func:`result_storage` creates the result folder owner-only (0700) before Prefect
  writes into it (and tightens an existing one of ours);
* :func:`record_problem` refuses, before any byte is deserialised, a record that is a
  symlink or not a regular file, is not owned by this user, is group/world-writable
  (outside an owner-only folder), or names any serializer but ``tokalign-json`` (a
  pickle). Refused records are logged and skipped: the stage recomputes under a derived
  key (:func:`tasks.caching.first_trusted_key`), never reading them.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any, Literal

from prefect.serializers import Serializer
from pydantic import Field

from tokalign_core.store.artifacts import ArtifactRef

log = logging.getLogger(__name__)

SERIALIZER_TYPE = "tokalign-json"
_REF = "__artifact_ref__"
# A record holds a few refs and metric dicts (KBs); anything bigger is not ours.
MAX_RECORD_BYTES = 16 << 20


class UnsafeRecordError(ValueError):
    """A cache record that must not be read (see :func:`record_problem`)."""


def _encode(value: Any) -> Any:
    if isinstance(value, ArtifactRef):
        return {_REF: value.model_dump(mode="json")}
    if hasattr(value, "item") and callable(value.item):  # numpy scalars in metric dicts
        return value.item()
    raise TypeError(f"a {type(value).__name__} cannot go into a JSON cache record: return "
                    "artifact refs, dicts, lists, strings or numbers from stage tasks")


def _decode(obj: dict[str, Any]) -> Any:
    if set(obj) == {_REF}:
        return ArtifactRef.model_validate(obj[_REF])
    return obj


class RefJSONSerializer(Serializer):
    """JSON results whose only rebuilt type is :class:`ArtifactRef` (no class lookup)."""

    type: Literal["tokalign-json"] = Field(default=SERIALIZER_TYPE, frozen=True)

    def dumps(self, obj: Any) -> bytes:
        return json.dumps(obj, default=_encode, sort_keys=True).encode()

    def loads(self, blob: bytes) -> Any:
        return json.loads(blob, object_hook=_decode)


JSON_RESULTS = RefJSONSerializer()


def secure_dir(path: Path) -> Path:
    """Create ``path`` owner-only (0700), or tighten it if it exists and is ours.

    Raises :class:`UnsafeRecordError` for a folder owned by another user or a symlink."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UnsafeRecordError(f"result folder {path} is a symlink or not a folder; make it "
                                "a plain folder owned by you")
    if st.st_uid != os.geteuid():
        raise UnsafeRecordError(f"result folder {path} is owned by uid {st.st_uid}, not you "
                                f"(uid {os.geteuid()}); use a run folder you own")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def record_problem(path: Path, content: bytes | None = None) -> str | None:
    """Why the cache record at ``path`` must not be read, or None if it may be.

    Checks the file (symlink, type, owner, group/world-writable) with ``lstat``, then the
    serializer it names (JSON metadata only; nothing is deserialised). ``content``: the
    bytes if already read. A missing file is reported as ``"missing"``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    if st.st_uid != os.geteuid():
        return f"it is owned by uid {st.st_uid}, not by you (uid {os.geteuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        if not _owner_only(path.parent):
            return f"it is group- or world-writable (mode {stat.S_IMODE(st.st_mode):o})"
        # Prefect writes records under the umask (0664 under umask 002). Inside our 0700
        # folder nobody else can reach the file, so the bit was never usable: drop it.
        os.chmod(path, stat.S_IMODE(st.st_mode) & ~(stat.S_IWGRP | stat.S_IWOTH))
    if st.st_size > MAX_RECORD_BYTES:
        return f"it is {st.st_size} bytes, too big for a cache record"
    if content is None:
        content = _read_nofollow(path)
    try:
        record = json.loads(content)
        kind = record["metadata"]["serializer"]["type"]
    except (ValueError, TypeError, KeyError):
        return "it is not a JSON cache record (an old pickle record?)"
    if kind != SERIALIZER_TYPE:
        return f"it names the {kind!r} serializer; only {SERIALIZER_TYPE!r} records are read"
    return None


def _owner_only(folder: Path) -> bool:
    try:
        st = os.lstat(folder)
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
            and not st.st_mode & (stat.S_IRWXG | stat.S_IRWXO))


def _read_nofollow(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        return fh.read(MAX_RECORD_BYTES + 1)


def refuse(path: Path, problem: str) -> UnsafeRecordError:
    """Log and build the error for a refused record (the stage recomputes)."""
    message = (f"refusing cache record {path}: {problem}; it is never deserialised and the "
               "stage recomputes (delete the file if you did not expect it)")
    log.warning(message)
    return UnsafeRecordError(message)


def result_storage(folder: str | Path) -> Path:
    """A run's ``prefect-results`` folder, created (or tightened to) 0700 before Prefect
    writes into it; pass it as a task's ``result_storage``. (Prefect refuses storage
    blocks that are not saved on the server, so records are written by its own
    ``LocalFileSystem`` under the umask; the owner-only folder is what keeps others out.)"""
    return secure_dir(Path(folder).expanduser().resolve())
