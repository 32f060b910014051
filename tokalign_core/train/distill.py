"""Token-level and sentence-level distillation (TokAlign, METHOD.md section 8).

Token level. Once student and teacher share a vocabulary, the loss at every labelled
position is

    loss = CE(student) + lambda * T^2 * KL(p_teacher^T || p_student^T),
    p^T = softmax(logits / T),  KL(p || q) = sum_v p_v (log p_v - log q_v),

averaged over the labelled positions (the paper: the plain sum, lambda = T = 1; T^2 keeps
the gradient scale independent of T, Hinton et al. 2015). Both logit tensors are cut to the
tokenizer's length first: embedding matrices are often padded (e.g. to a multiple of 64)
and those columns are no tokens. CE uses the same cut.

Memory. For 150k-256k vocabularies the fp32 temporaries of log-softmax, softmax and their
product, [batch, seq, vocab] each, dominate. :func:`token_loss_sums` walks the sequence in
chunks of ``chunk_size`` positions and wraps each chunk in activation checkpointing, so only
one chunk's temporaries ever live at once (the backward recomputes them). The result is the
same sum as the unchunked computation, up to float summation order.

Precomputed top-k (``top_k > 0``). The teacher scores the training blocks once; per
position we store its k largest log-probs at temperature T and their ids. The KL then runs
over that support with the teacher renormalised there, ``p~ = softmax(top-k log-probs)``:
``sum_k p~_k (log p~_k - log q_k)``, ``q`` the student's full-vocabulary softmax gathered
at the k ids. This is >= 0 (Gibbs: it is >= -log sum_k q_k) and zero iff the student puts
exactly p~ on those ids. It drops the teacher's tail mass (approximation) and costs
``n_blocks * (seq_len + 1) * k * (4 + 2)`` bytes on disk with float16 log-probs.

Sentence level (Kim and Rush 2016), the baseline: prompts are the first ``prompt_len``
tokens of training blocks; the teacher continues each to the block length (greedy or
seeded sampling) and the student trains with CE on the generated tokens only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokalign_core.store.artifacts import atomic_dir

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass
class LossSums:
    """Sums over labelled positions (0-dim tensors) and their count."""

    ce: Any
    kl: Any
    n: Any

    def loss(self, kl_weight: float, temperature: float) -> Any:
        """``(ce + lambda * T^2 * kl) / n``, the per-token training loss."""
        n = self.n.clamp(min=1)
        return (self.ce + kl_weight * temperature**2 * self.kl) / n


def cut_vocab(logits: Any, vocab_size: int, name: str = "logits") -> Any:
    """Drop padded vocabulary columns: [..., V_padded] -> [..., vocab_size]."""
    if logits.shape[-1] < vocab_size:
        raise ValueError(
            f"{name} have {logits.shape[-1]} columns but the tokenizer has {vocab_size} "
            "tokens; the model's head is too small for this tokenizer"
        )
    return logits[..., :vocab_size]


def _chunk_terms(student: Any, labels: Any, teacher: Any, topk_ids: Any, topk_lp: Any,
                 temperature: float) -> Any:
    """(ce_sum, kl_sum) of one chunk. student/teacher [B, c, V], labels [B, c] int64,
    topk_ids int64 [B, c, k], topk_lp float [B, c, k]. Returns float32 [2]."""
    import torch
    import torch.nn.functional as F

    s = student.float()
    log_q = F.log_softmax(s, dim=-1)
    ce = F.nll_loss(log_q.reshape(-1, s.shape[-1]), labels.reshape(-1),
                    ignore_index=IGNORE_INDEX, reduction="sum")
    mask = (labels != IGNORE_INDEX).to(s.dtype)
    kl = s.new_zeros(())
    if teacher is not None or topk_ids is not None:
        log_qt = log_q if temperature == 1.0 else F.log_softmax(s / temperature, dim=-1)
        if teacher is not None:
            log_p = F.log_softmax(teacher.float() / temperature, dim=-1)
            per_pos = (log_p.exp() * (log_p - log_qt)).sum(-1)
        else:
            log_p = F.log_softmax(topk_lp.float(), dim=-1)  # renormalise over the top k
            per_pos = (log_p.exp() * (log_p - log_qt.gather(-1, topk_ids))).sum(-1)
        kl = (per_pos * mask).sum()
    return torch.stack([ce, kl])


def token_loss_sums(student_logits: Any, labels: Any, vocab_size: int,
                    teacher_logits: Any = None, topk: tuple[Any, Any] | None = None,
                    temperature: float = 1.0, chunk_size: int = 256) -> LossSums:
    """CE and KL sums over the labelled positions, computed chunk by chunk.

    Args:
        student_logits: float [B, S, V_s >= vocab_size] (any float dtype).
        labels: int64 [B, S], the next token at each position or -100 to skip it.
        vocab_size: the shared tokenizer's length; both sides are cut to it.
        teacher_logits: float [B, S, V_t >= vocab_size] or None.
        topk: (ids int64 [B, S, k], log-probs float [B, S, k]) from a precomputed cache
            (teacher at ``temperature``), instead of ``teacher_logits``.
        chunk_size: positions per chunk; the sums do not depend on it.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    if teacher_logits is not None and topk is not None:
        raise ValueError("pass teacher_logits or topk, not both")
    student = cut_vocab(student_logits, vocab_size, "student logits")
    teacher = None if teacher_logits is None else cut_vocab(
        teacher_logits, vocab_size, "teacher logits")
    if teacher is not None and teacher.shape[:2] != student.shape[:2]:
        raise ValueError(f"teacher logits {tuple(teacher.shape)} do not match the student's "
                         f"{tuple(student.shape)} in batch/sequence")
    totals = student.new_zeros(2, dtype=torch.float32)
    use_ckpt = torch.is_grad_enabled() and student.requires_grad
    for a in range(0, student.shape[1], chunk_size):
        sl = slice(a, a + chunk_size)
        args = (student[:, sl], labels[:, sl],
                None if teacher is None else teacher[:, sl],
                None if topk is None else topk[0][:, sl],
                None if topk is None else topk[1][:, sl])
        if use_ckpt:
            part = checkpoint(_chunk_terms, *args, temperature, use_reentrant=False)
        else:
            part = _chunk_terms(*args, temperature)
        totals = totals + part
    n = (labels != IGNORE_INDEX).sum().to(torch.float32)
    return LossSums(ce=totals[0], kl=totals[1], n=n)


