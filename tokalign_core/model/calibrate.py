"""LM-head calibration for a new vocabulary (issue 14; benchmarks/bakeoff_real.md).

A copied or averaged head row gets the logit scale of a *source* token, not of the target
token it now stands for. A target token t whose text the source tokenizer spells as pieces
p1 p2 ... pk is predicted by the source model piece by piece, so

    log P(t | ctx) = log P_src(p1 | ctx) + log P(p2 ... pk | ctx, p1).

The head row of t therefore starts as the source head row of its *first piece* p1 (which
scores the first factor), and a per-token logit bias b_t stands in for the second factor.
Without it, every target token that starts with p1 (its "family") would get p1's whole
probability; with

    b_t = log (c_t + alpha) / sum_{t' in family(p1)} (c_t' + alpha)      (c = target counts)

p1's probability is split over its family in proportion to how often each member occurs
in the corpus (shared tokens belong to their own family). ``passes`` > 0 then refines b on
the model's own predictions (:func:`fit_bias`): the mean predicted distribution over
sample positions is pulled to the corpus's target unigram distribution.

The saved model must stay a plain Hugging Face model, whose heads usually have no bias, so
b is folded into the head rows (:func:`fold_bias`): exactly through an LM-head bias or a
final LayerNorm (its output has zero mean across features), approximately for RMSNorm
(Llama, SmolLM2, Qwen2: along the direction u in which the final hidden states are closest
to constant, ``W_t += b_t u``; the relative spread of ``h . u`` is reported as
``fold_residual``). A tied model is untied for this (the head gets its own rows).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokalign_core.model.embeddings import embedding_modules

log = logging.getLogger(__name__)


@dataclass
class CalibrationData:
    """Target-side corpus statistics the calibration learns from."""

    counts: np.ndarray  # int64 [V_t]: target token frequencies over the training shards
    blocks: list[np.ndarray]  # int64 [L_i] each: document openings, target token ids

    @classmethod
    def from_tokens(cls, folder: str | Path, n_blocks: int = 48, block_len: int = 512,
                    seed: int = 0) -> CalibrationData:
        """Counts and ``n_blocks`` document openings (<= ``block_len`` tokens, documents of
        >= 16) drawn round robin over the shards of a tokens artifact (``tokalign
        tokenize``), so every part of a mixed corpus is represented."""
        folder = Path(folder)
        if not (folder / "counts.npy").exists():
            raise ValueError(
                f"{folder} is not a tokens artifact (no counts.npy); pass the target-side "
                "output folder of `tokalign tokenize`"
            )
        counts = np.load(folder / "counts.npy", allow_pickle=False).astype(np.int64)
        shards = sorted(p.name for p in folder.glob("shard-*") if p.is_dir())
        rng = np.random.default_rng(seed)
        queues = []  # per shard: its documents of >= 16 tokens, in a seeded order
        for name in shards:
            ids = np.load(folder / name / "ids.npy", mmap_mode="r", allow_pickle=False)
            offsets = np.load(folder / name / "offsets.npy", allow_pickle=False)
            long = np.flatnonzero(np.diff(offsets) >= 16)
            queues.append([(ids, int(offsets[i]), int(offsets[i + 1]))
                           for i in rng.permutation(long)])
        blocks: list[np.ndarray] = []
        for k in range(max((len(q) for q in queues), default=0)):  # round robin over shards
            for q in queues:
                if k < len(q) and len(blocks) < n_blocks:
                    ids, start, end = q[k]
                    blocks.append(np.asarray(ids[start:min(end, start + block_len)],
                                             dtype=np.int64))
        return cls(counts, blocks)

    @classmethod
    def for_init(cls, folder: str | Path, cfg: Any) -> CalibrationData:
        """:meth:`from_tokens` with the sampling settings of ``cfg`` (an ``InitConfig``:
        ``calibration_blocks``, ``calibration_block_len``, ``seed``), as ``initialize``
        expects them."""
        return cls.from_tokens(folder, cfg.calibration_blocks, cfg.calibration_block_len,
                               cfg.seed)


def first_pieces(target_tok: Any, source_tok: Any, shared: np.ndarray, n_source: int,
                 known: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """int64 [V_t]: the source id of every target token's first piece (its own source row
    for tokens both vocabularies share, ``shared[t] >= 0``), -1 where the source tokenizer
    cannot spell the token. ``known``: source tokenizations already computed (the init
    plan's FVT pieces), so only the other tokens are encoded again."""
    from tokalign_core.model.baselines import fvt_pieces

    first = shared.astype(np.int64).copy()
    known = {t: p for t, p in (known or {}).items() if first[t] < 0 and len(p)}
    todo = [t for t in np.flatnonzero(first < 0).tolist() if t not in known]
    pieces, _ = fvt_pieces(target_tok, source_tok, todo, n_source)
    for t, p in {**known, **pieces}.items():
        first[t] = p[0]
    return first


def target_counts(counts: np.ndarray, n_target: int) -> np.ndarray:
    """float64 [V_t]: ``counts`` cut or zero-padded to the target vocabulary."""
    out = np.zeros(n_target)
    n = min(n_target, len(counts))
    out[:n] = counts[:n]
    return out


def family_bias(first: np.ndarray, counts: np.ndarray, n_source: int, alpha: float = 0.5,
                floor: float = -12.0) -> np.ndarray:
    """float64 [V_t]: b_t = log (c_t + alpha) / sum over t's family of (c + alpha), where the
    family of t is every target token with the same first piece; ``floor`` for tokens
    without one. Every b_t <= 0 and each family's exp(b) sums to 1."""
    c = target_counts(counts, len(first)) + alpha
    ok = first >= 0
    total = np.zeros(n_source)
    np.add.at(total, first[ok], c[ok])
    b = np.full(len(first), floor)
    b[ok] = np.log(c[ok] / total[first[ok]])
    return np.maximum(b, floor)


class _Captured(Exception):
    """Raised by the LM head's pre-hook: the head input is all :func:`head_inputs` needs."""


def head_inputs(model: Any, blocks: list[np.ndarray]) -> Any:
    """float32 [n_positions, d]: what the LM head sees (the final hidden states) on every
    position of ``blocks``, one forward pass per block. The pass stops at the head: its
    [L, V] logits (151k columns for Qwen2) would cost as much as the rest of a small model."""
    import torch

    _, head = embedding_modules(model)
    seen: list[Any] = []

    def capture(module: Any, args: tuple) -> None:
        seen.append(args[0][0].detach().float())
        raise _Captured

    hook = head.register_forward_pre_hook(capture)
    try:
        with torch.no_grad():
            for ids in blocks:
                with contextlib.suppress(_Captured):
                    model(torch.as_tensor(ids, dtype=torch.long)[None])
    finally:
        hook.remove()
    if len(seen) != len(blocks):
        raise RuntimeError(f"{type(model).__name__} did not reach its LM head on every block")
    return torch.cat(seen)


def fit_bias(states: Any, head_rows: Any, counts: np.ndarray, b0: np.ndarray, passes: int,
             alpha: float = 0.5, chunk: int = 1024) -> tuple[np.ndarray, list[float]]:
    """Refine b [V_t] so the mean softmax(states @ head_rows.T + b) over the positions
    matches the target unigram distribution pi (counts + alpha, normalised): each pass
    adds log(pi / q) (the fixed point of the likelihood's gradient in b). ``states``
    [n, d], ``head_rows`` [V_t, d]. Returns b and KL(pi || q) before each pass."""
    import torch

    pi = target_counts(counts, len(b0)) + alpha
    pi /= pi.sum()
    b, kls = b0.astype(np.float64).copy(), []
    for _ in range(passes):
        q = torch.zeros(len(b), dtype=torch.float64)
        bt = torch.from_numpy(b).float()
        with torch.no_grad():
            for i in range(0, len(states), chunk):
                z = states[i:i + chunk] @ head_rows.T + bt
                q += torch.softmax(z, -1).double().sum(0)
        q = (q / len(states)).numpy()
        kls.append(float((pi * np.log(pi / q)).sum()))
        b += np.log(pi / q)
        log.info("calibration pass %d: KL(unigram || mean prediction) %.4f", len(kls), kls[-1])
    return b, kls


def final_norm(model: Any) -> Any:
    """The module producing the LM head's input: the last normalisation layer registered
    outside the decoder blocks (``model.norm``, ``final_layer_norm``, ``ln_f``), or None."""
    found = None
    for name, module in model.named_modules():
        if "norm" in type(module).__name__.lower() and ".layers." not in name \
                and ".h." not in name and not name.endswith(("attn", "mlp")):
            found = module
    return found


def feeds_head_exactly(norm: Any, states: Any) -> bool:
    """Whether ``norm`` is a LayerNorm with a bias whose outputs are the head inputs
    ``states`` [n, d]: then (h - beta) / g sums to 0 over the features of every state,
    the property the exact fold relies on (checked on the states, so a wrongly guessed
    final norm falls back to the approximate fold instead of folding wrongly)."""
    import torch

    if not isinstance(norm, torch.nn.LayerNorm) or norm.bias is None or norm.weight is None \
            or not bool((norm.weight.abs() > 1e-6).all()):
        return False
    centred = (states.double() - norm.bias.double()) / norm.weight.double()
    return bool((centred.sum(-1).abs() <= 1e-3 * centred.abs().sum(-1) + 1e-6).all())


def least_varying_direction(states: Any) -> tuple[np.ndarray, float]:
    """(u [d], relative spread): the direction with mean(h . u) = 1 and the least variance
    over ``states`` [n, d] (u = C^-1 m / m' C^-1 m); spread = std(h . u)."""
    h = states.double().numpy()
    m = h.mean(0)
    cov = np.cov(h.T) + 1e-6 * np.eye(h.shape[1])
    z = np.linalg.solve(cov, m)
    u = z / (m @ z)
    return u, float((h @ u).std())


def fold_bias(model: Any, bias: np.ndarray, states: Any) -> dict[str, Any]:
    """Fold the logit bias [V] (one per head row) into the model's weights; ``states``
    [n, d] are head inputs (:func:`head_inputs`) for the approximate path. Returns how:
    ``{"fold": "head-bias" | "layernorm" | "direction", "fold_residual": float}``."""
    import torch

    _, head = embedding_modules(model)
    W = head.weight
    b = torch.as_tensor(bias, dtype=torch.float64)
    with torch.no_grad():
        if getattr(head, "bias", None) is not None:
            head.bias += b.to(head.bias.dtype)
            return {"fold": "head-bias", "fold_residual": 0.0}
        norm = final_norm(model)
        if feeds_head_exactly(norm, states):
            # h = g*x_hat + beta with sum(x_hat) = 0, so d = 1/g is orthogonal to every
            # g*x_hat: rows moved along d see only beta. Shift beta along d too so that
            # d . beta is far from 0, and give each row k_t d with k_t (d . beta') = b_t
            # minus what the beta shift added to its logit.
            d = 1.0 / norm.weight.double()
            c = 1.0 if float(d @ norm.bias.double() + d @ d) != 0 else -1.0
            beta = norm.bias.double() + c * d
            k = (b - c * (W.double() @ d)) / (d @ beta)
            norm.bias.copy_(beta.to(norm.bias.dtype))
            W += (k[:, None] * d[None]).to(W.dtype)
            return {"fold": "layernorm", "fold_residual": 0.0}
        u, spread = least_varying_direction(states)
        W += (b[:, None] * torch.from_numpy(u)[None]).to(W.dtype)
        return {"fold": "direction", "fold_residual": spread}


def untie_head(model: Any, rows: Any) -> None:
    """Give a tied model its own LM head ``rows`` [V, d] (config.tie_word_embeddings=False,
    so save_pretrained writes both matrices and from_pretrained loads them untied)."""
    import torch

    _, head = embedding_modules(model)
    head.weight = torch.nn.Parameter(rows.detach().clone())
    model.config.tie_word_embeddings = False
    text = getattr(model.config, "text_config", None)
    if text is not None and hasattr(text, "tie_word_embeddings"):
        text.tie_word_embeddings = False
