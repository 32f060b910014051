"""Files -> documents: how a :class:`SourceFile` is read (gz, zip members, roff and markup
rendered by :mod:`.render`), the per-language script and stop-word filter on paragraphs
(:func:`paragraph_fits`), chunking into documents, exact dedupe, and the records
(:class:`Doc`, :class:`ExtractStats`) every later step passes around."""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import logging
import re
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tokalign_core.data.render import markup_to_text, strip_roff

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Doc:
    """One document: plain text plus its labels. ``source`` is the file it came from
    (``zip:member`` for archives), used to keep a file's chunks on one side of a split."""

    text: str
    lang: str
    domain: str
    source: str

    def to_json(self) -> str:
        return json.dumps(
            {"text": self.text, "lang": self.lang, "domain": self.domain, "source": self.source},
            ensure_ascii=False,
        )


@dataclass
class ExtractStats:
    """Counts of everything kept and dropped, so every filter is visible in the README."""

    files: Counter = field(default_factory=Counter)
    unreadable: Counter = field(default_factory=Counter)
    paragraphs_kept: Counter = field(default_factory=Counter)
    paragraphs_wrong_script: Counter = field(default_factory=Counter)
    paragraphs_untranslated: Counter = field(default_factory=Counter)
    docs: Counter = field(default_factory=Counter)
    duplicates: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {k: dict(sorted(v.items())) for k, v in self.__dict__.items()}

# ----------------------------------------------------------------------------- scripts

_SCRIPT_RES = {
    "latin": re.compile(r"[A-Za-z\u00c0-\u024f\u1e00-\u1eff]"),
    "cyrillic": re.compile(r"[\u0400-\u052f]"),
    "greek": re.compile(r"[\u0370-\u03ff]"),
    "han": re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"),
    "kana": re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]"),
    "hangul": re.compile(r"[\uac00-\ud7af\u1100-\u11ff\u3130-\u318f]"),
    "arabic": re.compile(r"[\u0600-\u06ff]"),
    "hebrew": re.compile(r"[\u0590-\u05ff]"),
    "thai": re.compile(r"[\u0e00-\u0e7f]"),
    "devanagari": re.compile(r"[\u0900-\u097f]"),
}
# The script a language's prose must mostly be in.
LANG_SCRIPT = {
    "ru": "cyrillic", "uk": "cyrillic", "bg": "cyrillic", "be": "cyrillic", "mk": "cyrillic",
    "el": "greek", "zh": "han", "ja": "japanese", "ko": "hangul", "ar": "arabic",
    "fa": "arabic", "he": "hebrew", "th": "thai", "hi": "devanagari", "mr": "devanagari",
}
# A few frequent function words per language: enough to tell a language's own prose
# from untranslated English in the same (Latin) script.
_STOPWORDS = {
    "en": "the of and to is in that for it with as are be this by on or not from can you",
    "de": "der die das und ist nicht mit sie ein eine den von zu auf für werden wird",
    "fr": "le la les et est des une pour dans que qui pas sur avec par du un au sont",
    "es": "el la los las de que y en un una para por con no se es del al",
    "it": "il la le di che è e un una per non sono con del della gli si",
    "pt": "o a os as de que e um uma para não com do da em se é por",
    "nl": "de het een en van is dat niet op te met voor zijn wordt worden",
    "pl": "i w nie na się z do jest to że jak lub o dla od",
    "tr": "ve bir bu için ile da de olarak gibi daha çok ya veya ne",
    "cs": "a je se na v že s z do to jako pro by jsou nebo",
    "sv": "och att det är som en på för med av den inte till om",
    "fi": "ja on ei se että tai kun voi joka ovat jos myös",
    "hu": "a az és hogy nem egy is van meg ha vagy ez",
    "ro": "și în de la nu este cu un o pe sau care pentru",
    "da": "og at det er en til på ikke med for af den som",
    "ca": "el la els les de que i en un una per no amb és",
    "id": "dan yang di untuk dengan ini itu tidak dari ke dalam adalah",
}
_STOP = {k: frozenset(v.split()) for k, v in _STOPWORDS.items()}
_WORD = re.compile(r"[^\W\d_]+")


