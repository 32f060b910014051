"""Finding text on this machine: translated man pages, GNOME help, Debian and Python HTML
docs, and code (Python's standard library, C headers, the JDK's ``src.zip``), each file
labelled with its language and domain as a :class:`~tokalign_core.data.extract.SourceFile`;
:func:`discover` picks the finders a :class:`TextCorpusConfig` asks for."""

from __future__ import annotations

import re
import sysconfig
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from tokalign_core.configs.text_corpus import TextCorpusConfig
from tokalign_core.data.extract import SourceFile


def locale_to_lang(name: str) -> str | None:
    """ISO 639-1 code of a locale folder name: ``pt_BR`` -> ``pt``, ``sr@latin`` -> None
    (a second script for one language would mix scripts under one label), ``C`` -> None."""
    if "@" in name:
        return None
    base = re.split(r"[_.\-]", name, maxsplit=1)[0].lower()
    return base if re.fullmatch(r"[a-z]{2,3}", base) and base not in ("man",) else None


def find_man_pages(root: Path = Path("/usr/share/man")) -> list[SourceFile]:
    """Man pages per locale (``<root>/<locale>/man*/``) and English (``<root>/man*/``).
    ``.so`` redirects are skipped later (their text is empty)."""
    out: list[SourceFile] = []
    if not root.is_dir():
        return out
    for sect in sorted(root.glob("man*/*")):
        out.append(SourceFile(str(sect), "en", "man", "roff"))
    for loc in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("man")):
        lang = locale_to_lang(loc.name)
        if lang is None or lang == "en":
            continue
        out.extend(SourceFile(str(p), lang, "man", "roff") for p in sorted(loc.glob("man*/*")))
    return [f for f in out if Path(f.path).is_file()]


def find_help_pages(root: Path = Path("/usr/share/help")) -> list[SourceFile]:
    """GNOME Mallard help pages: ``<root>/<locale>/<app>/*.page`` (``C`` is English)."""
    out: list[SourceFile] = []
    if not root.is_dir():
        return out
    for loc in sorted(p for p in root.iterdir() if p.is_dir()):
        lang = "en" if loc.name == "C" else locale_to_lang(loc.name)
        if lang is None:
            continue
        out.extend(SourceFile(str(p), lang, "help", "markup")
                   for p in sorted(loc.rglob("*.page")) if p.is_file())
    return out


def find_html_docs(doc_root: Path = Path("/usr/share/doc"),
                   reference_root: Path | None = None) -> list[SourceFile]:
    """Debian reference (``debian-reference-<lang>``), the Debian handbook and Python's
    HTML documentation; the language comes from the package or folder name."""
    out: list[SourceFile] = []
    if not doc_root.is_dir():
        return out
    # debian-reference-<lang> installs <share>/debian-reference/<chapter>.<lang>.html
    ref = reference_root or doc_root.parent / "debian-reference"
    for p in sorted(ref.glob("*.html")) if ref.is_dir() else []:
        lang = locale_to_lang(p.name.split(".")[-2]) if p.name.count(".") >= 2 else None
        if lang is not None and p.is_file():
            out.append(SourceFile(str(p), lang, "doc", "markup"))
    handbook = doc_root / "debian-handbook" / "html"
    if handbook.is_dir():
        for loc in sorted(p for p in handbook.iterdir() if p.is_dir()):
            lang = locale_to_lang(loc.name)
            if lang:
                out.extend(SourceFile(str(p), lang, "doc", "markup")
                           for p in sorted(loc.rglob("*.html")) if p.is_file())
    for pydoc in sorted(doc_root.glob("python3*-doc")) + sorted(doc_root.glob("python3.*")):
        html_dir = pydoc / "html"
        if html_dir.is_dir():
            out.extend(SourceFile(str(p), "en", "doc", "markup")
                       for p in sorted(html_dir.rglob("*.html"))
                       if p.is_file() and "_static" not in p.parts and "genindex" not in p.name)
    return _unique_by_resolved_path(out)


def _unique_by_resolved_path(files: list[SourceFile]) -> list[SourceFile]:
    seen: set[str] = set()
    out = []
    for f in files:
        real = str(Path(f.path).resolve())
        if real not in seen:
            seen.add(real)
            out.append(f)
    return out


def find_code(stdlib: Path | None = None, include: Path = Path("/usr/include"),
              java_zips: Iterable[Path] | None = None) -> list[SourceFile]:
    """Python's standard library (``python``), C headers (``c``) and the JDK's Java
    sources (``java``, read from ``src.zip`` members), all with domain ``code``."""
    stdlib = Path(stdlib or sysconfig.get_paths()["stdlib"])
    out = [SourceFile(str(p), "python", "code", "code") for p in sorted(stdlib.rglob("*.py"))
           if p.is_file() and "site-packages" not in p.parts and "dist-packages" not in p.parts]
    if include.is_dir():
        out += [SourceFile(str(p), "c", "code", "code") for p in sorted(include.rglob("*.h"))
                if p.is_file()]
    zips = list(java_zips) if java_zips is not None else _jdk_src_zips()
    for zpath in zips[:1]:  # one JDK is enough; versions repeat each other
        with zipfile.ZipFile(zpath) as zf:
            names = sorted(n for n in zf.namelist() if n.endswith(".java"))
        out += [SourceFile(f"{zpath}::{n}", "java", "code", "code-zip") for n in names]
    return out


def _jdk_src_zips() -> list[Path]:
    jvm = Path("/usr/lib/jvm")
    if not jvm.is_dir():
        return []
    zips = [p for p in sorted(jvm.glob("*/lib/src.zip")) + sorted(jvm.glob("*/src.zip"))
            if p.is_file() and p.stat().st_size > 0]
    return sorted(set(zips), key=lambda p: (-p.stat().st_size, str(p)))


def discover(config: TextCorpusConfig, finders: dict[str, Callable[[], list[SourceFile]]]
             | None = None) -> list[SourceFile]:
    """All source files for ``config.sources``, filtered by ``config.langs``."""
    finders = finders or {"man": find_man_pages, "help": find_help_pages,
                          "doc": find_html_docs, "code": find_code}
    files: list[SourceFile] = []
    for name in config.sources:
        files += finders[name]()
    if config.langs is not None:
        files = [f for f in files if f.lang in config.langs]
    return files


__all__ = [
    "discover", "find_code", "find_help_pages", "find_html_docs", "find_man_pages",
    "locale_to_lang",
]
