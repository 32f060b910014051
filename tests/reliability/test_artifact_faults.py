"""Faults around artifacts (issue 8, items 1-2): a full disk mid-write, corrupted or
truncated files detected on load, and ``kill -9`` of a real writer process: earlier
artifacts stay untouched and no half-written artifact is ever trusted."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tokalign_core.store.artifacts import (
    MANIFEST,
    ArtifactStore,
    CorruptArtifactError,
    atomic_write_bytes,
    verify,
)
from tokalign_core.store.hashing import sha256_tree

ROOT = Path(__file__).resolve().parents[2]


def _write(store: ArtifactStore, kind: str, payload: bytes, n_files: int = 2):
    with store.writer(kind, meta={"n": n_files}) as w:
        for i in range(n_files):
            w.path(f"part-{i}.bin").write_bytes(payload + bytes([i]))
    return w.ref


def _committed(store: ArtifactStore, kind: str) -> list[Path]:
    return sorted(p for p in (store.root / kind).iterdir()) if (store.root / kind).exists() \
        else []


# ----------------------------------------------------------------------------- disk full


def test_disk_full_during_write_keeps_earlier_artifacts_and_leaves_nothing(tmp_path,
                                                                         monkeypatch):
    store = ArtifactStore(tmp_path)
    first = _write(store, "blob", b"first")
    before = sha256_tree(tmp_path / "blob")

    real_save = np.save
    calls = {"n": 0}

    def full_disk(file, arr, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the second array: a partly written artifact exists
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(file, arr, *a, **k)

    monkeypatch.setattr(np, "save", full_disk)
    with pytest.raises(OSError, match="disk full") as info, \
            store.writer("blob", meta={"n": 3}) as w:
        np.save(w.path("a.npy"), np.arange(10), allow_pickle=False)
        np.save(w.path("b.npy"), np.arange(10), allow_pickle=False)
    assert info.value.errno == errno.ENOSPC
    assert str(store.root) in str(info.value)  # says where
    assert sha256_tree(tmp_path / "blob") == before  # earlier artifact untouched
    assert _committed(store, "blob") == [first.dir]
    assert list((tmp_path / ".tmp").iterdir()) == []  # no partial artifact left
    verify(first)


def test_disk_full_in_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "config.json"
    target.write_text('{"old": true}')

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b'{"new": true}')
    assert target.read_text() == '{"old": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # temp file removed


@pytest.mark.slow
def test_disk_full_while_saving_a_pretrained_model(tmp_path, monkeypatch):
    """A real stage: the model card write fails; no model artifact, no cache entry."""
    from tokalign_core.model import toy
    from tokalign_core.train import pretrain as pt

    docs = toy.stdlib_texts(120, seed=2)
    texts = pt.TrainingTexts(docs[10:], {"en": docs[:10]}, "stdlib")
    cfg = pt.preset("micro", steps=2)
    store = ArtifactStore(tmp_path)
    other = _write(store, "blob", b"keep me")
    real = pt.model_card

    def card_then_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pt, "model_card", card_then_full)
    with pytest.raises(OSError, match="disk full"):
        pt.pretrain(cfg, store, texts=texts, progress=False)
    assert not (tmp_path / "model").exists() or _committed(store, "model") == []
    assert pt.find_cached(store, pt.cache_key(cfg, texts)) is None
    assert list((tmp_path / ".tmp").iterdir()) == []
    verify(other)
    monkeypatch.setattr(pt, "model_card", real)
    assert not pt.pretrain(cfg, store, texts=texts, progress=False).cached


# ----------------------------------------------------------------------------- corruption


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_file", "delete_manifest",
                                    "edit_manifest"])
def test_damaged_artifact_is_detected_on_load(tmp_path, damage):
    store = ArtifactStore(tmp_path)
    ref = _write(store, "blob", b"x" * 1000)
    part = ref.dir / "part-0.bin"
    if damage == "truncate":
        part.write_bytes(part.read_bytes()[:500])
        msg = "truncated"
    elif damage == "flip":
        data = bytearray(part.read_bytes())
        data[10] ^= 1
        part.write_bytes(bytes(data))
        msg = "checksum"
    elif damage == "delete_file":
        part.unlink()
        msg = "missing"
    elif damage == "delete_manifest":
        (ref.dir / MANIFEST).unlink()
        msg = "incomplete"
    else:
        manifest = json.loads((ref.dir / MANIFEST).read_text())
        manifest["part-0.bin"]["size"] += 1
        (ref.dir / MANIFEST).write_text(json.dumps(manifest))
        msg = "does not match"
    with pytest.raises(CorruptArtifactError, match=msg):
        verify(ref, full=True)
    if damage != "flip":  # size-only check still sees everything but a same-size flip
        with pytest.raises(CorruptArtifactError):
            verify(ref, full=False)
    else:
        verify(ref, full=False)


def test_flipped_byte_in_a_real_alignment_is_detected(tmp_path):
    """An alignment artifact (real stage format) with one changed byte fails verify()."""
    from tokalign_core.align.alignment import Alignment

    al = Alignment(source_ids=np.array([0, 1, 1]), scores=np.ones(3),
                   provenance=np.zeros(3), reverse=np.array([0, 1]))
    store = ArtifactStore(tmp_path)
    with store.writer("alignment") as w:
        al.save(w.dir)
    npz = w.ref.dir / "alignment.npz"
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0x40
    npz.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifactError, match="alignment.npz"):
        verify(w.ref)


def test_rewriting_identical_content_repairs_a_damaged_artifact(tmp_path):
    store = ArtifactStore(tmp_path)
    ref = _write(store, "blob", b"y" * 100)
    (ref.dir / "part-1.bin").write_bytes(b"damaged")
    again = _write(store, "blob", b"y" * 100)
    verify(again)


# ----------------------------------------------------------------------------- kill -9

WRITER = r"""
import sys, time
from pathlib import Path
from tokalign_core.store.artifacts import ArtifactStore

