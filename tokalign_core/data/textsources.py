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
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import logging
import random
import re
import sysconfig
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from tokalign_core.configs.base import FrozenConfig

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


# ----------------------------------------------------------------------------- roff

_ROFF_NAMED = {
    "em": "—", "en": "–", "aq": "'", "dq": '"', "lq": "“", "rq": "”", "oq": "‘",
    "cq": "’", "bu": "•", "co": "©", "rg": "®", "tm": "™", "mi": "-", "hy": "-",
    "ti": "~", "ha": "^", "rs": "\\", "sl": "/", "ba": "|", "bv": "|", "lh": "<",
    "rh": ">", "<=": "≤", ">=": "≥", "!=": "≠", "->": "→", "<-": "←", "mu": "×",
    "de": "°", "ga": "`", "aa": "´", "Fo": "«", "Fc": "»", "fo": "‹", "fc": "›",
    "sc": "§", "ps": "¶", "pl": "+", "eq": "=", "ct": "¢", "Eu": "€", "eu": "€",
    "Po": "£", "Ye": "¥", "at": "@", "sh": "#", "dg": "†", "ul": "_", "rn": "‾",
    "en-dash": "–",
}
_ROFF_STRINGS = {"R": "®", "Tm": "™", "lq": "“", "rq": "”", "Aq": "'", "Dq": '"'}
# One regex for every escape we rewrite; the callback maps it to text.
_ROFF_ESCAPE = re.compile(
    r"\\(?:"
    r"\[(?P<br>[^\]]*)\]"  # \[name] or \[u00E9]
    r"|\((?P<two>..)"  # \(xx
    r"|\*(?:\[(?P<sbr>[^\]]*)\]|\((?P<stwo>..)|(?P<sone>.))"  # \*[s] \*(xx \*x
    r"|f(?:\[[^\]]*\]|\(..|.)"  # font changes
    r"|s[+-]?(?:\d+|\(\d\d|\[[^\]]*\])"  # size changes
    r"|[hvwlLNoDbxXZSRk]'[^']*'"  # motions, widths, drawing
    r"|[mMFn](?:\[[^\]]*\]|\(..|.)"  # colours, families, registers
    r"|(?P<one>.)"  # everything else, one char
    r")"
)
_ROFF_ONE = {
    "-": "-", "e": "\\", "\\": "\\", " ": " ", "~": " ", "0": " ", "t": "\t", "'": "'",
    "`": "`", ".": ".", '"': "", "&": "", "c": "", "|": "", "^": "", "%": "", "/": "",
    ",": "", ":": "", "!": "", "?": "", "p": "", "{": "", "}": "", "z": "", "a": "",
    "E": "\\", "_": "_",
}
# Macros whose arguments are running text (man and mdoc). Others are layout: dropped.
_TEXT_MACROS = {
    "B", "I", "BR", "RB", "BI", "IB", "IR", "RI", "SM", "SB", "SH", "SS", "TP", "IP",
    "Nm", "Nd", "Sh", "Ss", "Fl", "Ar", "Op", "Cm", "Pa", "Xr", "Em", "Sy", "Dq", "Ql",
    "Qo", "Qc", "Pq", "Li", "Ev", "Va", "Fn", "Fa", "Ft", "Fd", "Dv", "Er", "Ic", "It",
    "Dl", "Tn", "Ux", "At", "Bx", "Nx", "Fx", "Ox", "Bsx", "Lk", "Mt", "An", "Lb", "Vt",
    "Sq", "Aq", "Ad", "Ms", "Ot", "Ta", "No", "Ns", "St", "UR", "MT", "OP", "Xo", "Xc",
    "Oo", "Oc", "Do", "Dc", "So", "Sc", "Po", "Pc", "Bo", "Bc", "Eo", "Ec", "%A", "%T",
    "%B", "%J", "%N", "%O", "%P", "%D", "%I", "%Q", "%R", "%V", "Rs", "Re", "Pf", "Sx",
}
_PARAGRAPH_MACROS = {"SH", "SS", "Sh", "Ss", "PP", "LP", "P", "TP", "IP", "HP", "Pp", "Lp",
                     "sp", "It", "Bl", "El", "Bd", "Ed", "TS", "TE", "EX", "EE", "RS", "RE"}
_MDOC_CALLABLE = re.compile(
    r"(?<!\S)(?:Fl|Ar|Op|Cm|Pa|Xr|Em|Sy|Dq|Ql|Pq|Li|Ev|Va|Fn|Fa|Dv|Er|Ic|Ns|No|Sq|Aq|"
    r"Oo|Oc|Qo|Qc|Ta|Nm|Xo|Xc|Do|Dc|Po|Pc|Bo|Bc|Sx|Pf)(?!\S)\s?"
)


