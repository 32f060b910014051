"""The ``tokalign`` command line. Each ``tokalign/commands/<name>.py`` module
exposes ``register(subparsers)``; this file only discovers and dispatches them, so every
stage adds its own subcommands without touching a shared file."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import errno
import importlib
import logging
import os
import pkgutil
import re
import sys
from typing import Any

from tokalign import commands
from tokalign_core import __version__


class _RunAwareFormatter(logging.Formatter):
    """Plain log lines that keep Prefect's run names ("task 'glove-source': Finished ...");
    Prefect puts them on the record, and the default format would drop them."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        for attr, label in (("task_run_name", "task"), ("flow_run_name", "flow")):
            name = getattr(record, attr, None) or (_current_task_run() if attr ==
                                                   "task_run_name" else None)
            if name:
                return line.replace(f"{record.name}: ", f"{record.name}: {label} {name!r}: ", 1)
        return line


def _current_task_run() -> str | None:
    """The Prefect task run this thread is executing, if any: a library line logged inside
    a stage ("glove iteration 3: ...") is labelled with the stage that logged it
    (``glove:source``). Prefect is only consulted when something already imported it."""
    if "prefect.context" not in sys.modules:
        return None
    try:
        ctx = sys.modules["prefect.context"].TaskRunContext.get()
    except Exception:  # noqa: BLE001 - a label is best effort
        return None
    return getattr(getattr(ctx, "task_run", None), "name", None)


def _configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(_RunAwareFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


# One store for every command and for the flows (``Workspace().artifact_root``): a stage
# run by hand finds what the pipeline built and the other way round.
DEFAULT_ARTIFACT_ROOT = "runs/default/artifacts"
EXIT_USER_ERROR = 2  # a bad input or environment the user can fix: one line, no traceback
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class UserError(Exception):
    """A bad input the user can fix: printed without a traceback, exit code 2."""


def open_store(root: str) -> Any:
    """The :class:`~tokalign_core.store.artifacts.ArtifactStore` at ``--artifact-root``, refusing
    a root that exists as something other than a folder (one line instead of errno 17)."""
    from pathlib import Path

    from tokalign_core.store.artifacts import ArtifactStore

    path = Path(root).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"artifact root {root} is a file, not a folder; give a folder with "
                        "--artifact-root (it is created when missing)")
    return ArtifactStore(path)


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that describe a bad input or environment, not a bug: malformed
    JSON/YAML/npz/gzip/safetensors files, missing or unreadable paths, full disks, invalid
    settings (pydantic's ValidationError and the hub's id check are ValueErrors)."""
    import zipfile
    import zlib

    types: list[type[BaseException]] = [UserError, OSError, ValueError, EOFError, zlib.error,
                                        zipfile.BadZipFile, UnicodeError]
    for module, name in (("yaml", "YAMLError"), ("safetensors", "SafetensorError")):
        with contextlib.suppress(ImportError, AttributeError):  # optional libraries
            types.append(getattr(importlib.import_module(module), name))
    return tuple(types)


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (pydantic and YAML messages span several), with
    the file name of an OSError that does not already mention it."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT) \
            and "disk full" not in text:
        text += "; free disk space (or point --artifact-root at a larger disk) and rerun"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines)


class _Parser(argparse.ArgumentParser):
    """argparse with "did you mean" for a misspelt command, choice or flag."""

    def error(self, message: str) -> Any:  # noqa: D102 - argparse's hook
        bad = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if bad:
            choices = re.findall(r"'([^']*)'", bad.group(2)) or \
                [c.strip() for c in bad.group(2).split(",")]
            message += did_you_mean(bad.group(1), choices)
        super().error(message)


def did_you_mean(word: str, options: Any) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``options``, or ''."""
    close = difflib.get_close_matches(word, list(options), n=2, cutoff=0.6)
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"


def _unknown_flags(parser: argparse.ArgumentParser, command: str | None,
                   extras: list[str]) -> str:
    """The ``unrecognized arguments`` message, with the closest flags of the command."""
    target = parser
    for action in parser._actions:  # the subcommand's own parser knows its flags
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            target = action.choices[command]
    flags = [o for a in target._actions for o in a.option_strings if o.startswith("--")]
    hints = "".join(did_you_mean(x.split("=")[0], flags) for x in extras if x.startswith("-"))
    return f"unrecognized arguments: {' '.join(extras)}{hints}"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tokalign",
        description=(
            "Replace a pretrained LLM's vocabulary with another tokenizer's (TokAlign / "
            "TokAlign++): tokenize a corpus with both tokenizers, learn token vectors, align "
            "the vocabularies, initialise the model, adapt and distil. Each subcommand runs "
            "one stage without Prefect; `tokalign demo` runs the whole pipeline."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tokalign {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def _cpu_only_deepspeed() -> None:
    """DeepSpeed, which ``accelerate`` imports whenever transformers loads a model, prints
    "Setting accelerator to CPU" on *stdout* when it finds no GPU: that breaks commands
    whose stdout is the artifact JSON. With no GPU device node the answer is the CPU
    anyway, so say it up front (a user's own ``DS_ACCELERATOR`` wins)."""
    gpu_nodes = ("/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd", "/dev/accel")
    if "DS_ACCELERATOR" not in os.environ and not any(os.path.exists(p) for p in gpu_nodes):
        os.environ["DS_ACCELERATOR"] = "cpu"


def main(argv: list[str] | None = None) -> int:
    _cpu_only_deepspeed()
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        parser.error(_unknown_flags(parser, getattr(args, "command", None), extras))
    _configure_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"tokalign {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _user_error_types() as exc:
        # The CLI edge: bad inputs end in one line naming the input and the fix, with a
        # distinct exit code; anything else is a bug and keeps its traceback (exit 1).
        if args.verbose:
            logging.getLogger(__name__).exception("tokalign %s failed", args.command)
        print(f"tokalign {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
