"""Flows key models and results by :class:`ModelKey`, never by the label a table shows:
each role's result reaches the card, the note and the registry meant for it, a user's name
that reads like a role stands for nothing else, and the label is no input of the evaluate
task (one model on the same texts under two names is evaluated once)."""

from __future__ import annotations

import json

from flows.demo import distillation_note
from flows.evaluate import bpb_rows
from flows.publish import card_for, final_key
from tokalign_core.configs.pipeline import PipelineConfig
from tokalign_core.evaluate.results import (
    ADAPTED,
    DISTILLED,
    SOURCE,
    STUDENT_DISTILLED,
    STUDENT_INIT,
    EvalResult,
    ModelKey,
)


def _result(bpb: float) -> EvalResult:
    counts = {"n_docs": 1, "n_bytes": 10, "n_tokens": 3, "n_ref_tokens": 4}
    return EvalResult.from_dict({"macro": {"bits_per_byte": bpb, "norm_ppl": 2 ** bpb},
                                 "groups": {"en": {**counts, "bits_per_byte": bpb}},
                                 "scored_groups": ["en"]})


def _cfg(teacher: str) -> PipelineConfig:
    cfg = PipelineConfig.preset("tiny", source_model="org/src-model")
    distill = cfg.distill.model_dump()
    distill["distill"]["teacher"] = teacher
    return PipelineConfig.model_validate({**cfg.model_dump(), "distill": distill})


ROLES = {SOURCE: 0.5, ModelKey.init("aligned"): 1.5, ModelKey.init("fvt"): 1.6,
         ADAPTED: 1.0, DISTILLED: 1.2, STUDENT_INIT: 3.0, STUDENT_DISTILLED: 2.0}


def test_rows_show_each_key_label_next_to_its_own_result():
    rows = bpb_rows({key: _result(bpb) for key, bpb in ROLES.items()})
    assert [(r["model"], r["bits_per_byte"]) for r in rows] == [
        (key.label, bpb) for key, bpb in ROLES.items()]


def test_distillation_note_takes_teacher_and_student_by_role():
    evaluation = {key: _result(bpb) for key, bpb in ROLES.items()}
    assert distillation_note(evaluation) == (
        "\n## Distillation\n\nteacher (aligned, adapted) 1.000 bits/byte; student before "
        "3.000, after 2.000 (+1.000 gained of the 2.000 gap).\n")
    # Names that read like the roles are not the roles: no note.
    named = {ModelKey(key.label): result for key, result in evaluation.items()}
    assert distillation_note(named) == ""


def test_each_card_describes_the_model_its_key_names():
    evaluation = {key: _result(bpb) for key, bpb in ROLES.items()}
    evaluation.pop(ModelKey.init("aligned"))
    evaluation[ModelKey("aligned (init)")] = _result(9.0)  # a user's name, not the role
    cfg = _cfg("org/teacher-model")
    cards = {key: card_for(cfg, key, None, evaluation, {}) for key in ROLES if key != SOURCE}
    for key, card in cards.items():
        assert card.name.endswith(f": {key.label}")
        bpb = card.eval_results.get("macro", {}).get("bits_per_byte")
        assert bpb == (None if key == ModelKey.init("aligned") else ROLES[key]), key
    fvt = cards[ModelKey.init("fvt")]
    assert (fvt.method, fvt.tags, fvt.training) == ("fvt", ["fvt"], "")
    assert cards[ModelKey.init("aligned")].method == "tokalign++"
    assert cards[ADAPTED].training.startswith("two-stage adaptation")
    assert "distillation" not in cards[ADAPTED].training
    assert "shallower copy" in cards[STUDENT_INIT].training
    assert "distillation" not in cards[STUDENT_INIT].training
    assert cards[STUDENT_DISTILLED].training.endswith("from the adapted model")
    assert cards[DISTILLED].training.endswith("from teacher-model")


def test_the_registered_model_is_chosen_by_role():
    init = ModelKey.init("aligned")
    assert final_key({init: 1, ADAPTED: 2, STUDENT_DISTILLED: 3, STUDENT_INIT: 4}) == \
        STUDENT_DISTILLED
    assert final_key({init: 1, ADAPTED: 2, DISTILLED: 3}) == DISTILLED
    assert final_key({init: 1, ModelKey("distilled"): 2, ADAPTED: 3}) == ADAPTED
    assert final_key({ModelKey.init("fvt"): 1, ModelKey("aligned (adapted)"): 2}) is None


def test_printed_model_lines_show_each_key_label():
    from tokalign.commands.demo import model_lines

    published = {ModelKey.init("random-permutation"): "/r/models/random-permutation-init",
                 STUDENT_DISTILLED: "/r/models/student-distilled"}
    assert model_lines({"published": published}) == (
        "models:\n  random-permutation (init)    /r/models/random-permutation-init\n"
        "  student (distilled)          /r/models/student-distilled")


def test_one_model_under_two_names_is_evaluated_once(prefect_api, tmp_path, texts, bpe_tok,
                                                     monkeypatch):
    """The served evaluate form takes names -> folders, and a name that reads like a role
    stays a name. The name labels the stage's MLflow run, not its cache entry: the same
    model on the same texts under a second name is served from the first one's record."""
    from mlflow import MlflowClient

    from flows.forms import Advanced, evaluate_form
    from tokalign_core.model import toy

    run_dir = tmp_path / "run"
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    # Set, not deleted: MLflow exports the URI it is given, and monkeypatch then restores
    # the variable for the tests that follow.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    folder = tmp_path / "mine"
    toy.tiny_gpt_neox(len(bpe_tok), hidden=16, layers=1, heads=2).save_pretrained(folder)
    bpe_tok.save_pretrained(folder)
    docs = tmp_path / "en.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:2]))
    names = ["my model: v2 (final)", "aligned (adapted)"]
    out = evaluate_form(models=dict.fromkeys(names, str(folder)), texts=str(docs),
                        reference_tokenizer=str(folder),
                        advanced=Advanced(run_dir=str(run_dir), workers=1))
    assert list(out["evaluation"]) == [ModelKey(n) for n in names]
    assert ADAPTED not in out["evaluation"]
    assert [r["model"] for r in bpb_rows(out["evaluation"])] == names
    assert out["states"] == {"evaluate:my model: v2 (final)": "Completed",
                             "evaluate:aligned (adapted)": "Cached"}
    first, second = out["evaluation"].values()
    assert first == second and first.macro.bits_per_byte > 0

    client = MlflowClient(tracking_uri=uri)
    runs = {r.info.run_name: r for r in client.search_runs(
        [client.get_experiment_by_name("tokalign").experiment_id])}
    computed, cached = runs["evaluate:my model: v2 (final)"], runs["evaluate:aligned (adapted)"]
    assert computed.data.tags["tokalign.stage"] == "evaluate:my model: v2 (final)"
    assert computed.data.metrics["macro/bits_per_byte"] == first.macro.bits_per_byte
    assert "evaluation_my model: v2 (final).md" in {
        a.path for a in client.list_artifacts(computed.info.run_id)}
    assert cached.data.tags["tokalign.cached"] == "true"
