"""The summary the pipeline and the demo print and put on the MLflow parent run: the
tables' formatting, the headline metrics and the two plots."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

from flows.align import alignment_rows
from flows.pipeline import compression_figure, publish_summary, slug, summary_metrics
from tokalign_core.align.metrics import AlignmentMetrics
from tokalign_core.evaluate.results import ADAPTED, SOURCE, EvalResult, ModelKey
from tokalign_core.evaluate.tables import markdown_table

GOLDEN = Path(__file__).parent / "golden"

TABLES = {
    "bits_per_byte": [
        {"model": "aligned (init)", "bits_per_byte": 3.9, "norm_ppl": 1098.0, "en": 2.5,
         "zh": math.nan},
        {"model": "mean (init)", "bits_per_byte": 3.5, "norm_ppl": 579.6, "en": 2.3,
         "zh": 4.0},
    ],
    "compression": [
        {"group": "en", "tokens_per_byte": 0.22, "length_change": -0.10},
        {"group": "ru", "tokens_per_byte": 0.19, "length_change": -0.80},
        {"group": "c++", "tokens_per_byte": 0.25, "length_change": 0.30},
    ],
    "alignment": [{"metric": "bleu1.t2s.bleu1", "value": 43.5},
                  {"metric": "counts.aligned", "value": 20710.0}],
}


def test_slug_is_mlflow_safe():
    assert slug("aligned (adapted)") == "aligned_adapted"
    assert slug("c++") == "c"
    assert slug("()") == "_"


def test_summary_metrics_flatten_every_table_and_drop_nan():
    m = summary_metrics(TABLES)
    assert m["bpb/aligned_init"] == 3.9 and m["norm_ppl/mean_init"] == 579.6
    assert m["bpb_zh/mean_init"] == 4.0 and "bpb_zh/aligned_init" not in m
    assert m["length_change/ru"] == -0.80
    assert math.isclose(m["length_change/mean"], (-0.10 - 0.80 + 0.30) / 3)
    assert m["alignment/counts_aligned"] == 20710.0
    assert all(isinstance(v, float) for v in m.values())
    # One separator: MLflow groups charts by the part before the only "/".
    assert all(k.count("/") == 1 and "." not in k for k in m), sorted(m)


def test_alignment_rows_brief_drops_bleu_internals_only():
    metrics = {"bleu1": {"t2s": {"bleu1": 43.5, "bp": 0.64, "hyp_len": 22540, "ref_len": 32470,
                                 "precision": 67.5}},
               "coverage": {"aligned": 0.14}, "hubness": 0.14, "hubness_top": 10}
    brief = {r["metric"] for r in alignment_rows(metrics, brief=True)}
    assert brief == {"bleu1.t2s.bleu1", "coverage.aligned", "hubness"}
    assert len(alignment_rows(metrics)) == 8


def test_markdown_table_prints_counts_as_integers():
    table = markdown_table([{"metric": "counts.fallback", "value": 124400.0},
                            {"metric": "hubness", "value": 0.14302},
                            {"metric": "bp", "value": 1.0}])
    assert "| counts.fallback | 124400 |" in table
    assert "| hubness | 0.143 |" in table and "| bp | 1 |" in table


def test_compression_figure_orders_largest_saving_first():
    fig = compression_figure(TABLES["compression"])
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["ru", "en", "c++"]
    assert compression_figure([]) is None


def test_publish_summary_puts_metrics_and_plots_on_the_parent_run(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    import flows.pipeline
    from tasks.caching import Workspace
    from tasks.lineage import parent_run

    published: list[str] = []  # Prefect artifacts (outside a flow Prefect would start a server)
    monkeypatch.setattr(flows.pipeline, "publish_table", lambda key, *a: published.append(key))
    monkeypatch.setattr(flows.pipeline, "publish_markdown",
                        lambda key, *a: published.append(key))

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ws = Workspace(run_dir=str(tmp_path / "run"), tracking_uri=uri)
    with parent_run(ws, "pipeline") as pws:
        text = publish_summary(pws, TABLES, "pipeline")
        from tasks.lineage import Lineage

        Lineage(pws).log_metrics(pws.parent_run_id, {"count.shared": 3, "bleu1.t2s.bleu1": 4})
    assert "## Compression per language" in text and "| ru |" in text
    assert published == ["pipeline-bits_per_byte", "pipeline-compression",
                         "pipeline-alignment", "pipeline-summary"]
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(pws.parent_run_id)
    assert run.data.metrics["bpb/mean_init"] == 3.5
    assert run.data.metrics["length_change/en"] == -0.10
    # Stage metrics get one separator too.
    assert run.data.metrics["count/shared"] == 3 and run.data.metrics["bleu1/t2s_bleu1"] == 4
    assert run.data.tags["mlflow.note.content"] == text  # the run's description
    plots = {a.path for a in client.list_artifacts(pws.parent_run_id, "plots")}
    assert plots == {"plots/bits_per_byte.png", "plots/compression.png"}
    assert "summary.md" in {a.path for a in client.list_artifacts(pws.parent_run_id)}


def test_summary_tables_list_the_source_first_but_take_compression_from_the_target():
    from flows.pipeline import summary_tables

    evaluation = {key: EvalResult.from_dict(EVALUATION[key])
                  for key in (SOURCE, ModelKey.init("aligned"))}
    evaluation[SOURCE] = replace(evaluation[SOURCE], groups={
        g: replace(m, length_change=0.0) for g, m in evaluation[SOURCE].groups.items()})
    tables = summary_tables(AlignmentMetrics.from_dict(ALIGNMENT), evaluation)
    assert [r["model"] for r in tables["bits_per_byte"]] == ["source (own tokenizer)",
                                                             "aligned (init)"]
    assert tables["compression"] == [{"group": g, "tokens_per_byte": 0.25, "length_change": c}
                                     for g, c in (("de", -0.25), ("en", -0.1), ("ja", -0.5))]


# Evaluation and alignment results in their JSON form (as the stages cache them); the
# golden files are what the dict-based summary code printed and logged for them.
def group(bpb, change, scored=True):
    g = {"n_docs": 2, "n_bytes": 1200, "n_tokens": 300, "n_ref_tokens": 400,
         "tokens_per_byte": 0.25, "ref_tokens_per_byte": 1 / 3, "length_change": change}
    if scored:
        g.update(n_scored=300, nll=bpb * 1200 * math.log(2), ppl=2 ** (bpb * 4),
                 norm_ppl=2 ** (bpb * 3), bits_per_byte=bpb)
    return g


def result(bpb_en, bpb_de):
    groups = {"en": group(bpb_en, -0.1), "de": group(bpb_de, -0.25),
              "ja": group(0.0, -0.5, scored=False)}
    return {"groups": groups,
            "macro": {"norm_ppl": 2 ** (1.5 * (bpb_en + bpb_de)), "ppl": 9.5,
                      "bits_per_byte": (bpb_en + bpb_de) / 2, "tokens_per_byte": 0.25,
                      "length_change": -0.2833},
            "scored_groups": ["en", "de"], "config": {"window": 64}}


EVALUATION = {SOURCE: result(1.1, 1.3), ModelKey.init("aligned"): result(2.6, 3.1),
              ModelKey.init("mean"): result(3.6, 4.0), ADAPTED: result(1.9, 2.2)}
ALIGNMENT = {
    "target_size": 1000, "source_size": 800,
    "coverage": {"shared": 0.5, "special": 0.002, "aligned": 0.4, "fallback": 0.098},
    "counts": {"shared": 500.0, "special": 2.0, "aligned": 400.0, "fallback": 98.0},
    "hubness": 0.1431, "hubness_top": 10, "n_non_shared": 498, "hubs": [[7, 30], [9, 12]],
    "reverse_coverage": 0.75,
    "bleu1": {"t2s": {"bleu1": 43.51, "precision": 67.5, "bp": 0.64, "hyp_len": 22540,
                      "ref_len": 32470},
              "s2t": {"bleu1": 38.2, "precision": 50.1, "bp": 0.76, "hyp_len": 100,
                      "ref_len": 120}},
    "n_docs_bleu": 32,
}


def test_summary_from_typed_results_equals_the_dict_era_summary():
    from flows.pipeline import summary_markdown, summary_tables

    evaluation = {key: EvalResult.from_dict(r) for key, r in EVALUATION.items()}
    tables = summary_tables(AlignmentMetrics.from_dict(ALIGNMENT), evaluation)
    assert summary_markdown(tables) == (GOLDEN / "summary.md").read_text()
    assert summary_metrics(tables) == json.loads((GOLDEN / "summary_metrics.json").read_text())
