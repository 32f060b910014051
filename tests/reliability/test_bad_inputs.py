"""Bad inputs (issue 8, item 1): each fails fast with an error naming the input and the
fix, or is handled by a counted policy; earlier artifacts stay untouched."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tokalign_core.store.artifacts import ArtifactStore, verify
from tokalign_core.store.hashing import sha256_tree

# ----------------------------------------------------------------------------- corpus


@pytest.fixture
def store(tmp_path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "store")


def _corpus_cfg(path: Path, **kw):
    from tokalign_core.configs.corpus import CorpusConfig, SourceSpec

    return CorpusConfig(sources=[SourceSpec(path=str(path))], n_shards=1, **kw)


def test_empty_corpus_names_the_source_and_keeps_earlier_artifacts(tmp_path, store):
    from tokalign_core.data.corpus import build_corpus

    good = tmp_path / "good.txt"
    good.write_text("a line of text\n" * 20)
    first = build_corpus(_corpus_cfg(good, heldout_fraction=0.0), store, progress=False)
    before = sha256_tree(store.root / "corpus")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n\t\n")
    with pytest.raises(ValueError, match=r"corpus is empty.*empty\.txt.*3 empty"):
        build_corpus(_corpus_cfg(empty), store, progress=False)
    assert sha256_tree(store.root / "corpus") == before
    assert not any((store.root / ".tmp").iterdir())  # spill folder cleaned up
    verify(first)


def test_missing_corpus_source_is_a_file_not_found(tmp_path, store):
    from tokalign_core.data.corpus import build_corpus

    with pytest.raises(FileNotFoundError, match="nothere.txt.*does not exist"):
        build_corpus(_corpus_cfg(tmp_path / "nothere.txt"), store, progress=False)


def test_non_utf8_and_nul_bytes_are_counted_not_fatal(tmp_path, store):
    from tokalign_core.data.corpus import build_corpus, read_texts, shard_files

    src = tmp_path / "bad.txt"
    src.write_bytes(b"caf\xe9 latin-1 line\nnul\x00inside\n" + b"good line\n" * 5
                    + b"\xff\xfe\xfd\n")
    ref = build_corpus(_corpus_cfg(src, heldout_fraction=0.0), store, progress=False)
    stats = ref.meta()["sources"][0]
    assert stats["invalid_utf8_sequences"] >= 2 and stats["docs_with_nul"] == 1
    assert stats["nul_chars_removed"] == 1
    texts = [t for f in shard_files(ref) for t in read_texts(f)]
    assert "caf\ufffd latin-1 line" in texts and "nulinside" in texts
    assert all("\x00" not in t for t in texts)


@pytest.mark.slow
def test_100mb_single_line_document_is_split_in_bounded_memory(tmp_path, store):
    """A 100 MB file with no newline: read in bounded pieces, split into documents of at
    most max_doc_chars, peak memory far below a few copies of the file."""
    import resource
    import subprocess
    import sys

    big = tmp_path / "one_line.txt"
    word = b"tokalign "
    with open(big, "wb") as fh:
        for _ in range(100):
            fh.write(word * (1_000_000 // len(word) + 1))
    assert big.stat().st_size >= 100_000_000
    root = Path(__file__).resolve().parents[2]
    script = f"""
import json, resource, sys
sys.path.insert(0, {str(root)!r})
from tokalign_core.store.artifacts import ArtifactStore
from tokalign_core.configs.corpus import CorpusConfig, SourceSpec
from tokalign_core.data.corpus import build_corpus
ref = build_corpus(CorpusConfig(sources=[SourceSpec(path={str(big)!r})], n_shards=2,
                                max_doc_chars=1_000_000), ArtifactStore({str(tmp_path / 's')!r}),
                   progress=False)
