"""Plain text of man pages and markup: the roff renderer (:func:`strip_roff`, man and mdoc
macros) and the HTML / Mallard / DocBook text extractor (:func:`markup_to_text`). Pure
string -> string; reading files and filtering paragraphs live in :mod:`.extract`."""

from __future__ import annotations

import re
from html.parser import HTMLParser

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
