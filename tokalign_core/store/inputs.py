"""Guards on what one stage takes from another or from the user: data files that do not
parse, artifacts built for another tokenizer, output folders that hold the inputs.

Each guard raises a ``ValueError`` whose one-line message names the input and the fix; the
command line prints it without a traceback (exit code 2)."""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class DamagedFileError(ValueError):
    """A data file (``.npz``, ``.npy``, ``.json``) that exists but cannot be read."""


class TokenizerMismatchError(ValueError):
    """An artifact built for another tokenizer than the one it is used with."""


@contextmanager
def reading(path: str | Path, fix: str) -> Iterator[None]:
    """Turn the errors of parsing ``path`` (a truncated zip, a bad header, bytes that are
    not the expected format) into :class:`DamagedFileError` naming the file and ``fix``."""
    try:
        yield
    except (FileNotFoundError, PermissionError):
        raise
    except (zipfile.BadZipFile, EOFError, zlib.error, ValueError, OSError, KeyError) as exc:
        if isinstance(exc, DamagedFileError):
            raise
        raise DamagedFileError(
            f"{path} is damaged or not in the expected format ({type(exc).__name__}: {exc}); {fix}"
        ) from exc


# ------------------------------------------------------------------ tokenizer identity


def digest_of(tok: Any) -> str:
    """:func:`tokalign_core.vocab.tokenizers.tokenizer_digest` of a loaded tokenizer."""
    from tokalign_core.vocab.tokenizers import tokenizer_digest

    return tokenizer_digest(tok)


def check_same_tokenizer(
    recorded: str | None, tok: Any, *, what: str, recorded_name: str, given_name: str, fix: str
) -> None:
    """Raise :class:`TokenizerMismatchError` when an artifact's recorded
    ``tokenizer_digest`` differs from the tokenizer it is used with. Artifacts that record
    no digest (built before digests were recorded, or outside the pipeline) pass."""
    if not recorded:
        return
    actual = digest_of(tok)
    if actual != recorded:
        raise TokenizerMismatchError(
            f"{what} was built for tokenizer {recorded_name} (digest {recorded[:12]}) but "
            f"is used with {given_name} (digest {actual[:12]}); {fix}"
        )


# ------------------------------------------------------------------ output folders


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_out_dir(
    out: str | Path, inputs: Iterable[str | Path | None], flag: str = "--out"
) -> None:
    """Refuse an output folder that is, or contains, one of the inputs: replacing it
    (``--overwrite``) or writing into it would delete or damage what the command reads.
    Hub ids and other specs that are not local paths are ignored."""
    target = Path(out).expanduser().resolve()
    for item in inputs:
        if item is None or str(item).startswith("builtin:"):
            continue
        path = Path(str(item)).expanduser()
        if not path.exists():
            continue
        path = path.resolve()
        if _inside(path, target):
            raise ValueError(
                f"{flag} {out} holds the input {item}; writing there would "
                "delete or overwrite it: choose another output folder"
            )