def script_shares(text: str) -> dict[str, float]:
    """Share of each script among the letters of ``text`` (0.0 each when none).

    Returns {script name: share in [0, 1]}; the shares of known scripts sum to <= 1.
    """
    return _shares_and_letters(text)[0]


def _shares_and_letters(text: str) -> tuple[dict[str, float], int]:
    counts = {name: len(rx.findall(text)) for name, rx in _SCRIPT_RES.items()}
    total = sum(counts.values())
    return {k: (v / total if total else 0.0) for k, v in counts.items()}, total


def dominant_script(text: str) -> str:
    """``japanese`` when kana is present beside Han, else the script with most letters."""
    shares = script_shares(text)
    if shares["kana"] >= 0.05:
        return "japanese"
    best = max(shares, key=shares.get)
    return best if shares[best] > 0 else "none"


def _stopword_share(words: list[str], lang: str) -> float:
    stop = _STOP.get(lang)
    if not stop or not words:
        return 0.0
    return sum(w in stop for w in words) / len(words)


def paragraph_fits(paragraph: str, lang: str, min_share: float = 0.25) -> str:
    """Whether a paragraph of a page labelled ``lang`` is really in that language.

    Returns "ok", "wrong_script" (e.g. a Latin-only paragraph in a Russian page: an
    untranslated or code paragraph) or "untranslated" (English prose in a Latin-script
    page of another language). Paragraphs of fewer than 12 letters (6 words for the
    English check) are "ok": headings and option names carry too little signal to judge.
    """
    shares, letters = _shares_and_letters(paragraph)
    if letters < 12:
        return "ok"  # headings, option names, program names: too little to judge
    want = LANG_SCRIPT.get(lang, "latin")
    if want == "japanese":
        share = shares["han"] + shares["kana"]
        return "ok" if share >= min_share and shares["kana"] > 0 else "wrong_script"
    if want == "han":
        ok = shares["han"] >= min_share and shares["kana"] < 0.1 * shares["han"]
        return "ok" if ok else "wrong_script"
    if want != "latin":
        return "ok" if shares[want] >= min_share else "wrong_script"
    # Latin-script language: foreign scripts excluded, then untranslated English.
    if shares["latin"] < 0.8:
        return "wrong_script"
    words = [w.lower() for w in _WORD.findall(paragraph)]
    if len(words) < 6 or lang == "en":
        return "ok"
    en = _stopword_share(words, "en")
    own = _stopword_share(words, lang)
    if lang in _STOP:
        return "untranslated" if en > own and en >= 0.06 else "ok"
    return "untranslated" if en >= 0.12 else "ok"


# ----------------------------------------------------------------------------- docs


def split_paragraphs(text: str) -> list[str]:
    return [p.strip("\n") for p in re.split(r"\n\s*\n", text) if p.strip()]


def chunk_paragraphs(paragraphs: list[str], max_chars: int) -> list[str]:
    """Group consecutive paragraphs into documents of at most ``max_chars`` characters
    (a single longer paragraph is cut at line breaks, then hard-cut)."""
    docs: list[str] = []
    cur: list[str] = []
    size = 0
    for par in _bounded(paragraphs, max_chars):
        if cur and size + len(par) + 2 > max_chars:
            docs.append("\n\n".join(cur))
            cur, size = [], 0
        cur.append(par)
        size += len(par) + 2
    if cur:
        docs.append("\n\n".join(cur))
    return docs


def _bounded(paragraphs: Iterable[str], max_chars: int) -> Iterator[str]:
    for par in paragraphs:
        if len(par) <= max_chars:
            yield par
            continue
        buf = ""
        for line in par.split("\n"):
            while len(line) > max_chars:
                if buf:
                    yield buf
                    buf = ""
                yield line[:max_chars]
                line = line[max_chars:]
            if buf and len(buf) + len(line) + 1 > max_chars:
                yield buf
                buf = ""
            buf = f"{buf}\n{line}" if buf else line
        if buf:
            yield buf


