"""The in-process memo of file digests behind :func:`tokalign_core.store.hashing.sha256_tree`:
an unchanged file is read once, while any change of its bytes under the same path (even
with the same size and a restored mtime) gives the new digest."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from tokalign_core.store import hashing


@pytest.fixture(autouse=True)
def _fresh_memo():
    hashing.clear_memo()
    yield
    hashing.clear_memo()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _count_reads(monkeypatch) -> list[str]:
    reads: list[str] = []
    real = hashing.sha256_file

    def counting(path):
        reads.append(str(path))
        return real(path)

    monkeypatch.setattr(hashing, "sha256_file", counting)
    return reads


def test_settled_files_are_read_once_per_process(tmp_path, monkeypatch):
    monkeypatch.setattr(hashing, "RACY_NS", 0)  # treat the fresh files as settled
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "a.json").write_bytes(b"alpha")
    (folder / "b.json").write_bytes(b"beta")
    reads = _count_reads(monkeypatch)
    first = hashing.sha256_tree(folder)
    assert hashing.sha256_tree(folder) == first
    assert hashing.sha256_tree(folder / "a.json") == _sha(b"alpha")
    assert sorted(os.path.basename(r) for r in reads) == ["a.json", "b.json"]


def test_same_size_rewrite_with_restored_mtime_misses(tmp_path, monkeypatch):
    monkeypatch.setattr(hashing, "RACY_NS", 0)
    f = tmp_path / "tokenizer.json"
    f.write_bytes(b"v1")
    st = os.stat(f)
    assert hashing.sha256_tree(f) == _sha(b"v1")  # remembered
    time.sleep(0.05)  # past a coarse kernel clock tick, so the write moves ctime
    f.write_bytes(b"v2")  # same path, same size, same inode
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old mtime back
    assert os.stat(f).st_mtime_ns == st.st_mtime_ns
    assert hashing.sha256_tree(f) == _sha(b"v2")


def test_racy_files_are_never_remembered(tmp_path, monkeypatch):
    # Default RACY_NS: a file written just now is re-read on every call, so two writes
    # inside one timestamp tick cannot be confused.
    f = tmp_path / "t.json"
    f.write_bytes(b"one")
    reads = _count_reads(monkeypatch)
    assert hashing.sha256_tree(f) == _sha(b"one")
    f.write_bytes(b"two")
    assert hashing.sha256_tree(f) == _sha(b"two")
    assert len(reads) == 2 and not hashing._MEMO


def test_replaced_file_misses(tmp_path, monkeypatch):
    monkeypatch.setattr(hashing, "RACY_NS", 0)
    f = tmp_path / "m.bin"
    f.write_bytes(b"old")
    hashing.sha256_tree(tmp_path)
    tmp = tmp_path / "m.tmp"
    tmp.write_bytes(b"new")
    os.replace(tmp, f)  # atomic replace: new inode under the same name
    assert hashing.sha256_tree(f) == _sha(b"new")
