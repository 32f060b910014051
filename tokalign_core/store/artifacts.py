"""Content-addressed artifact store with atomic writes and verified loads.

An artifact is a folder ``<root>/<kind>/<digest[:24]>/`` holding data files plus
``MANIFEST.json`` (sha256 and size of every file). Writers fill a temporary folder inside
the root and rename it into place only when complete, so a killed process never leaves a
half-written artifact that a later run trusts. A writer holds an exclusive ``flock`` on
``.writer.lock`` inside its temp folder for as long as it lives; a store opened later
deletes only temp folders whose lock it can take (their writer is gone, however it died),
never by guessing from a process id, which another PID namespace cannot see. Loads
re-check the manifest (or at least the sizes, for fast paths) and raise
:class:`CorruptArtifactError` naming the file.

Tasks exchange :class:`ArtifactRef` (kind, sha256, path): small, frozen, JSON-serialisable.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tokalign_core.configs.base import FrozenConfig
from tokalign_core.store.atomic import (  # noqa: F401  (the store's writers, also re-exported)
    atomic_dir,
    atomic_write_bytes,
    atomic_write_text,
    current_umask,
)
from tokalign_core.store.hashing import sha256_bytes, sha256_file, sha256_file_memo

MANIFEST = "MANIFEST.json"
# Held (flock LOCK_EX) by a live writer inside its temp folder; never part of an artifact.
WRITER_LOCK = ".writer.lock"
# A temp folder without a lock file exists only for microseconds in a live writer (between
# mkdtemp and the lock, and between dropping the lock file and the rename); one older than
# this was left by a writer killed in that window or by an older version: swept.
UNLOCKED_GRACE_S = 3600.0


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
        return read_meta(self.dir)


def read_meta(folder: str | Path) -> dict[str, Any]:
    """The ``meta.json`` of an artifact folder ({} when it has none)."""
    meta = Path(folder) / "meta.json"
    return json.loads(meta.read_text()) if meta.exists() else {}


def _hold_folder(folder: Path) -> int:
    """Create ``folder/.writer.lock`` and hold an exclusive flock on it; return its fd.

    The kernel drops the lock when this process exits, however it dies, so a sweeper that
    can take the lock knows the writer is gone. ``O_CLOEXEC``: no exec'd child keeps it.
    On a file system without flock the fd is returned unlocked and sweepers (whose flock
    fails the same way) leave the folder alone."""
    fd = os.open(folder / WRITER_LOCK,
                 os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            os.close(fd)
            raise
    return fd


def _claim_abandoned(folder: Path) -> int | None:
    """An fd holding ``folder``'s writer lock if its writer is gone, else None.

    None for a live writer (lock held), a lock file that is a symlink or not ours to open,
    a file system without flock, or a young folder that has no lock file yet."""
    try:
        fd = os.open(folder / WRITER_LOCK, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        try:
            age = time.time() - folder.stat().st_mtime
        except FileNotFoundError:
            return None
        return -1 if age > UNLOCKED_GRACE_S else None
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held by a live writer (EWOULDBLOCK), or flock unsupported
        os.close(fd)
        return None
    return fd


def _sweep_dead_writers(tmp_root: Path, host: str) -> None:
    """Delete the temp folders (artifact writers' and scratch) of dead processes of ``host``.

    Only folders whose writer lock this process can take are deleted, under that lock, so
    a live writer's folder is never touched, whatever PID namespace either process is in.
    Other hosts' folders are left alone: flock need not be shared across hosts."""
    if not tmp_root.is_dir():
        return
    for entry in tmp_root.iterdir():
        parts = entry.name.split("@")
        if len(parts) < 4 or parts[1] != host or entry.is_symlink() or not entry.is_dir():
            continue
        fd = _claim_abandoned(entry)
        if fd is None:
            continue
        try:
            shutil.rmtree(entry, ignore_errors=True)
        finally:
            if fd >= 0:
                os.close(fd)


def _make_temp(tmp_root: Path, kind: str) -> tuple[Path, int]:
    """A fresh ``<kind>@<host>@<pid>@...`` folder under ``tmp_root`` whose lock we hold."""
    tmp_root.mkdir(parents=True, exist_ok=True)
    prefix = f"{kind}@{socket.gethostname()}@{os.getpid()}@"
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=tmp_root))
    try:
        return folder, _hold_folder(folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def claim_private_dir(parent: str | Path, name: str) -> tuple[Path, int]:
    """A fresh folder ``<parent>/<name>@<host>@<pid>@...`` and the fd of the writer lock
    held inside it (close the fd, after deleting the folder, to release it). Folders of
    processes that died without deleting theirs are removed by :func:`sweep_abandoned`."""
    return _make_temp(Path(parent), name)


def sweep_abandoned(parent: str | Path) -> None:
    """Delete the folders under ``parent`` (from :func:`claim_private_dir` or store
    writers) whose holder died, on this host; live holders' folders are kept."""
    _sweep_dead_writers(Path(parent), socket.gethostname())


def _manifest(folder: Path) -> dict[str, dict[str, Any]]:
    skip = {MANIFEST, WRITER_LOCK}
    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and not (p.parent == folder and p.name in skip))
    return {
        p.relative_to(folder).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in files
    }


