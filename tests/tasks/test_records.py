"""Prefect cache records cannot run code (issue 16 item 4): JSON records, an owner-only
result folder, and records refused before deserialisation when they are not ours, are
group/world-writable or name a pickle serializer."""

from __future__ import annotations

import base64
import json
import os
import pickle
import stat
from pathlib import Path

import pytest

from tasks.caching import Workspace
from tasks.records import (
    SERIALIZER_TYPE,
    UnsafeRecordError,
    record_problem,
    result_storage,
    secure_dir,
)


class _Planted:
    """Unpickling this creates the marker file: stands in for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _records(ws: Workspace) -> list[Path]:
    return sorted(p for p in ws.results_dir.iterdir() if p.is_file())


def _flow(ws, src, monkeypatch, code):
    from tests.tasks import toy_tasks
    from tokalign_core.store import hashing

    monkeypatch.setattr(hashing, "code_hash", lambda: code)
    return toy_tasks.toy_flow(ws, src)


def test_records_are_json_in_an_owner_only_folder(prefect_api, tmp_path, monkeypatch):
    src = tmp_path / "in.txt"
    src.write_text("abc")
    ws = Workspace(run_dir=str(tmp_path / "run"))
    old = os.umask(0o002)  # a shared-volume umask: folders would be 0775
    try:
        ref = _flow(ws, src, monkeypatch, "records-json")
    finally:
        os.umask(old)
    [record] = _records(ws)
    data = json.loads(record.read_bytes())
    assert data["metadata"]["serializer"]["type"] == SERIALIZER_TYPE
    assert json.loads(data["result"])["__artifact_ref__"]["sha256"] == ref.sha256
    assert stat.S_IMODE(ws.results_dir.stat().st_mode) == 0o700
    assert record_problem(record) is None  # ours, JSON, unreachable by others
    locks = ws.results_dir / ".locks"
    assert not locks.exists() or stat.S_IMODE(locks.stat().st_mode) == 0o700


def test_a_planted_pickle_record_is_never_deserialised(prefect_api, tmp_path, monkeypatch):
    """Before: the record was a pickle and the next lookup unpickled whatever was there."""
    from prefect.serializers import PickleSerializer

    from tests.tasks import toy_tasks

    src = tmp_path / "in.txt"
    src.write_text("abc")
    ws = Workspace(run_dir=str(tmp_path / "run"))
    _flow(ws, src, monkeypatch, "records-planted")
    [record] = _records(ws)
    marker = tmp_path / "code-ran"
    data = json.loads(record.read_bytes())
    data["metadata"]["serializer"] = {"type": "pickle", "picklelib": "cloudpickle"}
    data["result"] = PickleSerializer(picklelib="pickle").dumps(_Planted(marker)).decode()
    record.write_text(json.dumps(data))
    os.chmod(record, 0o600)
    again = _flow(ws, src, monkeypatch, "records-planted")
    assert not marker.exists(), "a planted pickle ran at the cache lookup"
    assert toy_tasks.calls(ws.root) == 2  # refused, so the stage recomputed
    assert Path(again.path, "u.txt").read_text() == "ABC"


def test_record_problem_names_each_refusal(tmp_path):
    tmp_path = tmp_path / "results"  # pytest's tmp_path is 0700: use a shared-mode folder
    tmp_path.mkdir()
    os.chmod(tmp_path, 0o755)
    good = {"metadata": {"serializer": {"type": SERIALIZER_TYPE}}, "result": "{}"}
    rec = tmp_path / "rec"
    rec.write_text(json.dumps(good))
    os.chmod(rec, 0o600)
    assert record_problem(rec) is None
    assert record_problem(tmp_path / "none") == "missing"
    os.chmod(rec, 0o620)
    assert "group- or world-writable" in record_problem(rec)
    os.chmod(rec, 0o602)
    assert "group- or world-writable" in record_problem(rec)
    os.chmod(rec, 0o600)
    if os.geteuid() == 0:
        os.chown(rec, 12345, 12345)
        assert "owned by uid 12345" in record_problem(rec)
        os.chown(rec, 0, 0)
    link = tmp_path / "link"
    link.symlink_to(rec)
    assert record_problem(link) == "it is a symbolic link"
    pickled = tmp_path / "pickled"
    pickled.write_bytes(base64.b64encode(pickle.dumps({"a": 1})))
    os.chmod(pickled, 0o600)
    assert "not a JSON cache record" in record_problem(pickled)
    named = tmp_path / "named"
    named.write_text(json.dumps({**good, "metadata": {"serializer": {"type": "pickle"}}}))
    os.chmod(named, 0o600)
    assert "'pickle' serializer" in record_problem(named)


def test_group_writable_record_is_refused_unless_its_folder_is_owner_only(tmp_path):
    good = json.dumps({"metadata": {"serializer": {"type": SERIALIZER_TYPE}}})
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o775)
    rec = shared / "rec"
    rec.write_text(good)
    os.chmod(rec, 0o664)
    assert "group- or world-writable" in record_problem(rec)
    private = result_storage(shared)  # tightens our folder to 0700
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert record_problem(rec) is None  # Prefect's umask-mode record, unreachable by others
    assert stat.S_IMODE(rec.stat().st_mode) == 0o644


def test_secure_dir_tightens_our_folder_and_refuses_others(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o775)
    os.chmod(shared, 0o775)
    secure_dir(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o700
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        os.chown(theirs, 12345, 12345)
        with pytest.raises(UnsafeRecordError, match="owned by uid 12345"):
            secure_dir(theirs)
