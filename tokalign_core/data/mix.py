"""Language/domain mixing and budgets of the text corpus: the seeded held-out split by
source file with per-(lang, domain) byte caps (:func:`split_train_eval`), the
``<lang>.<domain>.jsonl`` files (:func:`write_jsonl`, :func:`read_jsonl`), and reading a
corpus folder back restricted to some languages/domains and bytes (:func:`corpus_texts`)."""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokalign_core.configs.text_corpus import TextCorpusConfig
from tokalign_core.data.extract import Doc


def split_train_eval(docs: list[Doc], config: TextCorpusConfig
                     ) -> tuple[dict[str, list[Doc]], dict[str, list[Doc]]]:
    """Seeded split by source file: per language, whole source files go to the held-out
    set until it holds ``eval_bytes``; the rest is training text, capped per (lang,
    domain) at ``max_bytes_per_group``. Groups are keyed ``lang.domain`` (train) and
    ``lang`` (eval). Document order inside a group is the seeded shuffle."""
    rng = random.Random(config.seed)
    by_source: dict[str, list[Doc]] = defaultdict(list)
    for d in docs:
        by_source[d.source].append(d)
    sources = sorted(by_source)
    rng.shuffle(sources)
    eval_out: dict[str, list[Doc]] = defaultdict(list)
    eval_size: Counter = Counter()
    train_pool: list[Doc] = []
    for src in sources:
        group = by_source[src]
        lang = group[0].lang
        if eval_size[lang] < config.eval_bytes:
            eval_out[lang].extend(group)
            eval_size[lang] += sum(len(d.text.encode()) for d in group)
        else:
            train_pool.extend(group)
    rng.shuffle(train_pool)
    train_out: dict[str, list[Doc]] = defaultdict(list)
    train_size: Counter = Counter()
    for d in train_pool:
        key = f"{d.lang}.{d.domain}"
        n = len(d.text.encode())
        if train_size[key] + n <= config.max_bytes_per_group:
            train_out[key].append(d)
            train_size[key] += n
    small = {k for k, v in train_size.items() if v < config.min_group_bytes}
    train_out = {k: v for k, v in sorted(train_out.items()) if k not in small}
    keep_langs = {k.split(".")[0] for k in train_out}
    eval_final = {k: v for k, v in sorted(eval_out.items()) if k in keep_langs}
    return train_out, eval_final


def write_jsonl(path: Path, docs: Iterable[Doc]) -> tuple[int, int]:
    """Write docs as JSON lines atomically; returns (n_docs, n_utf8_text_bytes)."""
    from tokalign_core.store.artifacts import atomic_write_bytes

    n = size = 0
    lines = []
    for d in docs:
        lines.append(d.to_json())
        n += 1
        size += len(d.text.encode())
    atomic_write_bytes(path, ("\n".join(lines) + ("\n" if lines else "")).encode())
    return n, size


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """Rows of a corpus jsonl file (as written by :func:`write_jsonl`)."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def corpus_texts(folder: str | Path, langs: Iterable[str] | None = None,
                 domains: Iterable[str] | None = None,
                 max_bytes: int | None = None) -> Iterator[str]:
    """Texts of a corpus folder's ``<lang>.<domain>.jsonl`` files (sorted by name),
    optionally restricted to some languages/domains and to ``max_bytes`` per file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"corpus folder {folder} does not exist; build it with "
                                "`python benchmarks/make_corpus.py`")
    langs = set(langs) if langs is not None else None
    domains = set(domains) if domains is not None else None
    for path in sorted(folder.glob("*.jsonl")):
        parts = path.stem.split(".")
        lang, domain = parts[0], (parts[1] if len(parts) > 1 else "")
        if (langs is not None and lang not in langs) or (
                domains is not None and domain not in domains):
            continue
        used = 0
        for row in read_jsonl(path):
            used += len(row["text"].encode())
            if max_bytes is not None and used > max_bytes:
                break
            yield row["text"]


__all__ = ["corpus_texts", "read_jsonl", "split_train_eval", "write_jsonl"]
