"""Co-occurrence spread over workers (issue 18, item 4): partial counts go through files,
the symmetrisation runs by row blocks, and the artifact is byte-identical to the serial
one. An in-process executor that declares itself distributed stands in for Dask here (the
real cluster is in tests/flows/test_dask_cluster.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from tests.core.test_cooccur import _split, _write_tokens, _zipf_corpus
from tokalign_core.artifacts import ArtifactStore
from tokalign_core.configs.cooccur import CooccurConfig
from tokalign_core.cooccur import build_cooccur


class FakeCluster:
    """Runs tasks in this process but, like a cluster, counts as distributed; records
    what every task handed back."""

    distributed = True

    def __init__(self, n_workers: int):
        self.n_workers = n_workers
        self.returned: list[object] = []

    def map(self, fn, items):
        out = [fn(x) for x in items]
        self.returned.extend(out)
        return out


def _files(ref) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in Path(ref.path).iterdir() if p.name not in ("meta.json", "MANIFEST.json")}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    ids, offsets, counts = _zipf_corpus(30_000, 400, seed=4)
    return _write_tokens(tmp_path_factory.mktemp("tok") / "tokens", _split(ids, offsets, 5),
                         counts)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_distributed_build_is_byte_identical_and_ships_only_file_names(tmp_path, tokens,
                                                                       workers):
    cfg = CooccurConfig(window=7, min_count=2, buffer_pairs=4096, dense_table_mb=0.01)
    serial = build_cooccur(tokens, cfg, ArtifactStore(tmp_path / "serial"))
    cluster = FakeCluster(workers)
    dist = build_cooccur(tokens, cfg, ArtifactStore(tmp_path / "dist"), cluster)
    assert _files(dist) == _files(serial)
    assert dist.meta()["nnz"] == serial.meta()["nnz"]
    # Nothing large through the scheduler: every task returns a folder name ...
    assert cluster.returned and all(isinstance(r, str) for r in cluster.returned)
    # ... and the scratch folders are gone from the committed artifact.
    assert sorted(p.name for p in Path(dist.path).iterdir()) == sorted(
        p.name for p in Path(serial.path).iterdir())


def test_row_blocks_and_chunked_column_scan_do_not_change_the_result(tmp_path, tokens,
                                                                     monkeypatch):
    from tokalign_core import cooccur_dist

    cfg = CooccurConfig(window=5, min_count=1)
    serial = build_cooccur(tokens, cfg, ArtifactStore(tmp_path / "serial"))
    monkeypatch.setattr(cooccur_dist, "ROW_CHUNK_NNZ", 97)  # many partial chunks
    dist = build_cooccur(tokens, cfg, ArtifactStore(tmp_path / "dist"), FakeCluster(4))
    assert _files(dist) == _files(serial)


def test_shard_groups_balance_tokens():
    from tokalign_core.cooccur_dist import shard_groups

    groups = shard_groups([100, 10, 60, 50, 40], 2)
    assert sorted(i for g in groups for i in g) == [0, 1, 2, 3, 4]
    loads = [sum([100, 10, 60, 50, 40][i] for i in g) for g in groups]
    assert len(groups) == 2 and max(loads) - min(loads) <= 100  # within the largest shard
    assert shard_groups([5], 4) == [[0]]


def test_row_blocks_cover_every_row_once(tmp_path, tokens):
    from tokalign_core.cooccur import kept_vocabulary, row_lookup, tokens_shards
    from tokalign_core.cooccur_dist import count_part, row_blocks

    counts = np.load(tokens / "counts.npy")
    kept = kept_vocabulary(counts, 2)
    part = count_part([str(s) for s in tokens_shards(tokens)],
                      row_lookup(kept, counts.size), CooccurConfig(min_count=2),
                      str(tmp_path), 0)
    for n_blocks in (1, 2, 7):
        blocks = row_blocks([part], kept.size, n_blocks)
        assert blocks[0][0] == 0 and blocks[-1][1] == kept.size
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:], strict=False))
        assert 1 <= len(blocks) <= n_blocks
