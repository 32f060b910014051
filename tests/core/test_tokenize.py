"""Sharded tokenization: ids equal tokenizer(text) per document, explicit BOS/EOS, counts,
shard-count and executor independence, errors, CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from tokalign_core.configs.corpus import CorpusConfig, SourceSpec
from tokalign_core.configs.tokenize import TokenizeConfig
from tokalign_core.data.corpus import build_corpus, heldout_file, read_texts, shard_files
from tokalign_core.store.artifacts import ArtifactStore, verify
from tokalign_core.vocab.tokenize import (
    encode_ids,
    iter_docs,
    load_counts,
    load_split,
    split_names,
    tokenize_corpus,
)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory, texts):
    root = tmp_path_factory.mktemp("tokcorpus")
    src = root / "docs.jsonl"
    src.write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n")
    store = ArtifactStore(root / "art")
    refs = {n: build_corpus(CorpusConfig(sources=[SourceSpec(path=str(src))], n_shards=n),
                            store, progress=False) for n in (1, 4)}
    return root, refs


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, sp_tok):
    path = tmp_path_factory.mktemp("tok") / "sp"
    sp_tok.save_pretrained(path)
    return path


def _bos_tokenizer(sp_tok):
    """The toy SentencePiece tokenizer with a LLaMA-style post-processor adding <s>."""
    from tokenizers import processors

    tok = copy.deepcopy(sp_tok)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    return tok


def _check_against_direct(ref, corpus, tok):
    """Every document's ids equal tok(text)["input_ids"]; counts = bincount of training."""
    files = shard_files(corpus) + [heldout_file(corpus)]
    counts = np.zeros(len(tok), dtype=np.int64)
    for name, path in zip(split_names(ref), files, strict=True):
        ids, offsets = load_split(ref, name)
        assert ids.dtype == np.uint32 and offsets.dtype == np.int64
        docs = list(iter_docs(ids, offsets))
        texts = read_texts(path)
        assert len(docs) == len(texts)
        for doc, text in zip(docs, texts, strict=True):
            assert doc.tolist() == tok(text)["input_ids"]
        if name != "heldout":
            counts += np.bincount(ids, minlength=len(tok))
    np.testing.assert_array_equal(load_counts(ref), counts)


def test_ids_equal_direct_tokenization(corpus_dir, sp_tok, tmp_path):
    _, refs = corpus_dir
    corpus = refs[4]
    ref = tokenize_corpus(corpus, TokenizeConfig(tokenizer="toy-sp", batch_size=7),
                          ArtifactStore(tmp_path), tok=sp_tok)
    verify(ref)
    meta = ref.meta()
    assert (meta["add_bos"], meta["add_eos"]) == (False, False)  # no post-processor
    assert meta["vocab_size"] == len(sp_tok) and meta["n_shards"] == 4
    assert meta["n_docs"] == corpus.meta()["n_docs"]
    assert meta["n_tokens"] == int(load_counts(ref).sum())
    _check_against_direct(ref, corpus, sp_tok)


def test_auto_bos_follows_post_processor(corpus_dir, sp_tok, tmp_path):
    _, refs = corpus_dir
    tok = _bos_tokenizer(sp_tok)
    ref = tokenize_corpus(refs[1], TokenizeConfig(tokenizer="toy-sp-bos"),
                          ArtifactStore(tmp_path), tok=tok)
    assert ref.meta()["add_bos"] is True and ref.meta()["bos_token_id"] == 1
    _check_against_direct(ref, refs[1], tok)


def test_explicit_bos_eos(corpus_dir, sp_tok, bpe_tok, tmp_path):
    _, refs = corpus_dir
    tok = _bos_tokenizer(sp_tok)
    cfg = TokenizeConfig(tokenizer="toy-sp-bos", add_bos=False, add_eos=True)
    ref = tokenize_corpus(refs[1], cfg, ArtifactStore(tmp_path), tok=tok)
    ids, offsets = load_split(ref, "shard-00000")
    texts = read_texts(shard_files(refs[1])[0])
    for doc, text in zip(iter_docs(ids, offsets), texts, strict=True):
        assert doc.tolist() == sp_tok(text)["input_ids"] + [sp_tok.eos_token_id]
    no_bos = copy.deepcopy(bpe_tok)
    no_bos.bos_token = None
    with pytest.raises(ValueError, match="has no BOS"):
        tokenize_corpus(refs[1], TokenizeConfig(tokenizer="toy", add_bos=True),
                        ArtifactStore(tmp_path), tok=no_bos)


def test_insert_specials_layout(bpe_tok):
    backend = bpe_tok.backend_tokenizer
    texts = ["ab", "", "abc"]
    plain, lens = encode_ids(backend, texts, len(bpe_tok), None, None)
    both, lens2 = encode_ids(backend, texts, len(bpe_tok), 7, 9)
    np.testing.assert_array_equal(lens2, lens + 2)
    pieces = np.split(plain, np.cumsum(lens)[:-1])
    expected = np.concatenate([np.r_[7, p, 9] for p in pieces]).astype(np.uint32)
    np.testing.assert_array_equal(both, expected)
    with pytest.raises(ValueError, match="outside its vocabulary of 3"):
        encode_ids(backend, ["hello world"], 3, None, None, where="shard-x")


def test_one_vs_four_shards_same_stream(corpus_dir, bpe_tok, tmp_path):
    _, refs = corpus_dir
    store = ArtifactStore(tmp_path)
    out = {n: tokenize_corpus(refs[n], TokenizeConfig(tokenizer="toy-bpe"), store, tok=bpe_tok)
           for n in (1, 4)}
    streams = {}
    for n, ref in out.items():
        parts = [load_split(ref, s) for s in split_names(ref) if s != "heldout"]
        streams[n] = [d.tolist() for ids, off in parts for d in iter_docs(ids, off)]
    assert streams[1] == streams[4]
    np.testing.assert_array_equal(load_counts(out[1]), load_counts(out[4]))
    np.testing.assert_array_equal(load_split(out[1], "heldout")[0],
                                  load_split(out[4], "heldout")[0])


def test_dask_equals_serial_bytes(corpus_dir, tok_dir, tmp_path):
    from tokalign_core.runtime.executor import DaskExecutor

    _, refs = corpus_dir
    cfg = TokenizeConfig(tokenizer=str(tok_dir))
    serial = tokenize_corpus(refs[4], cfg, ArtifactStore(tmp_path / "a"))
    with DaskExecutor(n_workers=2, progress=False) as ex:
        dask = tokenize_corpus(refs[4], cfg, ArtifactStore(tmp_path / "b"), executor=ex)
    assert dask.sha256 == serial.sha256  # same manifest: every file byte-identical
    assert Path(dask.path).name == Path(serial.path).name


def test_cli_tokenize(corpus_dir, tok_dir, tmp_path, capsys):
    from tokalign.cli import main

    _, refs = corpus_dir
    code = main(["tokenize", "--corpus", refs[4].path, "--tokenizer", str(tok_dir),
                 "--add-eos", "yes", "--artifact-root", str(tmp_path), "--no-progress"])
    out = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["add_eos"] is True and meta["tokenizer"] == str(tok_dir)
    code = main(["tokenize", "--corpus", str(tmp_path / "nope"), "--tokenizer", str(tok_dir),
                 "--artifact-root", str(tmp_path)])
    assert code == 2 and "nope" in capsys.readouterr().err
    code = main(["tokenize", "--corpus", refs[4].path, "--tokenizer", "no-org/no-tokenizer",
                 "--artifact-root", str(tmp_path)])
    assert code == 2 and "no-org/no-tokenizer" in capsys.readouterr().err