def teacher_topk(teacher_logits: Any, vocab_size: int, k: int, temperature: float = 1.0,
                 chunk_size: int = 256) -> tuple[Any, Any]:
    """Top-k log-probs at temperature T: logits [B, S, V] -> (ids int64 [B, S, k],
    log-probs float32 [B, S, k]), chunked over the sequence like the loss."""
    import torch
    import torch.nn.functional as F

    logits = cut_vocab(teacher_logits, vocab_size, "teacher logits")
    if k > vocab_size:
        raise ValueError(f"top_k={k} exceeds the vocabulary ({vocab_size}); lower top_k")
    ids, lps = [], []
    for a in range(0, logits.shape[1], chunk_size):
        lp = F.log_softmax(logits[:, a:a + chunk_size].float() / temperature, dim=-1)
        v, i = lp.topk(k, dim=-1)
        ids.append(i)
        lps.append(v)
    return torch.cat(ids, 1), torch.cat(lps, 1)


# ---------------------------------------------------------------- on-disk teacher caches


class TeacherCache:
    """Per-block teacher outputs on disk (``.npy`` files, memory-mapped, no pickle).

    Files: ``block_ids.npy`` int64 [n] (sorted, unique), plus either ``topk_ids.npy`` int32
    [n, L, k] and ``topk_lp.npy`` float16/32 [n, L, k] (token level), or ``seqs.npy``
    int64 [n, L + 1] and ``keep.npy`` bool [n, L + 1] (sentence level: the generated
    block and which of its tokens are training targets); ``meta.json`` identifies the
    teacher and settings so a stale cache is never reused.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self.block_ids = np.load(self.folder / "block_ids.npy", allow_pickle=False)
        self.arrays = {
            p.stem: np.load(p, mmap_mode="r", allow_pickle=False)
            for p in self.folder.glob("*.npy") if p.stem != "block_ids"
        }

    def rows(self, block_ids: np.ndarray) -> np.ndarray:
        """Row index of each block id (int64 [n]); KeyError naming a missing block."""
        idx = np.searchsorted(self.block_ids, block_ids)
        idx = np.clip(idx, 0, len(self.block_ids) - 1)
        missing = self.block_ids[idx] != block_ids
        if missing.any():
            raise KeyError(f"teacher cache {self.folder} lacks block "
                           f"{int(np.asarray(block_ids)[missing][0])}; delete it to rebuild")
        return idx

    def get(self, name: str, block_ids: np.ndarray) -> np.ndarray:
        """Rows of array ``name`` for ``block_ids`` (a copy, in the given order)."""
        return np.asarray(self.arrays[name][self.rows(np.asarray(block_ids))])

    @staticmethod
    def matches(folder: Path, meta: dict) -> bool:
        """True when a complete cache with exactly this meta exists at ``folder``."""
        path = folder / "meta.json"
        return path.exists() and json.loads(path.read_text()) == meta


def _write_cache(folder: Path, meta: dict, arrays: dict[str, np.ndarray]) -> Path:
    """Write arrays + meta into a temp folder and rename it into place (atomic)."""
    with atomic_dir(folder) as tmp:
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", arr, allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps(meta, sort_keys=True, indent=2))
    return folder


def _batches(block_ids: np.ndarray, size: int, progress: bool, desc: str):
    from tqdm.auto import tqdm

    starts = range(0, len(block_ids), size)
    for a in tqdm(starts, desc=desc, disable=not progress, total=len(starts)):
        yield a, block_ids[a:a + size]


def precompute_topk(teacher: Any, blocks: Any, block_ids: np.ndarray, folder: Path,
                    meta: dict, k: int, temperature: float, vocab_size: int,
                    batch_size: int = 8, dtype: str = "float16", chunk_size: int = 256,
                    progress: bool = True) -> TeacherCache:
    """Score ``block_ids`` of a :class:`~tokalign_core.train.data.PackedBlocks` with the teacher
    once and keep the top-k log-probs per position (reused when ``meta`` matches)."""
    import torch

    full_meta = {**meta, "kind": "topk", "k": k, "temperature": temperature, "dtype": dtype}
    if TeacherCache.matches(folder, full_meta):
        return TeacherCache(folder)
    ids_u = np.unique(np.asarray(block_ids, dtype=np.int64))
    L = blocks.seq_len
    out_ids = np.zeros((len(ids_u), L, k), dtype=np.int32)
    out_lp = np.zeros((len(ids_u), L, k), dtype=np.dtype(dtype))
    device = next(teacher.parameters()).device
    with torch.no_grad():
        for a, chunk in _batches(ids_u, batch_size, progress, "teacher top-k"):
            x = torch.from_numpy(blocks.blocks(chunk)[:, :-1]).to(device)
            i, v = teacher_topk(teacher(input_ids=x).logits, vocab_size, k, temperature,
                                chunk_size)
            out_ids[a:a + len(chunk)] = i.cpu().numpy()
            out_lp[a:a + len(chunk)] = v.cpu().numpy().astype(dtype)
    _write_cache(folder, full_meta, {"block_ids": ids_u, "topk_ids": out_ids,
                                     "topk_lp": out_lp})
    return TeacherCache(folder)


def generate_continuations(teacher: Any, prompts: Any, total_len: int, eos_id: int,
                           do_sample: bool = False, temperature: float = 1.0,
                           top_p: float = 1.0, seed: int = 0) -> tuple[Any, Any]:
    """Continue ``prompts`` (int64 [B, P]) to ``total_len`` tokens with the teacher.

    Returns (seqs int64 [B, total_len], keep bool [B, total_len]): ``keep`` marks the
    generated tokens up to and including the first EOS (the training targets); the prompt
    and everything after EOS (filled with EOS) are not targets. Sampling is seeded and
    does not disturb the caller's RNG.
    """
    import torch

    n_new = total_len - prompts.shape[1]
    if n_new < 1:
        raise ValueError(f"total_len {total_len} leaves nothing to generate after the prompt")
    kwargs: dict[str, Any] = {"do_sample": do_sample}
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    devices = [prompts.device] if prompts.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        out = teacher.generate(
            input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=n_new,
            min_new_tokens=0, eos_token_id=eos_id, pad_token_id=eos_id, **kwargs,
        )
    seqs = torch.full((prompts.shape[0], total_len), eos_id, dtype=torch.long,
                      device=prompts.device)
    seqs[:, :out.shape[1]] = out[:, :total_len]
    gen = seqs[:, prompts.shape[1]:]
    # A target is a generated token at or before the first EOS of its row.
    eos_seen_before = torch.cumsum((gen == eos_id).long(), dim=1) - (gen == eos_id).long()
    keep = torch.zeros_like(seqs, dtype=torch.bool)
    keep[:, prompts.shape[1]:] = eos_seen_before == 0
    return seqs, keep


def precompute_sentences(teacher: Any, blocks: Any, block_ids: np.ndarray, folder: Path,
                         meta: dict, prompt_len: int, eos_id: int, do_sample: bool = False,
                         temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                         batch_size: int = 8, progress: bool = True) -> TeacherCache:
    """Sentence-level data: for each block, its first ``prompt_len`` tokens continued by
    the teacher to ``seq_len + 1`` tokens (reused when ``meta`` matches). Batch ``j`` is
    generated with seed ``seed + j`` (independent of the other batches)."""
    import torch

    full_meta = {**meta, "kind": "sentences", "prompt_len": prompt_len, "do_sample": do_sample,
                 "temperature": temperature, "top_p": top_p, "seed": seed}
    if TeacherCache.matches(folder, full_meta):
        return TeacherCache(folder)
    ids_u = np.unique(np.asarray(block_ids, dtype=np.int64))
    total = blocks.seq_len + 1
    seqs = np.zeros((len(ids_u), total), dtype=np.int64)
    keep = np.zeros((len(ids_u), total), dtype=bool)
    device = next(teacher.parameters()).device
    for j, (a, chunk) in enumerate(_batches(ids_u, batch_size, progress, "teacher generate")):
        prompts = torch.from_numpy(blocks.blocks(chunk)[:, :prompt_len]).to(device)
        s, kp = generate_continuations(teacher, prompts, total, eos_id, do_sample,
                                       temperature, top_p, seed + j)
        seqs[a:a + len(chunk)] = s.cpu().numpy()
        keep[a:a + len(chunk)] = kp.cpu().numpy()
    _write_cache(folder, full_meta, {"block_ids": ids_u, "seqs": seqs, "keep": keep})
    return TeacherCache(folder)


def same_vocabulary(student_tok: Any, teacher_tok: Any) -> None:
    """Raise ValueError unless both tokenizers map the same strings to the same ids."""
    a, b = student_tok.get_vocab(), teacher_tok.get_vocab()
    if a == b:
        return
    diff = sorted(set(a.items()) ^ set(b.items()))[:3]
    raise ValueError(
        f"teacher and student tokenizers differ ({len(a)} vs {len(b)} tokens; e.g. {diff}); "
        "token-level distillation needs one shared vocabulary: adapt the student to the "
        "teacher's tokenizer first (tokalign align/init/adapt)"
    )