def manifest_digest(manifest: dict[str, dict[str, Any]]) -> str:
    """The digest naming an artifact: sha256 of its manifest as canonical JSON."""
    return sha256_bytes(json.dumps(manifest, sort_keys=True).encode())


class ArtifactStore:
    """Artifacts under one root folder. Safe for concurrent writers of the same content."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._sweep_dead_writers()

    def _sweep_dead_writers(self) -> None:
        """Delete temp folders left by killed writers of this host (see the module doc)."""
        _sweep_dead_writers(self.root / ".tmp", socket.gethostname())

    @contextmanager
    def scratch(self, name: str) -> Iterator[Path]:
        """A private temp folder under ``<root>/.tmp`` for intermediate files (a corpus
        spill): held by this process's writer lock, deleted on exit and, after a
        ``kill -9``, by the next store opened on this host."""
        folder, fd = _make_temp(self.root / ".tmp", name)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            os.close(fd)

    @contextmanager
    def writer(self, kind: str, meta: dict[str, Any] | None = None) -> Iterator[_Writer]:
        """Yield a writer whose ``.dir`` is a fresh temp folder; on clean exit it is
        hashed and renamed into place and ``.ref`` is set. On error nothing is kept."""
        if not kind.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"artifact kind {kind!r} must be alphanumeric (with - or _)")
        folder, fd = _make_temp(self.root / ".tmp", kind)
        w = _Writer(folder, fd)
        try:
            os.chmod(w.dir, 0o777 & ~current_umask())  # mkdtemp's 0700 would survive the rename
            if meta is not None:
                (w.dir / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
            yield w
            w.ref = self._commit(kind, w)
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
        finally:
            w.close()

    def _commit(self, kind: str, w: _Writer) -> ArtifactRef:
        tmp = w.dir
        w.check_intact(kind)
        manifest = _manifest(tmp)
        digest = manifest_digest(manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        final = self.root / kind / digest[:24]
        final.parent.mkdir(parents=True, exist_ok=True)
        ref = ArtifactRef(kind=kind, sha256=digest, path=str(final))
        w.check_intact(kind)  # hashing can take minutes: check again right before the rename
        # The lock file must not travel into the artifact; a folder without one is left
        # alone by sweepers for UNLOCKED_GRACE_S, far longer than the rename below.
        os.unlink(tmp / WRITER_LOCK)
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
        """Quarantine a damaged artifact (:func:`quarantine`), put the fresh copy in place."""
        quarantine(final)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():  # lost a race with another repairer: theirs is fresh
                raise
            shutil.rmtree(tmp, ignore_errors=True)

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
    """The temp folder of one artifact being written, and the writer lock held inside it."""

    def __init__(self, folder: Path, lock_fd: int):
        self.dir = folder
        self.ref: ArtifactRef | None = None
        self._lock_fd = lock_fd
        st = os.stat(folder)
        self._identity = (st.st_dev, st.st_ino)
        self._handed: set[Path] = set()

    def path(self, name: str) -> Path:
        """Where to write file ``name`` (subfolders are created inside the temp folder).

        Never re-creates the temp folder itself: if it vanished (deleted by someone else),
        this raises instead of silently starting a second, partial artifact."""
        root = self.dir.resolve()
        p = (self.dir / name).resolve()
        if not p.is_relative_to(root) or p == root:
            raise ValueError(f"file name {name!r} escapes the artifact folder")
        self._require_folder()
        parent = root
        for part in p.relative_to(root).parts[:-1]:
            parent = parent / part
            with contextlib.suppress(FileExistsError):
                parent.mkdir()  # no parents=True: a vanished root fails here
        self._handed.add(p)
        return p

    def _require_folder(self) -> None:
        try:
            st = os.stat(self.dir)
        except FileNotFoundError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self._identity:
            raise CorruptArtifactError(
                f"the temp folder {self.dir} of this artifact was deleted while it was being "
                "written (by another process cleaning the store?); nothing was committed, rerun")

    def check_intact(self, kind: str) -> None:
        """Refuse to commit a folder that was deleted (or replaced) under the writer, or
        that lost its lock file or any file this writer handed out."""
        self._require_folder()
        try:
            lock_st = os.stat(self.dir / WRITER_LOCK, follow_symlinks=False)
        except FileNotFoundError:
            lock_st = None
        fst = os.fstat(self._lock_fd)
        if lock_st is None or (lock_st.st_dev, lock_st.st_ino) != (fst.st_dev, fst.st_ino):
            raise CorruptArtifactError(
                f"the writer lock of {self.dir} was removed while the {kind} artifact was being "
                "written; nothing was committed, rerun")
        missing = sorted(p.name for p in self._handed if not p.is_file())
        if missing:
            raise CorruptArtifactError(
                f"{kind} artifact in {self.dir} is missing {', '.join(missing)}, handed out for "
                "writing but absent at commit; nothing was committed, rerun")

    def close(self) -> None:
        """Drop the writer lock (idempotent)."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def verify(ref: ArtifactRef, full: bool = True, memo: bool = False) -> Path:
    """Check an artifact against its manifest; return its folder.

    ``full`` re-hashes every file (sha256); otherwise only presence and sizes are checked.
    ``memo`` takes a file's hash from :func:`tokalign_core.store.hashing.sha256_file_memo` (read
    once per process while the file's stat, ctime included, is unchanged).
    Raises :class:`CorruptArtifactError` naming the first bad file.
    """
    hash_file = sha256_file_memo if memo else sha256_file
    folder = Path(ref.path)
    mpath = folder / MANIFEST
    if not mpath.exists():
        raise CorruptArtifactError(
            f"{ref.kind} artifact {folder} has no {MANIFEST}: it is incomplete; delete it and rerun"
        )
    manifest = json.loads(mpath.read_text())
    if manifest_digest(manifest) != ref.sha256:
        raise CorruptArtifactError(f"{ref.kind} artifact {folder}: manifest does not match digest")
    for name, entry in manifest.items():
        f = folder / name
        if not f.exists() or f.stat().st_size != entry["size"]:
            raise CorruptArtifactError(
                f"{ref.kind} artifact file {f} is missing or truncated "
                f"(expected {entry['size']} bytes); delete {folder} and rerun the stage"
            )
        if full and hash_file(f) != entry["sha256"]:
            raise CorruptArtifactError(
                f"{ref.kind} artifact file {f} fails its checksum; delete {folder} and rerun"
            )
    return folder


