"""One implementation of each concept (issue 15): the tokenizer loader, the embeddings
reader, the atomic folder writer and the damaged-artifact policy. Each test exercises
what a merge that kept the weaker copy would break."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from tokalign_core.store.artifacts import ArtifactStore, CorruptArtifactError, verify
from tokalign_core.store.inputs import DamagedFileError


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------ tokenizer loader


def _tokenizer_spec(kind: str, tmp_path: Path, bpe_tok) -> str:
    if kind == "builtin":
        return "builtin:qwen2"
    bpe_tok.save_pretrained(tmp_path / "tok")  # a bare tokenizer.json: not a folder, no hub id
    shutil.move(tmp_path / "tok" / "tokenizer.json", tmp_path / "bare.json")
    return str(tmp_path / "bare.json")


@pytest.mark.parametrize("kind", [pytest.param("builtin", marks=pytest.mark.slow),
                                  "tokenizer.json"])
def test_the_training_path_takes_every_tokenizer_spec(tmp_path, bpe_tok, kind):
    """Training loads its tokenizer through the library's one loader, so it takes every
    spec that loader does (``builtin:qwen2`` ~20 s, a bare ``tokenizer.json``), not only
    folders and hub ids, and checks the tokens artifact against that tokenizer."""
    from tokalign.commands.train import preflight
    from tokalign_core.configs.train import TrainConfig
    from tokalign_core.model import toy
    from tokalign_core.store.inputs import TokenizerMismatchError, digest_of
    from tokalign_core.train.data import write_tokens_artifact
    from tokalign_core.train.loop import build_context
    from tokalign_core.vocab.tokenizers import load_tokenizer

    spec = _tokenizer_spec(kind, tmp_path, bpe_tok)
    tok = load_tokenizer(spec)
    eos = tok.eos_token_id if tok.eos_token_id is not None else 0
    docs = [tok(t)["input_ids"] + [eos] for t in
            ["def f(x):\n    return x + 1\n", "The quick brown fox jumps."] * 20]
    tokens = write_tokens_artifact(tmp_path / "tokens", [docs], vocab_size=len(tok))
    meta = json.loads((tokens / "meta.json").read_text())
    meta.update(tokenizer=spec, tokenizer_digest=digest_of(tok))
    (tokens / "meta.json").write_text(json.dumps(meta))
    toy.tiny_gpt_neox(len(tok), hidden=8, layers=1).save_pretrained(tmp_path / "model")
    cfg = TrainConfig.tiny(str(tmp_path / "model"), str(tokens), str(tmp_path / "out"),
                           tokenizer=spec, engine="torch", seq_len=16, eos_id=eos)
    preflight(cfg)  # the CLI's check before launching
    ctx = build_context(cfg, _single_process())
    assert ctx.tokenizer.get_vocab() == tok.get_vocab()
    meta["tokenizer_digest"] = "0" * 64  # built with another tokenizer: refused by name
    (tokens / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(TokenizerMismatchError, match=spec.split("/")[-1]):
        preflight(cfg)


def _single_process():
    import torch

    from tokalign_core.train.loop import Dist

    return Dist(rank=0, local_rank=0, world=1, device=torch.device("cpu"), bf16=False)


def test_the_tokenizer_loader_passes_objects_through(bpe_tok, tmp_path):
    from tokalign_core.vocab.tokenizers import load_tokenizer

    assert load_tokenizer(bpe_tok) is bpe_tok
    bpe_tok.save_pretrained(tmp_path / "tok")
    assert load_tokenizer(tmp_path / "tok").get_vocab() == bpe_tok.get_vocab()  # a Path


# ------------------------------------------------------------------ embeddings reader


def _glove_artifact(store: ArtifactStore):
    from tokalign_core.configs.glove import GloveConfig
    from tokalign_core.embed.glove import build_glove

    rng = np.random.default_rng(0)
    x = sp.random(30, 30, density=0.3, random_state=1, format="csr") * 10
    x = (x + x.T).tocsr()
    folder = store.root.parent / "cooc"
    folder.mkdir()
    sp.save_npz(folder / "cooc.npz", x, compressed=False)
    np.save(folder / "token_ids.npy", rng.permutation(30).astype(np.int64))
    cfg = GloveConfig(dim=4, iterations=2, threads=1, device="cpu")
    return build_glove(folder, cfg, store, progress=False)


def test_one_reader_reads_glove_and_hidden_state_embeddings(tmp_path):
    from tokalign_core.embed.artifact import Embeddings
    from tokalign_core.embed.hidden_states import TokenVectors, write_embeddings

    store = ArtifactStore(tmp_path / "store")
    glove = Embeddings.load(_glove_artifact(store))
    assert glove.vectors.shape == (30, 4) and glove.meta["stage"] == "glove"
    assert glove.missing_ids.size == 0
    tv = TokenVectors(np.ones((3, 2), np.float32), np.array([4, 0, 2]),
                      np.array([1, 3]), np.array([0, 2], np.uint8), {"side": "target"})
    hidden = Embeddings.load(write_embeddings(store, tv))
    assert hidden.token_ids.tolist() == [4, 0, 2] and hidden.missing_ids.tolist() == [1, 3]
    assert hidden.missing_reason.tolist() == [0, 2] and hidden.meta["side"] == "target"
    assert hidden.rows_of(5).tolist() == [1, -1, 2, -1, 0]


def _cooccur_reader(ref):
    from tokalign_core.embed.cooccur import load_cooccur

    return load_cooccur(ref)


def _glove_reader(ref):
    from tokalign_core.configs.glove import GloveConfig
    from tokalign_core.embed.glove import build_glove

    return build_glove(ref, GloveConfig(dim=2, iterations=1, threads=1, device="cpu"),
                       ArtifactStore(Path(str(getattr(ref, "path", ref))).parent.parent / "out"),
                       progress=False)


def _embeddings_reader(ref):
    from tokalign_core.embed.artifact import Embeddings

    return Embeddings.load(ref)


def _write_cooccur(w) -> None:
    x = sp.csr_matrix(np.array([[0, 2.0, 1], [2, 0, 3], [1, 3, 0]]))
    sp.save_npz(w.path("cooc.npz"), x, compressed=False)
    np.save(w.path("token_ids.npy"), np.arange(3, dtype=np.int64), allow_pickle=False)


def _write_embeddings(w) -> None:
    np.save(w.path("vectors.npy"), np.ones((20, 4), np.float32), allow_pickle=False)
    np.save(w.path("token_ids.npy"), np.arange(20, dtype=np.int64), allow_pickle=False)


READERS = {
    "cooccur": ("cooccur", _write_cooccur, "token_ids.npy", _cooccur_reader),
    "glove": ("cooccur", _write_cooccur, "token_ids.npy", _glove_reader),
    "embeddings": ("embeddings", _write_embeddings, "vectors.npy", _embeddings_reader),
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_every_reader_handles_a_damaged_artifact_the_same_way(tmp_path, reader):
    """Same-size damage in a stored artifact: CorruptArtifactError naming the file. A
    hand-made folder (no manifest) whose file is cut short: DamagedFileError naming it and
    the fix. A missing folder: FileNotFoundError naming the kind."""
    kind, write, victim, read = READERS[reader]
    store = ArtifactStore(tmp_path / "store")
    with store.writer(kind) as w:
        write(w)
    read(w.ref)  # intact: reads
    _flip_last_byte(w.ref.dir / victim)
    with pytest.raises(CorruptArtifactError, match=f"{victim} fails its checksum"):
        read(w.ref)
    loose = tmp_path / "loose"
    shutil.copytree(w.ref.dir, loose)
    (loose / "MANIFEST.json").unlink()
    (loose / victim).write_bytes((loose / victim).read_bytes()[:40])
    with pytest.raises(DamagedFileError, match=f"{victim} is damaged.*delete"):
        read(str(loose))  # a path, as the command line passes it
    with pytest.raises(FileNotFoundError, match=f"{kind} artifact"):
        read(str(tmp_path / "absent"))


# ------------------------------------------------------------------ atomic folders


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    from tokalign_core.store.atomic import atomic_dir

    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("one")
    with pytest.raises(RuntimeError, match="boom"), atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("boom")
    assert (final / "a.txt").read_text() == "one"  # the old copy survives a failed writer
    with atomic_dir(final) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]  # replaced, not merged
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp or old copy left


def test_atomic_dir_replaces_a_symlink_without_touching_its_target(tmp_path):
    """A published folder may be a link (``publish_folder``); replacing it must not
    delete or follow into what it points at."""
    from tokalign_core.store.atomic import atomic_dir

    target = tmp_path / "artifact"
    target.mkdir()
    (target / "weights.bin").write_bytes(b"keep me")
    link = tmp_path / "published"
    link.symlink_to(target)
    with atomic_dir(link) as tmp:
        (tmp / "README.md").write_text("new")
    assert not link.is_symlink() and (link / "README.md").read_text() == "new"
    assert (target / "weights.bin").read_bytes() == b"keep me"


def test_publishing_and_saving_models_use_the_atomic_folder(tmp_path, bpe_tok):
    """``publish_folder`` over an earlier copy and ``save_initialized`` with overwrite
    leave exactly the new folder (no ``.tmp-``/``.old-`` siblings)."""
    from tokalign_core.model import toy
    from tokalign_core.model.card import publish_folder
    from tokalign_core.model.init import save_initialized

    src = tmp_path / "src"
    src.mkdir()
    (src / "model.safetensors").write_bytes(b"w")
    dest = tmp_path / "pub" / "m"
    publish_folder(src, dest, "first\n")
    publish_folder(src, dest, "second\n")
    assert (dest / "README.md").read_text() == "second\n"
    assert (dest / "model.safetensors").resolve() == (src / "model.safetensors").resolve()
    assert [p.name for p in dest.parent.iterdir()] == ["m"]
    model = toy.tiny_gpt_neox(len(bpe_tok), hidden=8, layers=1)
    out = tmp_path / "saved" / "m"
    save_initialized(model, bpe_tok, out)
    save_initialized(model, bpe_tok, out, overwrite=True)
    assert (out / "README.md").is_file() and [p.name for p in out.parent.iterdir()] == ["m"]


# ------------------------------------------------------------------ damaged artifacts


def test_committing_over_a_damaged_copy_quarantines_it(tmp_path):
    """The store's commit, the flow cache and the pretrain cache share one policy: the
    damaged folder is moved aside as ``<name>.corrupt-<n>`` (kept), the fresh copy takes
    its content-addressed place."""
    store = ArtifactStore(tmp_path)
    with store.writer("blob") as w:
        w.path("a.bin").write_bytes(b"0123456789" * 10)
    _flip_last_byte(w.ref.dir / "a.bin")
    with store.writer("blob") as again:
        again.path("a.bin").write_bytes(b"0123456789" * 10)
    assert again.ref == w.ref
    verify(again.ref)  # the fresh copy is in place
    moved = Path(w.ref.path + ".corrupt-0")
    assert (moved / "a.bin").read_bytes()[-1:] == bytes([ord("9") ^ 0xFF])  # kept, as found
    assert json.loads((moved / "MANIFEST.json").read_text()) == json.loads(
        (again.ref.dir / "MANIFEST.json").read_text())
