"""The tiny align flow end to end under the session's Prefect test harness: a stage that
fails is the only one (with what follows) recomputed on the rerun, an unchanged rerun is
served entirely from the cache, and MLflow holds the parent run with nested stage runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tasks.caching import Workspace
from tests.flows.tiny import tiny_inputs

UPSTREAM = ["corpus", "tokenize:source", "tokenize:target", "cooccur:source",
            "cooccur:target", "glove:source", "glove:target", "shared-tokens"]


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory, texts, bpe_tok, sp_tok):
    return tiny_inputs(tmp_path_factory.mktemp("inputs"), texts[:250], bpe_tok, sp_tok)


def test_align_flow_resumes_and_caches(prefect_api, tiny_cfg, tmp_path, monkeypatch):
    from flows.align import align_flow
    from tokalign_core.align import prepare as align
    from tokalign_core.align.alignment import Alignment
    from tokalign_core.store import hashing

    # Other files of the library may change while tests run; pin the code hash.
    monkeypatch.setattr(hashing, "code_hash", lambda: "align-flow-test")
    ws = Workspace(run_dir=str(tmp_path / "run"))

    real = align.build_alignment

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed during the align stage")

    monkeypatch.setattr(align, "build_alignment", crash)
    with pytest.raises(BaseException, match="killed during the align stage"):
        align_flow(tiny_cfg, ws)
    monkeypatch.setattr(align, "build_alignment", real)

    resumed = align_flow(tiny_cfg, ws)
    assert all(resumed["states"][s] == "Cached" for s in UPSTREAM), resumed["states"]
    assert resumed["states"]["align"] == "Completed"
    assert resumed["states"]["evaluate-alignment"] == "Completed"

    ali = Alignment.load(resumed["alignment"].path)
    assert ali.target_size == len(json.loads(
        (Path(tiny_cfg.target_tokenizer) / "tokenizer.json").read_text())["model"]["vocab"])
    assert np.all(ali.source_ids >= 0)
    bleu = resumed["metrics"].bleu1
    assert bleu is not None and 0 <= bleu.t2s.bleu1 <= 100, "held-out BLEU-1 is computed"

    again = align_flow(tiny_cfg, ws)
    assert set(again["states"].values()) == {"Cached"}
    assert again["alignment"] == resumed["alignment"]

    _check_mlflow(ws)


def _check_mlflow(ws: Workspace) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{ws.root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tokalign")
    runs = client.search_runs([exp.experiment_id], max_results=200)
    parents = [r for r in runs if r.data.tags.get("tokalign.flow") == "align"
               and "mlflow.parentRunId" not in r.data.tags]
    # Named by what ran (source -> target, method), not by the flow alone.
    assert {p.info.run_name for p in parents} == {"align: src_tok -> tgt_tok (tokalign++)"}
    assert [p.info.status for p in parents].count("FINISHED") == 2
    assert [p.info.status for p in parents].count("FAILED") == 1
    resumed, cached = sorted((p for p in parents if p.info.status == "FINISHED"),
                             key=lambda p: p.info.start_time)
    assert resumed.data.tags.get("prefect.flow_run_id")
    assert resumed.data.params["align.method"] == "vecmap"

    def children(parent):
        return {r.info.run_name: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}

    fresh = children(resumed)
    # Named by the flow's labels whether computed or cached; the stage tag keeps the detail.
    assert {"align", "evaluate-alignment", "glove:source"} <= set(fresh), sorted(fresh)
    assert fresh["glove:source"].data.tags["tokalign.cached"] == "true"
    assert fresh["align"].data.tags["tokalign.stage"] == "align:vecmap"
    assert "tokalign.config_digest" in fresh["align"].data.tags
    assert fresh["align"].data.tags["output.alignment.sha256"]
    reused = children(cached)
    assert all(r.data.tags.get("tokalign.cached") == "true" for r in reused.values())
    assert len(reused) == 10
    assert set(reused) <= {r.info.run_name for p in parents for r in children(p).values()
                           if "tokalign.cached" not in r.data.tags}, sorted(reused)
    glove = [r for r in runs if r.info.run_name in ("glove:source", "glove:target")
             and "tokalign.cached" not in r.data.tags]
    assert glove and glove[0].data.tags.get("output.embeddings.sha256")
    history = client.get_metric_history(glove[0].info.run_id, _cost_key(client, glove[0]))
    assert len(history) >= 2, "GloVe cost logged per iteration with steps"


def _cost_key(client, run) -> str:
    keys = [k for k in run.data.metrics if "cost" in k or "loss" in k]
    assert keys, f"no cost metric in {sorted(run.data.metrics)}"
    return keys[0]