def manifest_ref(folder: str | Path, kind: str) -> ArtifactRef | None:
    """The ref of an artifact folder from its ``MANIFEST.json`` (None: no manifest)."""
    folder = Path(folder).expanduser().resolve()
    mpath = folder / MANIFEST
    if not mpath.is_file():
        return None
    try:
        manifest = json.loads(mpath.read_text())
    except ValueError as exc:
        raise CorruptArtifactError(f"{kind} artifact {folder}: {MANIFEST} is not valid JSON "
                                   f"({exc}); delete the folder and rerun the stage") from exc
    return ArtifactRef(kind=kind, sha256=manifest_digest(manifest), path=str(folder))


def folder_digest(folder: str | Path, kind: str) -> str | None:
    """The digest of an artifact folder's manifest (None: a hand-made folder has none),
    recorded in a stage's meta to name the input it read."""
    ref = manifest_ref(folder, kind)
    return ref.sha256 if ref is not None else None


def verify_input(source: ArtifactRef | str | Path, kind: str) -> Path:
    """Check a stage's input in full (every file's sha256 against ``MANIFEST.json``)
    before the stage computes; return its folder.

    Hashing costs far less than any stage, and a file already hashed in this process is
    not re-read while its stat is unchanged (``memo``). A ref must match its manifest's
    digest. A folder without a manifest (hand-made, e.g. ``data.write_tokens_artifact``)
    is returned unchecked: its reader checks its structure. Raises
    :class:`CorruptArtifactError` naming the bad file."""
    folder = Path(source.path if isinstance(source, ArtifactRef) else source).expanduser()
    found = manifest_ref(folder, kind)
    if found is None:
        if isinstance(source, ArtifactRef):
            verify(source, full=False)  # raises: a committed artifact always has one
        return folder
    if isinstance(source, ArtifactRef) and source.sha256 != found.sha256:
        raise CorruptArtifactError(
            f"{kind} artifact {folder}: its manifest does not match the expected digest "
            f"{source.sha256[:12]}; delete {folder} and rerun the stage that built it")
    verify(found, full=True, memo=True)
    return folder


