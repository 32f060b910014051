"""Corpus input: mixing by ratio to a budget, shard-count independence, input policy, errors."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from tokalign_core.configs.corpus import CorpusConfig, SourceSpec
from tokalign_core.data.corpus import (
    build_corpus,
    heldout_file,
    read_text_file,
    read_texts,
    shard_files,
    split_long,
)
from tokalign_core.store.artifacts import ArtifactStore, verify


def _doc(prefix: str, i: int, size: int = 100) -> str:
    head = f"{prefix}{i:05d} "
    return head + "x" * (size - len(head))  # exactly `size` ASCII bytes


def _write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n")
    return path


def _all_texts(ref) -> tuple[list[str], list[str]]:
    train = [t for f in shard_files(ref) for t in read_texts(f)]
    return train, read_texts(heldout_file(ref))


def test_ratios_and_token_budget_respected(tmp_path):
    a = _write_jsonl(tmp_path / "a.jsonl", [_doc("A", i) for i in range(1000)])
    b = _write_jsonl(tmp_path / "b.jsonl", [_doc("B", i) for i in range(1000)])
    # 7,500 tokens x 4 bytes = 30,000 bytes; ratio 2:1 -> 20,000 and 10,000 bytes,
    # i.e. exactly 200 and 100 documents of 100 bytes, the first ones of each source.
    cfg = CorpusConfig(
        sources=[SourceSpec(path=str(a), ratio=2.0), SourceSpec(path=str(b), ratio=1.0)],
        token_budget=7500, bytes_per_token=4.0, n_shards=3,
    )
    ref = build_corpus(cfg, ArtifactStore(tmp_path / "art"), progress=False)
    verify(ref)
    train, held = _all_texts(ref)
    everything = train + held
    assert sorted(t for t in everything if t[0] == "A") == [_doc("A", i) for i in range(200)]
    assert sorted(t for t in everything if t[0] == "B") == [_doc("B", i) for i in range(100)]
    meta = ref.meta()
    assert [s["quota_bytes"] for s in meta["sources"]] == [20000, 10000]
    assert [s["bytes_kept"] for s in meta["sources"]] == [20000, 10000]
    assert meta["n_docs"] == len(train) and meta["heldout"]["docs"] == len(held)
    # Sources are interleaved by the hash order, not concatenated.
    assert {t[0] for t in read_texts(shard_files(ref)[0])} == {"A", "B"}


def test_short_source_records_shortfall(tmp_path):
    a = _write_jsonl(tmp_path / "a.jsonl", [_doc("A", i) for i in range(10)])
    cfg = CorpusConfig(sources=[SourceSpec(path=str(a))], byte_budget=5000, n_shards=1)
    ref = build_corpus(cfg, ArtifactStore(tmp_path / "art"), progress=False)
    assert ref.meta()["sources"][0]["quota_shortfall_bytes"] == 4000


def test_heldout_and_order_independent_of_shard_count(tmp_path, texts):
    src = _write_jsonl(tmp_path / "t.jsonl", texts)
    store = ArtifactStore(tmp_path / "art")
    refs = {}
    for n in (1, 7):
        cfg = CorpusConfig(sources=[SourceSpec(path=str(src))], n_shards=n, seed=3)
        refs[n] = build_corpus(cfg, store, progress=False)
    train1, held1 = _all_texts(refs[1])
    train7, held7 = _all_texts(refs[7])
    assert held1 == held7 and train1 == train7
    assert len(shard_files(refs[7])) == 7
    assert all(read_texts(f) for f in shard_files(refs[7]))  # byte-balanced: none empty
    # Held-out is ~5% and disjoint; kept documents are exactly the input's (deduplicated
    # texts stay together, so compare as multisets).
    assert 0.02 < len(held1) / (len(held1) + len(train1)) < 0.09
    assert sorted(train1 + held1) == sorted(t for t in texts if t.strip())
    # A different seed changes order and held-out membership.
    other = build_corpus(CorpusConfig(sources=[SourceSpec(path=str(src))], n_shards=1, seed=4),
                         store, progress=False)
    assert _all_texts(other)[1] != held1


def test_policy_counts_on_crafted_text(tmp_path):
    long_line = "word " * 40  # 200 chars, spaces every 5
    raw = (b"good line one\n\xff\xfebad bytes\nnul\x00here\x00\n   \n\n"
           + long_line.encode() + b"\n")
    path = tmp_path / "crafted.txt"
    path.write_bytes(raw)
    cfg = CorpusConfig(sources=[SourceSpec(path=str(path))], n_shards=2, max_doc_chars=64,
                       heldout_fraction=0.0)
    ref = build_corpus(cfg, ArtifactStore(tmp_path / "art"), progress=False)
    s = ref.meta()["sources"][0]
    assert s["docs_read"] == 6  # 6 lines
    assert s["invalid_utf8_sequences"] == 2  # \xff and \xfe are each invalid
    assert (s["nul_chars_removed"], s["docs_with_nul"]) == (2, 1)
    assert s["empty_dropped"] == 2  # "   " and ""
    # Window 64, cut at the last space in its second half: 60 + 60 + 60 + 20 chars.
    assert (s["long_docs_split"], s["long_doc_extra_pieces"]) == (1, 3)
    train, _ = _all_texts(ref)
    assert "\ufffd\ufffdbad bytes" in train and "nulhere" in train
    pieces = sorted(t for t in train if t.startswith("word"))
    assert [len(p) for p in pieces] == [20, 60, 60, 60]
    assert "".join(sorted(pieces, key=len, reverse=True)) == long_line


def test_jsonl_policy_counts(tmp_path):
    path = tmp_path / "x.jsonl"
    long_doc = "line\n" * 50  # 250 chars, newlines every 5
    path.write_bytes(
        b'{"text": "ok"}\n{not json\n{"other": 1}\n{"text": null}\n'
        + json.dumps({"text": long_doc}).encode() + b"\n"
    )
    cfg = CorpusConfig(sources=[SourceSpec(path=str(path))], n_shards=1, max_doc_chars=100,
                       heldout_fraction=0.0)
    ref = build_corpus(cfg, ArtifactStore(tmp_path / "art"), progress=False)
    s = ref.meta()["sources"][0]
    assert (s["bad_json_lines"], s["missing_text_field"]) == (1, 2)
    assert (s["long_docs_split"], s["long_doc_extra_pieces"]) == (1, 2)  # 100 + 100 + 50
    train, _ = _all_texts(ref)
    assert sorted(train) == sorted(["ok", "line\n" * 20, "line\n" * 20, "line\n" * 10])


def test_split_long_boundaries():
    assert split_long("abc", 64) == ["abc"]
    text = "a" * 150  # no boundary at all: hard cuts
    assert split_long(text, 64) == ["a" * 64, "a" * 64, "a" * 22]
    text = "x" * 40 + "\n" + "y" * 20 + " " + "z" * 50
    # newline in the window's second half wins over the later space
    assert split_long(text, 64)[0] == "x" * 40 + "\n"


def test_huge_single_line_read_with_bounded_memory(tmp_path):
    path = tmp_path / "huge.txt"
    chunk = ("lorem ipsum dolor sit amet " * 40)[:1000]
    with open(path, "w") as fh:
        for _ in range(3000):  # 3 MB, one line
            fh.write(chunk)
    tracemalloc.start()
    n_chars = 0
    parts = 0
    for text, part in read_text_file(path, "line", 20_000):
        assert len(text) <= 20_000
        n_chars += len(text)
        parts = max(parts, part)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n_chars == 3_000_000 and parts >= 149
    assert peak < 500_000, f"reader peaked at {peak} bytes for a 3 MB line"


def test_paragraph_unit_and_folder_glob_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "p.txt").write_text("para one\nstill one\n\n\npara two\n")
    pq.write_table(pa.table({"body": ["from parquet", None]}), folder / "q.parquet")
    (folder / "notes.csv").write_text("ignored")
    cfg = CorpusConfig(
        sources=[SourceSpec(path=str(folder / "*.txt"), text_unit="paragraph"),
                 SourceSpec(path=str(folder / "q.parquet"), text_field="body")],
        n_shards=1, heldout_fraction=0.0,
    )
    ref = build_corpus(cfg, ArtifactStore(tmp_path / "art"), progress=False)
    assert sorted(_all_texts(ref)[0]) == ["from parquet", "para one\nstill one", "para two"]
    assert ref.meta()["sources"][1]["missing_text_field"] == 1


def test_saved_dataset_source(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"content": ["alpha doc", "beta doc", ""]})
    ds.save_to_disk(str(tmp_path / "ds"))
    cfg = CorpusConfig(sources=[SourceSpec(path=str(tmp_path / "ds"), text_field="content")],
                       n_shards=1, heldout_fraction=0.0)
    ref = build_corpus(cfg, ArtifactStore(tmp_path / "art"), progress=False)
    assert sorted(_all_texts(ref)[0]) == ["alpha doc", "beta doc"]
    assert ref.meta()["sources"][0]["empty_dropped"] == 1


def test_bad_inputs_name_the_input(tmp_path):
    store = ArtifactStore(tmp_path / "art")
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        build_corpus(CorpusConfig(sources=[SourceSpec(path=str(missing))]), store, False)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\n")
    with pytest.raises(ValueError, match=r"empty after filtering.*blank\.txt"):
        build_corpus(CorpusConfig(sources=[SourceSpec(path=str(blank))]), store, False)
    odd = tmp_path / "table.csv"
    odd.write_text("a,b\n")
    with pytest.raises(ValueError, match=r"unknown format.*table\.csv"):
        build_corpus(CorpusConfig(sources=[SourceSpec(path=str(odd))]), store, False)
    with pytest.raises(ValueError, match="ratios only apply with a budget"):
        CorpusConfig(sources=[SourceSpec(path="x", ratio=2.0)])
    # Nothing half-written was left behind by the failures.
    assert not list((tmp_path / "art").glob("corpus/*"))
    assert not list((tmp_path / "art" / ".tmp").iterdir())


def test_cli_corpus(tmp_path, capsys):
    from tokalign.cli import main

    src = _write_jsonl(tmp_path / "a.jsonl", [_doc("A", i) for i in range(50)])
    root = tmp_path / "art"
    code = main(["corpus", "--source", str(src), "--shards", "2", "--artifact-root", str(root),
                 "--no-progress"])
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 0 and Path(out).is_dir() and Path(out).parent.parent == root
    assert json.loads((Path(out) / "meta.json").read_text())["n_shards"] == 2
    code = main(["corpus", "--source", str(tmp_path / "missing.jsonl"), "--artifact-root",
                 str(root), "--no-progress"])
    assert code == 2 and "missing.jsonl" in capsys.readouterr().err


def test_small_corpus_still_holds_out_one_document(tmp_path):
    """A small corpus whose hash draws put no document under ``heldout_fraction`` (the
    quick demo on a machine with little text: 65 documents at 2%) still holds out one, the
    document with the smallest draw, so the held-out metrics have something to score."""
    from tokalign_core.data.corpus import document_digest, is_heldout

    texts = [_doc("A", i) for i in range(30)]
    draws = [int.from_bytes(document_digest(t.encode(), 0)[:8], "little") for t in texts]
    assert not any(is_heldout(document_digest(t.encode(), 0), 0.02) for t in texts)
    src = _write_jsonl(tmp_path / "a.jsonl", texts)
    cfg = CorpusConfig(sources=[SourceSpec(path=str(src))], n_shards=2, heldout_fraction=0.02)
    ref = build_corpus(cfg, ArtifactStore(tmp_path / "art"), progress=False)
    train, held = _all_texts(ref)
    assert held == [texts[draws.index(min(draws))]]
    assert sorted(train + held) == sorted(texts)
    meta = ref.meta()
    assert meta["n_docs"] == 29 and meta["heldout"]["docs"] == 1
    # Without a held-out fraction nothing is held out.
    none = build_corpus(cfg.model_copy(update={"heldout_fraction": 0.0}),
                        ArtifactStore(tmp_path / "art0"), progress=False)
    assert _all_texts(none)[1] == []
