"""Corpus input: read text sources, apply the input policy, mix to a budget, shard.

TokAlign (METHOD.md section 1) tokenizes one mixed corpus with both tokenizers and keeps a
held-out split (reference: 5%) for the alignment metrics and perplexity. This module builds
that corpus as a **corpus** artifact: ``shard-00000.parquet`` ... (column ``text``, one
document per row), ``heldout.parquet`` and ``meta.json`` (config, per-source policy counts,
shard sizes).

Sources: jsonl (``.jsonl``, ``.jsonl.gz``), parquet, plain text (``.txt``, ``.txt.gz``; a
document is a line, a blank-line separated paragraph or a whole file), folders and globs of
those, and ``datasets`` datasets (a ``save_to_disk`` folder, or ``hf:<name>`` streamed from
the hub). Files of a folder or glob are read in sorted path order.

Input policy (never crashes a run; every case is counted per source in ``meta.json``):

- bytes that are not valid UTF-8 are decoded with U+FFFD replacement
  (``invalid_utf8_sequences``); malformed jsonl lines and records without a string text
  field are skipped (``bad_json_lines``, ``missing_text_field``);
- NUL characters are removed (``nul_chars_removed``, ``docs_with_nul``); a plain-text
  file that looks binary (a NUL or >10% non-text in its first 8 KB) is still read but
  logged as a warning and listed in ``binary_files``; a leading UTF-8 byte-order mark is
  dropped;
- a path is a glob only when no file of that literal name exists (``data[1].txt``); a
  device or pipe (``/dev/zero``) is refused; a damaged ``.gz`` is an error naming it;
- documents empty or only whitespace after that, or shorter than ``min_doc_chars``, are
  dropped (``empty_dropped``);
- documents longer than ``max_doc_chars`` (default 1,000,000) are split into pieces at the
  last newline, else the last space, in the second half of the window, else hard at the
  limit (``long_docs_split``, ``long_doc_extra_pieces``). Plain text is read with bounded
  line reads, so a 100 MB single-line file never sits in memory as one string.

Mixing: each source's quota is ``budget_bytes x ratio / sum(ratios)`` UTF-8 bytes (see
:class:`~tokalign_core.configs.corpus.CorpusConfig` for the token -> byte conversion). A
source is read in order until its quota is reached (the last document may overshoot it by
at most ``max_doc_chars`` characters); a source that runs out first contributes what it
has and ``quota_shortfall_bytes`` records the gap. Nothing is re-weighted silently.

Split and order: every kept document gets a 32-byte BLAKE2b digest of ``seed`` and its text.
Bytes 0-8 decide held-out membership (``< heldout_fraction``), bytes 8-32 the document
order. Training documents sorted by that key are cut into ``n_shards`` contiguous,
byte-balanced ranges, so the held-out set and the concatenated document sequence do not
depend on ``n_shards``; exact duplicates always land in the same split (no held-out
leakage). Sorting spills to 256 hash-bucket files, so memory stays about corpus/256.
"""

from __future__ import annotations

import codecs
import errno
import glob as globlib
import gzip
import hashlib
import io
import json
import logging
import struct
import zlib
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from tokalign_core.configs.corpus import CorpusConfig, SourceSpec
from tokalign_core.store.artifacts import ArtifactRef, ArtifactStore, verify

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".txt.gz")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
N_BUCKETS = 256
_REC = struct.Struct("<24sBQ")  # order key, held-out flag, utf-8 length
_WRITE_ROWS = 4096  # rows per parquet write: bounds the writer's buffer


# ------------------------------------------------------------------ decoding with counting

_INVALID = [0]


def _count_replace(exc: UnicodeError) -> tuple[str, int]:
    # Same result as errors="replace", but counts each invalid sequence.
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    _INVALID[0] += 1
    return "\ufffd", exc.end


codecs.register_error("tokalign-replace", _count_replace)


def decode_bytes(data: bytes) -> str:
    """UTF-8 decode with U+FFFD for invalid bytes (counted in the reader's stats)."""
    return data.decode("utf-8", errors="tokalign-replace")


# ------------------------------------------------------------------------- policy & stats


