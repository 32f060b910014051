"""Input guards (reliability round 2): configs with non-finite numbers or booleans for
numbers, tokenizer identity between stages, outputs that would delete inputs, credentials
in tracking URIs, and the small corpus-input cases. Each test failed before its fix."""

from __future__ import annotations

import json

import numpy as np
import pytest

# ------------------------------------------------------------------ configs (defect 9)


def _all_config_classes():
    import importlib
    import pkgutil

    from tokalign_core import configs
    from tokalign_core.config import FrozenConfig

    out = set()
    for info in pkgutil.iter_modules(configs.__path__):
        module = importlib.import_module(f"{configs.__name__}.{info.name}")
        out |= {
            v
            for v in vars(module).values()
            if isinstance(v, type) and issubclass(v, FrozenConfig) and v is not FrozenConfig
        }
    return sorted(out, key=lambda c: c.__name__)


@pytest.mark.parametrize(
    "field,value",
    [
        ("x_max", float("inf")),
        ("eta", float("inf")),
        ("alpha", float("nan")),
        ("x_max", "Infinity"),
        ("eta", "-inf"),
    ],
)
def test_glove_rejects_non_finite_numbers(field, value):
    from pydantic import ValidationError

    from tokalign_core.configs.glove import GloveConfig

    with pytest.raises(ValidationError, match=field):
        GloveConfig(**{field: value})


@pytest.mark.parametrize(
    "field,value", [("iterations", True), ("dim", True), ("seed", False), ("eta", True)]
)
def test_glove_rejects_booleans_for_numbers(field, value):
    from pydantic import ValidationError

    from tokalign_core.configs.glove import GloveConfig

    with pytest.raises(ValidationError, match=f"{field}.*boolean"):
        GloveConfig(**{field: value})


def test_cooccur_window_true_is_rejected_from_a_json_file(tmp_path):
    from tokalign_core.configs.cooccur import CooccurConfig

    path = tmp_path / "c.json"
    path.write_text('{"window": true}')
    with pytest.raises(ValueError, match="window.*boolean"):
        CooccurConfig.load(path)


def test_glove_x_max_infinity_in_json_is_rejected_through_the_cli(tmp_path, capsys):
    from tokalign_core.cli import main

    path = tmp_path / "g.json"
    path.write_text('{"x_max": Infinity}')
    (tmp_path / "cooc").mkdir()
    code = main(
        [
            "glove",
            str(tmp_path / "cooc"),
            "--config",
            str(path),
            "--artifact-root",
            str(tmp_path / "a"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "x_max" in err and "Traceback" not in err
    assert not (tmp_path / "a").exists()


def test_every_config_rejects_inf_and_bool_for_its_numbers():
    """The rule lives in the base class: every float field refuses inf, every int field
    refuses True (each config class is probed with one of its own number fields; the error
    must be about that field, not about missing required ones)."""
    from pydantic import ValidationError

    checked = 0
    for cls in _all_config_classes():
        for name, field in cls.model_fields.items():
            if field.annotation not in (int, float):
                continue
            for bad in (
                [float("inf"), float("nan"), True] if field.annotation is float else [True, False]
            ):
                with pytest.raises(ValidationError) as info:
                    cls.model_validate({name: bad})
                about = [e for e in info.value.errors() if e["loc"][:1] == (name,)]
                assert about, f"{cls.__name__}.{name} accepted {bad!r}"
            checked += 1
            break
    assert checked >= 8


def test_booleans_stay_valid_for_boolean_fields():
    from tokalign_core.configs.glove import GloveConfig

    assert GloveConfig(deterministic=False).deterministic is False
    assert json.loads(GloveConfig().canonical_json())["x_max"] == 10.0


# ------------------------------------------------------- outputs holding inputs (defect 10)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """<root>/inputs/{model (with tokenizer), alignment, tokens}: every input of init/adapt
    under one folder."""
    from tokalign_core import toy
    from tokalign_core.alignment import Alignment, Provenance

    root = tmp_path_factory.mktemp("outs")
    inputs = root / "inputs"
    tok = toy.train_bytelevel_bpe(toy.stdlib_texts(60), 280)
    toy.tiny_gpt_neox(len(tok), hidden=32, layers=1, heads=2).save_pretrained(inputs / "model")
    tok.save_pretrained(inputs / "model")
    n = len(tok)
    Alignment(np.arange(n), np.ones(n), np.full(n, Provenance.SHARED), np.arange(n)).save(
        inputs / "alignment"
    )
    (inputs / "tokens").mkdir()
    (inputs / "tokens" / "meta.json").write_text("{}")
    return inputs


def _tree(folder):
    from tokalign_core.hashing import sha256_tree

    return sha256_tree(folder)


@pytest.mark.parametrize("out_of", [lambda i: i, lambda i: i / "model", lambda i: i.parent])
def test_init_overwrite_refuses_an_out_that_holds_the_inputs(workspace, capsys, out_of):
    from tokalign_core.cli import main

    before = _tree(workspace)
    out = out_of(workspace)
    code = main(
        [
            "init",
            "--model",
            str(workspace / "model"),
            "--target-tokenizer",
            str(workspace / "model"),
            "--alignment",
            str(workspace / "alignment"),
            "--out",
            str(out),
            "--overwrite",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "holds the input" in err and str(out) in err
    assert _tree(workspace) == before


@pytest.mark.parametrize("command", ["adapt", "distill"])
def test_train_commands_refuse_an_out_that_holds_the_inputs(workspace, capsys, command):
    from tokalign_core.cli import main

    before = _tree(workspace)
    model = str(workspace / "model")
    head = (
        ["adapt", "--model", model]
        if command == "adapt"
        else ["distill", "--student", model, "--teacher", model]
    )
    code = main(
        [
            *head,
            "--tokens",
            str(workspace / "tokens"),
            "--out",
            str(workspace),
            "--engine",
            "torch",
            "--dry-run",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "holds the input" in err
    assert not (workspace / "run.json").exists() and _tree(workspace) == before


def test_check_out_dir_allows_a_sibling_and_ignores_hub_ids(tmp_path):
    from tokalign_core.inputs import check_out_dir

    (tmp_path / "model").mkdir()
    check_out_dir(tmp_path / "out", [tmp_path / "model", "org/name", "builtin:qwen2", None])
    with pytest.raises(ValueError, match="holds the input"):
        check_out_dir(tmp_path, [tmp_path / "model"])
