"""DistillConfig: token-level and sentence-level distillation (METHOD.md section 8).

Token level (TokAlign, section 8): once teacher and student share a vocabulary, the loss is
``CE + lambda * T^2 * KL(p_teacher^T || p_student^T)`` at every position, with ``p^T`` the
softmax of the logits divided by the temperature ``T``. The paper uses the plain sum
(``lambda = 1``, ``T = 1``). The T^2 factor keeps the gradient scale independent of T
(Hinton et al. 2015). Sentence level (Kim and Rush 2016) is the baseline: the teacher
generates continuations of prompts and the student fine-tunes on them with CE only.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from tokalign_core.configs.base import FrozenConfig


class DistillConfig(FrozenConfig):
    """Teacher and loss settings of ``mode: distill`` and ``mode: sentence-distill``."""

    teacher: str = Field(
        ..., description="teacher causal LM: a save_pretrained folder, hub id, .gguf or "
        "builtin:smollm2-135m; it "
        "must use the student's tokenizer (same vocabulary)"
    )
    kl_weight: float = Field(1.0, ge=0, description="lambda: weight of the KL term")
    temperature: float = Field(1.0, gt=0, description="T: softmax temperature of both sides")
    chunk_size: int = Field(
        256, ge=1, description="sequence positions per KL/CE chunk; bounds the fp32 "
        "[batch, chunk, vocab] temporaries (the result does not depend on it)"
    )
    top_k: int = Field(
        0, ge=0, description="0: the teacher scores every batch online with full logits. "
        ">0: the teacher's top-k log-probs are precomputed once to disk and reused "
        "(approximation: the teacher is renormalised over its top k tokens)"
    )
    topk_dtype: str = Field(
        "float16", pattern="^(float16|float32)$",
        description="storage dtype of the precomputed top-k log-probs",
    )
    # Sentence-level baseline.
    prompt_len: int = Field(
        32, ge=1, description="sentence-distill: prompt tokens taken from each training "
        "block's start; the teacher generates the rest of the block"
    )
    do_sample: bool = Field(
        False, description="sentence-distill: sample (seeded) instead of greedy decoding"
    )
    gen_temperature: float = Field(1.0, gt=0, description="sentence-distill: sampling T")
    gen_top_p: float = Field(1.0, gt=0, le=1, description="sentence-distill: nucleus p")
    gen_batch_size: int = Field(
        8, ge=1, description="prompts per teacher forward when precomputing"
    )
    trust_remote_code: bool = Field(False, description="allow custom-code teacher models")

    @model_validator(mode="after")
    def _check(self) -> DistillConfig:
        if self.do_sample is False and (self.gen_temperature != 1.0 or self.gen_top_p != 1.0):
            raise ValueError(
                "gen_temperature/gen_top_p only apply when do_sample=true; set do_sample "
                "or drop them"
            )
        return self
