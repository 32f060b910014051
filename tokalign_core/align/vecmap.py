"""VecMap self-learning: map two embedding spaces into one (TokAlign++, METHOD.md sec. 4).

Artetxe, Labaka and Agirre (2018), "A robust self-learning method for fully unsupervised
cross-lingual mappings of word embeddings" (ACL), re-derived from the paper:

1. Normalise both sides (unit rows, centred columns, unit rows).
2. Initial dictionary. *Unsupervised* (sec. 3.2): for the ``init_size`` most frequent rows
   take the square root of each side's similarity matrix: with X = U S V^T,
   (X X^T)^(1/2) = U S U^T. Sorting each row makes the rows comparable across languages
   (they no longer depend on the order of the dimensions), so after normalising them the
   two sides are matched by CSLS and the forward and backward argmaxes are united.
   *Seeded*: the shared tokens are the dictionary.
3. Self-learning (sec. 3.3), repeated: the orthogonal maps W_x, W_z maximising the
   dictionary's similarity come from the SVD U S V^T = X_D^T Z_D (W_x = U, W_z = V; both
   sides mapped, equivalent to W = U V^T on one side); the new dictionary is the CSLS
   (k = 10) argmax in both directions over the ``vocab_cutoff`` most frequent rows, with
   stochastic dictionary induction: each similarity entry survives with probability p
   (0.1, doubled whenever ``stochastic_interval`` iterations pass without the objective
   improving by ``threshold``; once p = 1 the same stall ends the loop).

   Stopping (ours, issue 18): at p = 1 an iteration is deterministic, so a dictionary that
   no longer changes is a fixed point: every later iteration would repeat it. The default
   schedule therefore raises p after 5 stalled iterations instead of 50 and stops as soon
   as at most ``stop_change`` (0.1%) of the dropout-free dictionary changed; the paper's
   schedule is ``VecMapConfig.preset("paper")``. Each iteration records the objective and
   the dictionary change (the fraction of its pairs not in the previous dictionary). A
   schedule cut by ``max_iterations`` runs its last iteration without dropout, so the final
   dictionary is never induced from a random sample of the similarities.
4. Final step once (sec. 3.4, from Artetxe et al. 2018 AAAI): whitening, orthogonal map,
   re-weighting by the singular values ^ 0.5, de-whitening.

Choices of ours (documented where they differ from the GPL reference code, which we do not
copy): the objective is the mean best cosine in both directions (deterministic, free from
the retrieval pass); dropped similarity entries are excluded (-inf) rather than set to 0
(a zero can beat every kept negative CSLS score and then wins by index); the dropout mask
is a pure hash of (seed, iteration, row, column) so it does not depend on batching;
CSLS argmaxes are exact: while dropout is on, the ``vocab_cutoff`` x ``vocab_cutoff``
retrieval runs in ``retrieval``'s dense mode (one GEMM into a stored similarity matrix that
serves the neighbour means and both directions, the mask evaluated on short lists; the
exact two-pass mode when the matrix exceeds ``dense_max_bytes``), afterwards in its
one-pass candidate mode. Per iteration the rest is small: a d x d SVD (Procrustes), two
cutoff x d x d products, and a unique over the dictionary.

The loop is :func:`init_state` + :func:`step` + a per-iteration callback; :func:`fit` wires
them together. Every array op goes through the array namespace of the inputs (NumPy or
CuPy, same code).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tokalign_core.align.retrieval import hash_keep, normalize_rows, retrieve_both
from tokalign_core.configs.align import VecMapConfig
from tokalign_core.runtime.backend import array_namespace, asarray, resolve_backend, to_numpy

# ------------------------------------------------------------------ normalisation


def normalize(x: Any, steps: Sequence[str]) -> Any:
    """Apply normalisation ``steps`` in order to float32 [n, d]; returns a new array.

    ``unit``: unit L2 rows; ``center``: zero-mean columns; ``unitdim``: unit-variance
    columns; ``centeremb``: zero-mean rows; ``none``: nothing."""
    xp = array_namespace(x)
    x = xp.array(x, dtype=xp.float32, copy=True)
    for step_name in steps:
        if step_name == "unit":
            x = normalize_rows(x)
        elif step_name == "center":
            x -= x.mean(axis=0, keepdims=True)
        elif step_name == "unitdim":
            std = x.std(axis=0, keepdims=True)
            x /= xp.where(std > 0, std, 1)
        elif step_name == "centeremb":
            x -= x.mean(axis=1, keepdims=True)
        elif step_name != "none":
            raise ValueError(f"unknown normalisation step {step_name!r}")
    return x


# --------------------------------------------------------------- initial dictionary


def sorted_sqrt_similarity(x: Any, steps: Sequence[str]) -> Any:
    """(X X^T)^(1/2) = U S U^T for X = U S V^T [n, d], rows sorted, then normalised.

    Returns float32 [n, n]: a representation of each row that does not depend on the
    basis of the space, hence comparable across two independently trained spaces."""
    xp = array_namespace(x)
    u, s, _ = xp.linalg.svd(x.astype(xp.float64), full_matrices=False)
    sim = ((u * s) @ u.T).astype(xp.float32)
    sim.sort(axis=1)
    return normalize(sim, steps)


def _pairs(fwd: Any, bwd: Any, direction: str) -> tuple[Any, Any]:
    """Dictionary (x rows, z rows) from forward (x -> z) and backward (z -> x) argmaxes."""
    xp = array_namespace(fwd)
    ax = xp.arange(fwd.shape[0], dtype=xp.int64)
    az = xp.arange(bwd.shape[0], dtype=xp.int64)
    if direction == "forward":
        return ax, fwd
    if direction == "backward":
        return bwd, az
    return xp.concatenate([ax, bwd]), xp.concatenate([fwd, az])


def unsupervised_init(x: Any, z: Any, cfg: VecMapConfig) -> tuple[Any, Any]:
    """Initial dictionary from sorted square-root similarities of the first ``init_size``
    rows (normalised ``x`` [n_x, d], ``z`` [n_z, d']; d may differ from d').
    Returns (x rows int64 [m], z rows int64 [m])."""
    n = min(cfg.init_size, x.shape[0], z.shape[0])
    xs = sorted_sqrt_similarity(x[:n], cfg.normalize)
    zs = sorted_sqrt_similarity(z[:n], cfg.normalize)
    method = "csls" if cfg.csls_k > 0 else "cosine"
    fwd, bwd = retrieve_both(xs, zs, method, max(cfg.csls_k, 1), cfg.candidates)
    return _pairs(fwd.indices, bwd.indices, cfg.direction)


# ------------------------------------------------------------------------ mappings


def orthogonal_maps(x: Any, z: Any, src: Any, trg: Any) -> tuple[Any, Any, Any]:
    """Orthogonal Procrustes for both sides: maximise sum_i <x_src_i W_x, z_trg_i W_z>.

    With U S V^T = X_D^T Z_D, W_x = U and W_z = V (then x W_x . z W_z = x U V^T z^T, the
    classic W = U V^T). Returns (W_x float64 [d_x, r], W_z float64 [d_z, r], s float64
    [r]), r = min(d_x, d_z)."""
    xp = array_namespace(x)
    m = x[src].astype(xp.float64).T @ z[trg].astype(xp.float64)
    u, s, vt = xp.linalg.svd(m, full_matrices=False)  # d_x != d_z: rank-r maps
    return u, vt.T, s


def whitening(m: Any) -> tuple[Any, Any]:
    """(M^T M)^(-1/2) and its inverse (M^T M)^(1/2) for M [n, d] (float64 [d, d] each).

    With M = U S V^T: M^T M = V S^2 V^T. Directions with a zero singular value are left
    unscaled (pseudo-inverse), so a dictionary smaller than d does not blow up."""
    xp = array_namespace(m)
    _, s, vt = xp.linalg.svd(m.astype(xp.float64), full_matrices=False)
    ok = s > s.max() * 1e-10
    inv_s = xp.where(ok, 1.0 / xp.where(ok, s, 1.0), 0.0)
    v = vt.T
    return (v * inv_s) @ vt, (v * s) @ vt


def final_maps(x: Any, z: Any, src: Any, trg: Any, cfg: VecMapConfig) -> tuple[Any, Any]:
    """The final step as two matrices (float64 [d_x, d], [d_z, d]): whitening, orthogonal
    map, re-weighting by singular values, de-whitening (Artetxe et al. 2018, AAAI)."""
    xp = array_namespace(x)
    if cfg.whiten:
        wx1, wx1_inv = whitening(x[src])
        wz1, wz1_inv = whitening(z[trg])
    else:
        wx1 = wx1_inv = xp.eye(x.shape[1])
        wz1 = wz1_inv = xp.eye(z.shape[1])
    xw = (x[src].astype(xp.float64) @ wx1).astype(xp.float32)
    zw = (z[trg].astype(xp.float64) @ wz1).astype(xp.float32)
    ar = xp.arange(src.shape[0])
    wx2, wz2, s = orthogonal_maps(xw, zw, ar, ar)
    # Undo a side's whitening in the rotated basis: W2^T (W1)^-1 W2.
    undo = {"src": wx2.T @ wx1_inv @ wx2, "trg": wz2.T @ wz1_inv @ wz2}
    eye = xp.eye(wx2.shape[1])
    mx = wx1 @ wx2 * s ** cfg.src_reweight
    mz = wz1 @ wz2 * s ** cfg.trg_reweight
    mx = mx @ undo.get(cfg.src_dewhiten, eye)
    mz = mz @ undo.get(cfg.trg_dewhiten, eye)
    return mx, mz


# ------------------------------------------------------------------ self-learning


@dataclass
class IterationStats:
    """What the callback receives after each self-learning iteration."""

    iteration: int
    objective: float
    dictionary_size: int
    keep_prob: float
    seconds: float
    recomputed: int
    #: fraction of this dictionary's (x, z) pairs not in the previous one (0: a fixed point)
    dictionary_change: float = 1.0


@dataclass
class VecMapState:
    """Loop state; ``src``/``trg`` int64 [m] is the current dictionary (x rows, z rows)."""

    src: Any
    trg: Any
    iteration: int = 0
    keep_prob: float = 0.1
    best_objective: float = -np.inf
    last_improvement: int = 0
    done: bool = False
    stop_reason: str = ""


def init_state(x: Any, z: Any, cfg: VecMapConfig,
               seed_pairs: tuple[Any, Any] | None = None) -> VecMapState:
    """Initial dictionary (unsupervised, or ``seed_pairs`` = (x rows, z rows) for
    ``init='shared'``) and schedule."""
    xp = array_namespace(x)
    if cfg.init == "shared":
        if seed_pairs is None or len(seed_pairs[0]) == 0:
            raise ValueError(
                "VecMap init='shared' needs seed pairs (shared tokens present in both "
                "embeddings); none were given. Use init='unsupervised' instead"
            )
        src, trg = (xp.asarray(p, dtype=xp.int64) for p in seed_pairs)
        if int(src.max()) >= x.shape[0] or int(trg.max()) >= z.shape[0]:
            raise ValueError("seed pairs index rows beyond the embedding matrices")
    else:
        src, trg = unsupervised_init(x, z, cfg)
    return VecMapState(src=src, trg=trg, keep_prob=cfg.keep_prob)


def _schedule(state: VecMapState, cfg: VecMapConfig) -> VecMapState:
    """Raise the keep probability after a stall; a stall at p = 1 (or the cap) ends.
    The last iteration allowed by ``max_iterations`` runs without dropout."""
    it = state.iteration + 1
    state = replace(state, iteration=it)
    if it > cfg.max_iterations:
        return replace(state, done=True, stop_reason="max_iterations")
    if it - state.last_improvement > cfg.stochastic_interval:
        if state.keep_prob >= 1.0:
            return replace(state, done=True, stop_reason="converged")
        p = min(1.0, state.keep_prob * cfg.stochastic_multiplier)
        state = replace(state, keep_prob=p, last_improvement=it)
    if it == cfg.max_iterations and state.keep_prob < 1.0:
        # The cap cuts the schedule short: induce the final dictionary without dropout
        # (as a converged run's last iterations do), not from a keep_prob sample.
        state = replace(state, keep_prob=1.0)
    return state


def dictionary_change(src: Any, trg: Any, prev_src: Any, prev_trg: Any, n_z: int) -> float:
    """Fraction of the distinct (x row, z row) pairs of a dictionary that are not in the
    previous one (int64 [m] each; 0.0 when nothing changed)."""
    xp = array_namespace(src)
    new = xp.unique(src * n_z + trg)
    old = xp.unique(prev_src * n_z + prev_trg)
    if new.shape[0] == 0:
        return 0.0
    kept = xp.isin(new, old, assume_unique=True)
    return float(1.0 - kept.mean())


def _keep_fns(cfg: VecMapConfig, state: VecMapState) -> tuple[Any, Any]:
    if state.keep_prob >= 1.0:
        return None, None
    base = (cfg.seed * 1_000_003 + state.iteration) * 2
    return hash_keep(base, state.keep_prob), hash_keep(base + 1, state.keep_prob)


def step(state: VecMapState, x: Any, z: Any, cfg: VecMapConfig) -> tuple[VecMapState,
                                                                           IterationStats | None]:
    """One self-learning iteration on normalised ``x`` [n_x, d], ``z`` [n_z, d] (rows
    sorted most frequent first): schedule, Procrustes from the current dictionary, then a
    new dictionary by (stochastic) CSLS over the ``vocab_cutoff`` first rows.
    Returns the new state and its stats (None once the loop is done)."""
    t0 = time.perf_counter()
    if state.done:
        return state, None
    state = _schedule(state, cfg)
    if state.done:
        return state, None
    wx, wz, _ = orthogonal_maps(x, z, state.src, state.trg)
    xp = array_namespace(x)
    xc = (x[: cfg.vocab_cutoff] @ wx.astype(xp.float32))
    zc = (z[: cfg.vocab_cutoff] @ wz.astype(xp.float32))
    keep_f, keep_b = _keep_fns(cfg, state)
    method = "csls" if cfg.csls_k > 0 else "cosine"
    fwd, bwd = retrieve_both(xc, zc, method, max(cfg.csls_k, 1), cfg.candidates,
                             keep_fwd=keep_f, keep_bwd=keep_b,
                             exact_max_keys=cfg.exact_max_keys,
                             dense_max_bytes=cfg.dense_max_bytes)
    objective = _objective(fwd.best_cos, bwd.best_cos, cfg.direction)
    src, trg = _pairs(fwd.indices, bwd.indices, cfg.direction)
    if objective - state.best_objective >= cfg.threshold:
        state = replace(state, best_objective=objective, last_improvement=state.iteration)
    change = dictionary_change(src, trg, state.src, state.trg, max(x.shape[0], z.shape[0]))
    state = replace(state, src=src, trg=trg)
    n_pairs = int(xp.unique(src * zc.shape[0] + trg).shape[0])
    stats = IterationStats(state.iteration, objective, n_pairs, state.keep_prob,
                           time.perf_counter() - t0, fwd.n_recomputed + bwd.n_recomputed,
                           change)
    if (cfg.stop_change is not None and state.keep_prob >= 1.0
            and change <= cfg.stop_change and state.iteration < cfg.max_iterations):
        # deterministic at p = 1: an unchanged dictionary repeats forever
        state = replace(state, done=True, stop_reason="converged")
    return state, stats


def _objective(best_fwd: Any, best_bwd: Any, direction: str) -> float:
    """Mean best cosine over the rows that induced the dictionary."""
    f, b = float(best_fwd.astype(np.float64).mean()), float(best_bwd.astype(np.float64).mean())
    return {"forward": f, "backward": b}.get(direction, (f + b) / 2)


# ---------------------------------------------------------------------------- fit


@dataclass
class VecMapResult:
    """Mapped spaces and the learning record (host NumPy).

    - ``x_mapped`` float32 [n_x, d], ``z_mapped`` float32 [n_z, d]: every row mapped
    - ``src``, ``trg`` int64 [m]: the final dictionary (x rows, z rows)
    - ``history``: one :class:`IterationStats` per iteration
    - ``meta``: iterations, stop reason, final objective, seconds
    """

    x_mapped: np.ndarray
    z_mapped: np.ndarray
    src: np.ndarray
    trg: np.ndarray
    history: list[IterationStats] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def fit(x: Any, z: Any, cfg: VecMapConfig | None = None,
        seed_pairs: tuple[Any, Any] | None = None,
        callback: Callable[[IterationStats], None] | None = None,
        progress: bool = False) -> VecMapResult:
    """Learn the mapping of ``x`` [n_x, d_x] and ``z`` [n_z, d_z] (float, rows sorted most
    frequent first) into one space and apply it to every row.

    ``seed_pairs`` (x rows, z rows): the seed dictionary for ``cfg.init == 'shared'``.
    ``callback`` is called after every iteration with :class:`IterationStats`."""
    from tqdm.auto import tqdm

    cfg = cfg or VecMapConfig()
    _check_inputs(x, z, cfg)
    backend = resolve_backend(cfg.backend)
    x = normalize(asarray(x, backend, dtype=np.float32), cfg.normalize)
    z = normalize(asarray(z, backend, dtype=np.float32), cfg.normalize)
    t0 = time.perf_counter()
    state = init_state(x, z, cfg, seed_pairs)
    history: list[IterationStats] = []
    bar = tqdm(total=None, desc="vecmap", disable=not progress, unit="it")
    while True:
        state, stats = step(state, x, z, cfg)
        if stats is None:
            break
        history.append(stats)
        bar.update(1)
        bar.set_postfix(objective=f"{stats.objective:.5f}", keep=stats.keep_prob)
        if callback is not None:
            callback(stats)
    bar.close()
    mx, mz = final_maps(x, z, state.src, state.trg, cfg)
    xp = array_namespace(x)
    x_mapped = to_numpy(x @ mx.astype(xp.float32))
    z_mapped = to_numpy(z @ mz.astype(xp.float32))
    meta = {"iterations": len(history), "stop_reason": state.stop_reason,
            "objective": history[-1].objective if history else None,
            "seconds": time.perf_counter() - t0, "init": cfg.init, "backend": backend}
    return VecMapResult(np.ascontiguousarray(x_mapped, dtype=np.float32),
                        np.ascontiguousarray(z_mapped, dtype=np.float32),
                        to_numpy(state.src), to_numpy(state.trg), history, meta)


def _check_inputs(x: Any, z: Any, cfg: VecMapConfig) -> None:
    for name, m in (("x", x), ("z", z)):
        if m.ndim != 2 or m.shape[0] < 2:
            raise ValueError(f"VecMap input {name} must be a [n >= 2, d] matrix, got "
                             f"shape {tuple(m.shape)}")
    if not (np.isfinite(to_numpy(x)).all() and np.isfinite(to_numpy(z)).all()):
        raise ValueError("VecMap inputs contain NaN or inf; check the embeddings artifact")