store = ArtifactStore(sys.argv[1])
ready = Path(sys.argv[2])
with store.writer("slow", meta={"who": "killed"}) as w:
    for i in range(200):
        w.path(f"chunk-{i:04d}.bin").write_bytes(bytes([i % 256]) * 4096)
        if i == 20:
            ready.write_text("writing")
        time.sleep(0.005)
print(w.ref.path)
"""


def test_kill_9_during_an_artifact_write_leaves_nothing_trusted(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    keep = _write(store, "slow", b"earlier")
    ready = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(store.root), str(ready)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not ready.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "writer never got going"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # Only the earlier artifact is committed; the killed one sits in .tmp, unreferenced.
    assert _committed(store, "slow") == [keep.dir]
    leftovers = list((store.root / ".tmp").iterdir())
    assert len(leftovers) == 1 and not (leftovers[0] / MANIFEST).exists()
    verify(keep)
    # Rerun: completes and verifies; the leftover is never picked up as the result.
    out = subprocess.run([sys.executable, "-c", WRITER, str(store.root), str(ready)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    from tokalign_core.store.artifacts import ArtifactRef

    new_path = Path(out.stdout.strip())
    assert new_path.parent == store.root / "slow" and new_path != leftovers[0]
    manifest = json.loads((new_path / MANIFEST).read_text())
    assert len([k for k in manifest if k.startswith("chunk-")]) == 200
    from tokalign_core.store.artifacts import manifest_digest

    verify(ArtifactRef(kind="slow", sha256=manifest_digest(manifest), path=str(new_path)))


@pytest.mark.slow
def test_kill_9_during_pretraining_then_rerun(tmp_path):
    """kill -9 the real `tokalign pretrain` CLI mid-training: no model artifact and no
    cache entry survive; the rerun trains from scratch and the result verifies."""
    store = tmp_path / "store"
    log = tmp_path / "log.jsonl"
    cmd = [sys.executable, "-m", "tokalign_core", "pretrain", "--preset", "micro",
           "--steps", "3000", "--artifacts", str(store), "--corpus", str(tmp_path),
           "--no-progress", "--log", str(log), "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (log.exists() and log.read_text().count("\n") >= 5):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (store / "model").exists() or not any((store / "model").iterdir())
    assert not (store / "index").exists() or not any((store / "index").rglob("*.json"))
    cmd[cmd.index("3000")] = "3"
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout[out.stdout.index("{"):])
    assert result["cached"] is False
    from tokalign_core.store.artifacts import ArtifactRef

    verify(ArtifactRef(kind="model", sha256=result["sha256"], path=result["path"]))