def _roff_escape(m: re.Match) -> str:
    if (name := m.group("br")) is not None:
        if name.startswith("u") and len(name) >= 5:
            try:
                return "".join(chr(int(part[1:] if part.startswith("u") else part, 16))
                               for part in name.split("_"))
            except ValueError:
                return ""
        return _ROFF_NAMED.get(name, "")
    if (two := m.group("two")) is not None:
        return _ROFF_NAMED.get(two, "")
    for group in ("sbr", "stwo", "sone"):
        if (s := m.group(group)) is not None:
            return _ROFF_STRINGS.get(s, "")
    if (one := m.group("one")) is not None:
        return _ROFF_ONE.get(one, "")
    return ""  # font/size/motion escapes carry no text


def _split_macro_args(args: str) -> list[str]:
    """roff argument splitting: spaces separate, double quotes group."""
    return [a[1:-1] if a.startswith('"') and a.endswith('"') and len(a) > 1 else a
            for a in re.findall(r'"[^"]*"?|\S+', args)]


def strip_roff(source: str) -> str:
    """Plain text of a man page (man or mdoc macros): escapes decoded, layout dropped.

    Paragraphs come out separated by a blank line. This is a text extractor, not a
    typesetter: no filling, hyphenation or justification, which keeps it ~50x faster than
    ``man -l`` (see ``benchmarks/corpus.md``) and keeps source line breaks inside code.
    """
    out: list[str] = []
    skip_until: str | None = None
    for raw in source.splitlines():
        if skip_until is not None:
            if raw.startswith(skip_until):
                skip_until = None
            continue
        if raw.startswith((".\\\"", "'\\\"", "\\\"", ".\\#")) or raw in (".", "'"):
            continue
        if raw.startswith((".", "'")) and len(raw) > 1:
            name, _, args = raw[1:].strip().partition(" ")
            if name in ("de", "de1", "ig", "am", "ds", "nr", "so", "if", "ie", "el",
                        "tr", "char", "TH", "Dd", "Dt", "Os"):
                if name in ("de", "de1", "am", "ig"):
                    skip_until = ".."
                continue
            if name in _PARAGRAPH_MACROS:
                out.append("")
            if name in _TEXT_MACROS:
                words = _split_macro_args(args)
                if name in ("B", "I", "SM", "SB", "SH", "SS", "Sh", "Ss"):
                    text = " ".join(words)
                elif len(name) == 2 and name.isupper() and name[0] in "BIRS":
                    text = "".join(words)  # alternating fonts join without spaces
                elif name == "TP" or name == "IP":
                    text = words[0] if (name == "IP" and words) else ""
                else:
                    text = _MDOC_CALLABLE.sub("", " ".join(words))
                    text = ("-" + text) if name == "Fl" else text
                if text:
                    out.append(text)
                if name in ("SH", "SS", "Sh", "Ss"):
                    out.append("")
            continue
        if raw.startswith(("T{", "T}")):
            raw = raw[2:]
        line = _ROFF_ESCAPE.sub(_roff_escape, raw)
        out.append(line.replace("\t", " ").rstrip())
    return _squeeze_blank_lines("\n".join(out))


def _squeeze_blank_lines(text: str) -> str:
    return re.sub(r"\n\s*\n(\s*\n)*", "\n\n", text).strip()


# ----------------------------------------------------------------------------- markup

_BLOCK_TAGS = {
    "p", "div", "li", "dt", "dd", "tr", "br", "h1", "h2", "h3", "h4", "h5", "h6", "pre",
    "table", "ul", "ol", "dl", "section", "blockquote", "title", "item", "note", "screen",
    "listing", "steps", "terms", "tree", "figure", "synopsis", "example", "td", "th",
    "caption", "desc", "page", "article", "header", "para", "simpara", "listitem",
    "programlisting", "formalpara", "entry", "row",
}
_SKIP_TAGS = {"script", "style", "head", "nav", "footer", "info", "credit", "license",
              "revision", "noscript", "svg", "form", "button", "select", "math"}
_SKIP_CLASSES = ("sphinxsidebar", "related", "footer", "headerlink", "navheader",
                 "navfooter", "toc", "breadcrumbs", "mobile-nav", "sidebar", "copyright")