print(json.dumps({{"meta": ref.meta()["sources"][0],
                   "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=1200)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["meta"]["long_docs_split"] == 1
    assert res["meta"]["docs_kept"] >= 100  # 100 MB / 1 MB pieces
    assert res["rss_mb"] < 1500, f"peak RSS {res['rss_mb']:.0f} MB for a 100 MB line"
    del resource


def test_textsources_drops_non_utf8_files_and_strips_nul(tmp_path):
    from tokalign_core.data import extract as ts

    latin1 = tmp_path / "latin1.py"
    latin1.write_bytes("# caf\xe9 \xe9t\xe9\n".encode("latin-1") * 200)
    nul = tmp_path / "nul.py"
    nul.write_bytes(b"x = 1\x00\n" * 100)
    stats = ts.ExtractStats()
    docs = list(ts.extract_docs([ts.SourceFile(str(p), "python", "code", "code")
                                 for p in (latin1, nul)], min_doc_chars=10, stats=stats,
                                progress=False))
    assert stats.unreadable["python.code"] == 1
    assert len(docs) == 1 and "\x00" not in docs[0].text


# ----------------------------------------------------------------------------- tokenizer


def test_missing_tokenizer_names_the_path_and_the_choices(tmp_path):
    from tokalign_core.vocab.tokenizers import load_tokenizer

    with pytest.raises(FileNotFoundError, match=r"nope.*does not exist.*builtin:qwen2"):
        load_tokenizer(str(tmp_path / "nope"))


@pytest.mark.parametrize(("name", "content", "match"), [
    ("tokenizer.json", b"{not json", "cannot read .* as a Hugging Face tokenizer.json"),
    ("tokenizer.json", b'{"a": 1}', "cannot read .* as a Hugging Face tokenizer.json"),
    ("ranks.tiktoken", b"YWJj notanint\n", "line 1: bad token or rank"),
    ("vocab.model", os.urandom(64), "unknown format"),
])
def test_wrong_format_tokenizer_file(tmp_path, name, content, match):
    from tokalign_core.vocab.tokenizers import TokenizerLoadError, load_tokenizer

    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(TokenizerLoadError, match=match):
        load_tokenizer(str(path))


def test_unknown_builtin_tokenizer_lists_the_known_ones():
    from tokalign_core.vocab.tokenizers import TokenizerLoadError, load_tokenizer

    with pytest.raises(TokenizerLoadError, match="known: builtin:qwen2"):
        load_tokenizer("builtin:nope")


@pytest.mark.slow  # AutoTokenizer probes every loader first: ~10-25 s
def test_folder_without_tokenizer_files_is_a_load_error(tmp_path):
    from tokalign_core.vocab.tokenizers import TokenizerLoadError, load_tokenizer

    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerLoadError, match="empty"):
        load_tokenizer(str(tmp_path / "empty"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads chmod 000 files")
def test_unreadable_tokenizer_file(tmp_path, bpe_tok):
    from tokalign_core.vocab.tokenizers import TokenizerLoadError, load_tokenizer

    path = tmp_path / "tok.json"
    bpe_tok.backend_tokenizer.save(str(path))
    path.chmod(0)
    try:
        with pytest.raises((TokenizerLoadError, PermissionError)):
            load_tokenizer(str(path))
    finally:
        path.chmod(0o644)


def test_cli_reports_bad_tokenizer_without_traceback(tmp_path, capsys):
    """Through the CLI a bad tokenizer is exit code 2 and one line naming it."""
    from tokalign.cli import main

    bad = tmp_path / "tokenizer.json"
    bad.write_text("{broken")
    code = main(["pretrain", "--preset", "micro", "--tokenizer", str(bad), "--steps", "2",
                 "--artifacts", str(tmp_path / "a"), "--corpus", str(tmp_path),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and str(bad) in err and "Traceback" not in err


# ----------------------------------------------------------------------------- ids / sizes


def test_token_ids_beyond_the_vocabulary_are_rejected():
    from tokalign_core.embed.cooccur import count_cooccurrences

    ids = np.array([1, 2, 3, 9], dtype=np.uint32)
    with pytest.raises(ValueError, match="token id 9 >= vocab_size 5.*different tokenizers"):
        count_cooccurrences([(ids, np.array([0, 4]))], np.array([5, 5, 5, 5, 5]))


def test_offsets_inconsistent_with_ids_are_rejected():
    from tokalign_core.embed.cooccur import count_cooccurrences

    ids = np.array([1, 2, 3], dtype=np.uint32)
    with pytest.raises(ValueError, match="offsets must rise"):
        count_cooccurrences([(ids, np.array([0, 5]))], np.array([5, 5, 5, 5]))


def test_pretrain_token_stream_rejects_ids_beyond_the_tokenizer(bpe_tok, monkeypatch):
    from tokalign_core.train import pretrain as pt

    class Liar:
        eos_token_id = 0

        def __len__(self):
            return 10

        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[3, 12]]}

    with pytest.raises(ValueError, match="id 12 >= its size 10"):
        pt.token_stream(Liar(), ["x"])


def test_alignment_whose_size_mismatches_the_tokenizer_or_model():
    from tokalign_core.align.alignment import Alignment

    al = Alignment(source_ids=np.array([0, 1, 2]), scores=np.ones(3), provenance=np.zeros(3),
                   reverse=np.array([0, 1, 2, -1]))
    with pytest.raises(ValueError, match="target tokenizer has 5 tokens.*covers 3"):
        al.check_sizes(target_vocab=5)
    with pytest.raises(ValueError, match="expects 4 source rows but the model has 2"):
        al.check_sizes(target_vocab=3, source_rows=2)
    with pytest.raises(ValueError, match="outside"):
        Alignment(source_ids=np.array([0, 7]), scores=np.ones(2), provenance=np.zeros(2),
                  reverse=np.array([0, 1]))
    with pytest.raises(ValueError, match="disagree"):
        Alignment(source_ids=np.array([0, 1]), scores=np.ones(3), provenance=np.zeros(2),
                  reverse=np.array([0, 1]))


def test_tampered_alignment_file_is_rejected_on_load(tmp_path):
    """An alignment.npz edited to point past the source vocabulary fails on load."""
    from tokalign_core.align.alignment import Alignment

    Alignment(source_ids=np.array([0, 1]), scores=np.ones(2), provenance=np.zeros(2),
              reverse=np.array([0, 1])).save(tmp_path)
    with np.load(tmp_path / "alignment.npz", allow_pickle=False) as z:
        arrays = dict(z)
    arrays["source_ids"] = np.array([0, 99])
    np.savez(tmp_path / "alignment.npz", **arrays)
    with pytest.raises(ValueError, match="outside"):
        Alignment.load(tmp_path)


def test_model_without_an_embeddings_api():
    from tokalign_core.model.embeddings import embedding_modules

    with pytest.raises(ValueError, match="no input/output embeddings API"):
        embedding_modules(object())


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize(("factory", "match"), [
    (lambda: __import__("tokalign_core.configs.align", fromlist=["x"]).VecMapConfig(
        whiten=False), "de-whitening needs whitening"),
    (lambda: __import__("tokalign_core.train.pretrain", fromlist=["x"]).PretrainConfig(
        hidden=30, heads=4), "divisible"),
    (lambda: __import__("tokalign_core.train.pretrain", fromlist=["x"]).PretrainConfig(
        steps=5, warmup_steps=5), "warmup_steps"),
    (lambda: __import__("tokalign_core.configs.text_corpus", fromlist=["x"]).TextCorpusConfig(
        min_doc_chars=900, max_doc_chars=600), "exceeds"),
    (lambda: _corpus_cfg(Path("x.txt"), token_budget=10, byte_budget=10), "not both"),
])
def test_contradictory_configs_fail_at_construction(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_unknown_config_keys_are_errors(tmp_path):
    from tokalign_core.train.pretrain import PretrainConfig

    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"hiden": 64}))
    with pytest.raises(ValueError, match=r"(?s)cfg\.json.*hiden"):
        PretrainConfig.load(path)
