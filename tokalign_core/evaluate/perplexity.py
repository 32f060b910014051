"""Tokenizer-independent evaluation of causal LMs (METHOD.md section 9).

Models with different tokenizers cannot be compared by ordinary perplexity: the number of
tokens a text is split into differs. Per text group (language / domain) this module reports

- ``nll``: total negative log-likelihood in nats of every text token, summed over documents;
- ``ppl = exp(nll / n_scored)``: ordinary perplexity over the model's own tokens;
- ``norm_ppl = exp(nll / n_ref_tokens)``: perplexity normalised to a *reference* tokenizer
  (Wei et al. 2023; TokAlign's "normalised perplexity"): the same total NLL divided by the
  number of tokens the reference tokenizer splits the same text into;
- ``bits_per_byte = nll / ln 2 / n_bytes`` (UTF-8 bytes of the text);
- compression: ``tokens_per_byte`` of the model's tokenizer and of the reference, and
  ``length_change = n_tokens / n_ref_tokens - 1`` (negative: fewer tokens than reference).

Scoring: each document is tokenized without special tokens and, by default, prefixed with
the tokenizer's BOS (or EOS when there is no BOS, as in Pythia) so its first token is scored
too. Documents longer than ``window`` are scored with a sliding window: the first window
scores all its tokens; each next window starts ``stride`` tokens later and scores only the
tokens the previous windows did not, with up to ``window - stride`` tokens of context
(Hugging Face's strided perplexity). Every token is scored exactly once. Logits are cut to
``len(tokenizer)`` before the softmax: padding rows of the embedding matrix are not tokens.

Cost: scoring a token runs the whole output layer (hidden x vocabulary: 151k rows for
Qwen2), so it dominates evaluation with a large target vocabulary; compression needs only
the tokenizers. ``EvalConfig.score_groups`` limits scoring to a few groups while
compression still covers every group; unscored groups carry no NLL metrics. Windows are
batched by length (little padding) and each row's NLL is ``logsumexp - logit[target]``
over row chunks, so no second [batch, window, vocab] log-softmax tensor is allocated.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokalign_core.configs.evaluate import EvalConfig, LmEvalConfig
from tokalign_core.evaluate.results import NLL_KEYS, EvalResult, GroupMetrics, MeanMetrics
from tokalign_core.evaluate.tables import markdown_table

log = logging.getLogger(__name__)

# Upper bound on logits materialised per forward pass (float32 elements, ~1 GB): a 151k
# vocabulary at window 2048 is 0.3e9 per window, so the batch shrinks to fit.
MAX_LOGIT_ELEMENTS = 250_000_000
# Logit rows reduced at once by ``nll_sum``: [32, 151k] float32 is ~19 MB of temporaries,
# about 3x faster on CPU than one log-softmax over a whole [window, vocab] slice.
NLL_CHUNK_ROWS = 32
# Columns of :func:`format_table` (the table `tokalign eval-model` prints).
TABLE_COLUMNS = ("group", "n_docs", "n_tokens", "norm_ppl", "ppl", "bits_per_byte",
                 "tokens_per_byte", "length_change")
__all__ = ["NLL_KEYS", "EvalResult", "GroupMetrics", "GroupStats", "MeanMetrics",
           "evaluate_model", "format_table", "load_texts"]


@dataclass
class GroupStats:
    """Sums over the documents of one group; metrics derive from them."""

    n_docs: int = 0
    n_bytes: int = 0
    n_tokens: int = 0
    n_ref_tokens: int = 0
    n_scored: int = 0
    nll: float = 0.0
    scored: bool = True

    def metrics(self) -> GroupMetrics:
        """The sums plus ppl, norm_ppl, bits_per_byte and compression (compression and the
        counts only when the group was not scored)."""
        nll: dict[str, float | int] = {}
        if self.scored:
            nll = {"n_scored": self.n_scored, "nll": self.nll,
                   "ppl": math.exp(self.nll / self.n_scored) if self.n_scored else float("nan"),
                   "norm_ppl": (math.exp(self.nll / self.n_ref_tokens) if self.n_ref_tokens
                                else float("nan")),
                   "bits_per_byte": (self.nll / math.log(2) / self.n_bytes if self.n_bytes
                                     else 0.0)}
        return GroupMetrics(
            n_docs=self.n_docs, n_bytes=self.n_bytes, n_tokens=self.n_tokens,
            n_ref_tokens=self.n_ref_tokens, **nll,
            tokens_per_byte=self.n_tokens / self.n_bytes if self.n_bytes else 0.0,
            ref_tokens_per_byte=self.n_ref_tokens / self.n_bytes if self.n_bytes else 0.0,
            length_change=(self.n_tokens / self.n_ref_tokens - 1 if self.n_ref_tokens
                           else float("nan")))


# --------------------------------------------------------------------------------------
# Texts
# --------------------------------------------------------------------------------------


def load_texts(
    path: str | Path, txt_split: str = "paragraph", max_docs: int | None = None
) -> dict[str, list[str]]:
    """Documents grouped by label.

    ``path`` is a folder of ``<label>.txt`` / ``<label>.jsonl`` files (label = file stem) or
    one such file. ``.jsonl``: one object per line with ``text`` and optionally ``label``
    (overrides the file's). ``.txt``: split by ``txt_split`` (paragraph / line / file)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"texts {path} do not exist; pass a .txt/.jsonl file or folder")
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.suffix in (".txt", ".jsonl")
    )
    if not files:
        raise FileNotFoundError(f"no .txt or .jsonl files in {path}")
    groups: dict[str, list[str]] = {}
    for file in files:
        for label, doc in _read_file(file, txt_split):
            docs = groups.setdefault(label, [])
            if max_docs is None or len(docs) < max_docs:
                docs.append(doc)
    return {k: v for k, v in groups.items() if v}


