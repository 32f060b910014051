"""The alignment artifact: a target -> source function over every target id.

For each target token t: ``source_ids[t]`` is the source row whose parameters t copies,
``scores[t]`` how confident the choice is (CSLS/cosine; 1.0 for shared/special), and
``provenance[t]`` how it was decided. ``reverse[s]`` is the source -> target lexicon used
by the reverse-direction metrics (-1 where a source token has no target).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np

from tokalign_core.store.artifacts import atomic_write_bytes, atomic_write_text, verify_input


class Provenance(IntEnum):
    SHARED = 0
    SPECIAL = 1
    ALIGNED = 2
    FALLBACK = 3


@dataclass
class Alignment:
    """Arrays (NumPy, host):

    - ``source_ids``: int64 [V_t], every entry in ``[0, V_s)``
    - ``scores``: float32 [V_t]
    - ``provenance``: uint8 [V_t], values of :class:`Provenance`
    - ``reverse``: int64 [V_s], target id or -1
    - ``meta``: method, counts, seeds, sizes
    """

    source_ids: np.ndarray
    scores: np.ndarray
    provenance: np.ndarray
    reverse: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.source_ids = np.asarray(self.source_ids, dtype=np.int64)
        self.scores = np.asarray(self.scores, dtype=np.float32)
        self.provenance = np.asarray(self.provenance, dtype=np.uint8)
        self.reverse = np.asarray(self.reverse, dtype=np.int64)
        n = len(self.source_ids)
        if len(self.scores) != n or len(self.provenance) != n:
            raise ValueError(
                f"alignment arrays disagree: {n} source ids, {len(self.scores)} scores, "
                f"{len(self.provenance)} provenance entries"
            )
        n_src = len(self.reverse)
        if n and (self.source_ids.min() < 0 or self.source_ids.max() >= n_src):
            raise ValueError(
                f"alignment maps to source ids outside [0, {n_src}): "
                f"min {self.source_ids.min()}, max {self.source_ids.max()}"
            )

    @property
    def target_size(self) -> int:
        return len(self.source_ids)

    @property
    def source_size(self) -> int:
        return len(self.reverse)

    def counts(self) -> dict[str, int]:
        """How many target ids each provenance covers."""
        return {p.name.lower(): int((self.provenance == p).sum()) for p in Provenance}

    def check_sizes(self, target_vocab: int, source_rows: int | None = None) -> None:
        """Raise a clear error when this alignment does not fit a tokenizer / model."""
        if self.target_size != target_vocab:
            raise ValueError(
                f"target tokenizer has {target_vocab} tokens but the alignment covers "
                f"{self.target_size}; re-run `tokalign align` with this tokenizer"
            )
        if source_rows is not None and self.source_size > source_rows:
            raise ValueError(
                f"alignment expects {self.source_size} source rows but the model has "
                f"{source_rows}; was it built for another source model?"
            )

    def check_tokenizers(self, source_tok: Any = None, target_tok: Any = None) -> None:
        """Raise :class:`~tokalign_core.store.inputs.TokenizerMismatchError` when a tokenizer is
        not the one this alignment was built for (``align`` records both digests as
        ``source_tokenizer_digest`` / ``target_tokenizer_digest``). A tokenizer of the same
        size but another vocabulary would otherwise give a silently wrong model."""
        from tokalign_core.store.inputs import check_same_tokenizer

        for side, tok in (("target", target_tok), ("source", source_tok)):
            if tok is None:
                continue
            check_same_tokenizer(
                self.meta.get(f"{side}_tokenizer_digest"), tok,
                what=f"the alignment's {side} side",
                recorded_name=repr(self.meta.get(f"{side}_tokenizer", "?")),
                given_name=repr(getattr(tok, "name_or_path", "") or "the given tokenizer"),
                fix=f"give the {side} tokenizer the alignment was built with, or re-run "
                    "`tokalign align` with this one")

    def check_tokens(self, source_tokens: str | Path, target_tokens: str | Path) -> None:
        """Raise :class:`~tokalign_core.store.inputs.TokenizerMismatchError` when a tokens
        artifact was made with another tokenizer than this alignment's side (digests
        recorded by both stages; either missing = not checked)."""
        from tokalign_core.store.inputs import TokenizerMismatchError

        for side, folder in (("source", source_tokens), ("target", target_tokens)):
            meta_path = Path(folder) / "meta.json"
            got = json.loads(meta_path.read_text()).get("tokenizer_digest") \
                if meta_path.is_file() else None
            want = self.meta.get(f"{side}_tokenizer_digest")
            if got and want and got != want:
                raise TokenizerMismatchError(
                    f"--{side}-tokens {folder} was tokenized with digest {got[:12]} but the "
                    f"alignment's {side} tokenizer has digest {want[:12]}; give the tokens "
                    f"made with the {side} tokenizer (are source and target swapped?)")

    def save(self, folder: str | Path) -> Path:
        """Write ``alignment.npz`` (+ reference-format ``alignment.json``, ``meta.json``)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        import io

        buf = io.BytesIO()
        np.savez(buf, source_ids=self.source_ids, scores=self.scores,
                 provenance=self.provenance, reverse=self.reverse)
        atomic_write_bytes(folder / "alignment.npz", buf.getvalue())
        ref = {str(t): int(s) for t, s in enumerate(self.source_ids)}
        atomic_write_text(folder / "alignment.json", json.dumps(ref))
        meta = {**self.meta, "counts": self.counts(), "target_size": self.target_size,
                "source_size": self.source_size}
        atomic_write_text(folder / "meta.json", json.dumps(meta, indent=2, sort_keys=True))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Alignment:
        """Read an alignment folder (``alignment.npz`` never unpickled)."""
        folder = Path(folder)
        verify_input(folder, "alignment")  # sha256 of every file (manifest) first
        path = folder / "alignment.npz"
        if not path.exists():
            raise FileNotFoundError(f"no alignment.npz in {folder}; run `tokalign align` first")
        from tokalign_core.store.inputs import reading

        fix = "re-run `tokalign align` to rebuild it"
        with reading(path, fix), np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("source_ids", "scores", "provenance", "reverse")}
        meta_path = folder / "meta.json"
        with reading(meta_path, fix):
            meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        return cls(**arrays, meta=meta)

    @classmethod
    def from_reference_json(cls, path: str | Path, source_size: int) -> Alignment:
        """Import the reference code's ``{"target_id": source_id}`` JSON."""
        data = json.loads(Path(path).read_text())
        n = max(int(k) for k in data) + 1
        src = np.zeros(n, dtype=np.int64)
        for k, v in data.items():
            src[int(k)] = int(v)
        reverse = np.full(source_size, -1, dtype=np.int64)
        return cls(src, np.ones(n, np.float32), np.full(n, Provenance.ALIGNED, np.uint8),
                   reverse, {"method": "reference-json"})
