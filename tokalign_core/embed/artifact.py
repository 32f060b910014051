"""The **embeddings** artifact: one vector per token of one tokenizer, written by GloVe
(:mod:`tokalign_core.embed.glove`) and by hidden states
(:mod:`tokalign_core.embed.hidden_states`), read by the alignment
(:mod:`tokalign_core.align.build`).

Files: ``vectors.npy`` float32 [n, d] and ``token_ids.npy`` int64 [n] (tokenizer id of each
row, most frequent first when known), ``meta.json``, and from hidden states
``missing_ids.npy`` int64 [m] / ``missing_reason.npy`` uint8 [m] (ids that got no vector,
and why). :meth:`Embeddings.load` is the one reader: the manifest is checked in full first,
and any file that does not parse is a :class:`~tokalign_core.store.inputs.DamagedFileError`
naming it and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokalign_core.store.artifacts import ArtifactRef, input_dir, read_meta
from tokalign_core.store.inputs import reading

KIND = "embeddings"
REQUIRED = ("vectors.npy", "token_ids.npy")


def _empty(dtype: Any) -> Any:
    return lambda: np.zeros(0, dtype)


@dataclass
class Embeddings:
    """An embeddings artifact in memory: ``vectors`` float32 [n, d], ``token_ids`` int64
    [n] (tokenizer id of each row), ``meta``; ``missing_ids`` int64 [m] and
    ``missing_reason`` uint8 [m] when the writer recorded them (hidden states)."""

    vectors: np.ndarray
    token_ids: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    missing_ids: np.ndarray = field(default_factory=_empty(np.int64))
    missing_reason: np.ndarray = field(default_factory=_empty(np.uint8))

    def __post_init__(self) -> None:
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        self.token_ids = np.asarray(self.token_ids, dtype=np.int64)
        self.missing_ids = np.asarray(self.missing_ids, dtype=np.int64)
        self.missing_reason = np.asarray(self.missing_reason, dtype=np.uint8)
        if self.vectors.ndim != 2 or len(self.vectors) != len(self.token_ids):
            raise ValueError(
                f"embeddings: vectors {self.vectors.shape} and token_ids "
                f"{self.token_ids.shape} must be [n, d] and [n]"
            )
        if len(np.unique(self.token_ids)) != len(self.token_ids):
            raise ValueError("embeddings: token_ids contain duplicates (one row per token)")
        if not np.isfinite(self.vectors).all():
            raise ValueError("embeddings: vectors contain NaN or inf")

    @classmethod
    def load(cls, source: ArtifactRef | str | Path) -> Embeddings:
        """Read an embeddings artifact (a ref or its folder; never unpickled). Raises
        FileNotFoundError (no folder / no vectors), CorruptArtifactError (fails its
        manifest), DamagedFileError (a file that does not parse, or rows that are not
        one finite vector per token)."""
        folder = input_dir(source, KIND, REQUIRED)  # sha256 of every file (manifest) first
        fix = f"delete {folder} and rebuild it (`tokalign glove` or `tokalign hidden-states`)"
        with reading(folder / "meta.json", fix):
            meta = read_meta(folder)
        arrays = {}
        for name in ("vectors", "token_ids", "missing_ids", "missing_reason"):
            path = folder / f"{name}.npy"
            if path.exists():
                with reading(path, fix):
                    arrays[name] = np.load(path, allow_pickle=False)
        with reading(folder, fix):
            return cls(meta=meta, **arrays)

    def tokenizer_digest(self) -> str | None:
        """The ``tokenizer_digest`` the artifact recorded (GloVe and hidden states do)."""
        return self.meta.get("tokenizer_digest")

    def rows_of(self, size: int) -> np.ndarray:
        """int64 [size]: row of each token id, -1 when the id has no vector."""
        lookup = np.full(size, -1, dtype=np.int64)
        lookup[self.token_ids] = np.arange(len(self.token_ids))
        return lookup