def _read_file(file: Path, txt_split: str) -> Iterator[tuple[str, str]]:
    if file.suffix == ".jsonl":
        with file.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if not isinstance(row, dict) or "text" not in row:
                    raise ValueError(f"{file}:{n}: expected a JSON object with a 'text' field")
                if row["text"].strip():
                    yield str(row.get("label", file.stem)), row["text"]
        return
    text = file.read_text(encoding="utf-8")
    if txt_split == "file":
        docs = [text]
    elif txt_split == "line":
        docs = text.splitlines()
    else:
        docs = [p.strip("\n") for p in text.split("\n\n")]
    for doc in docs:
        if doc.strip():
            yield file.stem, doc


# --------------------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------------------


def windows(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """Sliding windows over a sequence of ``n`` ids (ids[0] is never a target).

    Returns ``(begin, end, n_scored)``: feed ids[begin:end], score the last ``n_scored``
    targets (positions end - n_scored .. end - 1). Every position 1..n-1 is scored once."""
    out: list[tuple[int, int, int]] = []
    prev_end, begin = 1, 0
    while prev_end < n:
        # The input predicting the first new target (position prev_end) is prev_end - 1:
        # it must be inside the window, hence the clamp when stride >= window.
        begin = min(begin, prev_end - 1)
        end = min(begin + window, n)
        out.append((begin, end, end - prev_end))
        prev_end = end
        begin += stride
    return out


def default_window(model: Any) -> int:
    """The model's context length (capped at 2048 to bound memory)."""
    cfg = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 1:
            return min(value, 2048)
    return 1024


def prefix_id(tokenizer: Any) -> int | None:
    """The id each document is prefixed with: BOS, else EOS (Pythia's end-of-text)."""
    for key in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, key, None)
        if value is not None:
            return int(value)
    return None


# --------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------


def document_ids(tokenizer: Any, docs: list[str], add_bos: bool) -> tuple[list[list[int]], int]:
    """Token ids per document (prefix included) and the number of text tokens."""
    enc = tokenizer(docs, add_special_tokens=False)["input_ids"]
    prefix = prefix_id(tokenizer) if add_bos else None
    n_text = sum(len(e) for e in enc)
    if prefix is None:
        return [list(e) for e in enc], n_text
    return [[prefix, *e] for e in enc], n_text


