"""Foundation: config digests, artifact store atomicity and verification, hashing,
metrics loggers, the backend switch and the CLI registry."""

from __future__ import annotations

import errno
import json
import subprocess
import sys

import numpy as np
import pytest
from pydantic import ValidationError

from tokalign_core.configs.base import FrozenConfig, flatten
from tokalign_core.runtime import backend
from tokalign_core.runtime.tracking import JsonlLogger, MultiLogger, NullLogger
from tokalign_core.store import hashing
from tokalign_core.store.artifacts import ArtifactRef, ArtifactStore, CorruptArtifactError, verify


class Demo(FrozenConfig):
    dims: int = 300
    name: str = "glove"
    hf_token: str | None = None


def test_digest_is_stable_and_field_sensitive():
    assert Demo().digest() == Demo(dims=300).digest()
    assert Demo().digest() != Demo(dims=301).digest()
    # Stable across processes (no hash randomisation): compare with a fresh interpreter.
    code = (
        "from tests.core.test_foundation import Demo; print(Demo().digest())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == Demo().digest()


def test_config_is_frozen_and_rejects_unknown_keys():
    cfg = Demo()
    with pytest.raises(ValidationError):
        cfg.dims = 5  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Demo(dimz=5)


def test_flat_redacts_secrets_but_not_token_counts():
    flat = Demo(hf_token="hf_abc").flat("glove.")
    assert flat["glove.hf_token"] == "***"
    assert flat["glove.dims"] == 300
    nested = flatten({"a": {"tokens_per_step": 5, "api_key": "k", "target_tokenizer": "x"}})
    assert nested == {"a.tokens_per_step": 5, "a.api_key": "***", "a.target_tokenizer": "x"}


def test_config_load_names_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dims": "many"}))
    with pytest.raises(ValueError, match="bad.json"):
        Demo.load(bad)
    good = tmp_path / "good.yaml"
    good.write_text("dims: 50\n")
    assert Demo.load(good).dims == 50


def _write(store: ArtifactStore, payload: bytes, kind: str = "demo") -> ArtifactRef:
    with store.writer(kind, meta={"n": len(payload)}) as w:
        w.path("data.bin").write_bytes(payload)
    assert w.ref is not None
    return w.ref


def test_artifact_roundtrip_and_content_addressing(tmp_path):
    store = ArtifactStore(tmp_path)
    a = _write(store, b"hello")
    b = _write(store, b"hello")
    c = _write(store, b"world")
    assert a == b and a.sha256 != c.sha256
    assert verify(a) == a.dir
    assert a.meta() == {"n": 5}
    assert store.find("demo", a.sha256) == a
    assert not list((tmp_path / ".tmp").iterdir())  # no leftovers


def test_failed_write_leaves_nothing(tmp_path):
    store = ArtifactStore(tmp_path)
    good = _write(store, b"keep me")
    with pytest.raises(RuntimeError), store.writer("demo") as w:
        w.path("data.bin").write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert [p.name for p in (tmp_path / "demo").iterdir()] == [good.dir.name]
    assert not list((tmp_path / ".tmp").iterdir())


def test_disk_full_is_reported_and_earlier_artifacts_survive(tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path)
    good = _write(store, b"earlier")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="disk full"), store.writer("demo") as w:
        monkeypatch.setattr(np, "save", full)
        np.save(w.path("x.npy"), np.zeros(3))
    verify(good)
    assert not list((tmp_path / ".tmp").iterdir())


def test_corruption_and_truncation_detected(tmp_path):
    store = ArtifactStore(tmp_path)
    ref = _write(store, b"0123456789")
    (ref.dir / "data.bin").write_bytes(b"0123456780")  # same size, different bytes
    verify(ref, full=False)  # size check alone cannot see it
    with pytest.raises(CorruptArtifactError, match="checksum"):
        verify(ref)
    (ref.dir / "data.bin").write_bytes(b"01234")
    with pytest.raises(CorruptArtifactError, match="truncated"):
        verify(ref, full=False)
    (ref.dir / "MANIFEST.json").unlink()
    with pytest.raises(CorruptArtifactError, match="incomplete"):
        verify(ref)


