"""Packed training blocks from a tokens artifact (METHOD.md section 7).

The tokenize stage writes, per shard, ``ids.npy`` (uint32, every document concatenated) and
``offsets.npy`` (int64 [n_docs + 1]). Training sees one virtual stream per split: documents
in shard order, each followed by EOS (the reference code appends none, so documents run into
each other), cut into non-overlapping blocks of ``seq_len + 1`` tokens (block ``i`` covers
stream positions ``[i*L, i*L + L]``; its last token is only a label). Nothing is copied: the
stream is read lazily from memory-mapped shards, so a 1B-token corpus costs only the
per-document offsets in RAM.

Order: a :class:`BlockSampler` maps a global *position* (how many blocks the whole run has
consumed) to a block id through a seeded permutation per epoch. The position is the only
data state a checkpoint needs: stage 2 continues at the position where stage 1 stopped, so
no block is seen twice before an epoch ends. Ranks take interleaved slices of each global
micro-batch (:func:`rank_positions`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokalign_core.store.artifacts import read_meta, verify_input
from tokalign_core.vocab.tokenize import check_shard_names

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Shard:
    ids: np.ndarray  # uint32 [n_tokens], memory-mapped
    starts: np.ndarray  # int64 [n_docs]: stream position of each document's first token
    ends: np.ndarray  # int64 [n_docs]: stream position one past the document (and its EOS)
    doc_len: np.ndarray  # int64 [n_docs]
    offsets: np.ndarray  # int64 [n_docs + 1]

    @property
    def stream_len(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0


def _load_shard(folder: Path, insert_eos: bool) -> _Shard:
    """Memory-map one shard and precompute where each document sits in the stream."""
    ids_path, off_path = folder / "ids.npy", folder / "offsets.npy"
    for p in (ids_path, off_path):
        if not p.exists():
            raise FileNotFoundError(f"tokens shard file {p} is missing; rerun the tokenize stage")
    ids = np.load(ids_path, mmap_mode="r", allow_pickle=False)
    offsets = np.asarray(np.load(off_path, allow_pickle=False), dtype=np.int64)
    if ids.dtype != np.uint32 or ids.ndim != 1:
        raise ValueError(f"{ids_path}: expected 1-D uint32 ids, got {ids.dtype} {ids.shape}")
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(ids):
        raise ValueError(
            f"{off_path}: offsets must start at 0 and end at len(ids)={len(ids)} "
            f"(got {offsets[:1]}..{offsets[-1:]}); the shard is corrupt, rerun tokenize"
        )
    doc_len = np.diff(offsets)
    if (doc_len < 0).any():
        raise ValueError(f"{off_path}: offsets decrease; the shard is corrupt, rerun tokenize")
    extra = np.arange(len(doc_len), dtype=np.int64) if insert_eos else 0
    starts = offsets[:-1] + extra
    ends = offsets[1:] + extra + (1 if insert_eos else 0)
    return _Shard(ids, starts, ends, doc_len, offsets)


class TokenStream:
    """One split of a tokens artifact as a single EOS-joined token stream.

    ``split="train"`` reads every ``shard-*`` folder in name order; ``split="heldout"``
    reads ``heldout/``. When the artifact's ``meta.json`` says ``add_eos`` the documents
    already end with EOS and none is inserted.
    """

    def __init__(self, folder: str | Path, eos_id: int, split: str = "train"):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(
                f"tokens artifact {self.folder} does not exist; run `tokalign tokenize` first "
                "or pass the artifact folder it printed"
            )
        verify_input(self.folder, "tokens")  # sha256 of every file (manifest) first
        self.meta = read_meta(self.folder)
        self.eos_id = int(eos_id)
        self.insert_eos = not bool(self.meta.get("add_eos", False))
        dirs = _split_dirs(self.folder, split)
        self.shards = [_load_shard(d, self.insert_eos) for d in dirs]
        lens = np.array([s.stream_len for s in self.shards], dtype=np.int64)
        self.shard_starts = np.concatenate([[0], np.cumsum(lens)])

    def __len__(self) -> int:
        return int(self.shard_starts[-1])

    @property
    def vocab_size(self) -> int | None:
        """The tokenizer's vocabulary size recorded by the tokenize stage (if any)."""
        v = self.meta.get("vocab_size")
        return int(v) if v is not None else None

    def max_id(self) -> int:
        """Largest token id in the stream (EOS included); scans the shards once."""
        top = [int(s.ids.max()) for s in self.shards if len(s.ids)]
        return max(top + [self.eos_id])

    def take(self, positions: np.ndarray) -> np.ndarray:
        """Tokens at stream ``positions`` (int64 [n]) -> int64 [n]."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"stream positions outside [0, {len(self)})")
        out = np.empty(positions.shape, dtype=np.int64)
        shard_of = np.searchsorted(self.shard_starts, positions, side="right") - 1
        for k in np.unique(shard_of):
            mask = shard_of == k
            out[mask] = self._take_shard(self.shards[k], positions[mask] - self.shard_starts[k])
        return out

    def _take_shard(self, shard: _Shard, q: np.ndarray) -> np.ndarray:
        doc = np.searchsorted(shard.ends, q, side="right")
        local = q - shard.starts[doc]
        is_eos = local >= shard.doc_len[doc]  # only possible when EOS is inserted
        src = np.where(is_eos, 0, shard.offsets[doc] + local)
        return np.where(is_eos, self.eos_id, shard.ids[src].astype(np.int64))


def _split_dirs(folder: Path, split: str) -> list[Path]:
    if split == "train":
        dirs = sorted(p for p in folder.glob("shard-*") if p.is_dir())
    elif split == "heldout":
        dirs = [folder / "heldout"] if (folder / "heldout").is_dir() else []
    else:
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    if not dirs:
        raise FileNotFoundError(
            f"tokens artifact {folder} has no {split} shards "
            f"({'shard-00000/' if split == 'train' else 'heldout/'} ...); is it a tokens artifact?"
        )
    if split == "train":
        check_shard_names(folder, [d.name for d in dirs])
    return dirs


class PackedBlocks:
    """Non-overlapping blocks of ``seq_len + 1`` tokens cut from a :class:`TokenStream`."""

    def __init__(self, stream: TokenStream, seq_len: int):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.stream = stream
        self.seq_len = int(seq_len)
        self.n_blocks = max(0, (len(stream) - 1) // self.seq_len)
        if self.n_blocks == 0:
            raise ValueError(
                f"the tokens artifact {stream.folder} holds {len(stream)} tokens, fewer than one "
                f"block of seq_len+1 = {seq_len + 1}; use a shorter seq_len or more text"
            )

    def __len__(self) -> int:
        return self.n_blocks

    def blocks(self, block_ids: np.ndarray) -> np.ndarray:
        """Blocks ``block_ids`` (int [n]) -> int64 [n, seq_len + 1]."""
        block_ids = np.asarray(block_ids, dtype=np.int64)
        if block_ids.size and (block_ids.min() < 0 or block_ids.max() >= self.n_blocks):
            raise IndexError(f"block ids outside [0, {self.n_blocks})")
        pos = block_ids[:, None] * self.seq_len + np.arange(self.seq_len + 1)[None, :]
        return self.stream.take(pos.reshape(-1)).reshape(len(block_ids), self.seq_len + 1)


class BlockSampler:
    """Global position -> block id: a seeded permutation of all blocks per epoch.

    Position ``p`` lies in epoch ``p // n_blocks``; epoch ``e`` uses
    ``default_rng([seed, e]).permutation(n_blocks)``. Deterministic for (seed, n_blocks),
    independent of world size, so a run resumed with another rank count reads the same
    global order.
    """

    def __init__(self, n_blocks: int, seed: int):
        self.n_blocks = int(n_blocks)
        self.seed = int(seed)
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 4:  # only the current and next epoch are ever needed
                self._perms.clear()
            rng = np.random.default_rng([self.seed, epoch])
            self._perms[epoch] = rng.permutation(self.n_blocks)
        return self._perms[epoch]

    def epoch(self, position: int) -> int:
        return int(position) // self.n_blocks

    def block_ids(self, positions: np.ndarray) -> np.ndarray:
        """Block ids (int64 [n]) at global ``positions`` (int64 [n])."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty_like(positions)
        epochs = positions // self.n_blocks
        for e in np.unique(epochs):
            mask = epochs == e
            out[mask] = self._perm(int(e))[positions[mask] % self.n_blocks]
        return out