_PRE_TAGS = {"pre", "screen", "programlisting"}  # whitespace-preserving blocks
_VOID = {"br", "img", "meta", "link", "input", "hr", "area", "base", "col", "embed",
         "source", "track", "wbr", "param"}


class _TextExtractor(HTMLParser):
    """Collect visible text; block tags become paragraph breaks; navigation is skipped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip_tag: str | None = None
        self._skip_depth = 0
        self._pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip_tag is not None:
            if tag == self._skip_tag and tag not in _VOID:
                self._skip_depth += 1
            return
        cls = " ".join(v or "" for k, v in attrs if k in ("class", "role", "id"))
        if tag in _SKIP_TAGS or (cls and any(c in cls for c in _SKIP_CLASSES)):
            if tag not in _VOID:
                self._skip_tag, self._skip_depth = tag, 1
            return
        if tag in _PRE_TAGS:
            self._pre += 1
        if tag in _BLOCK_TAGS:
            self.parts.append("\n\n" if tag != "br" else "\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip_tag is None and tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if self._skip_tag is not None:
            if tag == self._skip_tag:
                self._skip_depth -= 1
                if self._skip_depth == 0:
                    self._skip_tag = None
            return
        if tag in _PRE_TAGS and self._pre:
            self._pre -= 1
        if tag in _BLOCK_TAGS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._skip_tag is not None:
            return
        if self._pre:
            self.parts.append(data)
        else:
            self.parts.append(re.sub(r"\s+", " ", data))


def markup_to_text(markup: str) -> str:
    """Visible text of an HTML page or Mallard/DocBook XML, paragraphs split by blank
    lines; ``<pre>``/``<screen>`` keep their line breaks; scripts, styles, page heads and
    navigation are dropped."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    text = "".join(parser.parts)
    lines = [ln.rstrip() for ln in text.split("\n")]
    return _squeeze_blank_lines("\n".join(lines)).replace("\u00a0", " ")


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


def locale_to_lang(name: str) -> str | None:
    """ISO 639-1 code of a locale folder name: ``pt_BR`` -> ``pt``, ``sr@latin`` -> None
    (a second script for one language would mix scripts under one label), ``C`` -> None."""
    if "@" in name:
        return None
    base = re.split(r"[_.\-]", name, maxsplit=1)[0].lower()
    return base if re.fullmatch(r"[a-z]{2,3}", base) and base not in ("man",) else None


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


# ----------------------------------------------------------------------------- build


class TextCorpusConfig(FrozenConfig):
    """How to turn the machine's text into a benchmark corpus."""

    seed: int = 0
    max_doc_chars: int = Field(20_000, ge=500, description="longest document (characters)")
    min_doc_chars: int = Field(200, ge=1, description="shorter chunks are dropped")
    max_bytes_per_group: int = Field(
        16_000_000, ge=1, description="cap of UTF-8 bytes per (lang, domain) training file")
    eval_bytes: int = Field(
        200_000, ge=0, description="held-out UTF-8 bytes per language (or code language)")
    min_group_bytes: int = Field(
        50_000, ge=0, description="(lang, domain) groups with less text are left out")
    langs: tuple[str, ...] | None = Field(
        None, description="keep only these labels (ISO codes and python/c/java); None = all")
    sources: tuple[str, ...] = ("man", "help", "doc", "code")

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = set(v) - {"man", "help", "doc", "code"}
        if bad:
            raise ValueError(
                f"unknown text sources {sorted(bad)}; choose from man, help, doc, code")
        return v

    @model_validator(mode="after")
    def _min_below_max(self) -> TextCorpusConfig:
        if self.min_doc_chars > self.max_doc_chars:
            raise ValueError(
                f"min_doc_chars={self.min_doc_chars} exceeds max_doc_chars={self.max_doc_chars}")
        return self


@dataclass
class CorpusSummary:
    """What :func:`build_text_corpus` wrote: per group docs/bytes, plus the filter stats."""

    train: dict[str, dict[str, int]]
    eval: dict[str, dict[str, int]]
    stats: dict[str, dict[str, int]]
    fallback: bool


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


__all__ = [
    "CorpusSummary", "Doc", "ExtractStats", "SourceFile", "TextCorpusConfig",
    "build_text_corpus", "chunk_paragraphs", "corpus_texts", "dedupe", "discover",
    "dominant_script", "extract_docs", "find_code", "find_help_pages", "find_html_docs",
    "find_man_pages", "locale_to_lang", "markup_to_text", "paragraph_fits",
    "read_jsonl", "script_shares", "split_train_eval", "strip_roff", "write_jsonl",
]
