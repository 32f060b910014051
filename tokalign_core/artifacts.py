"""Content-addressed artifact store with atomic writes and verified loads.

An artifact is a folder ``<root>/<kind>/<digest[:24]>/`` holding data files plus
``MANIFEST.json`` (sha256 and size of every file). Writers fill a temporary folder inside
the root and rename it into place only when complete, so a killed process never leaves a
half-written artifact that a later run trusts. Loads re-check the manifest (or at least the
sizes, for fast paths) and raise :class:`CorruptArtifactError` naming the file.

Tasks exchange :class:`ArtifactRef` (kind, sha256, path): small, frozen, JSON-serialisable.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tokalign_core.config import FrozenConfig
from tokalign_core.hashing import sha256_bytes, sha256_file

MANIFEST = "MANIFEST.json"


class CorruptArtifactError(RuntimeError):
    """An artifact on disk does not match its manifest (truncated, edited, half-written)."""


class ArtifactRef(FrozenConfig):
    """Reference to a finished artifact: what tasks return and cache keys hash."""

    kind: str
    sha256: str
    path: str

    @property
    def dir(self) -> Path:
        return Path(self.path)

    def file(self, name: str) -> Path:
        """Path of one file inside the artifact; rejects names escaping the folder."""
        target = (self.dir / name).resolve()
        if not target.is_relative_to(self.dir.resolve()):
            raise ValueError(f"artifact file name {name!r} escapes artifact {self.path}")
        return target

    def meta(self) -> dict[str, Any]:
        """The ``meta.json`` written with the artifact ({} when none)."""
        meta = self.dir / "meta.json"
        return json.loads(meta.read_text()) if meta.exists() else {}


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide files from teammates
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp folder beside ``final``; on clean exit it replaces ``final`` (an older
    copy is removed), on error it is deleted, so ``final`` is never half-written."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _manifest(folder: Path) -> dict[str, dict[str, Any]]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {
        p.relative_to(folder).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in files
    }


def _digest(manifest: dict[str, dict[str, Any]]) -> str:
    return sha256_bytes(json.dumps(manifest, sort_keys=True).encode())


class ArtifactStore:
    """Artifacts under one root folder. Safe for concurrent writers of the same content."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._sweep_dead_writers()

    def _sweep_dead_writers(self) -> None:
        """Delete temp folders left by writers of this host that were killed (kill -9).

        Temp folders are named ``<kind>@<host>@<pid>@...``; a folder of a live process, or
        of another host sharing the file system, is left alone.
        """
        tmp_root = self.root / ".tmp"
        if not tmp_root.is_dir():
            return
        host = socket.gethostname()
        for entry in tmp_root.iterdir():
            parts = entry.name.split("@")
            ours = len(parts) >= 4 and parts[1] == host and parts[2].isdigit()
            if ours and not _pid_alive(int(parts[2])):
                shutil.rmtree(entry, ignore_errors=True)

    @contextmanager
    def writer(self, kind: str, meta: dict[str, Any] | None = None) -> Iterator[_Writer]:
        """Yield a writer whose ``.dir`` is a fresh temp folder; on clean exit it is
        hashed and renamed into place and ``.ref`` is set. On error nothing is kept."""
        if not kind.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"artifact kind {kind!r} must be alphanumeric (with - or _)")
        tmp_root = self.root / ".tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        prefix = f"{kind}@{socket.gethostname()}@{os.getpid()}@"
        w = _Writer(Path(tempfile.mkdtemp(prefix=prefix, dir=tmp_root)))
        os.chmod(w.dir, 0o777 & ~_umask())  # mkdtemp's 0700 would survive the rename
        try:
            if meta is not None:
                (w.dir / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
            yield w
            w.ref = self._commit(kind, w.dir)
        except OSError as exc:
            shutil.rmtree(w.dir, ignore_errors=True)
            if exc.errno == 28:  # ENOSPC: say where, keep earlier artifacts untouched
                raise OSError(
                    28, f"disk full while writing a {kind} artifact under {self.root}; "
                    "free space or point the artifact root elsewhere (nothing was kept)"
                ) from exc
            raise
        except BaseException:
            shutil.rmtree(w.dir, ignore_errors=True)
            raise

    def _commit(self, kind: str, tmp: Path) -> ArtifactRef:
        manifest = _manifest(tmp)
        digest = _digest(manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        final = self.root / kind / digest[:24]
        final.parent.mkdir(parents=True, exist_ok=True)
        ref = ArtifactRef(kind=kind, sha256=digest, path=str(final))
        try:
            os.rename(tmp, final)
        except OSError:
            # Same content already committed (a concurrent or earlier writer): keep theirs
            # if it is intact, else swap the damaged copy out for our fresh one.
            if not final.exists():
                raise
            try:
                verify(ref)
                shutil.rmtree(tmp, ignore_errors=True)
            except CorruptArtifactError:
                self._replace_damaged(tmp, final)
        return ref

    @staticmethod
    def _replace_damaged(tmp: Path, final: Path) -> None:
        """Move a damaged artifact aside, put the fresh copy in place, then delete it."""
        graveyard = final.parent / f".damaged-{final.name}-{uuid.uuid4().hex[:8]}"
        os.rename(final, graveyard)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():  # lost a race with another repairer: theirs is fresh
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(graveyard, ignore_errors=True)

    def resolve(self, ref: ArtifactRef) -> Path:
        """The artifact's folder, refusing paths outside this store's root."""
        path = Path(ref.path).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"artifact path {ref.path} is outside the artifact root {self.root}")
        return path

    def find(self, kind: str, digest: str) -> ArtifactRef | None:
        """The committed artifact of this kind and digest, if present and intact."""
        final = self.root / kind / digest[:24]
        if not (final / MANIFEST).exists():
            return None
        return ArtifactRef(kind=kind, sha256=digest, path=str(final))


class _Writer:
    def __init__(self, folder: Path):
        self.dir = folder
        self.ref: ArtifactRef | None = None

    def path(self, name: str) -> Path:
        p = (self.dir / name).resolve()
        if not p.is_relative_to(self.dir.resolve()):
            raise ValueError(f"file name {name!r} escapes the artifact folder")
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


def verify(ref: ArtifactRef, full: bool = True) -> Path:
    """Check an artifact against its manifest; return its folder.

    ``full`` re-hashes every file (sha256); otherwise only presence and sizes are checked.
    Raises :class:`CorruptArtifactError` naming the first bad file.
    """
    folder = Path(ref.path)
    mpath = folder / MANIFEST
    if not mpath.exists():
        raise CorruptArtifactError(
            f"{ref.kind} artifact {folder} has no {MANIFEST}: it is incomplete; delete it and rerun"
        )
    manifest = json.loads(mpath.read_text())
    if _digest(manifest) != ref.sha256:
        raise CorruptArtifactError(f"{ref.kind} artifact {folder}: manifest does not match digest")
    for name, entry in manifest.items():
        f = folder / name
        if not f.exists() or f.stat().st_size != entry["size"]:
            raise CorruptArtifactError(
                f"{ref.kind} artifact file {f} is missing or truncated "
                f"(expected {entry['size']} bytes); delete {folder} and rerun the stage"
            )
        if full and sha256_file(f) != entry["sha256"]:
            raise CorruptArtifactError(
                f"{ref.kind} artifact file {f} fails its checksum; delete {folder} and rerun"
            )
    return folder


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]
