"""Hugging Face's weight-loading bars stay out of the demo's and `tokalign run`'s output
unless --progress (issue 17, item 7)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tokalign.commands.demo import quiet_progress_bars

LOAD = ("import sys\nfrom transformers import AutoModelForCausalLM\n"
        "AutoModelForCausalLM.from_pretrained(sys.argv[1])\n")


def test_without_progress_the_bars_are_switched_off(monkeypatch):
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    quiet_progress_bars(True)
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ
    quiet_progress_bars(False)
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"


@pytest.mark.slow
def test_the_setting_silences_transformers_weight_loading(tmp_path):
    from tokalign_core.model import toy

    toy.tiny_llama(64, hidden=16, layers=1, heads=2).save_pretrained(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}

    def stderr(extra: dict) -> str:
        return subprocess.run([sys.executable, "-c", LOAD, str(tmp_path)], env={**env, **extra},
                              capture_output=True, text=True, timeout=300).stderr

    assert "Loading weights" in stderr({})
    assert "Loading weights" not in stderr({"HF_HUB_DISABLE_PROGRESS_BARS": "1"})
