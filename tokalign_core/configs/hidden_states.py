"""HiddenStatesConfig: token representations from the source LLM's last hidden layer
(TokAlign++ "extract from LLM"; :mod:`tokalign_core.embed.hidden_states`).

Every source token, and every target token's text encoded by the source tokenizer, is fed
to the source model; the last layer's hidden state at the last position is its vector.
"""

from __future__ import annotations

from pydantic import Field

from tokalign_core.configs.base import FrozenConfig


class HiddenStatesConfig(FrozenConfig):
    """How ``tokalign hidden-states`` (and the pipeline's hidden representation) runs the
    source model."""

    batch_size: int = Field(32, ge=1, description="sequences per forward pass")
    max_length: int = Field(64, ge=1, description="longest source encoding of a target "
                            "token's text (the last tokens are kept)")
    add_bos: bool | None = Field(None, description="prefix a BOS: auto (none) = whatever "
                                 "the source tokenizer adds itself")
    device: str | None = Field(None, description="torch device; None = cuda if usable, "
                               "else cpu")
    trust_remote_code: bool = Field(False, description="allow custom model/tokenizer code "
                                    "from the hub")
