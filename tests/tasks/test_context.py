"""The stage context (store, executor, logger, progress) every stage task gets: built once
per flow run, never part of a cache key, and a bare Workspace still works for callers that
pass one."""

from __future__ import annotations

import inspect

import pytest
from prefect import flow

from tasks import caching, stages
from tasks.caching import Workspace, content_key, fingerprint
from tasks.common import stage_task
from tasks.context import StageContext
from tests.tasks.test_stages import STAGES

ALL_STAGES = [*STAGES, "shrink_task"]


def _inputs(task, first: object) -> dict[str, object]:
    """Call inputs of ``task``: ``first`` as its first argument, plain values for the rest."""
    names = list(inspect.signature(task.fn).parameters)
    return {names[0]: first, **{n: f"value-of-{n}" for n in names[1:]}}


@pytest.mark.parametrize("attr", ALL_STAGES)
def test_the_context_never_changes_a_stage_cache_key(attr, tmp_path, monkeypatch):
    from tokalign_core.store import hashing

    monkeypatch.setattr(hashing, "code_hash", lambda: "pinned")
    task = getattr(stages, attr)
    bare = Workspace(run_dir=str(tmp_path / "a"))
    other = StageContext.of(Workspace(run_dir=str(tmp_path / "b"), workers=3, progress=True,
                                      parent_run_id="p")).for_stage("glove:source")
    keys = {content_key(task.name, _inputs(task, value), task.fn)
            for value in (bare, StageContext.of(bare), other, None)}
    # A Workspace (what tasks took before the context), two different contexts and no
    # workspace at all: the same inputs give one key.
    assert len(keys) == 1, attr
    # ... which still depends on the inputs.
    changed = {**_inputs(task, other), list(_inputs(task, other))[-1]: "another value"}
    assert content_key(task.name, changed, task.fn) not in keys


def test_the_key_hashes_the_task_body_not_the_context_wrapper():
    source = caching._source_of(stages.corpus_task.fn)
    assert source.startswith('@stage_task("corpus")\ndef corpus_task(ctx: StageContext')
    assert fingerprint(StageContext.of(Workspace())) is None


def test_a_bare_workspace_becomes_a_context_and_a_context_a_workspace(tmp_path):
    seen: dict[str, object] = {}

    def takes_ctx(ctx: StageContext, n: int) -> int:
        seen["ctx"] = ctx
        return n

    def takes_ws(ws: Workspace, n: int) -> int:
        seen["ws"] = ws
        return n

    ws = Workspace(run_dir=str(tmp_path), stage_label="x")
    from tasks.common import with_context

    assert with_context(takes_ctx)(ws, 1) == 1 and with_context(takes_ctx)(ctx=ws, n=2) == 2
    ctx = seen["ctx"]
    assert isinstance(ctx, StageContext) and ctx.ws == ws and ctx.stage_label == "x"
    assert ctx.store.root == ws.artifact_root
    with_context(takes_ws)(ctx, 3)
    assert seen["ws"] == ws  # a task not yet moved to the context still gets its Workspace
    assert inspect.signature(with_context(takes_ctx)) == inspect.signature(takes_ctx)


CALLS: list[str] = []


@stage_task("context-toy", retries=0)
def _toy(ctx: StageContext, text: str) -> object:
    CALLS.append(ctx.stage_label or "")
    with ctx.run("context-toy") as run, ctx.store.writer("toy") as w:
        w.path("t.txt").write_text(text)
        run.metrics({"chars": len(text)})
    return w.ref


@flow(name="context-toy-flow")
def _toy_flow(ws: Workspace, label: str) -> dict[str, str]:
    from flows.common import Runner

    r = Runner(ws)
    assert r.ctx.store.root == ws.artifact_root
    r.run(label, _toy, "abc")
    return dict(r.states)


def test_a_cached_stage_stays_cached_under_a_new_context(prefect_api, tmp_path, monkeypatch):
    from tokalign_core.store import hashing

    monkeypatch.setattr(hashing, "code_hash", lambda: "pinned")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    CALLS.clear()
    ws = Workspace(run_dir=str(tmp_path / "run"))
    assert _toy_flow(ws, "toy:first") == {"toy:first": "Completed"}
    # A new flow run: a new context, another stage label, progress on.
    again = _toy_flow(ws.model_copy(update={"progress": True}), "toy:second")
    assert again == {"toy:second": "Cached"} and CALLS == ["toy:first"]
