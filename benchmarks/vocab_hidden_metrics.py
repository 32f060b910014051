"""Benchmark: vocabulary canonicalization + shared tokens against the real Qwen2 vocabulary,
hidden-state extraction throughput, and alignment-metric cost.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vocab_hidden_metrics.py [--docs 3000]

Sources: a GPT-2-style byte-level BPE and a LLaMA-2-style SentencePiece BPE (byte fallback),
both 8k, trained here on stdlib text + multilingual lines. Target: Qwen2 (builtin:qwen2,
151,646 ids). Compares byte-canonical matching with the reference code's raw-string
matching. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402


def loadavg() -> list[str]:
    with open("/proc/loadavg") as fh:
        return fh.read().split()[:3]


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def raw_string_shared(source, target) -> int:
    """The reference code's rule: a target vocabulary string present in the source's."""
    s_vocab = source.get_vocab()
    return sum(1 for piece in target.get_vocab() if piece in s_vocab)


def overlap_section(name, src_tok, tgt_tok, tgt_vocab) -> dict:
    from tokalign_core.vocab.vocab import build_vocab, overlap_stats, shared_tokens

    src_vocab, t_build = timed(build_vocab, src_tok)
    shared, t_shared = timed(shared_tokens, src_vocab, tgt_vocab)
    st = overlap_stats(src_vocab, tgt_vocab, shared)
    return {
        "source": name, "build_source_s": round(t_build, 3), "shared_s": round(t_shared, 3),
        "n_shared": st["n_shared"], "source_share": round(st["source_share"], 4),
        "target_share": round(st["target_share"], 5),
        "shared_by_reason": st["shared_by_reason"],
        "raw_string_shared": raw_string_shared(src_tok, tgt_tok),
    }


def hidden_section(src_tok, tgt_tok, n_target: int) -> dict:
    import torch

    from tokalign_core.embed.hidden_states import (
        last_hidden_states,
        source_sequences,
        special_prefix,
        target_sequences,
    )
    from tokalign_core.model import toy
    from tokalign_core.vocab.vocab import build_vocab

    torch.set_num_threads(1)
    model = toy.tiny_gpt_neox(len(src_tok), hidden=256, layers=4, heads=4)
    s_vocab, t_vocab = build_vocab(src_tok), build_vocab(tgt_tok)
    prefix = special_prefix(src_tok)
    _, s_seqs = source_sequences(s_vocab, prefix)
    (t_ids, t_seqs, _, _), t_enc = timed(target_sequences, src_tok, s_vocab, t_vocab, prefix)
    _, t_src = timed(last_hidden_states, model, s_seqs, batch_size=256, progress=False)
    sub = t_seqs[:n_target]
    _, t_tgt = timed(last_hidden_states, model, sub, batch_size=256, progress=False)
    return {
        "model": "GPT-NeoX 4 layers, hidden 256 (random init)",
        "source_tokens": len(s_seqs), "source_s": round(t_src, 2),
        "target_encode_all_s": round(t_enc, 2), "target_with_text": len(t_ids),
        "target_timed": len(sub), "target_s": round(t_tgt, 2),
        "mean_target_len": round(float(np.mean([len(s) for s in t_seqs])), 2),
        "seqs_per_s": round((len(s_seqs) + len(sub)) / (t_src + t_tgt), 1),
    }


def metrics_section(src_tok, texts, n_docs: int) -> dict:
    from tokalign_core.align import metrics as am
    from tokalign_core.align.alignment import Alignment

    docs = [np.array(src_tok(t, add_special_tokens=False)["input_ids"]) for t in texts[:n_docs]]
    v = len(src_tok)
    perm = np.random.default_rng(0).permutation(v)
    perm[: v // 2] = np.arange(v // 2)  # half right, half shuffled
    al = Alignment(perm, np.ones(v, np.float32), np.full(v, 2, np.uint8), np.argsort(perm))
    res, t = timed(am.bleu1_both, al, docs, docs)
    return {"docs": len(docs), "tokens": int(sum(len(d) for d in docs)),
            "bleu1_both_s": round(t, 2), "bleu1_t2s": round(res["t2s"]["bleu1"], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--docs", type=int, default=3000, help="training texts for the sources")
    ap.add_argument("--vocab", type=int, default=8000, help="source vocabulary size")
    ap.add_argument("--hidden-targets", type=int, default=20000,
                    help="target tokens timed through the model")
    args = ap.parse_args()
    from tokalign_core.model import toy
    from tokalign_core.vocab.tokenizers import load_tokenizer
    from tokalign_core.vocab.vocab import build_vocab

    texts = toy.stdlib_texts(args.docs) + toy.MULTILINGUAL_SAMPLES * 20
    bpe, t_bpe = timed(toy.train_bytelevel_bpe, texts, args.vocab)
    sp, t_sp = timed(toy.train_sentencepiece_bpe, texts, args.vocab)
    qwen, t_load = timed(load_tokenizer, "builtin:qwen2")
    q_vocab, t_q = timed(build_vocab, qwen)
    out = {
        "loadavg_start": loadavg(),
        "train_s": {"bytelevel": round(t_bpe, 1), "sentencepiece": round(t_sp, 1)},
        "qwen2": {"load_s": round(t_load, 2), "build_vocab_s": round(t_q, 2),
                  "size": q_vocab.size, "scheme": q_vocab.scheme},
        "overlap": [overlap_section("bytelevel-8k", bpe, qwen, q_vocab),
                    overlap_section("sentencepiece-8k", sp, qwen, q_vocab)],
        "hidden_states": hidden_section(bpe, qwen, args.hidden_targets),
        "metrics": metrics_section(bpe, texts, 1000),
        "loadavg_end": loadavg(),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
