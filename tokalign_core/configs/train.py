"""TrainConfig and StageConfig: progressive two-stage adaptation (METHOD.md section 7).

TokAlign trains in two stages on the source model's pre-training corpus: first only the
input embeddings and the LM head (lr 6.4e-4), then every parameter (lr 5e-5), each half of
the steps (the paper's ablation: 50-60% embedding-only is best). AdamW (0.9, 0.999), weight
decay 0.01, cosine schedule with 3% warmup, gradient clipping 0.3 (the reference code's
value), DeepSpeed ZeRO-1, 2M tokens per step at sequence length 2048; bf16 on GPU only.
The same file is the ``run.json`` handed to ``python -m tokalign_core.train``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tokalign_core.configs.base import FrozenConfig
from tokalign_core.configs.distill import DistillConfig

Mode = Literal["adapt", "distill", "sentence-distill"]


class StageConfig(FrozenConfig):
    """One training stage: what trains and at which peak learning rate."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_-]+$", description="label in logs")
    trainable: Literal["embeddings", "all"] = Field(
        ..., description="embeddings: only get_input_embeddings() and get_output_embeddings() "
        "(one parameter when tied, LM-head bias included); all: every parameter"
    )
    lr: float = Field(..., gt=0, description="peak learning rate of this stage's cosine")


DEFAULT_STAGES = (
    StageConfig(name="embeddings", trainable="embeddings", lr=6.4e-4),
    StageConfig(name="full", trainable="all", lr=5e-5),
)


class TrainConfig(FrozenConfig):
    """Everything ``python -m tokalign_core.train --config run.json`` needs."""

    mode: Mode = Field("adapt", description="adapt | distill | sentence-distill")
    model: str = Field(..., description="model to train: "
        "hub id, folder, .gguf or builtin:smollm2-135m")
    tokenizer: str | None = Field(
        None, description="tokenizer spec (hub id, folder, tokenizer.json, *.tiktoken, .gguf, "
        "builtin:qwen2, ...); None = the model's own"
    )
    tokens: str = Field(..., description="target-side tokens artifact folder (tokenize stage)")
    out_dir: str = Field(..., description="checkpoints/, metrics.jsonl and the final model/")
    engine: Literal["deepspeed", "torch"] = Field(
        "deepspeed", description="deepspeed (default) or a plain-torch loop for debugging"
    )
    zero_stage: int = Field(1, ge=0, le=3, description="DeepSpeed ZeRO stage")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto = bf16 on GPU, fp32 on CPU (bf16 on CPU is ~20x slower)"
    )
    seq_len: int = Field(2048, ge=8, description="tokens per training sequence")
    micro_batch_size: int = Field(4, ge=1, description="sequences per rank per forward")
    tokens_per_step: int = Field(
        2_097_152, ge=1, description="target tokens per optimizer step; gradient accumulation "
        "= round(tokens_per_step / (micro_batch_size * seq_len * world_size)), at least 1"
    )
    total_steps: int = Field(1000, ge=1, description="optimizer steps over all stages")
    stage_split: float = Field(
        0.5, ge=0, le=1, description="fraction of total_steps given to the first stage"
    )
    stages: tuple[StageConfig, StageConfig] = Field(
        DEFAULT_STAGES, description="(embedding-only stage, full stage)"
    )
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="linear warmup, share of a stage")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine floor / peak lr")
    weight_decay: float = Field(0.01, ge=0, description="AdamW decoupled weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    grad_clip: float = Field(0.3, ge=0, description="max global grad norm (0 = off)")
    checkpoint_every: int = Field(200, ge=1, description="optimizer steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept on disk")
    resume: bool = Field(True, description="continue from the newest complete checkpoint")
    seed: int = Field(0, description="data order, model RNG and generation seed")
    eos_id: int | None = Field(
        None, description="id appended between documents; None = the tokenizer's eos"
    )
    allow_repeat: bool = Field(
        True, description="when the blocks run out, start a new (reshuffled) epoch and count "
        "it; false = stop with an error instead"
    )
    eval_every: int = Field(0, ge=0, description="held-out loss every N steps (0 = end only)")
    eval_blocks: int = Field(16, ge=0, description="held-out blocks scored (0 = no eval)")
    log_every: int = Field(1, ge=1, description="optimizer steps between metric lines")
    peak_flops: float = Field(
        312e12, gt=0, description="per-device peak FLOP/s for the GPU MFU metric "
        "(the default is A100 bf16 dense)"
    )
    save_final: bool = Field(True, description="write the final save_pretrained folder")
    progress: bool = Field(True, description="show a tqdm progress bar (rank 0)")
    threads: int | None = Field(
        None, ge=1, description="CPU math threads per process (torch.set_num_threads); "
        "None = OMP_NUM_THREADS of the environment (pipelines pin 1 so evaluations run "
        "next to training)"
    )
    trust_remote_code: bool = Field(False, description="allow custom-code models")
    distill: DistillConfig | None = Field(
        None, description="teacher settings; required by distill and sentence-distill"
    )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.mode != "adapt" and self.distill is None:
            raise ValueError(f"mode={self.mode!r} needs a 'distill' section naming the teacher")
        if self.mode == "adapt" and self.distill is not None:
            raise ValueError("mode='adapt' ignores 'distill'; set mode to distill or drop it")
        if self.mode == "sentence-distill" and self.distill.prompt_len >= self.seq_len:
            raise ValueError(
                f"distill.prompt_len ({self.distill.prompt_len}) must be < seq_len "
                f"({self.seq_len}) so the teacher generates something"
            )
        if self.mode == "sentence-distill" and self.distill.top_k:
            raise ValueError("distill.top_k is for token-level distillation; set it to 0")
        if self.stages[0].trainable == self.stages[1].trainable == "embeddings":
            raise ValueError("the second stage must train 'all' parameters")
        return self

    def stage_steps(self) -> tuple[int, int]:
        """Optimizer steps of (stage 1, stage 2); they sum to ``total_steps``."""
        first = int(round(self.total_steps * self.stage_split))
        return first, self.total_steps - first

    @classmethod
    def tiny(cls, model: str, tokens: str, out_dir: str, **overrides) -> TrainConfig:
        """Preset for tests and demos: 64-token sequences, 8 steps of 512 tokens,
        checkpoints every 4 steps (still the DeepSpeed engine unless overridden)."""
        base = dict(
            model=model, tokens=tokens, out_dir=out_dir, seq_len=64, micro_batch_size=4,
            tokens_per_step=512, total_steps=8, checkpoint_every=4, eval_blocks=4,
            progress=False,
        )
        base.update(overrides)
        return cls(**base)
