"""``tokalign`` says "did you mean" for a misspelt command, choice or flag (issue 17)."""

from __future__ import annotations

import pytest

from tokalign import cli


@pytest.mark.parametrize(("argv", "hint"), [
    (["demoo"], "did you mean 'demo'?"),
    (["tokenze", "--help"], "did you mean 'tokenize' or 'tokenizer'?"),
    (["demo", "--quik"], "did you mean '--quick'"),
    (["run", "--source-modl", "x"], "did you mean '--source-model'"),
])
def test_misspelt_command_or_flag_suggests_the_closest(argv, hint, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert hint in err and "Traceback" not in err


def test_no_suggestion_for_something_unlike_any_flag(capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--zzzzzz"])
    err = capsys.readouterr().err
    assert "unrecognized arguments: --zzzzzz" in err and "did you mean" not in err
