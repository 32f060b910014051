"""Session-wide test settings: offline, single-threaded math, project-local state."""

from __future__ import annotations

import os

# Before anything imports torch/transformers/prefect/mlflow.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("DO_NOT_TRACK", "1")
# As the CLI does on machines without a GPU: DeepSpeed (imported by accelerate with every
# transformers model) would otherwise print its accelerator probe on stdout.
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def texts() -> list[str]:
    """~600 English/code paragraphs from the standard library plus multilingual lines."""
    from tokalign_core.model import toy

    return toy.stdlib_texts(600) + toy.MULTILINGUAL_SAMPLES * 3


@pytest.fixture(scope="session")
def bpe_tok(texts):
    """Tiny GPT-2-style byte-level BPE (source-like, as Pythia)."""
    from tokalign_core.model import toy

    return toy.train_bytelevel_bpe(texts, vocab_size=600)


@pytest.fixture(scope="session")
def sp_tok(texts):
    """Tiny LLaMA-2-style SentencePiece BPE with byte fallback (target-like)."""
    from tokalign_core.model import toy

    return toy.train_sentencepiece_bpe(texts, vocab_size=700)
