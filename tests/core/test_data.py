"""Packed blocks from a tokens artifact: EOS joining, packing, shuffling, rank slicing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tokalign_core.train.data import (
    BlockSampler,
    PackedBlocks,
    TokenStream,
    heldout_blocks,
    rank_positions,
    write_tokens_artifact,
)

EOS = 9


@pytest.fixture
def art(tmp_path):
    # Two shards; the empty document still contributes its EOS.
    return write_tokens_artifact(
        tmp_path / "tok", [[[1, 2, 3], [4]], [[], [5, 6]]], heldout=[[7, 8, 7, 8, 7]],
        vocab_size=10)


def test_stream_appends_eos_after_every_document(art):
    s = TokenStream(art, EOS)
    # By hand: 1 2 3 E | 4 E || E | 5 6 E
    assert len(s) == 10
    assert s.take(np.arange(10)).tolist() == [1, 2, 3, EOS, 4, EOS, EOS, 5, 6, EOS]
    assert s.take(np.array([7, 0, 3])).tolist() == [5, 1, EOS]
    with pytest.raises(IndexError):
        s.take(np.array([10]))


def test_stream_respects_add_eos_meta(tmp_path):
    art = write_tokens_artifact(tmp_path / "t", [[[1, 2, EOS], [3, EOS]]], add_eos=True)
    assert TokenStream(art, EOS).take(np.arange(5)).tolist() == [1, 2, EOS, 3, EOS]


def test_blocks_are_non_overlapping_with_one_label_token(art):
    b = PackedBlocks(TokenStream(art, EOS), seq_len=3)
    assert len(b) == 3  # (10 - 1) // 3
    assert b.blocks(np.array([0, 1, 2])).tolist() == [
        [1, 2, 3, EOS], [EOS, 4, EOS, EOS], [EOS, 5, 6, EOS]]  # spans the shard boundary


def test_too_little_data_names_the_fix(art):
    with pytest.raises(ValueError, match="fewer than one block"):
        PackedBlocks(TokenStream(art, EOS), seq_len=50)


def test_missing_artifact_and_corrupt_offsets(tmp_path, art):
    with pytest.raises(FileNotFoundError, match="tokenize"):
        TokenStream(tmp_path / "nope", EOS)
    np.save(art / "shard-00001" / "offsets.npy", np.array([0, 1, 5], dtype=np.int64))
    with pytest.raises(ValueError, match="corrupt"):
        TokenStream(art, EOS)


def test_sampler_is_a_seeded_permutation_per_epoch():
    s = BlockSampler(50, seed=3)
    first = s.block_ids(np.arange(50))
    assert sorted(first.tolist()) == list(range(50))  # every block once per epoch
    assert first.tolist() != list(range(50))  # shuffled
    assert BlockSampler(50, seed=3).block_ids(np.arange(50)).tolist() == first.tolist()
    assert BlockSampler(50, seed=4).block_ids(np.arange(50)).tolist() != first.tolist()
    second = s.block_ids(np.arange(50, 100))
    assert sorted(second.tolist()) == list(range(50)) and second.tolist() != first.tolist()
    assert s.epoch(49) == 0 and s.epoch(50) == 1


def test_stage_two_continues_without_repeating_blocks():
    # Stage 1 consumes positions [0, 24), stage 2 resumes at cursor 24: disjoint blocks.
    s = BlockSampler(60, seed=0)
    stage1 = set(s.block_ids(np.arange(0, 24)).tolist())
    stage2 = set(s.block_ids(np.arange(24, 60)).tolist())
    assert not stage1 & stage2 and len(stage1 | stage2) == 60


def test_rank_positions_partition_the_global_batch():
    world, micro, cursor = 3, 2, 12
    got = np.concatenate([rank_positions(cursor, micro, world, r) for r in range(world)])
    assert got.tolist() == list(range(12, 18))


def test_heldout_blocks_in_order(art):
    # heldout stream: 7 8 7 8 7 E -> seq_len 2 gives blocks [7 8 7], [7 8 7]
    got = heldout_blocks(art, EOS, seq_len=2, n=5)
    assert got.tolist() == [[7, 8, 7], [7, 8, 7]]


def test_written_meta_matches_format(art):
    meta = json.loads((art / "meta.json").read_text())
    assert meta["n_docs"] == 4 and meta["n_tokens"] == 6 and meta["n_shards"] == 2
    assert np.load(art / "counts.npy").tolist() == [0, 1, 1, 1, 1, 1, 1, 0, 0, 0]
    assert np.load(art / "shard-00000" / "ids.npy").dtype == np.uint32