def input_dir(source: ArtifactRef | str | Path, kind: str, required: Sequence[str] = ()) -> Path:
    """The folder of a stage's input artifact, given as a ref or a path: it must exist and
    hold the ``required`` files, and is checked in full (:func:`verify_input`) before the
    stage computes. The path is resolved (the metas record it, so ``./x`` and ``/abs/x``
    name one artifact). Raises FileNotFoundError / :class:`CorruptArtifactError`."""
    folder = Path(source.path if isinstance(source, ArtifactRef) else source)
    folder = folder.expanduser().resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"{kind} artifact {folder} does not exist (expected a folder)")
    for name in required:
        if not (folder / name).exists():
            raise FileNotFoundError(
                f"{kind} artifact {folder} has no {name}; is it a {kind} artifact? "
                "Rerun the stage that writes it"
            )
    verify_input(source, kind)  # every file's sha256, before the stage computes
    return folder


def quarantine(source: ArtifactRef | str | Path) -> Path | None:
    """The one policy for a damaged artifact: move its folder aside, beside it as
    ``<name>.corrupt-<n>``, never deleting it (the bytes show what went wrong), so the same
    content can be committed to its content-addressed place again. Returns where it went;
    None when the folder is gone (absent, or another process moved it first)."""
    folder = Path(source.path if isinstance(source, ArtifactRef) else source)
    for n in range(1000):
        target = folder.with_name(f"{folder.name}.corrupt-{n}")
        if target.exists() or target.is_symlink():
            continue
        try:
            os.rename(folder, target)
        except FileNotFoundError:
            return None
        except OSError:
            if target.exists():  # another process took this name first: try the next
                continue
            raise
        return target
    raise RuntimeError(f"too many quarantined copies of {folder}; delete them")


def write_manifest(folder: str | Path) -> str:
    """Write ``MANIFEST.json`` (sha256 and size of every file) into a finished output
    folder outside the store (``align --out``), so readers can verify it; return its
    digest."""
    folder = Path(folder)
    manifest = _manifest(folder)
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
    return manifest_digest(manifest)
