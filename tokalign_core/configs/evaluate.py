"""EvalConfig: tokenizer-independent language-model evaluation (METHOD.md section 9).

Perplexity normalised to a reference tokenizer (Wei et al. 2023:
total NLL of a text divided by the *reference* tokenizer's token count), bits per byte and
compression, per language/domain group. Compression needs only the tokenizers; the NLL
metrics run the model, whose output layer dominates the cost with a large target
vocabulary, so ``score_groups`` can restrict them to a few groups.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tokalign_core.configs.base import FrozenConfig


class EvalConfig(FrozenConfig):
    """How ``tokalign eval-model`` scores texts."""

    window: int | None = Field(
        None, ge=2,
        description="tokens per forward pass; None = the model's max_position_embeddings "
        "(capped at 2048)",
    )
    stride: int | None = Field(
        None, ge=1,
        description="new tokens scored per window after the first; the rest of the window is "
        "context. None = window // 2",
    )
    batch_size: int = Field(8, ge=1, description="windows per forward pass")
    max_docs_per_group: int | None = Field(
        None, ge=1, description="score at most this many documents per group (first ones)"
    )
    score_groups: tuple[str, ...] | None = Field(
        None,
        description="groups whose NLL metrics (bits per byte, perplexities) are computed by "
        "running the model; the other groups get compression only (tokenizers, cheap). "
        "None = every group",
    )
    txt_split: Literal["paragraph", "line", "file"] = Field(
        "paragraph",
        description=".txt files: one document per blank-line-separated paragraph, per line, "
        "or the whole file",
    )
    add_bos: bool = Field(
        True,
        description="prefix each document with the model tokenizer's BOS (or EOS when it has "
        "no BOS) so its first token is scored too",
    )
    trust_remote_code: bool = Field(False, description="allow custom model code")

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        if self.window is not None and self.stride is not None and self.stride > self.window:
            raise ValueError(
                f"stride ({self.stride}) must not exceed window ({self.window}): tokens between "
                "windows would never be scored"
            )
        if self.score_groups is not None:
            if not self.score_groups:
                raise ValueError("score_groups is empty: list at least one group, or None to "
                                 "score every group")
            if len(set(self.score_groups)) != len(self.score_groups):
                raise ValueError(f"score_groups has duplicates: {list(self.score_groups)}")
        return self


class LmEvalConfig(FrozenConfig):
    """Downstream tasks through lm-evaluation-harness (``tokalign lm-eval``)."""

    tasks: tuple[str, ...] = Field(
        ..., min_length=1, description="task names, e.g. arc_easy,boolq,hellaswag,openbookqa,"
        "piqa,winogrande,xnli,pawsx,xcopa,xstorycloze")
    num_fewshot: int | None = Field(None, ge=0, description="few-shot examples; None = "
                                    "each task's own")
    batch_size: int = Field(8, ge=1, description="batch size")
    limit: float | None = Field(None, gt=0, description="examples per task (a whole number) "
                                "or fraction of them (below 1); None = all")
    device: str = Field("cpu", description="torch device")
    include_path: str | None = Field(None, description="folder of extra local task YAMLs "
                                     "(offline tasks); None = the hub's tasks only")
    trust_remote_code: bool = Field(False, description="allow custom model code")

    def limit_arg(self) -> int | float | None:
        """``limit`` as lm-evaluation-harness reads it: a count (int) from 1 up, a fraction
        below 1."""
        return int(self.limit) if self.limit is not None and self.limit >= 1 else self.limit
