"""Issue 16, the artifact store's side: a sweeper that cannot see the writer's PID (another
PID namespace), vanished or damaged temp folders, and a killed ``tokalign corpus`` spill.

A live writer is recognised by the flock it holds inside its temp folder, never by
(host, pid): these tests fool the (host, pid) check the way a container sharing the host
name does, and check that nothing half-written is ever committed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tokalign_core.store.artifacts import MANIFEST, ArtifactStore, CorruptArtifactError, verify

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# A sweeper in another PID namespace: every PID of ours looks dead to it (os.kill(pid, 0)
# raises ProcessLookupError there), and it shares our host name (host networking).
FOREIGN_NS_SWEEPER = """
import os, sys
def _no_such_process(pid, sig):
    raise ProcessLookupError(pid)
os.kill = _no_such_process
from tokalign_core.store.artifacts import ArtifactStore
ArtifactStore(sys.argv[1])
"""


def _tmp_entries(store: ArtifactStore) -> list[Path]:
    tmp = store.root / ".tmp"
    return sorted(tmp.iterdir()) if tmp.exists() else []


def _open_store_elsewhere(root: Path, prefix: list[str] | None = None) -> None:
    cmd = [*(prefix or []), sys.executable, "-c", FOREIGN_NS_SWEEPER, str(root)]
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def _cooccur_like_write(store: ArtifactStore, sweep) -> tuple[object, set[str]]:
    """Write token_ids.npy, let ``sweep`` run, write cooc.npy, commit; return ref + names."""
    with store.writer("cooccur", meta={"stage": "cooccur"}) as w:
        np.save(w.path("token_ids.npy"), np.arange(50), allow_pickle=False)
        sweep(store.root)
        np.save(w.path("cooc.npy"), np.ones((5, 5)), allow_pickle=False)
    return w.ref, set(json.loads((w.ref.dir / MANIFEST).read_text()))


def test_sweeper_that_cannot_see_our_pid_leaves_a_live_writer_alone(tmp_path):
    """Before: the sweeper deleted the live writer's folder, ``_Writer.path`` re-created it
    and the commit succeeded with only the files written after the sweep."""
    store = ArtifactStore(tmp_path / "store")
    ref, names = _cooccur_like_write(store, _open_store_elsewhere)
    assert names == {"meta.json", "token_ids.npy", "cooc.npy"}, names
    verify(ref, full=True)
    assert _tmp_entries(store) == []  # the writer cleaned up after itself


def test_sweeper_in_a_real_pid_namespace_leaves_a_live_writer_alone(tmp_path):
    """The same with a real ``unshare --pid`` sweeper (skipped where namespaces are denied)."""
    prefix = ["unshare", "--pid", "--fork", "--mount-proc"]
    if shutil.which("unshare") is None or subprocess.run(
            [*prefix, "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare --pid is not permitted here")
    store = ArtifactStore(tmp_path / "store")
    ref, names = _cooccur_like_write(store, lambda root: _open_store_elsewhere(root, prefix))
    assert names == {"meta.json", "token_ids.npy", "cooc.npy"}, names
    verify(ref, full=True)


def test_dead_writers_folders_are_swept_even_across_pid_namespaces(tmp_path):
    """A writer killed with SIGKILL releases its lock: the next store (here one whose PID
    view is foreign) removes its folder; the live writer's folder next to it stays."""
    store = ArtifactStore(tmp_path / "store")
    ready = tmp_path / "ready"
    writer = ("import sys, time, pathlib\nfrom tokalign_core.store.artifacts import ArtifactStore\n"
              "with ArtifactStore(sys.argv[1]).writer('blob') as w:\n"
              "    w.path('a.bin').write_bytes(b'x')\n"
              "    pathlib.Path(sys.argv[2]).touch()\n    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", writer, str(store.root), str(ready)],
                            env=ENV, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not ready.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.02)
    with store.writer("live") as live:
        live.path("b.bin").write_bytes(b"y")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert len(_tmp_entries(store)) == 2
        _open_store_elsewhere(store.root)
        assert _tmp_entries(store) == [live.dir]
    verify(live.ref, full=True)


