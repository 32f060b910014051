"""Artifacts built for another tokenizer of the same vocabulary size (reliability round 2,
defect 2): every stage that consumes another's output compares the recorded
``tokenizer_digest`` with the tokenizer it is given. Before, each case below exited 0 and
silently produced a wrong model or alignment."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tokalign.cli import EXIT_USER_ERROR, main


@dataclass(frozen=True)
class Toks:
    root: Path
    a: Path  # source tokenizer (and model folder)
    b: Path  # target tokenizer the alignment was built for
    c: Path  # another tokenizer with B's size
    d: Path  # another tokenizer with A's size
    alignment: Path


def _digest(folder: Path) -> str:
    from tokalign_core.store.inputs import digest_of
    from tokalign_core.vocab.tokenizers import load_tokenizer

    return digest_of(load_tokenizer(str(folder)))


@pytest.fixture(scope="module")
def toks(tmp_path_factory) -> Toks:
    from tokalign_core.align.alignment import Alignment, Provenance
    from tokalign_core.model import toy

    root = tmp_path_factory.mktemp("toks")
    texts = toy.stdlib_texts(400)
    made = {}
    for name, part in (
        ("a", texts[:100]),
        ("b", texts[100:200]),
        ("c", texts[200:300]),
        ("d", texts[300:]),
    ):
        tok = toy.train_bytelevel_bpe(part, 300)
        tok.save_pretrained(root / name)
        made[name] = tok
    assert len(made["a"]) == len(made["d"]) and len(made["b"]) == len(made["c"])
    toy.tiny_gpt_neox(len(made["a"]), hidden=32, layers=1, heads=2).save_pretrained(root / "a")
    n_t, n_s = len(made["b"]), len(made["a"])
    ali = Alignment(
        np.arange(n_t) % n_s,
        np.ones(n_t),
        np.full(n_t, Provenance.ALIGNED),
        np.full(n_s, -1),
        {
            "source_tokenizer": str(root / "a"),
            "target_tokenizer": str(root / "b"),
            "source_tokenizer_digest": _digest(root / "a"),
            "target_tokenizer_digest": _digest(root / "b"),
        },
    )
    ali.save(root / "alignment")
    return Toks(root, root / "a", root / "b", root / "c", root / "d", root / "alignment")


def _init(t: Toks, target: Path, out: str, *extra: str) -> list[str]:
    return [
        "init",
        "--model",
        str(t.a),
        "--target-tokenizer",
        str(target),
        "--alignment",
        str(t.alignment),
        "--out",
        str(t.root / out),
        *extra,
    ]


def test_init_refuses_an_alignment_built_for_another_target(toks, capsys):
    code = main(_init(toks, toks.c, "init-c"))
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "Traceback" not in err
    assert "target side" in err and _digest(toks.b)[:12] in err and _digest(toks.c)[:12] in err
    assert not (toks.root / "init-c").exists()


def test_init_refuses_the_wrong_source_tokenizer(toks, capsys):
    code = main(_init(toks, toks.b, "init-d", "--source-tokenizer", str(toks.d)))
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR
    assert "source side" in err and _digest(toks.a)[:12] in err and _digest(toks.d)[:12] in err


def test_init_accepts_the_tokenizers_the_alignment_was_built_for(toks, capsys):
    """The check compares digests that survive save_pretrained / reload."""
    assert main(_init(toks, toks.b, "init-ok")) == 0
    assert (toks.root / "init-ok" / "model.safetensors").exists()


def _embeddings(folder: Path, tokenizer: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(folder.name))
    np.save(folder / "vectors.npy", rng.standard_normal((n, 8)).astype(np.float32))
    np.save(folder / "token_ids.npy", np.arange(n, dtype=np.int64))
    (folder / "meta.json").write_text(
        json.dumps({"tokenizer": str(tokenizer), "tokenizer_digest": _digest(tokenizer)})
    )
    return folder


def _align(t: Toks, source_emb: Path, target_emb: Path, out: str) -> list[str]:
    return [
        "align",
        "--source-emb",
        str(source_emb),
        "--target-emb",
        str(target_emb),
        "--source-tokenizer",
        str(t.a),
        "--target-tokenizer",
        str(t.b),
        "--method",
        "cosine",
        "--out",
        str(t.root / out),
        "--no-progress",
    ]


def test_align_names_swapped_embeddings_and_records_both_digests(toks, capsys):
    s_emb = _embeddings(toks.root / "emb-a", toks.a, 50)
    t_emb = _embeddings(toks.root / "emb-b", toks.b, 50)
    code = main(_align(toks, t_emb, s_emb, "align-swapped"))
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "swapped" in err and "--source-emb" in err
    assert not (toks.root / "align-swapped").exists()

    assert main(_align(toks, s_emb, t_emb, "align-ok")) == 0
    meta = json.loads((toks.root / "align-ok" / "meta.json").read_text())
    assert meta["source_tokenizer_digest"] == _digest(toks.a)
    assert meta["target_tokenizer_digest"] == _digest(toks.b)


def test_align_refuses_embeddings_of_a_third_tokenizer(toks, capsys):
    s_emb = _embeddings(toks.root / "emb-a2", toks.a, 50)
    c_emb = _embeddings(toks.root / "emb-c", toks.c, 50)
    code = main(_align(toks, s_emb, c_emb, "align-c"))
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "target embeddings" in err
    assert _digest(toks.c)[:12] in err and _digest(toks.b)[:12] in err


def test_adapt_refuses_tokens_of_another_tokenizer(toks, capsys, tmp_path):
    """Tokens made with D (A's size) fed to a model whose tokenizer is A."""
    from tokalign_core.configs.corpus import CorpusConfig, SourceSpec
    from tokalign_core.configs.tokenize import TokenizeConfig
    from tokalign_core.data.corpus import build_corpus
    from tokalign_core.store.artifacts import ArtifactStore
    from tokalign_core.vocab.tokenize import tokenize_corpus

    src = tmp_path / "t.txt"
    src.write_text("def f(x):\n    return x + 1\n" * 40)
    store = ArtifactStore(tmp_path / "store")
    corpus = build_corpus(
        CorpusConfig(sources=[SourceSpec(path=str(src))], n_shards=1), store, progress=False
    )
    tokens = tokenize_corpus(corpus, TokenizeConfig(tokenizer=str(toks.d)), store)
    code = main(
        [
            "adapt",
            "--model",
            str(toks.a),
            "--tokens",
            tokens.path,
            "--out",
            str(tmp_path / "adapt"),
            "--engine",
            "torch",
            "--dry-run",
        ]
    )
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "tokens artifact" in err
    assert _digest(toks.d)[:12] in err and _digest(toks.a)[:12] in err
    assert not (tmp_path / "adapt" / "run.json").exists()


def test_eval_align_refuses_tokens_of_the_other_side(toks, capsys, tmp_path):
    """Source and target tokens swapped (or of another tokenizer) in `eval-align`."""
    from tokalign_core.configs.corpus import CorpusConfig, SourceSpec
    from tokalign_core.configs.tokenize import TokenizeConfig
    from tokalign_core.data.corpus import build_corpus
    from tokalign_core.store.artifacts import ArtifactStore
    from tokalign_core.vocab.tokenize import tokenize_corpus

    src = tmp_path / "t.txt"
    src.write_text("".join(f"line {i} of the held-out text\n" for i in range(200)))
    store = ArtifactStore(tmp_path / "store")
    corpus = build_corpus(
        CorpusConfig(sources=[SourceSpec(path=str(src))], n_shards=1, heldout_fraction=0.3),
        store,
        progress=False,
    )
    tok_a, tok_b = (
        tokenize_corpus(corpus, TokenizeConfig(tokenizer=str(t)), store).path
        for t in (toks.a, toks.b)
    )
    argv = ["eval-align", "--alignment", str(toks.alignment), "--no-bertscore", "--no-progress"]
    code = main(
        [
            *argv,
            "--source-tokens",
            tok_b,
            "--target-tokens",
            tok_a,
            "--out",
            str(tmp_path / "swapped.json"),
        ]
    )
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "--source-tokens" in err and "swapped" in err
    assert not (tmp_path / "swapped.json").exists()
    assert (
        main(
            [
                *argv,
                "--source-tokens",
                tok_a,
                "--target-tokens",
                tok_b,
                "--out",
                str(tmp_path / "ok.json"),
            ]
        )
        == 0
    )
