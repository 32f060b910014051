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