def score_documents(
    model: Any, tokenizer: Any, docs: list[str], cfg: EvalConfig, desc: str = "scoring",
    progress: bool = True,
) -> list[tuple[float, int]]:
    """(total NLL in nats, tokens scored) per document, in input order."""
    import torch

    window = cfg.window or default_window(model)
    stride = cfg.stride or max(window // 2, 1)
    ids, _ = document_ids(tokenizer, docs, cfg.add_bos)
    jobs = [(d, b, e, k) for d, seq in enumerate(ids) for b, e, k in windows(len(seq), window,
                                                                             stride)]
    # Longest windows first, so each batch pads to about its own length (a doc's NLL is a
    # sum over its windows: the order does not matter).
    jobs.sort(key=lambda j: j[2] - j[1], reverse=True)
    nll = [0.0] * len(docs)
    scored = [0] * len(docs)
    vocab = len(tokenizer)
    per_batch = max(1, min(cfg.batch_size, MAX_LOGIT_ELEMENTS // max(window * vocab, 1)))
    bar = _progress(len(jobs), desc, progress)
    with torch.no_grad():
        for start in range(0, len(jobs), per_batch):
            batch = jobs[start:start + per_batch]
            values = _score_batch(model, [ids[d][b:e] for d, b, e, _ in batch],
                                  [k for *_, k in batch], vocab)
            for (d, *_rest, k), v in zip(batch, values, strict=True):
                nll[d] += v
                scored[d] += k
            bar.update(len(batch))
    bar.close()
    return list(zip(nll, scored, strict=True))


def _score_batch(model: Any, seqs: list[list[int]], n_scored: list[int], vocab: int) -> list[float]:
    """Sum of -log p(target) over the last ``n_scored[i]`` targets of each sequence."""
    import torch

    device = next(model.parameters()).device
    width = max(len(s) for s in seqs)
    inp = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        inp[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    logits = model(input_ids=inp.to(device), attention_mask=mask.to(device)).logits
    out = []
    for i, s in enumerate(seqs):
        # Logit rows n-1-k .. n-2 predict the last k tokens (positions n-k .. n-1).
        n, k = len(s), n_scored[i]
        out.append(nll_sum(logits[i, n - 1 - k: n - 1, :vocab], inp[i, n - k: n].to(device)))
    return out


def nll_sum(logits: Any, targets: Any, chunk: int = NLL_CHUNK_ROWS) -> float:
    """Total -log softmax(logits)[target] in nats.

    ``logits`` float [k, V] (any float dtype; reduced in float32), ``targets`` int64 [k].
    Rows are reduced ``chunk`` at a time as ``logsumexp(row) - row[target]``: the same value
    as a log-softmax, with [chunk, V] temporaries instead of a second [k, V] tensor."""
    import torch

    total = 0.0
    for a in range(0, logits.shape[0], chunk):
        rows = logits[a:a + chunk].float()
        picked = rows.gather(1, targets[a:a + chunk, None])[:, 0]
        total += float((torch.logsumexp(rows, dim=-1) - picked).double().sum())
    return total


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, unit="win")


def evaluate_group(
    model: Any, tokenizer: Any, ref_tokenizer: Any, docs: list[str], cfg: EvalConfig,
    label: str = "", progress: bool = True, score: bool = True,
) -> GroupStats:
    """Token counts and bytes over one group's documents, plus their NLL when ``score``
    (otherwise the model is not run: compression only)."""
    stats = GroupStats(n_docs=len(docs), scored=score)
    stats.n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    _, stats.n_tokens = document_ids(tokenizer, docs, add_bos=False)
    _, stats.n_ref_tokens = document_ids(ref_tokenizer, docs, add_bos=False)
    if not score:
        return stats
    for nll, k in score_documents(model, tokenizer, docs, cfg, f"scoring {label}", progress):
        stats.nll += nll
        stats.n_scored += k
    return stats


def evaluate_model(
    model: Any, tokenizer: Any, groups: dict[str, list[str]], ref_tokenizer: Any = None,
    cfg: EvalConfig | None = None, progress: bool = True,
) -> EvalResult:
    """Metrics per group plus their unweighted mean over groups (``macro``), as the papers
    average normalised perplexity over languages: NLL metrics over the scored groups
    (``cfg.score_groups``, listed in ``scored_groups``), compression over every group.
    ``ref_tokenizer`` defaults to the model's own tokenizer (then ``norm_ppl`` equals
    ``ppl`` when BOS prefixing is on)."""
    cfg = cfg or EvalConfig()
    ref_tokenizer = tokenizer if ref_tokenizer is None else ref_tokenizer
    if cfg.add_bos and prefix_id(tokenizer) is None:
        log.warning("tokenizer has no BOS/EOS: the first token of each document is not scored")
    scored = scored_groups(list(groups), cfg.score_groups)
    model.eval()
    results = {
        label: evaluate_group(model, tokenizer, ref_tokenizer, docs, cfg, label, progress,
                              score=label in scored).metrics()
        for label, docs in groups.items()
    }
    return EvalResult(groups=results, macro=_macro(results), scored_groups=tuple(scored),
                      config=cfg.model_dump(mode="json"))


def scored_groups(labels: list[str], wanted: tuple[str, ...] | None) -> list[str]:
    """The labels to score: all of them (``labels`` order) when ``wanted`` is None, else
    the wanted ones the texts have, in ``wanted`` order (the summary's column order).

    Wanted groups the texts lack are skipped with a warning (the demo's corpus depends on
    the machine's packages); none of them present is an error."""
    if wanted is None:
        return list(labels)
    missing = [g for g in wanted if g not in labels]
    if len(missing) == len(wanted):
        raise ValueError(f"none of score_groups {list(wanted)} is a text group; the texts "
                         f"have {sorted(labels)}")
    if missing:
        log.warning("score_groups %s are not among the text groups: not scored", missing)
    return [g for g in wanted if g in labels]


def _macro(results: dict[str, GroupMetrics]) -> MeanMetrics:
    """Unweighted means over the groups that have each metric (NLL ones: scored groups)."""
    out = {}
    for k in ("norm_ppl", "bits_per_byte", "ppl", "tokens_per_byte", "length_change"):
        values = [float(getattr(r, k)) for r in results.values() if getattr(r, k) is not None]
        if values:
            out[k] = sum(values) / len(values)
    return MeanMetrics(**out)


def format_table(results: EvalResult) -> str:
    """The markdown table of the main metrics per group (sorted) and the macro average
    (``(mean)``); a metric a group lacks (NLL ones of an unscored group) is an empty cell."""
    rows = [{"group": label, **group.to_dict()} for label, group in sorted(results.groups.items())]
    macro = results.macro.to_dict()
    if macro:
        rows.append({"group": "(mean)", **macro})
    return markdown_table(rows, TABLE_COLUMNS)


# --------------------------------------------------------------------------------------
# lm-evaluation-harness (optional extra)
# --------------------------------------------------------------------------------------


def import_lm_eval():
    """Import lm-evaluation-harness or explain how to install it."""
    try:
        import lm_eval
    except ImportError as exc:
        raise ImportError(
            "downstream evaluation needs lm-evaluation-harness: pip install 'tokalign[eval]' "
            "(or pip install lm-eval)"
        ) from exc
    return lm_eval


def run_lm_eval(model_path: str, cfg: LmEvalConfig) -> dict[str, Any]:
    """Run lm-evaluation-harness on a model spec (folder, hub id, ``.gguf`` or builtin
    alias, see :mod:`tokalign_core.model.load`) with ``cfg``'s tasks and settings; returns
    its results dict. ``cfg.include_path`` adds a folder of local task YAMLs."""
    from tokalign_core.model.load import resolve_model

    lm_eval = import_lm_eval()
    model_path = resolve_model(model_path)
    kwargs: dict[str, Any] = {}
    if cfg.include_path:
        from lm_eval.tasks import TaskManager

        kwargs["task_manager"] = TaskManager(include_path=cfg.include_path)
    model_args = f"pretrained={model_path},trust_remote_code={cfg.trust_remote_code}"
    out = lm_eval.simple_evaluate(
        model="hf", model_args=model_args, tasks=list(cfg.tasks), num_fewshot=cfg.num_fewshot,
        batch_size=cfg.batch_size, limit=cfg.limit_arg(), device=cfg.device, **kwargs,
    )
    return {"results": out.get("results", {}), "versions": out.get("versions", {})}
