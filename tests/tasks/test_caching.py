"""Content-hash caching: hits across processes, misses on changed bytes or code, and never
trusts a record whose artifact has gone."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import caching
from tasks.caching import Workspace, content_key, fingerprint, is_transient
from tokalign_core.store.artifacts import ArtifactRef, CorruptArtifactError

REPO = Path(__file__).resolve().parents[2]


def _child(api: str, run_dir: Path, src: Path) -> dict:
    env = dict(os.environ, PREFECT_API_URL=api, TOKALIGN_TEST_CODE_HASH="pinned",
               PREFECT_LOGGING_LEVEL="WARNING")
    out = subprocess.run(
        [sys.executable, "-m", "tests.tasks.toy_tasks", str(run_dir), str(src)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("REF "))
    return json.loads(line[4:])


def test_hit_in_new_process_and_miss_when_bytes_change(prefect_api, tmp_path, monkeypatch):
    from tests.tasks import toy_tasks
    from tokalign_core.store import hashing

    # Cold run in this process, then two fresh processes: the first must hit the persisted
    # cache, the second (same path, new bytes) must miss.
    monkeypatch.setattr(hashing, "code_hash", lambda: "pinned")
    src = tmp_path / "in.txt"
    src.write_text("hello")
    run = tmp_path / "run"
    first = toy_tasks.toy_flow(Workspace(run_dir=str(run)), src).model_dump()
    second = _child(prefect_api, run, src)
    assert toy_tasks.calls(run) == 1, "unchanged rerun in a new process must hit the cache"
    assert first == second
    src.write_text("HELLO world")  # same path, new bytes
    third = _child(prefect_api, run, src)
    assert toy_tasks.calls(run) == 2
    assert third["sha256"] != first["sha256"]
    assert Path(third["path"], "u.txt").read_text() == "HELLO WORLD"


def test_miss_when_code_hash_changes(prefect_api, tmp_path, monkeypatch):
    from tests.tasks import toy_tasks
    from tokalign_core.store import hashing

    src = tmp_path / "in.txt"
    src.write_text("abc")
    ws = Workspace(run_dir=str(tmp_path / "run"))
    monkeypatch.setattr(hashing, "code_hash", lambda: "code-v1")
    toy_tasks.toy_flow(ws, src)
    toy_tasks.toy_flow(ws, src)
    assert toy_tasks.calls(ws.root) == 1
    monkeypatch.setattr(hashing, "code_hash", lambda: "code-v2")
    toy_tasks.toy_flow(ws, src)
    assert toy_tasks.calls(ws.root) == 2


def test_stale_record_is_not_trusted(prefect_api, tmp_path, monkeypatch):
    from tests.tasks import toy_tasks
    from tokalign_core.store import hashing

    monkeypatch.setattr(hashing, "code_hash", lambda: "code-stale")
    src = tmp_path / "in.txt"
    src.write_text("abc")
    ws = Workspace(run_dir=str(tmp_path / "run"))
    ref = toy_tasks.toy_flow(ws, src)
    shutil.rmtree(ref.path)  # the artifact vanished (cleanup, disk loss)
    again = toy_tasks.toy_flow(ws, src)
    assert toy_tasks.calls(ws.root) == 2
    assert Path(again.path, "u.txt").read_text() == "ABC"
    # Truncate a file: the size check of verify(full=False) catches it too.
    Path(again.path, "u.txt").write_text("A")
    third = toy_tasks.toy_flow(ws, src)
    assert toy_tasks.calls(ws.root) == 3
    assert third.sha256 == again.sha256  # same content rebuilt, record under a derived key
    # ... and the rebuilt record is trusted on the next run.
    toy_tasks.toy_flow(ws, src)
    assert toy_tasks.calls(ws.root) == 3


def test_fingerprint_uses_content_not_names(tmp_path):
    a = ArtifactRef(kind="tokens", sha256="ab" * 32, path="/x/one")
    b = ArtifactRef(kind="tokens", sha256="ab" * 32, path="/y/two")
    assert fingerprint(a) == fingerprint(b)
    f = tmp_path / "t.json"
    f.write_text("v1")
    before = fingerprint(str(f))
    f.write_text("v2")
    assert fingerprint(str(f)) != before
    assert fingerprint(f)["path_sha256"] == fingerprint(str(f))["path_sha256"]
    # Strings that are not local paths stay plain values.
    assert fingerprint("builtin:qwen2") == "builtin:qwen2"
    assert fingerprint(Workspace(run_dir="/a")) is None
    with pytest.raises(TypeError, match="cannot build a content cache key"):
        fingerprint(object())


def test_key_ignores_workspace_but_not_values(monkeypatch):
    from tokalign_core.store import hashing

    monkeypatch.setattr(hashing, "code_hash", lambda: "c")
    k1 = content_key("t", {"ws": Workspace(run_dir="/a"), "n": 1})
    k2 = content_key("t", {"ws": Workspace(run_dir="/b", workers=4), "n": 1})
    assert k1 == k2
    assert content_key("t", {"n": 2}) != content_key("t", {"n": 1})
    assert content_key("u", {"n": 1}) != content_key("t", {"n": 1})


def test_config_paths_are_hashed_by_bytes(tmp_path, monkeypatch):
    from tokalign_core.configs.base import FrozenConfig
    from tokalign_core.store import hashing

    class Cfg(FrozenConfig):
        tokenizer: str
        seed: int = 0

    monkeypatch.setattr(hashing, "code_hash", lambda: "c")
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_text("{}")
    k1 = content_key("t", {"cfg": Cfg(tokenizer=str(folder))})
    (folder / "tokenizer.json").write_text('{"v": 2}')
    assert content_key("t", {"cfg": Cfg(tokenizer=str(folder))}) != k1


def test_only_transient_io_is_retried():
    assert is_transient(ConnectionResetError())
    assert is_transient(TimeoutError())
    assert is_transient(OSError(errno.ESTALE, "stale NFS handle"))
    assert not is_transient(OSError(errno.ENOSPC, "disk full"))
    assert not is_transient(FileNotFoundError("x"))
    assert not is_transient(CorruptArtifactError("bad"))
    assert not is_transient(ValueError("maths"))
    assert not is_transient(FloatingPointError())


def test_first_trusted_key_skips_stale_records(tmp_path):
    class Rec:
        def __init__(self, result):
            self.result = result

    class Store:
        def __init__(self, records):
            self.records = records

        def exists(self, key):
            return key in self.records

        def read(self, key):
            return Rec(self.records[key])

    gone = ArtifactRef(kind="x", sha256="0" * 64, path=str(tmp_path / "missing"))
    key = "k" * 64
    assert caching.first_trusted_key(key, Store({})) == key
    assert caching.first_trusted_key(key, Store({key: {"n": 1}})) == key
    nxt = caching.derived_key(key, 1)
    assert caching.first_trusted_key(key, Store({key: gone})) == nxt


def test_damaged_artifact_is_quarantined_not_deleted(tmp_path):
    from tokalign_core.store.artifacts import ArtifactStore

    st = ArtifactStore(tmp_path / "a")
    with st.writer("x") as w:
        w.path("f.bin").write_bytes(b"12345")
    Path(w.ref.path, "f.bin").write_bytes(b"1")
    assert not caching.result_is_intact({"out": [w.ref]})
    assert not Path(w.ref.path).exists()
    moved = Path(w.ref.path + ".corrupt-0")
    assert (moved / "f.bin").read_bytes() == b"1"
