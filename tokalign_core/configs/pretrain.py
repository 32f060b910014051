"""PretrainConfig: the tiny source and teacher models pretrained here (``tokalign pretrain``,
:mod:`tokalign_core.train.pretrain`), and its named presets.

Presets: ``micro`` (a few steps of a toy model, tests), ``demo`` (~2.9M parameters, 8k BPE,
a few minutes on 2 cores), ``bakeoff`` (~10.7M parameters, method comparisons) and
``teacher`` (the Qwen2 vocabulary, for distillation in the demo).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from tokalign_core.configs.base import FrozenConfig


class PretrainConfig(FrozenConfig):
    """Model, tokenizer, data and optimiser settings of one pretraining run."""

    preset: str = Field("custom", description="name of the preset these settings started "
                        "from (a label: shown in the progress bar and the model card)")
    tokenizer: str = Field(
        "train-bpe",
        description="'train-bpe' trains a byte-level BPE on the training text; anything "
        "else is a tokenizer spec (e.g. builtin:qwen2)")
    vocab_size: int = Field(8192, ge=260, description="BPE vocabulary (train-bpe only)")
    bpe_train_bytes: int = Field(8_000_000, ge=1, description="text used to train the BPE")
    hidden: int = Field(128, ge=8, description="hidden size (a multiple of heads, with a "
                        "head size divisible by 4)")
    layers: int = Field(4, ge=1, description="decoder layers")
    heads: int = Field(4, ge=1, description="attention heads")
    intermediate: int | None = Field(None, description="MLP width; None = 4 * hidden")
    tie_embeddings: bool = Field(False, description="tie input and output embeddings "
                                 "(Pythia unties them)")
    seq_len: int = Field(256, ge=8, description="tokens per training window")
    batch_size: int = Field(8, ge=1, description="windows per optimizer step")
    steps: int = Field(600, ge=1, description="optimizer steps (given alone on the command "
                       "line, the preset's warm-up share is kept)")
    lr: float = Field(1e-3, gt=0, description="peak learning rate (AdamW)")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="the cosine decay ends at "
                                "this fraction of lr")
    warmup_steps: int = Field(50, ge=0, description="linear warm-up steps (< steps)")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay (not on vectors)")
    grad_clip: float = Field(1.0, gt=0, description="clip the gradient norm to this")
    seed: int = Field(0, description="seed of the weights, the BPE and the training windows")
    # Data: English prose from the corpus's en.* files plus code.
    text_langs: tuple[str, ...] = Field(("en",), description="prose languages read from "
                                        "the corpus's <lang>.*.jsonl files")
    code_langs: tuple[str, ...] = Field(("python",), description="code languages read "
                                        "from the corpus's <lang>.code.jsonl files")
    code_fraction: float = Field(0.25, ge=0, le=1, description="share of training bytes")
    train_bytes: int = Field(8_000_000, ge=1, description="training text budget (UTF-8)")
    eval_bytes: int = Field(100_000, ge=1, description="held-out text per language")
    eval_batch_size: int = Field(8, ge=1, description="windows per held-out forward pass")
    log_every: int = Field(10, ge=1, description="log loss and lr every this many steps")
    threads: int | None = Field(None, ge=1, description="torch threads; None = leave as is")

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} must be divisible by heads={self.heads}")
        if (self.hidden // self.heads) % 4:
            raise ValueError(f"head size {self.hidden // self.heads} must be a multiple of 4 "
                             "(GPT-NeoX rotates a quarter of each head)")
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be < steps={self.steps}")
        if not self.text_langs and not self.code_langs:
            raise ValueError("text_langs and code_langs are both empty: no training text")
        return self


PRESETS: dict[str, PretrainConfig] = {
    "micro": PretrainConfig(preset="micro", vocab_size=300, bpe_train_bytes=200_000,
                            hidden=32, layers=1, heads=2, seq_len=32, batch_size=4, steps=4,
                            warmup_steps=1, train_bytes=200_000, eval_bytes=5_000,
                            log_every=1),
    "demo": PretrainConfig(preset="demo", vocab_size=8192, hidden=128, layers=4, heads=4,
                           seq_len=128, batch_size=8, steps=400, lr=2e-3,
                           warmup_steps=40, train_bytes=6_000_000,
                           bpe_train_bytes=6_000_000),
    # ~10.7M parameters (8k vocabulary: 4.7M in the untied embeddings + head, 6.0M in the
    # layers); 600 steps x 4096 tokens at ~3 s/step = ~30 min on an idle 2-core machine.
    "bakeoff": PretrainConfig(preset="bakeoff", vocab_size=8192, bpe_train_bytes=6_000_000,
                              hidden=288, layers=6, heads=8, seq_len=256, batch_size=16,
                              steps=600, lr=2e-3, warmup_steps=30,
                              train_bytes=24_000_000),
    # The Qwen2 vocabulary (151,643 rows) makes the output softmax the whole cost: keep
    # the batch small (4 x 128 positions x 151k logits per step).
    "teacher": PretrainConfig(preset="teacher", tokenizer="builtin:qwen2", hidden=64,
                              layers=2, heads=4, tie_embeddings=True, seq_len=128,
                              batch_size=4, steps=200, lr=3e-3, warmup_steps=20,
                              train_bytes=2_000_000, eval_bytes=50_000,
                              eval_batch_size=4),
}


def preset_settings(name: str, **overrides: Any) -> dict[str, Any]:
    """The settings of preset ``name`` with ``overrides`` laid over them, not yet validated
    (the command line validates them with its flags). Overriding ``steps`` (>= 1) alone
    scales ``warmup_steps`` with it; ``None`` overrides are ignored."""
    if name not in PRESETS:
        raise ValueError(f"unknown pretrain preset {name!r}; choose from {sorted(PRESETS)}")
    base = PRESETS[name].model_dump()
    overrides = {k: v for k, v in overrides.items() if v is not None}
    steps = overrides.get("steps")
    if isinstance(steps, int) and steps >= 1 and "warmup_steps" not in overrides:
        # A shortened run keeps the preset's warm-up share rather than failing validation.
        share = base["warmup_steps"] / base["steps"]
        base["warmup_steps"] = min(int(steps * share), steps - 1)
    base.update(overrides)
    return base


def preset(name: str, **overrides: Any) -> PretrainConfig:
    """A named preset, optionally with some fields replaced (validated again); overriding
    ``steps`` alone scales ``warmup_steps`` with it. ``None`` overrides are ignored."""
    return PretrainConfig.model_validate(preset_settings(name, **overrides))
