"""The README's commands stay true: every ``tokalign ...`` line in its code blocks parses
with the real CLI (flags exist, choices valid), the make targets it names exist, and the
first screen gives the two commands."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _code_lines() -> list[str]:
    lines: list[str] = []
    for block in re.findall(r"```(?:bash)?\n(.*?)```", README, flags=re.S):
        joined = block.replace("\\\n", " ")
        lines += [ln.split("#")[0].strip() for ln in joined.splitlines()]
    return [ln for ln in lines if ln]


def _tokalign_commands() -> list[str]:
    return [ln for ln in _code_lines() if ln.startswith("tokalign ")]


def _inline_commands() -> list[str]:
    return sorted(set(re.findall(r"`(tokalign [^`]+)`", README)))


def _subparsers():
    from tokalign_core.cli import build_parser

    parser = build_parser()
    return next(a for a in parser._actions if a.dest == "command").choices


def test_first_screen_gives_the_two_commands():
    first_screen = "\n".join(README.splitlines()[:40])
    assert "make demo" in first_screen and "make test" in first_screen
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_no_placeholder_left():
    assert "PLACEHOLDER" not in README


@pytest.mark.parametrize("command", _tokalign_commands())
def test_readme_cli_command_parses(command):
    from tokalign_core.cli import build_parser

    args = build_parser().parse_args(shlex.split(command)[1:])
    assert callable(args.func)


@pytest.mark.parametrize("command", _inline_commands())
def test_readme_inline_command_names_real_flags(command):
    """Inline mentions (tables, prose) name a real subcommand and only real flags."""
    words = shlex.split(command)
    sub = _subparsers()
    assert words[1] in sub, f"no subcommand {words[1]!r}"
    known = {opt for action in sub[words[1]]._actions for opt in action.option_strings}
    unknown = [w for w in words[2:] if w.startswith("--") and w not in known]
    assert not unknown, f"{command}: unknown flags {unknown}"


def test_readme_mentions_every_subcommand():
    missing = [name for name in _subparsers() if f"tokalign {name}" not in README]
    assert not missing, f"README does not show: {missing}"
