"""The README.md model card of an initialised / adapted model (issue 4, item 4).

It records what a reader needs to trust and reproduce the model: the method (TokAlign /
TokAlign++ / a baseline), the source model and target tokenizer, the provenance counts of
the target rows (shared / special / aligned / fallback), alignment metrics and evaluation
results when known, the content hash of every input (:mod:`tokalign_core.hashing`), the
config digest, and how to load the model.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class CardInfo:
    """Everything the card shows. All fields optional; empty sections are left out."""

    method: str = "unknown"
    source_model: str = ""
    target_tokenizer: str = ""
    alignment: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    alignment_metrics: dict[str, Any] = field(default_factory=dict)
    eval_results: dict[str, Any] = field(default_factory=dict)
    input_hashes: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    config_digest: str = ""
    init_report: dict[str, Any] = field(default_factory=dict)
    notes: str = ""


def as_card_info(info: Any) -> CardInfo:
    """Accept a CardInfo, a dict of its fields (unknown keys are an error) or None."""
    if info is None:
        return CardInfo()
    if isinstance(info, CardInfo):
        return info
    if isinstance(info, dict):
        known = {f.name for f in fields(CardInfo)}
        unknown = set(info) - known
        if unknown:
            raise ValueError(f"unknown model card fields {sorted(unknown)}; known: {sorted(known)}")
        return CardInfo(**info)
    raise TypeError(f"card_info must be CardInfo, dict or None, not {type(info).__name__}")


def hash_input(spec: Any) -> str:
    """Content hash of one input: a file/folder's sha256 tree, a tokenizer's serialised
    vocabulary + merges + specials, or ``unhashed:<spec>`` for a hub id not on disk."""
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec).expanduser()
        if path.exists():
            from tokalign_core.hashing import sha256_tree

            return "sha256:" + sha256_tree(path)
        return f"unhashed:{spec}"
    backend = getattr(spec, "backend_tokenizer", None)
    if backend is not None:
        try:
            from tokalign_core.tokenizers_io import tokenizer_digest

            return "sha256:" + tokenizer_digest(spec)
        except ImportError:
            return "sha256:" + hashlib.sha256(backend.to_str().encode()).hexdigest()
    raise TypeError(f"cannot hash input of type {type(spec).__name__}")


def _table(rows: list[tuple[str, Any]], header: tuple[str, str]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in rows]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return "`" + json.dumps(v, sort_keys=True) + "`"
    return str(v).replace("|", "\\|")


def _eval_section(results: dict[str, Any]) -> str:
    """Per-group metrics as a table when shaped like :func:`evaluate.evaluate_model`'s
    output (``{"groups": {label: {metric: value}}}``), else a flat key/value table."""
    groups = results.get("groups") if isinstance(results, dict) else None
    if not groups:
        return _table(sorted(results.items()), ("metric", "value"))
    metrics = sorted({m for g in groups.values() for m in g if not isinstance(g[m], dict)})
    lines = ["| group | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for label, vals in sorted(groups.items()):
        lines.append(f"| {label} | " + " | ".join(_fmt(vals.get(m, "")) for m in metrics) + " |")
    return "\n".join(lines)


def render(info: CardInfo, model: Any = None, tokenizer: Any = None) -> str:
    """The README.md text (Hugging Face YAML front matter + markdown)."""
    parts = [
        "---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags:\n- tokalign\n"
        f"- vocabulary-adaptation\n- {info.method}\n---",
        f"# {info.source_model or 'model'} with the vocabulary of "
        f"{info.target_tokenizer or 'a new tokenizer'}",
        "Initialised by tokalign (TokAlign / TokAlign++ vocabulary "
        f"adaptation). Initialisation method: **{info.method}**. This model has not been "
        "trained after initialisation unless the sections below say so.",
    ]
    overview = [("method", info.method), ("source model", info.source_model),
                ("target tokenizer", info.target_tokenizer), ("alignment", info.alignment)]
    if model is not None:
        overview += _model_facts(model, tokenizer)
    parts += ["## Overview", _table([r for r in overview if r[1] not in ("", None)],
                                    ("field", "value"))]
    if info.counts:
        parts += ["## Where the target rows come from",
                  "Provenance of every target token's embedding row (shared = same bytes in "
                  "both vocabularies, special = matched by role, aligned = chosen by the "
                  "alignment, fallback = no representation, seeded and counted).",
                  _table(sorted(info.counts.items()), ("rows", "count"))]
    if info.init_report:
        parts += ["## Initialisation report", _table(sorted(info.init_report.items()),
                                                     ("field", "value"))]
    if info.alignment_metrics:
        parts += ["## Alignment metrics", _table(sorted(info.alignment_metrics.items()),
                                                 ("metric", "value"))]
    if info.eval_results:
        parts += ["## Evaluation", _eval_section(info.eval_results)]
    parts += _provenance_sections(info)
    parts += ["## How to load", _load_snippet()]
    if info.notes:
        parts += ["## Notes", info.notes]
    return "\n\n".join(parts) + "\n"


def _model_facts(model: Any, tokenizer: Any) -> list[tuple[str, Any]]:
    cfg = model.config
    facts: list[tuple[str, Any]] = [("architecture", type(model).__name__),
                                    ("config.vocab_size", cfg.vocab_size)]
    if tokenizer is not None:
        facts.append(("tokenizer length", len(tokenizer)))
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        facts.append((f"config.{key}", getattr(cfg, key, None)))
    try:
        from tokalign_core.init_model import is_tied

        facts.append(("tied embeddings", is_tied(model)))
    except ValueError:
        pass
    return facts


def _provenance_sections(info: CardInfo) -> list[str]:
    out: list[str] = []
    if info.input_hashes:
        out += ["## Inputs (content hashes)",
                _table(sorted(info.input_hashes.items()), ("input", "hash"))]
    if info.config or info.config_digest:
        body = f"Config digest: `{info.config_digest or 'n/a'}`"
        if info.config:
            body += "\n\n```json\n" + json.dumps(info.config, indent=2, sort_keys=True) + "\n```"
        out += ["## Configuration", body]
    return out


def _load_snippet() -> str:
    return (
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        'path = "path/to/this/folder"\ntok = AutoTokenizer.from_pretrained(path)\n'
        "model = AutoModelForCausalLM.from_pretrained(path)\n"
        'ids = tok("Hello", return_tensors="pt").input_ids\n'
        "print(tok.decode(model.generate(ids, max_new_tokens=20)[0]))\n```\n\n"
        "The embedding matrix may have more rows than the tokenizer (padding to a multiple "
        "of 64); the extra rows are the mean row and no token maps to them."
    )


def card_dict(info: CardInfo) -> dict[str, Any]:
    """The card's data as a JSON-able dict (also logged next to the README)."""
    return asdict(info)