def test_artifact_paths_cannot_escape_root(tmp_path):
    store = ArtifactStore(tmp_path / "root")
    ref = _write(store, b"x")
    with pytest.raises(ValueError, match="escapes"):
        ref.file("../../etc/passwd")
    outside = ArtifactRef(kind="demo", sha256="0" * 64, path=str(tmp_path / "elsewhere"))
    with pytest.raises(ValueError, match="outside the artifact root"):
        store.resolve(outside)
    with pytest.raises(ValueError, match="escapes"), store.writer("demo") as w:
        w.path("../evil.bin")


def test_tree_hash_follows_bytes_and_names(tmp_path):
    (tmp_path / "a.txt").write_text("one")
    h1 = hashing.sha256_tree(tmp_path)
    (tmp_path / "a.txt").write_text("two")
    h2 = hashing.sha256_tree(tmp_path)
    (tmp_path / "a.txt").rename(tmp_path / "b.txt")
    h3 = hashing.sha256_tree(tmp_path)
    assert len({h1, h2, h3}) == 3
    assert len(hashing.code_hash()) == 64


def test_jsonl_logger_writes_finite_metrics(tmp_path):
    path = tmp_path / "m.jsonl"
    lg = MultiLogger(JsonlLogger(path), NullLogger())
    lg.log({"loss": 1.5, "bad": float("nan"), "note": "x"}, step=3)
    lg.close()
    row = json.loads(path.read_text())
    assert row["step"] == 3 and row["loss"] == 1.5 and "bad" not in row and "note" not in row


def test_backend_switch_on_cpu():
    assert backend.resolve_backend("numpy") == "numpy"
    x = np.arange(3.0)
    assert backend.array_namespace(x) is np
    assert backend.to_numpy(x) is x
    if not backend.cupy_available():
        assert backend.resolve_backend("auto") in ("numpy", "torch")
        with pytest.raises(ImportError, match="tokalign\\[gpu\\]"):
            backend.resolve_backend("cupy")
    with pytest.raises(ValueError, match="unknown backend"):
        backend.resolve_backend("tpu")  # type: ignore[arg-type]


def test_cli_help_lists_commands():
    from tokalign.cli import build_parser

    text = build_parser().format_help()
    assert "tokalign" in text and "vocabulary" in text


def test_killed_writer_leftovers_are_swept_but_live_ones_kept(tmp_path):
    """A temp folder is swept only when its writer lock can be taken (the writer is gone)
    or, lacking a lock file, when it is older than the grace period; another host's
    folders and a live writer's (whatever its PID looks like) are kept."""
    import os
    import socket
    import time

    from tokalign_core.store.artifacts import UNLOCKED_GRACE_S, WRITER_LOCK

    store = ArtifactStore(tmp_path)
    host = socket.gethostname()
    tmp = tmp_path / ".tmp"
    dead = tmp / f"demo@{host}@{os.getpid()}@abc"  # our PID, but nobody holds its lock
    dead.mkdir(parents=True)
    (dead / WRITER_LOCK).touch()
    old_unlocked = tmp / f"demo@{host}@1@old"
    old_unlocked.mkdir()
    stale = time.time() - UNLOCKED_GRACE_S - 60
    os.utime(old_unlocked, (stale, stale))
    young_unlocked = tmp / f"demo@{host}@1@young"
    young_unlocked.mkdir()
    other_host = tmp / "demo@elsewhere@1@ghi"
    other_host.mkdir()
    (other_host / WRITER_LOCK).touch()
    with store.writer("demo") as live:
        ArtifactStore(tmp_path)
        names = sorted(p.name for p in tmp.iterdir())
    assert names == sorted([live.dir.name, young_unlocked.name, other_host.name])


def test_artifact_files_follow_the_umask(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        ref = _write(ArtifactStore(tmp_path), b"shared")
    finally:
        os.umask(old)
    assert stat.S_IMODE(ref.dir.stat().st_mode) == 0o755
    assert stat.S_IMODE((ref.dir / "data.bin").stat().st_mode) & 0o044 == 0o044


@pytest.mark.parametrize("key,secret", [
    ("hf_token", True), ("mlflow.access_token", True), ("api_key", True),
    ("db.password", True), ("aws_secret_access_key", True),
    ("tokenize_batch_size", False), ("corpus.bytes_per_token", False), ("max_tokens", False),
    ("eos_token", False), ("target_tokenizer", False), ("token_budget", False),
])
def test_secret_detection_is_by_whole_words(key, secret):
    from tokalign_core.configs.base import is_secret_key

    assert is_secret_key(key) is secret
