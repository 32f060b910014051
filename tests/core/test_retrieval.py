"""Retrieval: CSLS by the hand formula, exactness against brute force, tiling invariance."""

from __future__ import annotations

import numpy as np
import pytest

from tokalign_core.align import retrieval as R


def _rand(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_csls_3x3_hand_example():
    # cos = [[1, 0, .8], [0, 1, .6], [.6, .8, .96]]; k = 2:
    # r_T = [.9, .8, .88] (rows), r_S = [.8, .9, .88] (columns); csls = 2 cos - r_T - r_S.
    x = np.array([[1, 0], [0, 1], [0.6, 0.8]], np.float32)
    z = np.array([[1, 0], [0, 1], [0.8, 0.6]], np.float32)
    hand = np.array([[0.3, -1.8, -0.18], [-1.6, 0.3, -0.48], [-0.48, -0.18, 0.16]])
    np.testing.assert_allclose(R.csls_matrix(x, z, k=2), hand, atol=1e-6)
    fwd, bwd = R.retrieve_both(x, z, "csls", k=2, candidates=2)
    assert fwd.indices.tolist() == [0, 1, 2]
    np.testing.assert_allclose(fwd.scores, [0.3, 0.3, 0.16], atol=1e-6)
    np.testing.assert_allclose(fwd.r_queries, [0.9, 0.8, 0.88], atol=1e-6)
    np.testing.assert_allclose(fwd.r_keys, [0.8, 0.9, 0.88], atol=1e-6)
    assert bwd.indices.tolist() == [0, 1, 2]


@pytest.mark.parametrize("candidates", [2, 10, 64])
def test_csls_equals_brute_force(candidates):
    x, z = _rand(700, 16, 0), _rand(450, 16, 1)
    dense = R.csls_matrix(x, z, k=10)
    fwd, bwd = R.retrieve_both(x, z, "csls", k=10, candidates=candidates)
    np.testing.assert_array_equal(fwd.indices, dense.argmax(1))
    np.testing.assert_array_equal(bwd.indices, dense.argmax(0))
    np.testing.assert_allclose(fwd.scores, dense.max(1), atol=1e-5)
    np.testing.assert_allclose(bwd.scores, dense.max(0), atol=1e-5)
    if candidates == 2:  # the exact-recompute path must have run
        assert fwd.n_recomputed > 0 and bwd.n_recomputed > 0
    cos = R.normalize_rows(x) @ R.normalize_rows(z).T
    assert (cos.argmax(1) != fwd.indices).any()  # CSLS really differs from cosine here


def test_cosine_equals_brute_force():
    x, z = _rand(300, 8, 2), _rand(200, 8, 3)
    cos = R.normalize_rows(x) @ R.normalize_rows(z).T
    fwd, bwd = R.retrieve_both(x, z, "cosine", candidates=3)
    np.testing.assert_array_equal(fwd.indices, cos.argmax(1))
    np.testing.assert_array_equal(bwd.indices, cos.argmax(0))
    np.testing.assert_allclose(fwd.best_cos, cos.max(1), atol=1e-6)


def _same_bits(a: R.Retrieval, b: R.Retrieval) -> bool:
    arrays = ("indices", "scores", "best_cos", "r_queries", "r_keys")
    return all(getattr(a, f).tobytes() == getattr(b, f).tobytes() for f in arrays) and \
        (a.n_recomputed, a.mode) == (b.n_recomputed, b.mode)


@pytest.mark.parametrize("mode,k,candidates,dropout", [
    ("candidates", 10, 16, False), ("candidates", 5, 2, False),  # 5, 2: rows recomputed
    ("exact", 10, 16, True), ("dense", 10, 16, True)])
def test_tiling_invariance_bitwise(mode, k, candidates, dropout):
    # The GEMM tiles are the only blocking retrieval does: 600 x 520 rows on tiles of 64
    # and 250 rows leave a partial last tile on both sides (the backward walks of the dense
    # mode tile the 520 keys), and 2048 is one zero-padded tile. Every value must be
    # bitwise the same: a tile dropped, misplaced or read past its valid rows changes them.
    x, z = _rand(600, 24, 4), _rand(520, 24, 5)
    keep = R.hash_keep(7, 0.3) if dropout else None
    runs = {t: R.retrieve_both(x, z, "csls", k, candidates, keep_fwd=keep, keep_bwd=keep,
                               mode=mode, tile_rows=t) for t in (R.GEMM_ROWS, 64, 250)}
    ref_f, ref_b = runs[R.GEMM_ROWS]
    assert ref_f.mode == mode
    if candidates < k:  # the full-row recompute (its own tiling) ran in both directions
        assert ref_f.n_recomputed > 0 and ref_b.n_recomputed > 0
    for fwd, bwd in runs.values():
        assert _same_bits(fwd, ref_f) and _same_bits(bwd, ref_b)
    dense = R.csls_matrix(x, z, k=k)
    if not dropout:  # and the answer is the right one, not just a stable one
        np.testing.assert_array_equal(ref_f.indices, dense.argmax(1))
        np.testing.assert_array_equal(ref_b.indices, dense.argmax(0))


def test_scan_tiling_invariance_bitwise():
    x, z = R.normalize_rows(_rand(300, 12, 6)), R.normalize_rows(_rand(280, 12, 7))
    ref = R.scan(x, z, row_k=5, col_k=4)
    for t in (64, 256):
        sc = R.scan(x, z, row_k=5, col_k=4, tile_rows=t)
        for name in ("row_vals", "row_idx", "col_vals", "col_idx"):
            assert getattr(sc, name).tobytes() == getattr(ref, name).tobytes()
    with pytest.raises(ValueError, match="tile_rows"):
        R.scan(x, z, row_k=5, col_k=4, tile_rows=0)


def test_scan_matches_sorted_similarities():
    x, z = R.normalize_rows(_rand(300, 12, 6)), R.normalize_rows(_rand(280, 12, 7))
    sc = R.scan(x, z, row_k=5, col_k=4)
    cos = x @ z.T
    np.testing.assert_allclose(sc.row_vals, -np.sort(-cos, 1)[:, :5], atol=1e-6)
    np.testing.assert_allclose(sc.col_vals, -np.sort(-cos.T, 1)[:, :4], atol=1e-6)
    np.testing.assert_array_equal(sc.row_idx[:, 0], cos.argmax(1))
    np.testing.assert_array_equal(sc.col_idx[:, 0], cos.argmax(0))


def test_ties_go_to_lowest_index():
    z = np.array([[0, 1], [1, 0], [1, 0], [1, 0]], np.float32)  # rows 1-3 identical
    x = np.array([[1, 0.01]], np.float32)
    for method in ("cosine", "csls"):
        assert R.retrieve(x, z, method, k=1, candidates=1).indices.tolist() == [1]
    _, idx = R.topk_desc(np.array([[0.5, 0.9, 0.9, 0.1]], np.float32), 2)
    assert idx.tolist() == [[1, 2]]


def test_dropout_mask_respected_and_exact():
    x, z = _rand(260, 10, 8), _rand(300, 10, 9)
    keep = R.hash_keep(11, 0.1)
    dense = R.csls_matrix(x, z, k=10)
    mask = keep(np.arange(260), np.broadcast_to(np.arange(300), (260, 300)))
    assert 0.07 < mask.mean() < 0.13
    fwd = R.retrieve_both(x, z, "csls", 10, 12, keep_fwd=keep, backward=False)[0]
    np.testing.assert_array_equal(fwd.indices, np.where(mask, dense, -np.inf).argmax(1))
    assert mask[np.arange(260), fwd.indices].all()
    # pure function of (seed, row, col): same answer for any query order
    assert np.array_equal(keep(np.array([5]), np.array([[3, 4]])), mask[5:6, 3:5])
    assert not np.array_equal(R.hash_keep(12, 0.1)(np.arange(260), mask * 0 + np.arange(300)),
                              mask)


def test_top_neighbours_matches_dense_row():
    x, z = _rand(50, 6, 10), _rand(40, 6, 11)
    fwd, _ = R.retrieve_both(x, z, "csls", 5, 8)
    idx, vals = R.top_neighbours(x[3], z, 4, float(fwd.r_queries[3]), fwd.r_keys)
    row = R.csls_matrix(x, z, 5)[3]
    np.testing.assert_array_equal(idx, np.argsort(-row, kind="stable")[:4])
    np.testing.assert_allclose(vals, np.sort(row)[::-1][:4], atol=1e-5)
    assert idx[0] == fwd.indices[3]


def test_dimension_mismatch_is_an_error():
    with pytest.raises(ValueError, match="dims"):
        R.retrieve(_rand(3, 4, 0), _rand(3, 5, 0))


@pytest.mark.parametrize("method", ["csls", "cosine"])
def test_exact_mode_equals_candidate_mode_without_dropout(method):
    # Two different algorithms (one pass + proof vs two passes over the CSLS blocks)
    # must pick the same keys in both directions, and agree with the dense formula.
    x, z = _rand(2500, 16, 12), _rand(2300, 16, 13)
    ex = R.retrieve_both(x, z, method, 10, mode="exact")
    ca = R.retrieve_both(x, z, method, 10, candidates=16, mode="candidates")
    assert ex[0].mode == "exact" and ca[0].mode == "candidates"
    for a, c in zip(ex, ca, strict=True):
        np.testing.assert_array_equal(a.indices, c.indices)
        np.testing.assert_allclose(a.scores, c.scores, atol=1e-5)
        np.testing.assert_array_equal(a.best_cos, c.best_cos)
        np.testing.assert_array_equal(a.r_queries, c.r_queries)
    dense = R.csls_matrix(x, z, 10) if method == "csls" else (
        R.normalize_rows(x) @ R.normalize_rows(z).T)
    np.testing.assert_array_equal(ex[0].indices, dense.argmax(1))
    np.testing.assert_array_equal(ex[1].indices, dense.argmax(0))


def test_auto_mode_picks_dense_then_exact_then_candidates_with_dropout():
    x, z = _rand(300, 8, 14), _rand(280, 8, 15)
    keep = R.hash_keep(3, 0.2)
    dense = R.retrieve_both(x, z, keep_fwd=keep, keep_bwd=keep)
    assert dense[0].mode == "dense"  # 300 x 280 floats fit the default budget
    exact = R.retrieve_both(x, z, keep_fwd=keep, keep_bwd=keep, dense_max_bytes=0)
    assert exact[0].mode == "exact"
    big = R.retrieve_both(x, z, keep_fwd=keep, keep_bwd=keep, exact_max_keys=100,
                          dense_max_bytes=4 * 300 * 280 - 1)
    assert big[0].mode == "candidates"
    assert R.retrieve_both(x, z)[0].mode == "candidates"  # no dropout: one pass
    # every mode honours the same mask with the same answer
    for other in (exact, big):
        for a, b in zip(dense, other, strict=True):
            np.testing.assert_array_equal(a.indices, b.indices)


@pytest.mark.parametrize("method", ["csls", "cosine"])
def test_dense_mode_equals_exact_mode_with_dropout(method):
    # Several GEMM tiles on both axes; the stored-matrix walks must reproduce the two-pass
    # exact mode: same keys, same neighbour means and best cosines, scores to rounding.
    x, z = _rand(4500, 16, 30), _rand(2300, 16, 31)
    kf, kb = R.hash_keep(5, 0.1), R.hash_keep(6, 0.1)
    de = R.retrieve_both(x, z, method, 10, keep_fwd=kf, keep_bwd=kb, mode="dense")
    ex = R.retrieve_both(x, z, method, 10, keep_fwd=kf, keep_bwd=kb, mode="exact")
    assert de[0].mode == "dense" and ex[0].mode == "exact"
    for a, b in zip(de, ex, strict=True):
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
        np.testing.assert_array_equal(a.best_cos, b.best_cos)
        np.testing.assert_array_equal(a.r_queries, b.r_queries)
        np.testing.assert_array_equal(a.r_keys, b.r_keys)


def test_lazy_list_size_from_keep_probability():
    assert R.lazy_list_size(R.hash_keep(0, 0.1), 20000) == 88  # 0.9^88 < 1e-4 < 0.9^87
    assert R.lazy_list_size(R.hash_keep(0, 0.5), 20000) == 14
    assert R.lazy_list_size(None, 20000) == 2
    assert R.lazy_list_size(R.hash_keep(0, 0.1), 50) == 50


@pytest.mark.parametrize("mode", ["exact", "dense"])
def test_full_row_fallback_matches_dense_formula(monkeypatch, mode):
    # Short lists of 2 with keep 0.1: most rows have no kept entry in their list and go
    # through the full-row recompute; the answer must still be the masked dense argmax.
    monkeypatch.setattr(R, "LAZY_MISS", 0.81)
    x, z = _rand(400, 10, 16), _rand(350, 10, 17)
    kf, kb = R.hash_keep(21, 0.1), R.hash_keep(22, 0.1)
    assert R.lazy_list_size(kf, 350) == 2
    fwd, bwd = R.retrieve_both(x, z, "csls", 10, keep_fwd=kf, keep_bwd=kb, mode=mode)
    dense = R.csls_matrix(x, z, 10)
    mf = kf(np.arange(400), np.broadcast_to(np.arange(350), (400, 350)))
    mb = kb(np.arange(350), np.broadcast_to(np.arange(400), (350, 400)))
    np.testing.assert_array_equal(fwd.indices, np.where(mf, dense, -np.inf).argmax(1))
    np.testing.assert_array_equal(bwd.indices, np.where(mb, dense.T, -np.inf).argmax(1))
    assert fwd.n_recomputed > 200 and bwd.n_recomputed > 200
