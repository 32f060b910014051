"""How the pipeline schedules initialisations and model evaluations (issue 7): training
starts once the aligned init exists, evaluations run one at a time in the background next
to the training subprocesses, and every result reaches the summary. The stage tasks are
replaced by instant fakes, so this checks the flow logic, not the stages."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows import pipeline
from flows.evaluate import MAX_GROUP_COLUMNS, bpb_rows
from tasks import stages
from tasks.caching import Workspace
from tokalign_core.align.metrics import AlignmentMetrics
from tokalign_core.configs.pipeline import PipelineConfig
from tokalign_core.evaluate.results import (
    ADAPTED,
    DISTILLED,
    SOURCE,
    EvalResult,
    GroupMetrics,
    MeanMetrics,
    ModelKey,
)


class Log:
    """What the fake stages did, in order, plus how many evaluations overlapped."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[str] = []
        self.running = self.max_running = 0
        self.init_evals_done = threading.Event()
        self.training_started = threading.Event()

    def add(self, event: str) -> None:
        with self.lock:
            self.events.append(event)


LOG = Log()


@task(cache_policy=NO_CACHE)
def fake_init(ws, source_model, source_tok, target_tok, cfg, alignment, target_tokens) -> str:
    # Only the aligned init calibrates its head on the target tokens; baselines as published.
    assert (target_tokens is not None) == (cfg.method == "aligned")
    if cfg.method == "fvt":
        # Finishes only once training started: adapt must not wait for the baselines.
        LOG.add(f"fvt-overlap:{LOG.training_started.wait(timeout=60)}")
    return f"model:{cfg.method}"


@task(cache_policy=NO_CACHE)
def fake_train(ws, model, tokens, cfg) -> str:
    LOG.add(f"train:{cfg.mode}:start")
    LOG.training_started.set()
    if cfg.mode == "adapt":
        # Finishes only once the initialisations are evaluated: they must run meanwhile.
        LOG.add(f"overlap:{LOG.init_evals_done.wait(timeout=60)}")
    LOG.add(f"train:{cfg.mode}:end")
    return f"{model}+{cfg.mode}"


@task(cache_policy=NO_CACHE)
def fake_eval(ws, model, texts, cfg, ref_tok) -> dict[str, Any]:
    label = ws.stage_label.removeprefix("evaluate:")  # the flow names the stage, not an input
    with LOG.lock:
        LOG.running += 1
        LOG.max_running = max(LOG.max_running, LOG.running)
    LOG.add(f"eval:{label}")
    time.sleep(0.05)
    with LOG.lock:
        LOG.running -= 1
    if label == "fvt (init)":
        LOG.init_evals_done.set()
    counts = {"n_docs": 1, "n_bytes": 10, "n_tokens": 3, "n_ref_tokens": 4}
    bpb = {"de": 2.0, "en": 1.0}
    # The evaluated model goes where the stage puts its config: the result's JSON form.
    return {"groups": {g: {**counts, "bits_per_byte": v, "tokens_per_byte": 0.3,
                           "length_change": -0.2} for g, v in bpb.items()}
            | {"ja": {**counts, "tokens_per_byte": 0.5}},
            "macro": {"bits_per_byte": 1.5, "norm_ppl": 9.0}, "config": {"model": model},
            "scored_groups": ["en", "de"]}


@pytest.fixture()
def fakes(monkeypatch):
    global LOG
    LOG = Log()
    monkeypatch.setattr(stages, "init_task", fake_init)
    monkeypatch.setattr(stages, "train_task", fake_train)
    monkeypatch.setattr(stages, "eval_model_task", fake_eval)
    return lambda: LOG


def test_evaluations_run_one_at_a_time_next_to_training(prefect_api, fakes, monkeypatch,
                                                        tmp_path):
    cfg = PipelineConfig.preset("tiny", source_model="src")
    distill = cfg.distill.model_dump()
    distill["distill"]["teacher"] = "teacher"
    cfg = PipelineConfig.model_validate({**cfg.model_dump(), "distill": distill})
    metrics = AlignmentMetrics(target_size=10, source_size=8, coverage={}, counts={},
                               hubness=0.5, hubness_top=10, n_non_shared=4, hubs=(),
                               reverse_coverage=1.0)
    aligned = {"corpus": "corpus", "alignment": "alignment", "tokens": {"target": "tokens"},
               "metrics": metrics}
    monkeypatch.setattr(pipeline, "run_align", lambda r, cfg, source_model: aligned)
    ws = Workspace(run_dir=str(tmp_path / "run"))

    @flow
    def body() -> dict[str, Any]:
        from flows.common import Runner

        r = Runner(ws)
        out = pipeline.run_pipeline(r, cfg, texts="texts")
        return {**out, "states": r.states}

    out = body()
    log = fakes()
    inits = ["aligned (init)", "random (init)", "mean (init)", "fvt (init)"]
    labels = [*inits, "aligned (adapted)", "distilled"]
    source = "source (own tokenizer)"
    # The source model with its own tokenizer is listed first (the reference) and is
    # evaluated after the initialisations, while the aligned model trains. Results are
    # keyed by model key, each the result of the model its key names.
    keys = [ModelKey.init(m) for m in ("aligned", "random", "mean", "fvt")] + [ADAPTED, DISTILLED]
    assert list(out["evaluation"]) == [SOURCE, *keys]
    assert [k.label for k in out["evaluation"]] == [source, *labels]
    assert out["evaluation"][SOURCE].config["model"] == "src"
    assert {k: r.config["model"] for k, r in out["evaluation"].items() if k != SOURCE} == {
        **{k: f"model:{k.model}" for k in keys[:4]}, ADAPTED: "model:aligned+adapt",
        DISTILLED: "model:aligned+adapt+distill"}
    assert list(out["models"]) == keys
    assert "overlap:True" in log.events, log.events  # init evaluations ran during training
    assert "fvt-overlap:True" in log.events, log.events  # a baseline built during training
    assert log.max_running == 1, "evaluations must not overlap each other"
    order = [e for e in log.events if e.startswith(("eval:", "train:"))]
    assert [e for e in order if e.startswith("eval:")] == [
        f"eval:{x}" for x in [*inits, source, *labels[4:]]]
    assert order.index("eval:aligned (adapted)") > order.index("train:adapt:end")
    assert order.index("eval:distilled") > order.index("train:distill:end")
    assert all(out["states"][f"evaluate:{x}"] == "Completed" for x in labels)

    rows = out["tables"]["bits_per_byte"]
    assert [r["model"] for r in rows] == [source, *labels]
    assert out["tables"]["compression"][0]["group"] == "de"
    assert rows[1] == {"model": "aligned (init)", "bits_per_byte": 1.5, "norm_ppl": 9.0,
                       "en": 1.0, "de": 2.0}  # unscored ja: no column
    assert list(rows[1])[3:] == ["en", "de"]  # in score_groups order


def test_bpb_rows_drop_group_columns_when_too_many_groups():
    groups = {f"g{i}": GroupMetrics(1, 10, 3, 4, bits_per_byte=float(i), nll=1.0)
              for i in range(MAX_GROUP_COLUMNS + 1)}
    rows = bpb_rows({ModelKey("m"): EvalResult(groups, MeanMetrics(bits_per_byte=4.0),
                                               tuple(groups))})
    assert set(rows[0]) == {"model", "bits_per_byte", "norm_ppl"}
    assert bpb_rows({}) == []
