"""PipelineConfig: the whole TokAlign / TokAlign++ run as one frozen, typed config.

It composes the stage configs (corpus, tokenize, co-occurrence, GloVe, alignment, alignment
metrics, initialisation, two-stage adaptation, distillation, evaluation) and offers the
named presets ``tiny`` (tests, demo), ``tokalign`` (relative representations, ~5k steps),
``tokalign++`` (VecMap + CSLS, ~1k steps) and ``paper-scale`` (Pythia-1b -> Qwen2 with the
papers' hyper-parameters: GloVe 300 d x 15 iterations, 2M tokens per step at 2048, bf16,
DeepSpeed ZeRO-1). The same object is the Prefect flow parameter (rendered as a form), part
of every cache key (by digest) and the MLflow params of the parent run (flattened).

Training configs are complete :class:`TrainConfig` objects whose ``model``, ``tokens``
and ``out_dir`` are filled in by the pipeline at run time (:meth:`PipelineConfig.train_for`),
so the UI shows every hyper-parameter with its default.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from tokalign_core.configs.align import AlignConfig, VecMapConfig
from tokalign_core.configs.align_eval import EvalAlignConfig
from tokalign_core.configs.base import FrozenConfig
from tokalign_core.configs.cooccur import CooccurConfig
from tokalign_core.configs.corpus import CorpusConfig, SourceSpec
from tokalign_core.configs.distill import DistillConfig
from tokalign_core.configs.evaluate import EvalConfig
from tokalign_core.configs.glove import GloveConfig
from tokalign_core.configs.init import InitConfig
from tokalign_core.configs.tokenize import TokenizeConfig
from tokalign_core.configs.train import TrainConfig

# Placeholder for the run-time fields of a TrainConfig (filled in by ``train_for``).
SET_BY_PIPELINE = "(set by the pipeline)"
PRESETS = ("tiny", "tokalign", "tokalign++", "paper-scale")
BASELINES = ("random", "random-permutation", "mean", "multivariate", "fvt")


def short_name(spec: str) -> str:
    """A readable name of a model/tokenizer spec: ``HuggingFaceTB/SmolLM2-135M ->
    SmolLM2-135M``, ``builtin:qwen2 -> qwen2``, ``/x/runs/model/ab12/model -> model``."""
    text = str(spec).rstrip("/").split(":", 1)[-1] if str(spec).startswith("builtin:") \
        else str(spec).rstrip("/")
    return text.rsplit("/", 1)[-1] or str(spec)


def _known(cls: type[FrozenConfig], **fields: Any) -> Any:
    """``cls(**fields)`` keeping only the fields ``cls`` has (quiet/progress switches differ
    between stage configs)."""
    return cls(**{k: v for k, v in fields.items() if k in cls.model_fields})


def _train(**overrides: Any) -> TrainConfig:
    return TrainConfig(model=SET_BY_PIPELINE, tokens=SET_BY_PIPELINE, out_dir=SET_BY_PIPELINE,
                       **overrides)


class PipelineConfig(FrozenConfig):
    """Every stage's settings.

    ``source_model``: the model to adapt (save_pretrained folder or hub id).
    ``source_tokenizer``: its tokenizer (default: the model's). ``target_tokenizer``: the new
    vocabulary (hub id, folder, tokenizer.json, ``*.tiktoken`` or ``builtin:qwen2``).
    ``representation``: ``glove`` (co-occurrence + GloVe, the default) or ``hidden``
    (TokAlign++'s last-token hidden states of the source model; no corpus statistics).
    ``baselines``: initialisations compared against the alignment (evaluated, not trained).
    ``adapt`` / ``distill``: training runs (``None`` skips the stage). ``eval_texts``: a
    folder/file of texts grouped by language for bits-per-byte (default: the corpus's
    held-out split).
    """

    source_model: str = Field("EleutherAI/pythia-1b", description="model to adapt: "
        "hub id, folder, .gguf or builtin:smollm2-135m")
    source_tokenizer: str | None = Field(None, description="the source model's tokenizer "
                                         "(none: the model's own)")
    target_tokenizer: str = Field("builtin:qwen2", description="the new vocabulary")
    corpus: CorpusConfig = Field(
        CorpusConfig(sources=(SourceSpec(path="data/corpus"),)),
        description="text both tokenizers see (same documents)")
    add_bos: bool | None = Field(None, description="prepend BOS (auto/none: the tokenizer's "
                                 "default)")
    add_eos: bool = Field(False, description="append EOS to every document")
    tokenize_batch_size: int = Field(1024, ge=1, description="documents per encode call")
    representation: Literal["glove", "hidden"] = Field(
        "glove", description="token vectors: co-occurrence + GloVe, or the source model's "
        "last-token hidden states")
    cooccur: CooccurConfig = Field(CooccurConfig(), description="co-occurrence counting")
    glove: GloveConfig = Field(GloveConfig(), description="GloVe token vectors")
    hidden_batch_size: int = Field(32, ge=1, description="sequences per hidden-state pass")
    align: AlignConfig = Field(AlignConfig(), description="the target -> source alignment")
    align_eval: EvalAlignConfig = Field(EvalAlignConfig(),
                                        description="scoring the alignment before training")
    init: InitConfig = Field(InitConfig(), description="initialising the model's embeddings")
    baselines: tuple[str, ...] = Field(BASELINES, description="baseline initialisations")
    adapt: TrainConfig | None = Field(_train(), description="two-stage adaptation")
    distill: TrainConfig | None = Field(None, description="token-level distillation")
    evaluate: EvalConfig = Field(EvalConfig(), description="bits per byte, perplexity and "
                                 "compression of every model")
    eval_texts: str | None = Field(None, description="texts by language for bits per byte")
    trust_remote_code: bool = Field(False, description="allow models/tokenizers whose "
                                    "config needs custom code")

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        bad = [b for b in self.baselines if b not in BASELINES]
        if bad:
            raise ValueError(f"unknown baselines {bad}; choose from {list(BASELINES)}")
        if self.adapt is not None and self.adapt.mode != "adapt":
            raise ValueError(f"adapt.mode must be 'adapt', got {self.adapt.mode!r}")
        if self.distill is not None and self.distill.mode == "adapt":
            raise ValueError("distill.mode must be 'distill' or 'sentence-distill'")
        if self.init.method != "aligned":
            raise ValueError("init.method must be 'aligned'; list baselines in `baselines`")
        return self

    # ------------------------------------------------------------------ derived configs
    @property
    def source_tokenizer_spec(self) -> str:
        return self.source_tokenizer or self.source_model

    def tokenize_config(self, side: Literal["source", "target"]) -> TokenizeConfig:
        """The tokenize stage's config for one side (same documents, same policy)."""
        spec = self.source_tokenizer_spec if side == "source" else self.target_tokenizer
        return TokenizeConfig(tokenizer=spec, add_bos=self.add_bos, add_eos=self.add_eos,
                              batch_size=self.tokenize_batch_size,
                              trust_remote_code=self.trust_remote_code)

    def init_config(self, method: str) -> InitConfig:
        """The init config of ``aligned`` or one baseline."""
        return self.init.model_copy(update={"method": method}) if method != "aligned" \
            else self.init

    def train_for(self, which: Literal["adapt", "distill"], model: str, tokens: str,
                  out_dir: str) -> TrainConfig:
        """The ``run.json`` of one training run, validated again with the run-time paths."""
        base = self.adapt if which == "adapt" else self.distill
        if base is None:
            raise ValueError(f"the pipeline has no {which!r} section; set it or skip the stage")
        data = base.model_dump(mode="json")
        data.update(model=model, tokens=tokens, out_dir=out_dir,
                    tokenizer=self.target_tokenizer if base.tokenizer is None else base.tokenizer)
        return TrainConfig.model_validate(data)

    # ------------------------------------------------------------------ for people
    @property
    def method_name(self) -> str:
        """``tokalign++`` (VecMap + CSLS), ``tokalign`` (relative representations) or the
        alignment method's own name."""
        return {"vecmap": "tokalign++", "relative": "tokalign"}.get(self.align.method,
                                                                   self.align.method)

    def title(self) -> str:
        """What a run does, for run names: ``SmolLM2-135M -> qwen2 (tokalign++)``."""
        return (f"{short_name(self.source_model)} -> {short_name(self.target_tokenizer)} "
                f"({self.method_name})")

    def key_params(self) -> dict[str, str]:
        """The few tens of settings a person compares runs by (MLflow params of a parent
        run); the full config goes next to them as ``config.json``. Placeholders filled in
        at run time are left out."""
        c = self.corpus
        out: dict[str, Any] = {
            "source_model": self.source_model,
            "source_tokenizer": self.source_tokenizer_spec,
            "target_tokenizer": self.target_tokenizer, "method": self.method_name,
            "representation": self.representation,
            "corpus.sources": ", ".join(f"{s.path} x{s.ratio:g}" for s in c.sources),
            "corpus.token_budget": c.token_budget, "corpus.byte_budget": c.byte_budget,
            "corpus.n_shards": c.n_shards, "corpus.heldout_fraction": c.heldout_fraction,
            "cooccur.window": getattr(self.cooccur, "window", None),
            "cooccur.min_count": getattr(self.cooccur, "min_count", None),
            "glove.dim": self.glove.dim, "glove.iterations": self.glove.iterations,
            "align.method": self.align.method, "align.csls_k": self.align.csls_k,
            "align.vecmap.init": getattr(self.align.vecmap, "init", None),
            "init.pad_to_multiple_of": self.init.pad_to_multiple_of,
            "baselines": ", ".join(self.baselines) or "none",
            "eval.score_groups": ", ".join(self.evaluate.score_groups or ()) or "all",
        }
        for name in ("adapt", "distill"):
            train = getattr(self, name)
            out[f"{name}"] = "off" if train is None else "on"
            if train is None:
                continue
            for key in ("total_steps", "seq_len", "tokens_per_step", "engine", "precision"):
                out[f"{name}.{key}"] = getattr(train, key, None)
            stages = getattr(train, "stages", None) or ()
            for i, stage in enumerate(stages, 1):
                out[f"{name}.stage{i}.lr"] = getattr(stage, "lr", None)
            if name == "distill" and train.distill is not None:
                out["distill.teacher"] = train.distill.teacher
                out["distill.kl_weight"] = getattr(train.distill, "kl_weight", None)
                out["distill.temperature"] = getattr(train.distill, "temperature", None)
        return {k: str(v) for k, v in out.items()
                if v is not None and v != SET_BY_PIPELINE}

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> PipelineConfig:
        """One of :data:`PRESETS`, with top-level fields replaced by ``overrides``."""
        makers = {"tiny": cls._tiny, "tokalign": cls._tokalign, "tokalign++": cls._tokalign_pp,
                  "paper-scale": cls._paper_scale}
        if name not in makers:
            raise ValueError(f"unknown pipeline preset {name!r}; choose from {list(PRESETS)}")
        data = makers[name]().model_dump()
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(data)

    @classmethod
    def _tokalign_pp(cls) -> PipelineConfig:
        # TokAlign++: VecMap + CSLS; ~1k steps recover the model (paper section 4).
        return cls(align=AlignConfig.preset("tokalign++"), adapt=_train(total_steps=1000))

    @classmethod
    def _tokalign(cls) -> PipelineConfig:
        # TokAlign (ACL 2025): relative representations over 300 anchors; ~5k steps.
        return cls(align=AlignConfig.preset("tokalign"), adapt=_train(total_steps=5000))

    @classmethod
    def _paper_scale(cls) -> PipelineConfig:
        """Pythia-1b -> Qwen2 on ~1B mixed tokens with the papers' hyper-parameters."""
        corpus = CorpusConfig(
            sources=(SourceSpec(path="data/culturax", ratio=0.4),
                     SourceSpec(path="data/the-stack", ratio=0.3),
                     SourceSpec(path="data/proof-pile-2", ratio=0.3)),
            token_budget=1_000_000_000, n_shards=128)
        train = _train(total_steps=1000, engine="deepspeed", precision="bf16", zero_stage=1,
                       seq_len=2048, tokens_per_step=2_097_152)
        return cls(source_model="EleutherAI/pythia-1b", target_tokenizer="Qwen/Qwen2-7B",
                   corpus=corpus, align=AlignConfig.preset("tokalign++"),
                   glove=GloveConfig(dim=300, iterations=15), adapt=train,
                   add_bos=None)

    @classmethod
    def _tiny(cls) -> PipelineConfig:
        """Seconds-scale settings for tests and the demo (tiny models, few steps)."""
        tiny_train = dict(engine="torch", precision="fp32", seq_len=64, micro_batch_size=4,
                          tokens_per_step=512, total_steps=8, checkpoint_every=4,
                          eval_blocks=4, progress=False)
        return cls(
            source_model="(tiny)",
            corpus=CorpusConfig(sources=(SourceSpec(path="data/corpus"),), n_shards=2,
                                heldout_fraction=0.1),
            cooccur=CooccurConfig(min_count=2),
            glove=GloveConfig(dim=16, iterations=5, device="cpu"),
            align=AlignConfig(vecmap=VecMapConfig.preset("fast"), csls_k=5, candidates=16,
                              n_anchors=32),
            align_eval=_known(EvalAlignConfig, bertscore=False, progress=False),
            init=_known(InitConfig, progress=False),
            baselines=("random", "mean", "fvt"),
            adapt=_train(**tiny_train),
            distill=_train(mode="distill", distill=DistillConfig(teacher=SET_BY_PIPELINE),
                           **tiny_train),
            evaluate=_known(EvalConfig, progress=False, max_docs_per_group=20),
        )
