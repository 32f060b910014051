"""The README's commands stay true: every ``tokalign ...`` line in its code blocks parses
with the real CLI (flags exist, choices valid), the make targets it names exist, and the
first screen gives the two commands."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
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
    from tokalign.cli import build_parser

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
    from tokalign.cli import build_parser

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


TEXT_SCRIPT = ROOT / "scripts" / "install_text_packages.sh"


def test_make_demo_installs_text_packages_only_when_allowed():
    """``make demo`` asks for the Debian text packages in the mode that never fails the
    demo: opted out, it names the opt-out and exits 0 without touching apt."""
    import os
    import subprocess

    makefile = (ROOT / "Makefile").read_text()
    demo = re.search(r"^demo:.*?(?=^\S)", makefile, re.M | re.S).group(0)
    assert "install_text_packages.sh --when-allowed" in demo
    env = {**os.environ, "TOKALIGN_TEXT_PACKAGES": "0"}
    out = subprocess.run(["bash", str(TEXT_SCRIPT), "--when-allowed", "no-such-package"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    assert "TOKALIGN_TEXT_PACKAGES=0" in out.stderr


def test_text_package_script_without_apt_falls_back(tmp_path):
    """No apt-get on PATH (another distribution): a note, exit 0, the demo goes on."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("bash", "id", "grep"):
        (bindir / tool).symlink_to(shutil.which(tool))
    out = subprocess.run([str(bindir / "bash"), str(TEXT_SCRIPT), "--when-allowed"],
                         env={**os.environ, "PATH": str(bindir)},
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    assert "no apt-get" in out.stderr
