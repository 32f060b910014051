"""From two embeddings artifacts and two tokenizers to the saved alignment: the one
preparation behind ``tokalign align`` and the flows' align task.

Steps (METHOD.md section 4): check that each embeddings artifact was built with the
tokenizer it is paired with; find the tokens both vocabularies share (same bytes) or
match by role (special tokens); hide ``cfg.holdout`` of the byte-matched pairs from the
seed dictionary and the overrides (seeded by ``cfg.seed``; they are evaluated later as
held-out precision@1); give every target token without a vector its source tokenization
as fallback candidates; then :func:`tokalign_core.align.build.build_alignment`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokalign_core.align.build import AlignOutput, build_alignment, check_embedding_tokenizers
from tokalign_core.configs.align import AlignConfig
from tokalign_core.embed.artifact import Embeddings
from tokalign_core.vocab.vocab import SharedTokens, Vocab, build_vocab, shared_tokens, split_shared

HELDOUT_FILE = "heldout_pairs.npz"


@dataclass
class PreparedAlignment:
    """The alignment output plus the shared pairs it was not allowed to see."""

    output: AlignOutput
    heldout: SharedTokens

    def save(self, folder: str | Path) -> Path:
        """Write the alignment files (see :meth:`AlignOutput.save`) and, when pairs were
        held out, ``heldout_pairs.npz`` into a fresh ``folder``."""
        folder = Path(folder)
        self.output.save(folder)
        if len(self.heldout):
            self.heldout.save(folder / HELDOUT_FILE)
        return folder


def tokenization_fallbacks(missing: np.ndarray, target_vocab: Vocab,
                           source_tok: Any) -> dict[int, list[int]]:
    """target id -> source ids of the token's text under the source tokenizer, for the
    ``missing`` target ids (int [n]) whose bytes are valid text."""
    texts = {int(t): target_vocab.text(int(t)) for t in missing}
    texts = {t: s for t, s in texts.items() if s}
    if not texts:
        return {}
    enc = source_tok(list(texts.values()), add_special_tokens=False)["input_ids"]
    return {t: list(ids) for t, ids in zip(texts, enc, strict=True) if ids}


def prepare_alignment(source_emb: str | Path, target_emb: str | Path, source_tok: Any,
                      target_tok: Any, cfg: AlignConfig, *, source_spec: str,
                      target_spec: str, callback: Callable[[Any], None] | None = None,
                      progress: bool = False) -> PreparedAlignment:
    """Align ``target_tok``'s vocabulary to ``source_tok``'s from the embeddings artifacts
    in the folders ``source_emb`` / ``target_emb`` (module docstring). ``source_spec`` /
    ``target_spec``: how the tokenizers were named, recorded in the alignment's meta with
    the artifact folders, the shared/held-out counts and the tokenizer digests.
    ``callback`` receives VecMap's per-iteration stats."""
    source, target = Embeddings.load(source_emb), Embeddings.load(target_emb)
    digests = check_embedding_tokenizers(source, target, source_tok, target_tok)
    s_vocab, t_vocab = build_vocab(source_tok), build_vocab(target_tok)
    shared = shared_tokens(s_vocab, t_vocab)
    seed_pairs, heldout = split_shared(shared, cfg.holdout, cfg.seed)
    t_size, s_size = len(target_tok), len(source_tok)
    # Fallbacks for the targets nothing else covers: no vector and no (seed) shared pair.
    # (Ids beyond the tokenizer are skipped here: build_alignment rejects them clearly.)
    have = np.zeros(t_size, bool)
    have[target.token_ids[target.token_ids < t_size]] = True
    have[seed_pairs.target_ids] = True
    fallbacks = tokenization_fallbacks(np.flatnonzero(~have), t_vocab, source_tok)
    result = build_alignment(source, target, seed_pairs, t_size, s_size, cfg, fallbacks,
                             callback=callback, progress=progress)
    result.alignment.meta.update({
        "source_tokenizer": source_spec, "target_tokenizer": target_spec,
        "source_emb": str(Path(source_emb).resolve()),
        "target_emb": str(Path(target_emb).resolve()),
        "n_shared": len(shared), "n_heldout": len(heldout), "holdout": cfg.holdout,
        **digests})
    return PreparedAlignment(result, heldout)