def test_a_vanished_temp_folder_is_never_recreated(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(CorruptArtifactError, match="deleted while it was being written"), \
            store.writer("blob") as w:
        w.path("a.bin").write_bytes(b"a")
        shutil.rmtree(w.dir)  # someone else cleaned the store
        w.path("b.bin").write_bytes(b"b")
    assert not (tmp_path / "blob").exists() and not w.dir.exists()


def test_a_replaced_temp_folder_is_not_committed(tmp_path):
    """A library that re-creates its output folder (save_pretrained's makedirs) after it
    was swept must not turn the remains into an artifact."""
    store = ArtifactStore(tmp_path)
    with pytest.raises(CorruptArtifactError, match="deleted while it was being written"), \
            store.writer("model") as w:
        (w.dir / "config.json").write_text("{}")
        shutil.rmtree(w.dir)
        w.dir.mkdir()
        (w.dir / "model.safetensors").write_bytes(b"weights")
    assert not (tmp_path / "model").exists()


def test_commit_refuses_when_a_handed_out_file_is_missing(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(CorruptArtifactError, match="missing b.npy"), store.writer("blob") as w:
        np.save(w.path("a.npy"), np.arange(3), allow_pickle=False)
        np.save(w.path("b.npy"), np.arange(3), allow_pickle=False)
        w.path("b.npy").unlink()
    assert not (tmp_path / "blob").exists()
    assert _tmp_entries(store) == []


def test_the_writer_lock_never_enters_an_artifact(tmp_path):
    store = ArtifactStore(tmp_path)
    with store.writer("blob") as w:
        w.path("sub/a.bin").write_bytes(b"a")
        assert (w.dir / ".writer.lock").exists()
    assert sorted(p.name for p in w.ref.dir.iterdir()) == [MANIFEST, "sub"]
    verify(w.ref, full=True)


@pytest.mark.slow
def test_kill_9_of_tokalign_corpus_leaves_no_spill_folder(tmp_path):
    """``tokalign corpus`` SIGKILLed while it spills: the spill folder is a store scratch
    folder, so the next store opened on this host removes it (before: leaked forever)."""
    source = tmp_path / "big.txt"
    source.write_text("".join(f"document {i} says lorem ipsum dolor sit amet {i * 7919}\n"
                              for i in range(400_000)))  # ~20 MB: spilling takes seconds
    root = tmp_path / "art"
    cmd = [sys.executable, "-m", "tokalign_core", "corpus", "--source", str(source),
           "--artifact-root", str(root), "--no-progress"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    spill: list[Path] = []
    while not any(p.stat().st_size > 0 for d in spill for p in d.glob("b*.bin")):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "the corpus command never started spilling"
        spill = list((root / ".tmp").glob("corpus-spill*")) if (root / ".tmp").exists() else []
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert spill[0].exists()  # killed mid-spill: it is still there ...
    ArtifactStore(root)  # ... until the next store opens on this host
    assert list((root / ".tmp").iterdir()) == []
    assert not (root / "corpus").exists()


# ------------------------------------------------------------------ compute-lock files


def test_compute_lock_refuses_a_planted_symlink(tmp_path):
    """Before: the lock file was opened following symlinks, then truncated and written,
    so ``<key>.lock -> victim`` emptied the victim."""
    from tokalign_core.store import locks

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    root = tmp_path / "locks"
    root.mkdir()
    (root / "k1.lock").symlink_to(victim)
    with pytest.raises(OSError, match="symbolic link"):
        locks.try_acquire(root, "k1")
    assert victim.read_text() == "precious\n"
    assert locks.read_holder(root / "k1.lock") is None
    with pytest.raises(locks.UnsafeLockFileError, match="symbolic link"):
        locks.is_locked(root, "k1")
    os.mkfifo(root / "k2.lock")
    with pytest.raises(locks.UnsafeLockFileError, match="not a regular file"):
        locks.try_acquire(root, "k2")


def test_compute_lock_folder_is_owner_only(tmp_path):
    from tokalign_core.store import locks

    lock = locks.try_acquire(tmp_path / "fresh" / ".locks", "k")
    assert lock is not None
    assert (tmp_path / "fresh" / ".locks").stat().st_mode & 0o777 == 0o700
    lock.release()


# ------------------------------------------------------------ inputs verified in full


def _flip_last_byte(path: Path) -> None:
    """Same size, one byte different: only a checksum notices."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def chain(tmp_path_factory, texts, bpe_tok):
    """A corpus (3 shards) and its tokens in a fresh store."""
    from tokalign_core.configs.corpus import CorpusConfig, SourceSpec
    from tokalign_core.configs.tokenize import TokenizeConfig
    from tokalign_core.data.corpus import build_corpus
    from tokalign_core.vocab.tokenize import tokenize_corpus

    root = tmp_path_factory.mktemp("chain")
    src = root / "docs.jsonl"
    src.write_text("\n".join(json.dumps({"text": t}) for t in texts[:200]) + "\n")
    store = ArtifactStore(root / "store")
    corpus = build_corpus(CorpusConfig(sources=[SourceSpec(path=str(src))], n_shards=3), store,
                          progress=False)
    tokens = tokenize_corpus(corpus, TokenizeConfig(tokenizer="toy-bpe"), store, tok=bpe_tok)
    return store, corpus, tokens


def _damaged_copy(ref, tmp_path: Path):
    """A copy of an artifact (same manifest, so the same ref digest) to damage."""
    from tokalign_core.store.artifacts import ArtifactRef

    copy = tmp_path / ref.kind / Path(ref.path).name
    shutil.copytree(ref.path, copy)
    return ArtifactRef(kind=ref.kind, sha256=ref.sha256, path=str(copy))


def test_a_flipped_byte_in_a_corpus_shard_stops_tokenize(chain, tmp_path, bpe_tok):
    from tokalign_core.configs.tokenize import TokenizeConfig
    from tokalign_core.vocab.tokenize import tokenize_corpus

    store, corpus, _ = chain
    bad = _damaged_copy(corpus, tmp_path)
    _flip_last_byte(Path(bad.path, "shard-00001.parquet"))
    with pytest.raises(CorruptArtifactError, match="shard-00001.parquet fails its checksum"):
        tokenize_corpus(bad, TokenizeConfig(tokenizer="toy-bpe"), ArtifactStore(tmp_path / "s"),
                        tok=bpe_tok)
    assert not (tmp_path / "s" / "tokens").exists()


def test_a_flipped_byte_in_token_ids_stops_cooccur_and_training_reads(chain, tmp_path):
    from tokalign_core.configs.cooccur import CooccurConfig
    from tokalign_core.embed.cooccur import build_cooccur
    from tokalign_core.train.data import TokenStream

    _, _, tokens = chain
    bad = _damaged_copy(tokens, tmp_path)
    _flip_last_byte(Path(bad.path, "shard-00002", "ids.npy"))
    with pytest.raises(CorruptArtifactError, match="ids.npy fails its checksum"):
        build_cooccur(bad, CooccurConfig(window=2), ArtifactStore(tmp_path / "s"))
    with pytest.raises(CorruptArtifactError, match="ids.npy fails its checksum"):
        TokenStream(bad.path, eos_id=0)


def test_a_tokens_folder_missing_a_shard_is_not_complete(chain, tmp_path):
    """No manifest (a hand-copied folder) and one of three shards deleted: before, it was
    read as a smaller corpus."""
    from tokalign_core.configs.cooccur import CooccurConfig
    from tokalign_core.embed.cooccur import build_cooccur
    from tokalign_core.train.data import TokenStream

    _, _, tokens = chain
    folder = tmp_path / "tokens"
    shutil.copytree(tokens.path, folder)
    (folder / MANIFEST).unlink()
    shutil.rmtree(folder / "shard-00001")
    with pytest.raises(FileNotFoundError, match=r"counts 3 shards, found 2 .*shard-00001"):
        TokenStream(folder, eos_id=0)
    with pytest.raises(FileNotFoundError, match=r"counts 3 shards, found 2"):
        build_cooccur(folder, CooccurConfig(window=2), ArtifactStore(tmp_path / "s"))


def test_a_flipped_byte_in_embedding_vectors_stops_align(tmp_path):
    from tokalign_core.embed.artifact import Embeddings

    store = ArtifactStore(tmp_path / "store")
    with store.writer("embeddings") as w:
        np.save(w.path("vectors.npy"), np.ones((20, 4), np.float32), allow_pickle=False)
        np.save(w.path("token_ids.npy"), np.arange(20), allow_pickle=False)
    _flip_last_byte(w.ref.dir / "vectors.npy")
    with pytest.raises(CorruptArtifactError, match="vectors.npy fails its checksum"):
        Embeddings.load(w.ref.path)
    with pytest.raises(CorruptArtifactError, match="vectors.npy fails its checksum"):
        Embeddings.load(w.ref)


def test_the_flow_cache_does_not_trust_a_same_size_corruption(tmp_path):
    """Before: the cache checked sizes only, so the damaged artifact was served forever."""
    from tasks.caching import result_is_intact

    store = ArtifactStore(tmp_path)
    with store.writer("blob") as w:
        w.path("a.bin").write_bytes(b"0123456789" * 100)
    assert result_is_intact({"out": w.ref})
    _flip_last_byte(w.ref.dir / "a.bin")
    assert not result_is_intact({"out": w.ref})
    assert Path(w.ref.path + ".corrupt-0", "a.bin").exists()  # quarantined, not deleted


def test_align_out_has_a_manifest_that_readers_verify(tmp_path, bpe_tok, sp_tok, capsys):
    from tokalign.cli import main
    from tokalign_core.align.alignment import Alignment
    from tokalign_core.store.artifacts import manifest_ref

    bpe_tok.save_pretrained(tmp_path / "src_tok")
    sp_tok.save_pretrained(tmp_path / "tgt_tok")
    base = np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32)
    for name, ids in (("src", np.arange(500)), ("tgt", np.arange(600))):
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "vectors.npy", base[ids % 500] + 0.01 * (name == "tgt"))
        np.save(tmp_path / name / "token_ids.npy", ids)
    out = tmp_path / "run"
    assert main(["align", "--source-emb", str(tmp_path / "src"), "--target-emb",
                 str(tmp_path / "tgt"), "--source-tokenizer", str(tmp_path / "src_tok"),
                 "--target-tokenizer", str(tmp_path / "tgt_tok"), "--method", "cosine",
                 "--no-progress", "--out", str(out)]) == 0
    capsys.readouterr()
    ref = manifest_ref(out, "alignment")
    assert ref is not None and "alignment.npz" in json.loads((out / MANIFEST).read_text())
    verify(ref, full=True)
    Alignment.load(out)
    _flip_last_byte(out / "alignment.npz")
    with pytest.raises(CorruptArtifactError, match="alignment.npz fails its checksum"):
        Alignment.load(out)
