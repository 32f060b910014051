"""Stage-task plumbing that needs no Prefect server: every stage is a content-cached,
persisted task retried only on transient I/O; helper functions behave."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks import stages
from tasks.caching import ContentHashPolicy, retry_on_transient_io
from tasks.lineage import flat_numbers, is_number

STAGES = ["corpus_task", "tokenize_task", "cooccur_task", "glove_task", "hidden_states_task",
          "shared_tokens_task", "align_task", "eval_align_task", "init_task", "train_task",
          "eval_model_task", "heldout_texts_task", "text_corpus_task", "eval_sample_task",
          "pretrain_task"]


def test_every_stage_is_a_content_cached_task():
    names = set()
    for attr in STAGES:
        task = getattr(stages, attr)
        assert isinstance(task.cache_policy, ContentHashPolicy), attr
        assert task.persist_result is True, attr
        assert task.retry_condition_fn is retry_on_transient_io, attr
        names.add(task.name)
    assert len(names) == len(STAGES), "task names are part of the cache key: keep them unique"


@dataclass
class _File:
    path: str
    lang: str
    domain: str


def test_sample_files_is_bounded_per_group_and_seeded():
    files = [_File(f"/{lang}/{i}", lang, "man") for lang in ("de", "fr") for i in range(10)]
    files += [_File("/ja/0", "ja", "man")]
    a = stages.sample_files(files, 3, seed=1)
    assert [f.lang for f in a].count("de") == 3 and [f.lang for f in a].count("ja") == 1
    assert a == stages.sample_files(list(reversed(files)), 3, seed=1)
    assert stages.sample_files(files, None, 0) is files


def test_flat_numbers_flattens_numeric_leaves():
    data = {"bleu1": {"s2t": {"bleu1": 25.0, "note": "x"}}, "ok": True, "p@1": 0.5, "n": 3,
            "nan": float("nan"), "list": [1, 2], "np": np.float32(0.25)}
    out = flat_numbers(data)
    assert out.pop("nan") != out.get("nan")  # NaN kept (the MLflow sink drops it)
    assert out == {"bleu1.s2t.bleu1": 25.0, "p_at_1": 0.5, "n": 3.0, "np": 0.25}
    # One level: the corpus and overlap stages log only their top-level numbers.
    assert set(flat_numbers(data, depth=1)) == {"p_at_1", "n", "nan", "np"}
    assert flat_numbers(data, "vecmap.")["vecmap.n"] == 3.0


def test_is_number_is_the_one_metric_filter():
    assert is_number(3) and is_number(np.int64(3)) and is_number(0.5)
    assert not is_number(True) and not is_number("3") and not is_number(None)
    assert not is_number(float("nan")) and not is_number(float("inf"))
    assert is_number(float("nan"), finite=False)


def test_model_dir_finds_the_save_pretrained_folder(tmp_path):
    from tokalign_core.store.artifacts import ArtifactRef

    (tmp_path / "a" / "model").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    ref_a = ArtifactRef(kind="model", sha256="0" * 64, path=str(tmp_path / "a"))
    ref_b = ArtifactRef(kind="model", sha256="0" * 64, path=str(tmp_path / "b"))
    assert stages.model_dir(ref_a) == Path(tmp_path / "a" / "model")
    assert stages.model_dir(ref_b) == Path(tmp_path / "b")


def _emb_artifact(store, vectors, ids):
    import numpy as np

    with store.writer("embeddings") as w:
        np.save(w.dir / "vectors.npy", vectors.astype(np.float32))
        np.save(w.dir / "token_ids.npy", np.asarray(ids, np.int64))
    return w.ref


def test_align_task_and_cli_write_identical_alignments_with_a_holdout(tmp_path, bpe_tok,
                                                                      sp_tok, capsys):
    """One preparation (tokalign_core.align.prepare) behind both: the same inputs with a
    holdout give byte-identical artifacts, held-out pairs included."""
    import numpy as np

    from tasks.caching import Workspace
    from tokalign.cli import main
    from tokalign_core.align.alignment import Alignment, Provenance
    from tokalign_core.configs.align import AlignConfig
    from tokalign_core.store.artifacts import ArtifactStore
    from tokalign_core.vocab.vocab import SharedTokens

    bpe_tok.save_pretrained(tmp_path / "src_tok")
    sp_tok.save_pretrained(tmp_path / "tgt_tok")
    inputs = ArtifactStore(tmp_path / "inputs")
    base = np.random.default_rng(0).standard_normal((len(bpe_tok), 12))
    src = _emb_artifact(inputs, base[:500], np.arange(500))
    tgt = _emb_artifact(inputs, base[np.arange(600) % 500] + 0.01, np.arange(600))
    s_spec, t_spec = str(tmp_path / "src_tok"), str(tmp_path / "tgt_tok")
    cfg = AlignConfig(method="cosine", retrieval="csls", holdout=0.3, seed=5)

    # A file tracking store: the lineage is not under test, and SQLite's first migration
    # costs seconds.
    ws = Workspace(run_dir=str(tmp_path / "ws"), tracking_uri=f"file://{tmp_path / 'mlruns'}")
    ref = stages.align_task.fn(ws, src, tgt, s_spec, t_spec, cfg)
    cfg_file = tmp_path / "align.json"
    cfg_file.write_text(cfg.model_dump_json())
    assert main(["align", "--source-emb", src.path, "--target-emb", tgt.path,
                 "--source-tokenizer", s_spec, "--target-tokenizer", t_spec,
                 "--config", str(cfg_file), "--no-progress",
                 "--out", str(tmp_path / "cli")]) == 0
    capsys.readouterr()

    task_dir, cli_dir = Path(ref.path), tmp_path / "cli"
    names = sorted(p.name for p in task_dir.iterdir())
    assert names == sorted(p.name for p in cli_dir.iterdir())
    assert "heldout_pairs.npz" in names
    for name in names:
        assert (task_dir / name).read_bytes() == (cli_dir / name).read_bytes(), name
    held = SharedTokens.load(task_dir / "heldout_pairs.npz")
    ali = Alignment.load(task_dir)
    assert len(held) > 0 and ali.meta["n_heldout"] == len(held)
    assert ali.meta["config"]["holdout"] == 0.3
    # held-out pairs left the overrides: none of them is SHARED
    assert not (ali.provenance[held.target_ids] == Provenance.SHARED).any()


def test_hidden_states_task_and_cli_write_identical_vectors(tmp_path, bpe_tok, sp_tok, capsys):
    """The hidden-states task and `tokalign hidden-states` run the same extraction with the
    same HiddenStatesConfig (batch size from the pipeline, the rest default): identical
    vectors and row ids on both sides."""
    import json

    from tasks.caching import Workspace
    from tokalign.cli import main
    from tokalign_core.model import toy

    toy.tiny_gpt_neox(len(bpe_tok), hidden=16).save_pretrained(tmp_path / "model")
    bpe_tok.save_pretrained(tmp_path / "src")
    sp_tok.save_pretrained(tmp_path / "tgt")
    specs = [str(tmp_path / name) for name in ("model", "src", "tgt")]
    ws = Workspace(run_dir=str(tmp_path / "ws"), tracking_uri=f"file://{tmp_path / 'mlruns'}")
    refs = stages.hidden_states_task.fn(ws, *specs, None, None, 40)
    assert main(["hidden-states", *specs, "--batch-size", "40", "--no-progress",
                 "--artifact-root", str(tmp_path / "cli")]) == 0
    cli_refs = json.loads(capsys.readouterr().out)
    for side in ("source", "target"):
        for name in ("vectors.npy", "token_ids.npy"):
            task_bytes = (Path(refs[side].path) / name).read_bytes()
            assert task_bytes == (Path(cli_refs[side]["path"]) / name).read_bytes(), (side, name)
