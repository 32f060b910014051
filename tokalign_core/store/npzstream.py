"""Read and write ``.npz`` archives piece by piece, so memory stays bounded by the piece.

A co-occurrence matrix at paper scale (hundreds of millions of nonzeros) is several GB as
one ``cooc.npz`` (``scipy.sparse.save_npz(..., compressed=False)``: a zip of ``.npy``
members stored uncompressed). Stored members are contiguous in the file, so a slice of a
member is one ``pread``; :func:`member` finds where it starts. :class:`NpzWriter` writes an
archive that :func:`scipy.sparse.load_npz` and :func:`numpy.load` read, member by member,
each member's data streamed in chunks (the header needs only the final shape). Entry dates
are fixed, so equal arrays give byte-identical archives.
"""

from __future__ import annotations

import shutil
import struct
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FIXED_DATE = (1980, 1, 1, 0, 0, 0)
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # zip local file header (30 bytes)


@dataclass(frozen=True)
class Member:
    """An uncompressed ``.npy`` member: its data starts at byte ``offset`` of ``path``."""

    path: Path
    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Elements [start, stop) of the flattened array (a fresh array; no mmap, so the
        pages read do not stay in this process's resident set)."""
        stop = self.size if stop is None else min(stop, self.size)
        count = max(stop - start, 0)
        if count == 0:
            return np.empty(0, dtype=self.dtype)
        return np.fromfile(self.path, dtype=self.dtype, count=count,
                           offset=self.offset + start * self.dtype.itemsize)


def member(path: str | Path, name: str) -> Member:
    """Locate member ``name`` (e.g. ``"data.npy"``) of an uncompressed npz archive.

    Raises ValueError when the member is compressed (``save_npz(compressed=True)``) or is
    not a C-ordered plain array, KeyError when it is missing.
    """
    path = Path(path)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(f"{path}: member {name} is compressed; write the archive with "
                         "compressed=False to read it piece by piece")
    with path.open("rb") as fh:
        fh.seek(info.header_offset)
        fields = _LOCAL_HEADER.unpack(fh.read(_LOCAL_HEADER.size))
        fh.seek(info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10])
        return _read_npy_header(fh, path, f"{path}: member {name}")


class NpzWriter:
    """Write an uncompressed npz member by member; arrays may arrive in chunks.

    >>> with NpzWriter(path) as z:
    ...     z.write("shape", np.array([3, 3]))
    ...     z.write_chunks("data", np.float64, total, chunk_iter)
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._zip = zipfile.ZipFile(self.path, "w", zipfile.ZIP_STORED, allowZip64=True)

    def __enter__(self) -> NpzWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._zip.close()

    def write(self, name: str, array: np.ndarray) -> None:
        """One whole (small) array as member ``name.npy``."""
        array = np.ascontiguousarray(array)
        self.write_chunks(name, array.dtype, array.shape, [array])

    def write_chunks(self, name: str, dtype: np.dtype | type, shape: tuple[int, ...] | int,
                     chunks: Iterable[np.ndarray]) -> None:
        """Member ``name.npy`` of ``shape`` and ``dtype`` from consecutive flat chunks.

        Raises ValueError (and the archive is unusable) when the chunks do not add up.
        """
        dtype = np.dtype(dtype)
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                  "shape": shape}
        info = zipfile.ZipInfo(f"{name}.npy", date_time=FIXED_DATE)
        info.compress_type = zipfile.ZIP_STORED
        expected = int(np.prod(shape, dtype=np.int64))
        written = 0
        with self._zip.open(info, "w", force_zip64=True) as fh:
            _write_header(fh, header)
            for chunk in chunks:
                chunk = np.ascontiguousarray(chunk, dtype=dtype)
                fh.write(memoryview(chunk.reshape(-1)).cast("B"))
                written += chunk.size
        if written != expected:
            raise ValueError(f"{self.path}: member {name} got {written} elements for shape "
                             f"{shape}")

    def write_file(self, name: str, dtype: np.dtype | type, raw: Path | Sequence[Path],
                   block: int = 1 << 24) -> None:
        """Member ``name.npy`` from a raw file of ``dtype`` elements, or from several
        concatenated in order (copied in blocks)."""
        dtype = np.dtype(dtype)
        raws = [raw] if isinstance(raw, Path) else list(raw)
        n = sum(r.stat().st_size for r in raws) // dtype.itemsize
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                  "shape": (n,)}
        info = zipfile.ZipInfo(f"{name}.npy", date_time=FIXED_DATE)
        with self._zip.open(info, "w", force_zip64=True) as fh:
            _write_header(fh, header)
            for r in raws:
                with r.open("rb") as src:
                    shutil.copyfileobj(src, fh, block)


def _write_header(fh, header: dict) -> None:
    """The npy header, format 1.0 when it fits (as numpy writes), else 2.0."""
    try:
        np.lib.format.write_array_header_1_0(fh, header)
    except ValueError:
        np.lib.format.write_array_header_2_0(fh, header)


def npy_member(path: str | Path) -> Member:
    """The data of a plain ``.npy`` file as a :class:`Member` (read piece by piece)."""
    path = Path(path)
    with path.open("rb") as fh:
        return _read_npy_header(fh, path, str(path))


def _read_npy_header(fh: Any, path: Path, what: str) -> Member:
    """The ``.npy`` header at ``fh``'s position -> a :class:`Member` of the data after it."""
    version = np.lib.format.read_magic(fh)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, fortran, dtype = read_header(fh)
    if fortran or dtype.hasobject:
        raise ValueError(f"{what} is not a plain C-ordered array")
    return Member(path, fh.tell(), dtype, tuple(shape))
