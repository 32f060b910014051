"""Tiny inputs for flow tests: two toy tokenizers on disk and a jsonl corpus."""

from __future__ import annotations

import json
from pathlib import Path

from tokalign_core.configs.corpus import CorpusConfig, SourceSpec
from tokalign_core.configs.pipeline import PipelineConfig


def tiny_inputs(root: Path, texts: list[str], bpe_tok, sp_tok) -> PipelineConfig:
    """Save the session tokenizers and texts under ``root``; the tiny preset pointing at them."""
    root.mkdir(parents=True, exist_ok=True)
    src, tgt = root / "src_tok", root / "tgt_tok"
    bpe_tok.save_pretrained(src)
    sp_tok.save_pretrained(tgt)
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cfg = PipelineConfig.preset("tiny")
    return PipelineConfig.model_validate({
        **cfg.model_dump(), "source_model": str(src), "target_tokenizer": str(tgt),
        "corpus": CorpusConfig(sources=(SourceSpec(path=str(corpus)),), n_shards=2,
                               heldout_fraction=0.1).model_dump(),
    })


def tiny_models(root: Path, cfg: PipelineConfig, bpe_tok, sp_tok) -> tuple[PipelineConfig, str]:
    """A tiny GPT-NeoX source model (with the source tokenizer) and a tiny Llama teacher
    (with the target tokenizer) saved under ``root``; the config pointing at them and the
    teacher's folder."""
    from tokalign_core.model import toy

    src, teacher = root / "src_model", root / "teacher"
    model = toy.tiny_gpt_neox(len(bpe_tok), hidden=32, layers=1, heads=2)
    model.save_pretrained(src)
    bpe_tok.save_pretrained(src)
    t_model = toy.tiny_llama(len(sp_tok), hidden=32, layers=1, heads=2,
                             tie=True)
    t_model.config.bos_token_id = sp_tok.bos_token_id
    t_model.config.eos_token_id = sp_tok.eos_token_id
    t_model.save_pretrained(teacher)
    sp_tok.save_pretrained(teacher)
    data = cfg.model_dump()
    data.update(source_model=str(src), source_tokenizer=None)
    return PipelineConfig.model_validate(data), str(teacher)