def clean_prose(text: str, lang: str, stats: ExtractStats, key: str) -> list[str]:
    """Paragraphs of ``text`` that fit ``lang`` (counts every drop under ``key``)."""
    kept = []
    for par in split_paragraphs(text):
        verdict = paragraph_fits(par, lang)
        if verdict == "ok":
            kept.append(par)
            stats.paragraphs_kept[key] += 1
        elif verdict == "wrong_script":
            stats.paragraphs_wrong_script[key] += 1
        else:
            stats.paragraphs_untranslated[key] += 1
    return kept


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def text_key(text: str) -> bytes:
    """Dedupe key: sha1 of the whitespace-collapsed, lower-cased text."""
    return hashlib.sha1(_normalise(text).encode()).digest()


# ----------------------------------------------------------------------------- readers


def read_text_file(path: Path) -> str:
    """File contents as text; ``.gz`` decompressed; invalid UTF-8 replaced (U+FFFD)."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class SourceFile:
    """A file to extract: how to read it, how to turn it into text, and its labels."""

    path: str
    lang: str
    domain: str
    kind: str  # roff | markup | code | code-zip

    def read(self) -> str:
        if self.kind == "code-zip":
            archive, member = self.path.split("::", 1)
            return _open_zip(archive).read(member).decode("utf-8", errors="replace")
        raw = read_text_file(Path(self.path))
        if self.kind == "roff":
            return strip_roff(raw)
        if self.kind == "markup":
            return markup_to_text(raw)
        return raw


@functools.lru_cache(maxsize=4)
def _open_zip(path: str) -> zipfile.ZipFile:
    """An open archive, kept per process: re-reading the central directory of a 15k-member
    src.zip for every member made extraction quadratic."""
    return zipfile.ZipFile(path)


# ----------------------------------------------------------------------------- extract


def extract_docs(files: Iterable[SourceFile], max_doc_chars: int = 20_000,
                 min_doc_chars: int = 200, stats: ExtractStats | None = None,
                 progress: bool = True) -> Iterator[Doc]:
    """Documents of every file: prose filtered by script, code kept verbatim; each
    file chunked to at most ``max_doc_chars`` characters, chunks shorter than
    ``min_doc_chars`` dropped. Unreadable files are counted and skipped."""
    from tqdm.auto import tqdm

    stats = stats if stats is not None else ExtractStats()
    files = list(files)
    for f in tqdm(files, desc="extract", unit="file", disable=not progress, mininterval=2):
        key = f"{f.lang}.{f.domain}"
        stats.files[key] += 1
        try:
            text = f.read()
        except (OSError, EOFError, zipfile.BadZipFile, ValueError) as exc:
            stats.unreadable[key] += 1
            log.debug("skipping unreadable %s: %s", f.path, exc)
            continue
        if text.count("\ufffd") > 0.01 * max(len(text), 1):
            stats.unreadable[key] += 1  # not UTF-8 (an old latin-1 page): skip, counted
            continue
        text = text.replace("\x00", "")
        if f.domain == "code":
            paragraphs = [text.strip("\n")] if text.strip() else []
        else:
            paragraphs = clean_prose(text, f.lang, stats, key)
        for chunk in chunk_paragraphs(paragraphs, max_doc_chars):
            if len(chunk) >= min_doc_chars:
                yield Doc(chunk, f.lang, f.domain, f.path)


def dedupe(docs: Iterable[Doc], stats: ExtractStats | None = None) -> Iterator[Doc]:
    """Drop exact duplicates (after whitespace/case normalisation), first one kept."""
    seen: set[bytes] = set()
    for doc in docs:
        k = text_key(doc.text)
        if k in seen:
            if stats is not None:
                stats.duplicates[f"{doc.lang}.{doc.domain}"] += 1
            continue
        seen.add(k)
        yield doc


__all__ = [
    "LANG_SCRIPT", "Doc", "ExtractStats", "SourceFile", "chunk_paragraphs", "clean_prose",
    "dedupe", "dominant_script", "extract_docs", "paragraph_fits", "read_text_file",
    "script_shares", "split_paragraphs", "text_key",
]
