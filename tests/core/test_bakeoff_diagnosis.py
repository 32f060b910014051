"""The bake-off's head diagnosis counts only rows the alignment retrieved (issue 14)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from tokalign_core.align.alignment import Alignment, Provenance
from tokalign_core.model.baselines import fvt_pieces, shared_source_ids

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bakeoff  # noqa: E402


def first_piece_alignment(sp_tok, bpe_tok, prov_value: int) -> Alignment:
    """Shared tokens copied; every other id aligned to its first source piece, with
    provenance ``prov_value``."""
    shared = shared_source_ids(sp_tok, bpe_tok)
    pieces, _ = fvt_pieces(sp_tok, bpe_tok)
    src = np.array([shared[t] if shared[t] >= 0 else (pieces[t][0] if t in pieces else 0)
                    for t in range(len(sp_tok))])
    prov = np.where(shared >= 0, Provenance.SHARED, prov_value).astype(np.uint8)
    return Alignment(src, np.ones(len(src)), prov, np.full(len(bpe_tok), -1))


def test_fallback_rows_are_not_counted_as_first_piece_hits(sp_tok, bpe_tok, texts):
    groups = {"en": texts[:20]}
    fb = bakeoff.piece_agreement(first_piece_alignment(sp_tok, bpe_tok, Provenance.FALLBACK),
                                 bpe_tok, sp_tok, groups)
    assert fb["aligned_occurrences"] == 0 and fb["fallback_share"] == 1.0
    assert fb["first_piece"] == 0.0
    al = bakeoff.piece_agreement(first_piece_alignment(sp_tok, bpe_tok, Provenance.ALIGNED),
                                 bpe_tok, sp_tok, groups)
    assert al["aligned_occurrences"] > 0 and al["fallback_share"] == 0.0
    assert al["first_piece"] > 0.9
