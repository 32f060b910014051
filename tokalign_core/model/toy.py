"""Tiny tokenizers, models and texts built in code: fixtures for tests, demos and
benchmarks on machines without hub access. Nothing here downloads anything."""

from __future__ import annotations

import random
import sysconfig
from collections.abc import Iterable
from pathlib import Path

from tokalign_core.model.load import transformers_lock

MULTILINGUAL_SAMPLES = [
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Le renard brun rapide saute par-dessus le chien paresseux.",
    "El rápido zorro marrón salta sobre el perro perezoso.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "敏捷的棕色狐狸跳过了懒狗。",
    "素早い茶色の狐が怠け者の犬を飛び越える。",
    "Szybki brązowy lis przeskakuje nad leniwym psem.",
    "Hızlı kahverengi tilki tembel köpeğin üzerinden atlar.",
]


def stdlib_texts(max_docs: int = 2000, seed: int = 0, min_chars: int = 40) -> list[str]:
    """Paragraphs of English prose and Python code from this interpreter's standard
    library (always on the machine). Deterministic for a seed."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py"))
    docs: list[str] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        docs.extend(p.strip() for p in text.split("\n\n") if len(p.strip()) >= min_chars)
        if len(docs) >= max_docs * 4:
            break
    rng = random.Random(seed)
    rng.shuffle(docs)
    return docs[:max_docs]


def train_bytelevel_bpe(
    texts: Iterable[str], vocab_size: int = 512, eos: str = "<|endoftext|>"
):
    """GPT-2 style byte-level BPE ("Ġthe"), eos = bos = unk = ``eos`` like Pythia.

    Returns a ``transformers.PreTrainedTokenizerFast``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[eos],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=eos, eos_token=eos, unk_token=eos
    )


def train_sentencepiece_bpe(texts: Iterable[str], vocab_size: int = 512):
    """LLaMA-2 style tokenizer: "▁" word marker, ``<0xNN>`` byte fallback, specials
    ``<unk>`` (0), ``<s>`` (1), ``</s>`` (2). Built with the tokenizers library."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
         decoders.Strip(" ", 1, 0)]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials + byte_tokens, show_progress=False
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def tiny_gpt_neox(vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4,
                  tie: bool = False, seed: int = 0, max_positions: int = 512):
    """A randomly initialised GPT-NeoX (Pythia's family), untied by default."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=4 * hidden,
        max_position_embeddings=max_positions, tie_word_embeddings=tie,
        bos_token_id=0, eos_token_id=0,
    )
    with transformers_lock():
        return GPTNeoXForCausalLM(cfg).eval()


def tiny_llama(vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4,
               tie: bool = True, seed: int = 0, max_positions: int = 512):
    """A randomly initialised Llama, tied embeddings by default."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, intermediate_size=2 * hidden,
        max_position_embeddings=max_positions, tie_word_embeddings=tie,
        bos_token_id=1, eos_token_id=2,
    )
    with transformers_lock():
        return LlamaForCausalLM(cfg).eval()