def rank_positions(cursor: int, micro_batch: int, world: int, rank: int) -> np.ndarray:
    """Global positions of rank ``rank``'s share of the micro-batch starting at ``cursor``.

    The global micro-batch is ``micro_batch * world`` consecutive positions; rank r takes
    the r-th contiguous slice. Returns int64 [micro_batch].
    """
    start = cursor + rank * micro_batch
    return np.arange(start, start + micro_batch, dtype=np.int64)


def heldout_blocks(folder: str | Path, eos_id: int, seq_len: int, n: int) -> np.ndarray:
    """The first ``n`` held-out blocks in order (int64 [<=n, seq_len + 1]); fewer when the
    held-out split is short, none when it is missing."""
    try:
        blocks = PackedBlocks(TokenStream(folder, eos_id, split="heldout"), seq_len)
    except (FileNotFoundError, ValueError) as exc:
        log.warning("no held-out evaluation: %s", exc)
        return np.zeros((0, seq_len + 1), dtype=np.int64)
    return blocks.blocks(np.arange(min(n, len(blocks))))


def write_tokens_artifact(folder: str | Path, shards: list[list[list[int]]],
                          heldout: list[list[int]] | None = None, vocab_size: int | None = None,
                          add_eos: bool = False) -> Path:
    """Write a minimal tokens artifact (format of ARCHITECTURE.md) from lists of documents.

    For tests, demos and benchmarks that do not run the tokenize stage. ``shards`` is a
    list of shards, each a list of documents (lists of ids).
    """
    folder = Path(folder)
    all_ids: list[int] = []
    for k, docs in enumerate(shards):
        _write_split(folder / f"shard-{k:05d}", docs)
        all_ids.extend(i for d in docs for i in d)
    if heldout is not None:
        _write_split(folder / "heldout", heldout)
    vocab = vocab_size or (max(all_ids) + 1 if all_ids else 1)
    counts = np.bincount(np.asarray(all_ids, dtype=np.int64), minlength=vocab)
    np.save(folder / "counts.npy", counts.astype(np.int64), allow_pickle=False)
    meta = {"vocab_size": vocab, "add_bos": False, "add_eos": add_eos,
            "n_docs": sum(len(d) for d in shards), "n_tokens": len(all_ids),
            "n_shards": len(shards), "tokenizer": "test"}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))
    return folder


def _write_split(folder: Path, docs: list[list[int]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lens = np.array([len(d) for d in docs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    flat = np.asarray([i for d in docs for i in d], dtype=np.uint32)
    np.save(folder / "ids.npy", flat, allow_pickle=False)
    np.save(folder / "offsets.npy", offsets, allow_pickle=False)
