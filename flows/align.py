"""The ``align`` flow: corpus -> both tokenizations and co-occurrences in parallel ->
token vectors (GloVe, or the source model's hidden states) -> alignment -> metrics.

Every step is a content-cached task, so a rerun with unchanged inputs finishes in seconds
and a rerun after a new target tokenizer recomputes only the target side and what follows.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import Runner, publish_markdown, publish_table, with_target
from tasks import stages
from tasks.caching import Workspace
from tasks.lineage import flat_numbers, parent_run
from tokalign_core.align.metrics import AlignmentMetrics
from tokalign_core.configs.pipeline import PipelineConfig
from tokalign_core.evaluate.tables import markdown_table


def _representations(r: Runner, cfg: PipelineConfig, tokens: dict[str, Any],
                     source_model: Any) -> dict[str, Any]:
    if cfg.representation == "hidden":
        refs = r.run("hidden-states", stages.hidden_states_task, source_model,
                     cfg.source_tokenizer_spec, cfg.target_tokenizer, tokens["source"],
                     tokens["target"], cfg.hidden_batch_size)
        return refs
    cooc = {side: r.submit(f"cooccur:{side}", stages.cooccur_task, tokens[side], cfg.cooccur)
            for side in ("source", "target")}
    vecs = {side: r.submit(f"glove:{side}", stages.glove_task, cooc[side].result(), cfg.glove)
            for side in ("source", "target")}
    return {side: f.result() for side, f in vecs.items()}


def run_align(r: Runner, cfg: PipelineConfig, source_model: Any = None) -> dict[str, Any]:
    """The align stages on runner ``r`` (shared by the align, pipeline and demo flows)."""
    corpus = r.run("corpus", stages.corpus_task, cfg.corpus)
    tok = {side: r.submit(f"tokenize:{side}", stages.tokenize_task, corpus,
                          cfg.tokenize_config(side)) for side in ("source", "target")}
    overlap = r.submit("shared-tokens", stages.shared_tokens_task, cfg.source_tokenizer_spec,
                       cfg.target_tokenizer)
    tokens = {side: f.result() for side, f in tok.items()}
    emb = _representations(r, cfg, tokens, source_model or cfg.source_model)
    alignment = r.run("align", stages.align_task, emb["source"], emb["target"],
                      cfg.source_tokenizer_spec, cfg.target_tokenizer, cfg.align)
    metrics = AlignmentMetrics.from_dict(r.run(
        "evaluate-alignment", stages.eval_align_task, alignment, tokens["source"],
        tokens["target"], cfg.source_tokenizer_spec, cfg.target_tokenizer, cfg.align_eval))
    return {"corpus": corpus, "tokens": tokens, "embeddings": emb, "alignment": alignment,
            "metrics": metrics, "overlap": overlap.result()}


# BLEU's internals (brevity penalty, lengths, raw precision) and bookkeeping: in the
# evaluate-alignment stage's MLflow run, not in the printed summary.
DETAIL_SUFFIXES = (".bp", ".hyp_len", ".ref_len", ".precision", "hubness_top", "n_docs_bleu")


def alignment_rows(metrics: AlignmentMetrics, brief: bool = False) -> list[dict[str, Any]]:
    """Flat ``metric -> value`` rows of the alignment metrics (for tables), named by their
    JSON path (``bleu1.t2s.bleu1``); ``brief`` drops :data:`DETAIL_SUFFIXES`."""
    flat = sorted(flat_numbers(metrics).items())
    return [{"metric": k, "value": v} for k, v in flat
            if not (brief and k.endswith(DETAIL_SUFFIXES))]


@flow(name="align", log_prints=True)
def align_flow(cfg: PipelineConfig = PipelineConfig(), ws: Workspace = Workspace(),
               target_tokenizer: str | None = None) -> dict[str, Any]:
    """Align the source vocabulary to ``cfg.target_tokenizer`` (or ``target_tokenizer``,
    which event-triggered runs fill in) and measure the alignment."""
    cfg = with_target(cfg, target_tokenizer)
    with parent_run(ws, "align", cfg) as ws:
        r = Runner(ws)
        out = run_align(r, cfg)
        rows = alignment_rows(out["metrics"])
        publish_table("alignment-metrics", rows, f"alignment to {cfg.target_tokenizer}")
        publish_markdown("alignment-summary", markdown_table(rows))
        out["cached"] = r.cached()
        out["states"] = dict(r.states)
        return out