@dataclass
class SourceStats:
    """Per-source counts recorded in meta.json."""

    spec: dict[str, Any]
    files: int = 0
    docs_read: int = 0
    docs_kept: int = 0
    bytes_kept: int = 0
    quota_bytes: int | None = None
    quota_shortfall_bytes: int = 0
    invalid_utf8_sequences: int = 0
    nul_chars_removed: int = 0
    docs_with_nul: int = 0
    empty_dropped: int = 0
    long_docs_split: int = 0
    long_doc_extra_pieces: int = 0
    bad_json_lines: int = 0
    missing_text_field: int = 0
    files_skipped: list[str] = field(default_factory=list)
    binary_files: list[str] = field(default_factory=list)


def split_long(text: str, max_chars: int) -> list[str]:
    """Cut ``text`` into pieces of at most ``max_chars``: at the last newline in the second
    half of the window, else the last space there, else hard at the limit (so no piece is
    shorter than half the window unless the text ends)."""
    pieces: list[str] = []
    start = 0
    while len(text) - start > max_chars:
        end = start + max_chars
        cut = text.rfind("\n", start + max_chars // 2, end)
        if cut < 0:
            cut = text.rfind(" ", start + max_chars // 2, end)
        cut = end if cut < 0 else cut + 1
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def apply_policy(text: str, part: int, cfg: CorpusConfig, stats: SourceStats) -> list[str]:
    """One raw document (or piece ``part`` of a plain-text document a reader already cut
    at ``max_doc_chars``) -> 0..n kept documents: NUL removal, empty drop, long split."""
    if part == 0:
        stats.docs_read += 1
    else:
        stats.long_docs_split += part == 1
        stats.long_doc_extra_pieces += 1
    if "\x00" in text:
        stats.nul_chars_removed += text.count("\x00")
        stats.docs_with_nul += 1
        text = text.replace("\x00", "")
    if len(text) < cfg.min_doc_chars or not text.strip():
        stats.empty_dropped += 1
        return []
    if len(text) <= cfg.max_doc_chars:
        return [text]
    pieces = [p for p in split_long(text, cfg.max_doc_chars) if p.strip()]
    stats.long_docs_split += 1
    stats.long_doc_extra_pieces += len(pieces) - 1
    return pieces


# ------------------------------------------------------------------------ source readers


def resolve_files(spec: SourceSpec) -> list[tuple[Path, str]]:
    """``[(file, format)]`` of a file / folder / glob source, sorted by path.

    Raises FileNotFoundError naming the path when nothing matches, ValueError for a file
    whose format cannot be told from its name (set ``format``)."""
    raw = spec.path
    path = Path(raw).expanduser()
    if not path.exists() and any(ch in raw for ch in "*?["):  # data[1].txt is a file name
        files = sorted(Path(p) for p in globlib.glob(str(path), recursive=True))
        files = [f for f in files if f.is_file()]
        if not files:
            raise FileNotFoundError(f"source glob {raw!r} matches no file")
        return [(f, _format_of(f, spec)) for f in files if _format_of(f, spec, strict=False)]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        kept = [(f, fmt) for f in files if (fmt := _format_of(f, spec, strict=False))]
        if not kept:
            raise FileNotFoundError(
                f"source folder {raw!r} has no .jsonl/.parquet/.txt file (set format to read "
                "other names)"
            )
        return kept
    if path.is_file():
        return [(path, _format_of(path, spec))]
    if path.exists():
        raise ValueError(
            f"source path {raw!r} is not a regular file or folder (a device, pipe or socket); "
            "give a file, folder, glob or hf:<name>"
        )
    raise FileNotFoundError(
        f"source path {raw!r} does not exist (for a hub dataset write hf:<name>, for a "
        "`datasets` folder give the save_to_disk path)"
    )


def _format_of(path: Path, spec: SourceSpec, strict: bool = True) -> str:
    if spec.format not in ("auto", "dataset"):
        return spec.format
    name = path.name.lower()
    for fmt, suffixes in (("jsonl", JSONL_SUFFIXES), ("parquet", PARQUET_SUFFIXES),
                          ("text", TEXT_SUFFIXES)):
        if name.endswith(suffixes):
            return fmt
    if strict:
        raise ValueError(
            f"unknown format of source file {path} (known: .jsonl[.gz], .ndjson, .parquet, "
            ".txt[.gz]); set the source's format to jsonl, parquet or text"
        )
    return ""


def _open_binary(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")  # noqa: SIM115


class _Pieces:
    """Accumulates one plain-text document; past ``max_chars`` it hands out finished
    pieces cut by :func:`split_long`, keeping only the tail (memory <= 2 x max_chars)."""

    def __init__(self, max_chars: int):
        self.max_chars = max_chars
        self.buf: list[str] = []
        self.size = 0
        self.part = 0

    def add(self, text: str) -> list[tuple[str, int]]:
        self.buf.append(text)
        self.size += len(text)
        if self.size <= self.max_chars:
            return []
        pieces = split_long("".join(self.buf), self.max_chars)
        tail = pieces.pop()
        out = [(p, self.part + i) for i, p in enumerate(pieces)]
        self.part += len(pieces)
        self.buf, self.size = [tail], len(tail)
        return out

    def end(self, strip_newline: bool) -> list[tuple[str, int]]:
        text = "".join(self.buf)
        if strip_newline and text.endswith("\n"):
            text = text[:-1]
        out = [(text, self.part)] if (self.buf or self.part == 0) else []
        self.buf, self.size, self.part = [], 0, 0
        return out


def read_text_file(path: Path, unit: str, max_chars: int) -> Iterator[tuple[str, int]]:
    """``(text, part)`` documents of a plain-text file (``part`` > 0: a later piece of a
    document longer than ``max_chars``). Lines are read at most ``max_chars`` characters at
    a time, so a file with one enormous line never sits in memory as one string."""
    with _open_binary(path) as raw:
        # utf-8-sig: a leading byte-order mark is not part of the first document
        fh = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="tokalign-replace")
        doc = _Pieces(max_chars)
        pending = False  # something was added since the last document ended
        while line := fh.readline(max_chars):
            ends = line.endswith("\n")
            if unit == "paragraph" and ends and not line.strip():
                if pending:
                    yield from doc.end(strip_newline=True)
                    pending = False
                continue
            yield from doc.add(line)
            pending = True
            if unit == "line" and ends:
                yield from doc.end(strip_newline=True)
                pending = False
        if pending:
            yield from doc.end(strip_newline=unit != "file")


def read_jsonl_file(path: Path, field_name: str, stats: SourceStats) -> Iterator[str]:
    """Text field of every record; bad lines and missing fields are counted and skipped."""
    with _open_binary(path) as fh:
        for number, line in enumerate(fh):
            if number == 0 and line.startswith(codecs.BOM_UTF8):  # editors on Windows
                line = line[len(codecs.BOM_UTF8):]
            if not line.strip():
                continue
            try:
                record = json.loads(decode_bytes(line))
            except json.JSONDecodeError:
                stats.bad_json_lines += 1
                continue
            text = record.get(field_name) if isinstance(record, dict) else None
            if not isinstance(text, str):
                stats.missing_text_field += 1
                continue
            yield text


def read_parquet_file(path: Path, field_name: str, stats: SourceStats) -> Iterator[str]:
    """Values of column ``field_name`` in batches; nulls count as missing."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if field_name not in names:
        raise ValueError(
            f"parquet source {path} has no column {field_name!r} (columns: {names}); "
            "set the source's text_field"
        )
    for batch in pf.iter_batches(batch_size=1024, columns=[field_name]):
        yield from _column_texts(batch.column(0).to_pylist(), stats)


def _column_texts(values: list[Any], stats: SourceStats) -> Iterator[str]:
    for value in values:
        if isinstance(value, bytes):
            value = decode_bytes(value)
        if not isinstance(value, str):
            stats.missing_text_field += 1
            continue
        yield value


def read_dataset(spec: SourceSpec, stats: SourceStats) -> Iterator[str]:
    """A ``datasets`` dataset: a save_to_disk folder, or ``hf:<name>`` streamed."""
    ds = _open_dataset(spec)
    cols = getattr(ds, "column_names", None)
    if cols is not None and spec.text_field not in cols:
        raise ValueError(
            f"dataset source {spec.path!r} has no column {spec.text_field!r} (columns: {cols}); "
            "set the source's text_field"
        )
    for batch in ds.iter(batch_size=1024):
        yield from _column_texts(batch.get(spec.text_field, []), stats)


def _open_dataset(spec: SourceSpec):
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a core dependency
        raise ImportError("dataset sources need `pip install datasets`") from exc
    path = Path(spec.path).expanduser()
    if path.is_dir():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if spec.split not in ds:
                raise ValueError(
                    f"dataset {spec.path!r} has no split {spec.split!r} (splits: {list(ds)})"
                )
            ds = ds[spec.split]
        return ds
    name = spec.path[3:] if spec.path.startswith("hf:") else spec.path
    try:
        return datasets.load_dataset(name, spec.dataset_config, split=spec.split, streaming=True)
    except Exception as exc:
        raise FileNotFoundError(
            f"cannot load dataset source {spec.path!r}: not a local save_to_disk folder and "
            f"the hub did not serve it ({type(exc).__name__}: {str(exc)[:200]})"
        ) from exc


def iter_source(
    spec: SourceSpec, cfg: CorpusConfig, stats: SourceStats
) -> Iterator[tuple[str, int]]:
    """``(text, part)`` raw documents of one source, in order (before the policy)."""
    if spec.format == "dataset" or spec.path.startswith("hf:") or _is_saved_dataset(spec.path):
        yield from ((t, 0) for t in read_dataset(spec, stats))
        return
    files = resolve_files(spec)
    for path, fmt in files:
        stats.files += 1
        try:
            if fmt == "text":
                _warn_if_binary(path, stats)
                yield from read_text_file(path, spec.text_unit, cfg.max_doc_chars)
            elif fmt == "jsonl":
                yield from ((t, 0) for t in read_jsonl_file(path, spec.text_field, stats))
            else:
                yield from ((t, 0) for t in read_parquet_file(path, spec.text_field, stats))
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise ValueError(f"source file {path} is damaged ({type(exc).__name__}: {exc}); "
                             "restore or re-download it, or leave it out") from exc


BINARY_SNIFF_BYTES = 8192


def looks_binary(head: bytes) -> bool:
    """True for bytes that are not text: a NUL byte, or more than 10% control characters
    (other than tab/newline/CR/form feed) or invalid UTF-8 in the first block."""
    if not head:
        return False
    if b"\x00" in head:
        return True
    text = head.decode("utf-8", errors="replace")
    bad = sum(1 for ch in text if ch == "\ufffd" or (ord(ch) < 32 and ch not in "\t\n\r\f"))
    return bad > 0.1 * len(text)


def _warn_if_binary(path: Path, stats: SourceStats) -> None:
    """A plain-text source that looks binary is still read (the input policy decodes it),
    but logged and counted (``binary_files``): usually a file that does not belong there."""
    with _open_binary(path) as fh:
        head = fh.read(BINARY_SNIFF_BYTES)
    if looks_binary(head):
        stats.binary_files.append(str(path))
        log.warning("source file %s looks binary (NUL bytes or mostly non-text in its first "
                    "%d bytes); it is read as text anyway: remove it from the source if it "
                    "is not text", path, BINARY_SNIFF_BYTES)


def _is_saved_dataset(raw: str) -> bool:
    path = Path(raw).expanduser()
    return path.is_dir() and any(
        (path / marker).exists() for marker in ("dataset_info.json", "state.json",
                                                "dataset_dict.json")
    )


def mixed_documents(cfg: CorpusConfig, all_stats: list[SourceStats]) -> Iterator[str]:
    """Kept documents of every source, each up to its byte quota (see module docstring)."""
    for spec, quota, stats in zip(cfg.sources, cfg.quotas(), all_stats, strict=True):
        stats.quota_bytes = quota
        before = _INVALID[0]
        with closing(iter_source(spec, cfg, stats)) as raw_docs:
            try:
                yield from _take_quota(raw_docs, quota, cfg, stats)
            finally:
                stats.invalid_utf8_sequences += _INVALID[0] - before
        if quota is not None and stats.bytes_kept < quota:
            stats.quota_shortfall_bytes = quota - stats.bytes_kept
            log.warning("source %s ran out %d bytes short of its quota %d bytes",
                        spec.path, stats.quota_shortfall_bytes, quota)


def _take_quota(raw_docs: Iterable[tuple[str, int]], quota: int | None, cfg: CorpusConfig,
                stats: SourceStats) -> Iterator[str]:
    for raw, part in raw_docs:
        for doc in apply_policy(raw, part, cfg, stats):
            if quota is not None and stats.bytes_kept >= quota:
                return
            stats.docs_kept += 1
            stats.bytes_kept += len(doc.encode("utf-8"))
            yield doc


# ------------------------------------------------------------------- split, order, shard


def document_digest(data: bytes, seed: int) -> bytes:
    """32-byte BLAKE2b of the UTF-8 text, keyed by the seed (held-out draw + order key)."""
    return hashlib.blake2b(data, digest_size=32, key=seed.to_bytes(8, "little", signed=True)
                           ).digest()


def is_heldout(digest: bytes, fraction: float) -> bool:
    """Held-out draw from digest bytes 0-8 as a uniform number in [0, 1)."""
    return int.from_bytes(digest[:8], "little") / 2.0**64 < fraction


class _Spill:
    """Hash-bucket spill files: records of (order key, held-out flag, text)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.files = [open(folder / f"b{i:03d}.bin", "wb", buffering=1 << 16)  # noqa: SIM115
                      for i in range(N_BUCKETS)]
        self.forced_heldout: bytes | None = None  # order key read back as held out

    def add(self, key: bytes, heldout: bool, data: bytes) -> None:
        fh = self.files[key[0]]
        fh.write(_REC.pack(key, heldout, len(data)))
        fh.write(data)

    def close(self) -> None:
        for fh in self.files:
            fh.close()

    def sorted_records(self) -> Iterator[tuple[bool, bytes]]:
        """Every record in global key order (buckets are key-prefix ranges)."""
        for i in range(N_BUCKETS):
            path = self.folder / f"b{i:03d}.bin"
            records = list(_read_records(path))
            path.unlink()
            records.sort(key=lambda r: (r[0], r[2]))
            for key, heldout, data in records:
                yield heldout or key == self.forced_heldout, data


def _read_records(path: Path) -> Iterator[tuple[bytes, bool, bytes]]:
    with open(path, "rb") as fh:
        while head := fh.read(_REC.size):
            key, heldout, n = _REC.unpack(head)
            yield key, bool(heldout), fh.read(n)


class _ShardWriter:
    """Writes parquet files with one ``text`` column, buffering ``_WRITE_ROWS`` rows."""

    def __init__(self, path: Path):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.schema = pa.schema([("text", pa.string())])
        self.writer = pq.ParquetWriter(path, self.schema, compression="zstd")
        self.rows: list[str] = []
        self.n_docs = 0
        self.n_bytes = 0

    def add(self, text: str, n_bytes: int) -> None:
        self.rows.append(text)
        self.n_docs += 1
        self.n_bytes += n_bytes
        if len(self.rows) >= _WRITE_ROWS:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if self.rows:
            self.writer.write_table(pa.table({"text": self.rows}, schema=self.schema))
            self.rows = []

    def close(self) -> dict[str, int]:
        self.flush()
        self.writer.close()
        return {"docs": self.n_docs, "bytes": self.n_bytes}


def shard_index(start_byte: int, total_bytes: int, n_shards: int) -> int:
    """Shard of a document starting at ``start_byte`` of the ordered training stream:
    contiguous, byte-balanced ranges (monotone in ``start_byte``)."""
    if total_bytes <= 0:
        return 0
    return min(start_byte * n_shards // total_bytes, n_shards - 1)


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.parquet"


def _write_shards(spill: _Spill, out: Path, n_shards: int, train_bytes: int,
                  progress: bool) -> tuple[list[dict[str, int]], dict[str, int]]:
    """Stream the spilled records in key order into the shard files and heldout.parquet."""
    heldout = _ShardWriter(out / "heldout.parquet")
    shards: list[dict[str, int]] = []
    current: _ShardWriter | None = None
    position = 0
    records: Iterable[tuple[bool, bytes]] = spill.sorted_records()
    if progress:
        from tqdm.auto import tqdm

        records = tqdm(records, desc="writing shards", unit="doc")
    for held, data in records:
        text = data.decode("utf-8")
        if held:
            heldout.add(text, len(data))
            continue
        target = shard_index(position, train_bytes, n_shards)
        while current is None or len(shards) < target:  # open shards in order, none skipped
            if current is not None:
                shards.append(current.close())
            current = _ShardWriter(out / shard_name(len(shards)))
        current.add(text, len(data))
        position += len(data)
    if current is not None:
        shards.append(current.close())
    while len(shards) < n_shards:  # shards no document reached stay present, empty
        shards.append(_ShardWriter(out / shard_name(len(shards))).close())
    return shards, heldout.close()


# ---------------------------------------------------------------------------- the stage


def build_corpus(cfg: CorpusConfig, store: ArtifactStore, progress: bool = True) -> ArtifactRef:
    """Read, filter, mix, split and shard ``cfg.sources`` into a **corpus** artifact.

    Memory: one hash bucket (about corpus / 256) plus one parquet write buffer. The spill
    files live in a scratch folder under the store root, removed in every case (a killed
    run's by the next store opened on this host).
    Raises FileNotFoundError / ValueError naming the source for missing or unreadable
    input, and ValueError naming every source when no document survives the policy.
    """
    stats = [SourceStats(spec=s.model_dump(mode="json")) for s in cfg.sources]
    # The spill folder holds the whole corpus at scale: a store scratch folder is removed on
    # exit and, after a kill -9, by the next store opened on this host (its flock is gone).
    with store.scratch("corpus-spill") as tmp:
        try:
            spill = _Spill(tmp)
            try:
                counts = _spill_documents(cfg, stats, spill, progress)
            finally:
                spill.close()
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise OSError(exc.errno, f"disk full while spilling the corpus to {tmp.parent} "
                          "(it needs about the corpus size free); free space or choose an "
                          "artifact root on a larger disk") from exc
        _check_not_empty(cfg, stats, counts)
        with store.writer("corpus") as w:
            shards, held = _write_shards(spill, w.dir, cfg.n_shards, counts["train_bytes"],
                                         progress)
            meta = _meta(cfg, stats, shards, held)
            w.path("meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    assert w.ref is not None
    log.info("corpus: %d training docs in %d shards, %d held out -> %s",
             meta["n_docs"], cfg.n_shards, held["docs"], w.ref.path)
    return w.ref


def _spill_documents(cfg: CorpusConfig, stats: list[SourceStats], spill: _Spill,
                     progress: bool) -> dict[str, int]:
    docs: Iterable[str] = mixed_documents(cfg, stats)
    if progress:
        from tqdm.auto import tqdm

        docs = tqdm(docs, desc="reading sources", unit="doc")
    counts = {"train_docs": 0, "train_bytes": 0, "heldout_docs": 0}
    smallest: tuple[bytes, bytes, int] | None = None  # (draw, order key, bytes) of the min draw
    for doc in docs:
        data = doc.encode("utf-8")
        digest = document_digest(data, cfg.seed)
        held = is_heldout(digest, cfg.heldout_fraction)
        spill.add(digest[8:32], held, data)
        if held:
            counts["heldout_docs"] += 1
        else:
            counts["train_docs"] += 1
            counts["train_bytes"] += len(data)
            draw = digest[:8][::-1]  # big-endian bytes compare as the little-endian number
            if smallest is None or draw < smallest[0]:
                smallest = (draw, digest[8:32], len(data))
    # A small corpus can draw no held-out document at all (65 documents at 2%: 27% of
    # seeds), and then every held-out metric fails. Hold out the one with the smallest
    # draw: the document a slightly larger fraction would have taken first.
    if (cfg.heldout_fraction > 0 and counts["heldout_docs"] == 0 and counts["train_docs"] > 1
            and smallest is not None):
        spill.forced_heldout = smallest[1]
        counts["train_docs"] -= 1
        counts["train_bytes"] -= smallest[2]
        counts["heldout_docs"] = 1
    return counts


def _check_not_empty(cfg: CorpusConfig, stats: list[SourceStats], counts: dict[str, int]):
    if counts["train_docs"] + counts["heldout_docs"] == 0:
        detail = "; ".join(
            f"{s.spec['path']}: {s.docs_read} read, {s.empty_dropped} empty, "
            f"{s.missing_text_field} without text field {s.spec['text_field']!r}, "
            f"{s.bad_json_lines} bad json lines"
            for s in stats
        )
        raise ValueError(f"the corpus is empty after filtering ({detail}); check the source "
                         "paths, formats and text_field")
    if counts["train_docs"] == 0:
        raise ValueError(
            f"all {counts['heldout_docs']} documents fell in the held-out split "
            f"(heldout_fraction={cfg.heldout_fraction}); add data or lower the fraction"
        )


def _meta(cfg: CorpusConfig, stats: list[SourceStats], shards: list[dict[str, int]],
          held: dict[str, int]) -> dict[str, Any]:
    # Deterministic content only (no times, no absolute temp paths): the artifact digest
    # then depends on the inputs alone.
    totals = {k: sum(getattr(s, k) for s in stats) for k in _COUNT_FIELDS}
    return {
        "config": cfg.model_dump(mode="json"),
        "config_digest": cfg.digest(),
        "budget_bytes": cfg.budget_bytes,
        "sources": [asdict(s) for s in stats],
        "policy_totals": totals,
        "n_shards": cfg.n_shards,
        "shards": [{"file": shard_name(i), **s} for i, s in enumerate(shards)],
        "n_docs": sum(s["docs"] for s in shards),
        "n_bytes": sum(s["bytes"] for s in shards),
        "heldout": {"file": "heldout.parquet", **held},
    }


_COUNT_FIELDS = ("files", "docs_read", "docs_kept", "bytes_kept", "quota_shortfall_bytes",
                 "invalid_utf8_sequences", "nul_chars_removed", "docs_with_nul",
                 "empty_dropped", "long_docs_split", "long_doc_extra_pieces",
                 "bad_json_lines", "missing_text_field")


# ------------------------------------------------------------------------ reading back


def ref_from_dir(path: str | Path, kind: str) -> ArtifactRef:
    """An :class:`ArtifactRef` for an artifact folder given by path (CLI input), checked
    against its manifest (sha256 of every file). Raises FileNotFoundError / CorruptArtifactError."""
    from tokalign_core.store.artifacts import MANIFEST, manifest_ref

    ref = manifest_ref(path, kind)
    if ref is None:
        raise FileNotFoundError(
            f"{kind} artifact {path} not found (no {MANIFEST}); give the folder printed by "
            f"the stage that built it"
        )
    verify(ref, full=True, memo=True)  # content, not sizes: inputs are checked in full
    _check_kind(ref, path)
    return ref


# Files only an artifact of that kind has: a folder of another kind (a tokens artifact given
# as --corpus) is refused by name instead of failing later on a missing key.
_KIND_MARKERS = {"corpus": ("heldout.parquet",), "tokens": ("counts.npy",),
                 "cooccur": ("cooc.npz",), "embeddings": ("vectors.npy",)}


def _check_kind(ref: ArtifactRef, given: str | Path) -> None:
    folder = Path(ref.path)
    markers = _KIND_MARKERS.get(ref.kind, ())
    if all((folder / m).exists() for m in markers):
        return
    actual = next((k for k, ms in _KIND_MARKERS.items()
                   if all((folder / m).exists() for m in ms)), None)
    what = f"a {actual} artifact" if actual else "not an artifact of a known kind"
    raise ValueError(f"{given} is {what}, not a {ref.kind} artifact; give the folder printed "
                     f"by `tokalign {ref.kind}`")


def shard_files(ref: ArtifactRef) -> list[Path]:
    """The training shard parquet files of a corpus artifact, in order."""
    return [ref.file(s["file"]) for s in ref.meta()["shards"]]


def heldout_file(ref: ArtifactRef) -> Path:
    return ref.file("heldout.parquet")


def iter_text_batches(path: str | Path, batch_size: int = 1024) -> Iterator[list[str]]:
    """Documents of one corpus parquet file, ``batch_size`` at a time, in order."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=batch_size, columns=["text"]):
        yield batch.column(0).to_pylist()


def read_texts(path: str | Path) -> list[str]:
    """All documents of one corpus parquet file (shard or held-out), in order."""
    return [t for batch in iter_text_batches(path) for t in batch]
