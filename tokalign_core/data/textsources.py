"""Real multilingual text and code found on the machine, for benchmarks and demos.

TokAlign (Li et al., 2025, §4.1) learns token co-occurrence vectors on a large corpus in
the languages both tokenizers cover. Without the internet we take real text that Debian
packages and the interpreter ship: translated man pages (``manpages-<lang>``), GNOME user
help (``gnome-user-docs``, Mallard XML in ~40 locales), the Debian reference and handbook
(HTML), Python's documentation (``python3-doc``), and code (Python's standard library, the
C headers in ``/usr/include``, the JDK's ``src.zip``).

Pipeline: find files -> extract plain text (roff macros stripped by :func:`strip_roff`,
HTML/XML tags by :func:`markup_to_text`, gz and zip read directly) -> split into
paragraphs and drop those whose script does not fit the label (:func:`paragraph_fits`:
untranslated English in a German page, Latin boilerplate in a Japanese one) -> chunk into
documents of at most ``max_doc_chars`` -> exact dedupe on normalised text -> a seeded
shuffle, a held-out split by *source file* (so no page is in both) and a size cap per
(language, domain) -> one ``<lang>.<domain>.jsonl`` per group, rows
``{"text", "lang", "domain", "source"}``. The same seed and the same files on disk give
byte-identical output.

Modules: :mod:`.machine_text` finds the files, :mod:`.render` and :mod:`.extract` turn them
into filtered documents, :mod:`.mix` splits, caps and writes them; this module is the entry
point (:func:`build_text_corpus`) that runs the whole pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokalign_core.configs.text_corpus import TextCorpusConfig
from tokalign_core.data.extract import ExtractStats, SourceFile, dedupe, extract_docs
from tokalign_core.data.machine_text import discover
from tokalign_core.data.mix import split_train_eval, write_jsonl


@dataclass
class CorpusSummary:
    """What :func:`build_text_corpus` wrote: per group docs/bytes, plus the filter stats."""

    train: dict[str, dict[str, int]]
    eval: dict[str, dict[str, int]]
    stats: dict[str, dict[str, int]]
    fallback: bool


def build_text_corpus(config: TextCorpusConfig, out_dir: str | Path,
                      eval_dir: str | Path, files: list[SourceFile] | None = None,
                      progress: bool = True) -> CorpusSummary:
    """Extract, filter, dedupe and split the machine's text into
    ``out_dir/<lang>.<domain>.jsonl`` and ``eval_dir/<lang>.jsonl``.

    When no Debian text package is installed (only Python's sources and docs are found),
    the corpus is built from what there is and ``fallback`` is True. Raises ValueError when
    no text at all is found.
    """
    files = discover(config) if files is None else files
    if not files:
        raise ValueError("no text sources found on this machine; run "
                         "scripts/install_text_packages.sh or check config.sources/langs")
    stats = ExtractStats()
    docs = list(dedupe(extract_docs(files, config.max_doc_chars, config.min_doc_chars,
                                    stats, progress), stats))
    for d in docs:
        stats.docs[f"{d.lang}.{d.domain}"] += 1
    if not docs:
        raise ValueError(f"the {len(files)} source files gave no document of at least "
                         f"{config.min_doc_chars} characters")
    train, held = split_train_eval(docs, config)
    out_dir, eval_dir = Path(out_dir), Path(eval_dir)
    train_sizes = {}
    for key, group in train.items():
        n, size = write_jsonl(out_dir / f"{key}.jsonl", group)
        train_sizes[key] = {"docs": n, "bytes": size}
    eval_sizes = {}
    for lang, group in held.items():
        n, size = write_jsonl(eval_dir / f"{lang}.jsonl", group)
        eval_sizes[lang] = {"docs": n, "bytes": size}
    prose_langs = {k.split(".")[0] for k in train if not k.endswith(".code")}
    fallback = prose_langs <= {"en"}
    return CorpusSummary(train_sizes, eval_sizes, stats.as_dict(), fallback)


__all__ = ["CorpusSummary", "build_text_corpus"]
