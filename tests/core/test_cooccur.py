"""Co-occurrence counting: hand-derived counts, exact equality across sharding, buffers and
Dask, min-count filtering, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from tokalign_core.configs.cooccur import CooccurConfig, window_lcm
from tokalign_core.embed.cooccur import (
    build_cooccur,
    count_cooccurrences,
    count_shard,
    finalize,
    kept_vocabulary,
    load_cooccur,
    merge_counts,
    row_lookup,
)
from tokalign_core.store.artifacts import ArtifactStore

# Two documents: [7 8 9 7] and [8 9]; ids 7, 8, 9 each seen twice, id 3 never.
HAND_IDS = np.array([7, 8, 9, 7, 8, 9], dtype=np.uint32)
HAND_OFFSETS = np.array([0, 4, 6], dtype=np.int64)
HAND_COUNTS = np.array([0, 0, 0, 0, 0, 0, 0, 2, 2, 2])


def test_hand_derived_counts_window_2_with_document_boundary():
    # Doc 1, window 2: (7,8) d1 -> 1, (8,9) d1 -> 1, (9,7) d1 -> 1, (7,9) d2 -> 1/2,
    # (8,7) d2 -> 1/2; the 7...7 pair is at distance 3 > window. Doc 2: (8,9) d1 -> 1.
    # The boundary stops 7 (end of doc 1) pairing with 8 (start of doc 2).
    # Symmetric: X[7,8] = 1 + 1/2, X[8,9] = 1 + 1, X[7,9] = 1/2 + 1.
    cfg = CooccurConfig(window=2, min_count=1)
    x, token_ids = count_cooccurrences([(HAND_IDS, HAND_OFFSETS)], HAND_COUNTS, cfg)
    np.testing.assert_array_equal(token_ids, [7, 8, 9])
    expected = np.array([[0, 1.5, 1.5], [1.5, 0, 2.0], [1.5, 2.0, 0]])
    np.testing.assert_array_equal(x.toarray(), expected)
    # Without the boundary three pairs cross it: 7(pos 3)-8(pos 4) d1 -> 1,
    # 9(pos 2)-8(pos 4) d2 -> 1/2 and 7(pos 3)-9(pos 5) d2 -> 1/2.
    x1, _ = count_cooccurrences([(HAND_IDS, np.array([0, 6]))], HAND_COUNTS, cfg)
    extra = np.array([[0, 1, .5], [1, 0, .5], [.5, .5, 0]])
    np.testing.assert_array_equal(x1.toarray(), expected + extra)


def test_self_pairs_count_twice_on_the_diagonal_and_rows_sorted_by_frequency():
    ids = np.array([5, 5, 2], dtype=np.uint32)  # 5 5 -> self pair at d1; 5 2 at d1 and d2
    counts = np.array([0, 0, 1, 0, 0, 2])
    x, token_ids = count_cooccurrences([(ids, np.array([0, 3]))], counts,
                                       CooccurConfig(window=2, min_count=1))
    np.testing.assert_array_equal(token_ids, [5, 2])  # most frequent first
    np.testing.assert_array_equal(x.toarray(), [[2.0, 1.5], [1.5, 0.0]])


def test_min_count_drops_rare_ids_and_skip_rare_closes_the_gap():
    ids = np.array([1, 2, 1, 0, 1], dtype=np.uint32)  # id 0 seen once (rare), id 2 once
    counts = np.array([1, 3, 1])
    cfg = CooccurConfig(window=1, min_count=2)
    x, token_ids = count_cooccurrences([(ids, np.array([0, 5]))], counts, cfg)
    np.testing.assert_array_equal(token_ids, [1])
    # skip_rare: sequence becomes [1 1 1] -> two self pairs at d1, doubled on the diagonal
    np.testing.assert_array_equal(x.toarray(), [[4.0]])
    keep_pos = cfg.model_copy(update={"skip_rare": False})
    x2, _ = count_cooccurrences([(ids, np.array([0, 5]))], counts, keep_pos)
    assert x2.nnz == 0  # every 1 is next to a dropped id


def test_kept_vocabulary_order_ties_and_cap():
    counts = np.array([5, 9, 5, 4, 9])
    np.testing.assert_array_equal(kept_vocabulary(counts, 5), [1, 4, 0, 2])
    np.testing.assert_array_equal(kept_vocabulary(counts, 5, max_vocab=3), [1, 4, 0])
    np.testing.assert_array_equal(row_lookup(np.array([1, 4]), 5), [-1, 0, -1, -1, 1])


def _zipf_corpus(n_tokens: int, vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1) ** 1.1
    ids = rng.choice(vocab, size=n_tokens, p=p / p.sum()).astype(np.uint32)
    cuts = np.sort(rng.choice(np.arange(1, n_tokens), size=n_tokens // 40, replace=False))
    offsets = np.concatenate(([0], cuts, [n_tokens], [n_tokens])).astype(np.int64)  # + empty doc
    return ids, offsets, np.bincount(ids, minlength=vocab)


def _split(ids, offsets, n_shards):
    """Split at document boundaries into n_shards (ids, offsets) pairs."""
    docs = np.array_split(np.arange(len(offsets) - 1), n_shards)
    out = []
    for d in docs:
        lo, hi = offsets[d[0]], offsets[d[-1] + 1]
        out.append((ids[lo:hi], offsets[d[0]: d[-1] + 2] - lo))
    return out


def _assert_identical(a: sp.spmatrix, b: sp.spmatrix):
    assert a.shape == b.shape and a.dtype == b.dtype
    assert (a != b).nnz == 0


def test_one_shard_equals_seven_shards_exactly_and_matches_a_naive_count():
    ids, offsets, counts = _zipf_corpus(30_000, 400)
    cfg = CooccurConfig(window=15, min_count=3)
    one, tok = count_cooccurrences([(ids, offsets)], counts, cfg)
    seven, tok7 = count_cooccurrences(_split(ids, offsets, 7), counts, cfg)
    np.testing.assert_array_equal(tok, tok7)
    _assert_identical(one, seven)
    assert one.nnz > 1000 and (one != one.T).nnz == 0
    # Naive float reference on a slice: same values up to rounding.
    lookup = row_lookup(tok, counts.size)
    sub_ids, sub_off = _split(ids, offsets, 30)[0]
    naive = np.zeros((tok.size, tok.size))
    rows = lookup[sub_ids]
    keep = rows >= 0
    pos_doc = np.repeat(np.arange(len(sub_off) - 1), np.diff(sub_off))[keep]
    r = rows[keep]
    for d in range(1, 16):
        same = pos_doc[d:] == pos_doc[:-d]
        np.add.at(naive, (r[:-d][same], r[d:][same]), 1.0 / d)
    naive = naive + naive.T
    got, _ = count_cooccurrences([(sub_ids, sub_off)], counts, cfg)
    np.testing.assert_allclose(got.toarray(), naive, rtol=1e-12)


def test_buffer_flushing_and_dense_table_size_do_not_change_the_result():
    ids, offsets, counts = _zipf_corpus(20_000, 300, seed=1)
    base = CooccurConfig(min_count=2)
    lookup = row_lookup(kept_vocabulary(counts, 2), counts.size)
    ref = count_shard(ids, offsets, lookup, base)
    for update in ({"buffer_pairs": 64, "dense_table_mb": 0.0},  # all sparse, 100s of flushes
                   {"buffer_pairs": 1000, "dense_table_mb": 0.01},
                   {"buffer_pairs": 10_000_000, "dense_table_mb": 64.0}):
        _assert_identical(ref, count_shard(ids, offsets, lookup, base.model_copy(update=update)))
    assert ref.dtype == np.int64 and ref.data.min() > 0
    # Integer units: every value is a sum of lcm/d terms.
    assert int(ref.sum()) % 1 == 0 and window_lcm(15) == 360360


def test_merge_is_order_independent_and_finalize_symmetrises():
    a = sp.csr_matrix(np.array([[0, 3], [1, 0]], dtype=np.int64))
    b = sp.csr_matrix(np.array([[2, 0], [0, 6]], dtype=np.int64))
    _assert_identical(merge_counts([a, b]), merge_counts([b, a]))
    x = finalize(merge_counts([a, b]), window=2)  # lcm(1, 2) = 2
    np.testing.assert_array_equal(x.toarray(), [[2.0, 2.0], [2.0, 6.0]])


@pytest.mark.slow  # ~20 s cluster start; sharding equality is proven by the 1-vs-7 shards test
def test_dask_two_workers_equals_serial(tmp_path):
    from tokalign_core.runtime.executor import DaskExecutor

    ids, offsets, counts = _zipf_corpus(20_000, 300, seed=2)
    shards = _split(ids, offsets, 4)
    tokens = _write_tokens(tmp_path / "tokens", shards, counts)
    store = ArtifactStore(tmp_path / "store")
    cfg = CooccurConfig(min_count=2)
    serial = build_cooccur(tokens, cfg, store)
    with DaskExecutor(n_workers=2, progress=False) as ex:
        x_dask, tok_dask = count_cooccurrences(shards, counts, cfg, executor=ex)
    x_serial, tok_serial, meta = load_cooccur(serial)
    np.testing.assert_array_equal(tok_serial, tok_dask)
    _assert_identical(x_serial, x_dask)
    assert meta["n_tokens"] == ids.size and meta["nnz"] == x_serial.nnz


def _write_tokens(folder, shards, counts):
    folder.mkdir(parents=True)
    for k, (ids, offsets) in enumerate(shards):
        (folder / f"shard-{k:05d}").mkdir()
        np.save(folder / f"shard-{k:05d}" / "ids.npy", ids.astype(np.uint32))
        np.save(folder / f"shard-{k:05d}" / "offsets.npy", offsets.astype(np.int64))
    np.save(folder / "counts.npy", np.asarray(counts, dtype=np.int64))
    (folder / "meta.json").write_text(json.dumps({"tokenizer": "toy", "n_shards": len(shards)}))
    return folder


def test_artifact_roundtrip_and_bad_inputs(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    tokens = _write_tokens(tmp_path / "tokens", [(HAND_IDS, HAND_OFFSETS)], HAND_COUNTS)
    ref = build_cooccur(tokens, CooccurConfig(window=2, min_count=1), store)
    x, token_ids, meta = load_cooccur(ref)
    assert x.format == "csr" and x.dtype == np.float64 and x[0, 1] == 1.5
    assert token_ids.dtype == np.int64 and meta["n_kept"] == 3 and meta["lcm"] == 2
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_cooccur(tmp_path / "missing", CooccurConfig(), store)
    empty = _write_tokens(tmp_path / "empty", [(HAND_IDS[:0], np.array([0]))], np.zeros(10))
    with pytest.raises(ValueError, match="empty"):
        build_cooccur(empty, CooccurConfig(), store)
    with pytest.raises(ValueError, match="min_count=5"):
        build_cooccur(tokens, CooccurConfig(), store)  # every id seen twice
    with pytest.raises(ValueError, match="vocab_size"):
        count_shard(np.array([12], np.uint32), np.array([0, 1]), row_lookup(np.array([0]), 3))
    with pytest.raises(ValueError, match="window 29"):
        CooccurConfig(window=29)
    assert not list((tmp_path / "store").glob(".tmp/*"))  # no half-written artifact left
