"""The README.md model card of an initialised / adapted model (issue 4, item 4).

It records what a reader needs to trust and reproduce the model: the method (TokAlign /
TokAlign++ / a baseline), the source model and target tokenizer, the provenance counts of
the target rows (shared / special / aligned / fallback), alignment metrics and evaluation
results when known, the content hash of every input (:mod:`tokalign_core.store.hashing`), the
config digest, and how to load the model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tokalign_core.model.embeddings import is_tied
from tokalign_core.store.atomic import atomic_dir


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
    # Hugging Face metadata (YAML front matter): ``base_model`` only when the source is a
    # hub id; ``datasets`` hub dataset ids; ``license`` an HF licence id ("other" if unknown).
    name: str = ""
    base_model: str = ""
    license: str = ""
    datasets: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    # What happened after initialisation ("" = nothing): e.g. "two-stage adaptation, 24 steps".
    training: str = ""


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
            from tokalign_core.store.hashing import sha256_tree

            return "sha256:" + sha256_tree(path)
        return f"unhashed:{spec}"
    backend = getattr(spec, "backend_tokenizer", None)
    if backend is not None:
        try:
            from tokalign_core.vocab.tokenizers import tokenizer_digest

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


def front_matter(info: CardInfo) -> dict[str, Any]:
    """The Hugging Face metadata of the card: library, pipeline, tags, base model, licence,
    datasets and a ``model-index`` with the bits-per-byte results (one entry per text group
    plus the mean), so a hub page shows them as evaluation results."""
    meta: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "text-generation"}
    if info.base_model:
        meta["base_model"] = info.base_model
    meta["license"] = info.license or "other"
    if info.datasets:
        meta["datasets"] = list(info.datasets)
    tags = ["tokalign", "vocabulary-adaptation", *info.tags]
    if info.method and info.method != "unknown":
        tags.append(info.method)
    meta["tags"] = list(dict.fromkeys(tags))  # unique, in order
    index = _model_index(info)
    if index:
        meta["model-index"] = index
    return meta


def _model_index(info: CardInfo) -> list[dict[str, Any]]:
    """``model-index`` entries from ``eval_results`` shaped like ``evaluate_model``'s output."""
    res = info.eval_results if isinstance(info.eval_results, dict) else {}
    groups = res.get("groups") or {}
    metrics = []
    macro = res.get("macro") or {}
    for key, label in (("bits_per_byte", "bits per byte (mean over groups)"),
                       ("norm_ppl", "normalised perplexity (mean over groups)")):
        if isinstance(macro.get(key), (int, float)):
            metrics.append({"type": key, "name": label, "value": round(float(macro[key]), 4)})
    for group, vals in sorted(groups.items()):
        if isinstance(vals, dict) and isinstance(vals.get("bits_per_byte"), (int, float)):
            metrics.append({"type": "bits_per_byte", "name": f"bits per byte ({group})",
                            "value": round(float(vals["bits_per_byte"]), 4)})
    if not metrics:
        return []
    return [{"name": info.name or f"{info.source_model} -> {info.target_tokenizer}",
             "results": [{"task": {"type": "text-generation",
                                   "name": "Causal language modelling"},
                          "dataset": {"type": "text", "name": "held-out text by language"},
                          "metrics": metrics}]}]


def render(info: CardInfo, model: Any = None, tokenizer: Any = None) -> str:
    """The README.md text (Hugging Face YAML front matter + markdown)."""
    import yaml

    trained = (f"It was then trained: {info.training}." if info.training else
               "This model has not been trained after initialisation.")
    parts = [
        "---\n" + yaml.safe_dump(front_matter(info), sort_keys=False, allow_unicode=True)
        + "---",
        f"# {info.name or info.source_model or 'model'}",
        f"**{info.source_model or 'A model'}** with the vocabulary of "
        f"**{info.target_tokenizer or 'a new tokenizer'}**, initialised by tokalign "
        f"(TokAlign / TokAlign++ vocabulary adaptation). Initialisation method: "
        f"**{info.method}**. {trained}",
    ]
    overview = [("method", info.method), ("source model", info.source_model),
                ("target tokenizer", info.target_tokenizer), ("alignment", info.alignment),
                ("training", info.training)]
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
    parts += ["## How to load", _load_snippet(), "## Publishing",
              "Upload the whole folder so the hub keeps this card: "
              "`huggingface_hub.upload_folder(folder_path=..., repo_id=...)` (or "
              "`huggingface-cli upload REPO_ID FOLDER`). `model.push_to_hub()` uploads the "
              "weights only and leaves the hub's default card."]
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
    with contextlib.suppress(ValueError):  # no embeddings API: the fact is left out
        facts.append(("tied embeddings", is_tied(model)))
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


def method_label(init_method: str, align_method: str | None = None) -> str:
    """A card's method: ``tokalign++`` (VecMap + CSLS alignment), ``tokalign`` (relative
    representations) or ``cosine`` for ``aligned``; a baseline's own name otherwise."""
    if init_method != "aligned":
        return init_method
    return {"vecmap": "tokalign++", "relative": "tokalign"}.get(align_method or "vecmap",
                                                                align_method or "aligned")


def publish_folder(src: str | os.PathLike, dest: str | os.PathLike, readme: str) -> Path:
    """``dest``: a Hugging Face folder whose files are symlinks to ``src``'s (the weights
    are not copied) and whose README.md is ``readme``. Built in a temporary sibling and
    renamed into place, so ``dest`` is always whole; an older ``dest`` is replaced. Copy
    the folder (``cp -rL``) before editing files in it: they are the artifact's own."""
    src, dest = Path(src).resolve(), Path(dest).expanduser().absolute()
    with atomic_dir(dest) as tmp:
        for entry in sorted(src.iterdir()):
            if entry.name != "README.md":
                (tmp / entry.name).symlink_to(entry)
        (tmp / "README.md").write_text(readme)
    return dest
