"""Typed, frozen stage configs (one module per stage), re-exported here.

Each stage module defines its config class; ``PipelineConfig`` composes them and offers
named presets (``tiny``, ``tokalign``, ``tokalign++``, ``paper-scale``).
"""

from tokalign_core.configs.align import AlignConfig, VecMapConfig
from tokalign_core.configs.align_eval import EvalAlignConfig
from tokalign_core.configs.cooccur import CooccurConfig
from tokalign_core.configs.corpus import CorpusConfig, SourceSpec
from tokalign_core.configs.distill import DistillConfig
from tokalign_core.configs.doctor import DoctorConfig
from tokalign_core.configs.evaluate import EvalConfig, LmEvalConfig
from tokalign_core.configs.glove import GloveConfig
from tokalign_core.configs.hidden_states import HiddenStatesConfig
from tokalign_core.configs.init import InitConfig
from tokalign_core.configs.pipeline import PipelineConfig
from tokalign_core.configs.pretrain import PretrainConfig
from tokalign_core.configs.text_corpus import TextCorpusConfig
from tokalign_core.configs.tokenize import TokenizeConfig
from tokalign_core.configs.train import StageConfig, TrainConfig

__all__ = [
    "AlignConfig", "CooccurConfig", "CorpusConfig", "DistillConfig", "DoctorConfig",
    "EvalAlignConfig", "EvalConfig", "GloveConfig", "HiddenStatesConfig", "InitConfig",
    "LmEvalConfig", "PipelineConfig", "PretrainConfig", "SourceSpec", "StageConfig",
    "TextCorpusConfig", "TokenizeConfig", "TrainConfig", "VecMapConfig",
]
