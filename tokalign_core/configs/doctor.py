"""DoctorConfig: the pre-flight checks of a model and a tokenizer before heavy work
(:mod:`tokalign_core.model.doctor`, ``tokalign doctor``)."""

from __future__ import annotations

from pydantic import Field

from tokalign_core.configs.base import FrozenConfig


class DoctorConfig(FrozenConfig):
    """How far the doctor's checks go."""

    trust_remote_code: bool = Field(False, description="allow a model whose config declares "
                                    "custom code (config.auto_map)")
    max_check_tokens: int = Field(20000, ge=1, description="check reachability of at most "
                                  "this many (seeded, sampled) token ids")
    seed: int = Field(0, description="seed of the reachability sample")
