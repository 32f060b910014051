"""Model keys: what flows key results by, and the one place a key becomes the label tables,
MLflow names, folders and cards show."""

from __future__ import annotations

import pytest

from tokalign_core.evaluate.results import (
    ADAPTED,
    DISTILLED,
    SOURCE,
    STUDENT_DISTILLED,
    STUDENT_INIT,
    ModelKey,
    Stage,
)


def test_each_role_renders_the_label_the_tables_have_always_shown():
    labels = {SOURCE: "source (own tokenizer)", ModelKey.init("aligned"): "aligned (init)",
              ModelKey.init("random-permutation"): "random-permutation (init)",
              ADAPTED: "aligned (adapted)", DISTILLED: "distilled",
              STUDENT_INIT: "student (init)", STUDENT_DISTILLED: "student (distilled)",
              ModelKey("my model: v2 (final)"): "my model: v2 (final)"}
    assert {key: key.label for key in labels} == labels
    assert len(set(labels.values())) == len(labels)  # no two roles share a label


def test_keys_are_roles_not_labels():
    # A user's name that reads like a role is still a name: it never stands for the role.
    assert ModelKey("aligned (init)") != ModelKey.init("aligned")
    assert ModelKey("distilled") != DISTILLED and ModelKey("distilled").label == "distilled"
    # The same role built twice is one dict key; the stage may be given by its value.
    assert ModelKey("fvt", "init") == ModelKey.init("fvt")
    assert ModelKey("fvt", "init").stage is Stage.INIT
    assert {ModelKey.init("fvt"): 1}[ModelKey("fvt", Stage.INIT)] == 1
    assert len({STUDENT_INIT, STUDENT_DISTILLED, ADAPTED, DISTILLED,
                ModelKey.init("aligned")}) == 5


@pytest.mark.parametrize(("args", "message"), [
    (("",), "non-empty model name"),
    (("  ",), "non-empty model name"),
    (("aligned", "trained"), "unknown model stage 'trained'"),
])
def test_bad_keys_are_refused_with_the_fix(args, message):
    with pytest.raises(ValueError, match=message):
        ModelKey(*args)
