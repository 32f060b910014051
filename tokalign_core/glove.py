"""GloVe training on a co-occurrence matrix (Pennington et al. 2014, eq. 8; METHOD.md 2.1).

Minimise  J = sum over nonzero X_ij of f(X_ij) (w_i . c_j + b_i + b'_j - log X_ij)^2  with
f(x) = min(1, (x / x_max)^alpha), by AdaGrad. The token vector is w + c ("model 2").

One implementation in torch runs on CPU and CUDA (device from
:func:`tokalign_core.backend.torch_device`). Differences from the Stanford C tool, which
updates after every single nonzero from several Hogwild threads:

* **Mini-batch AdaGrad.** Each step takes ``batch_size`` nonzeros, computes all their
  residuals with the parameters of before the step, and scatter-adds (``index_add_``) each
  entry's AdaGrad step and squared gradient into its rows. The AdaGrad form is the C
  tool's: the accumulator starts at 1 and holds the squared *eta-scaled* gradients, the
  step is ``eta*g / sqrt(accumulator before the step)``, components clipped at
  ``grad_clip``. A row seen k times in one batch gets the k per-entry steps all scaled by
  the accumulator of before the batch (the C tool grows it between them); with
  ``batch_size=1`` this is exactly the C tool's sequential algorithm.
* **Seeded.** Initialisation (uniform in [-0.5, 0.5] / dim, as the C tool) and the order of
  the nonzeros, reshuffled at every iteration, come from ``seed``; the C tool seeds from
  the clock and shuffles once.
* **Cost** reported per iteration exactly as the C tool: the mean over nonzeros of
  0.5 * f * diff^2, each term computed just before its batch's update.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from tokalign_core.artifacts import ArtifactRef, ArtifactStore
from tokalign_core.configs.glove import GloveConfig

log = logging.getLogger(__name__)

Callback = Callable[[int, float], None]


@dataclass
class GloveResult:
    """vectors: float32 [n, dim] (w + c or w); word/context: float32 [n, dim];
    costs: mean 0.5*f*diff^2 per iteration; seconds: wall time per iteration."""

    vectors: np.ndarray
    word: np.ndarray
    context: np.ndarray
    costs: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when usable else 'cpu'; an explicit 'cuda' without a GPU is an error."""
    from tokalign_core.backend import torch_cuda_available, torch_device

    if name == "auto":
        return torch_device("auto")
    if name == "cuda" and not torch_cuda_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA GPU; use --device cpu")
    return name


def _check_matrix(cooc: sp.spmatrix) -> sp.coo_matrix:
    if not sp.issparse(cooc) or cooc.shape[0] != cooc.shape[1]:
        raise ValueError(f"GloVe needs a square sparse co-occurrence matrix, got "
                         f"{type(cooc).__name__} {getattr(cooc, 'shape', None)}")
    coo = sp.coo_matrix(cooc)
    coo.sum_duplicates()
    keep = coo.data > 0
    if not keep.any():
        raise ValueError("the co-occurrence matrix has no positive entries: nothing to train on")
    if not np.all(np.isfinite(coo.data[keep])):
        raise ValueError("the co-occurrence matrix has non-finite entries")
    return sp.coo_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=coo.shape)


class _Trainer:
    """Parameters, AdaGrad accumulators and the data of one GloVe run (torch tensors).

    Biases ride along as extra columns so one gather/scatter serves vector and bias:
    ``w`` is [n, dim+2] = [w_i, b_i, 1] and ``c`` is [n, dim+2] = [c_j, 1, b'_j], hence
    w_i . c_j + b_i + b'_j is one dot product. The constant columns get zero gradient.
    """

    def __init__(self, coo: sp.coo_matrix, config: GloveConfig, device: str):
        import torch

        self.torch, self.cfg, self.device = torch, config, device
        dtype = getattr(torch, config.dtype)
        n, dim = coo.shape[0], config.dim
        self.gen = torch.Generator(device="cpu").manual_seed(config.seed)
        # int64 indices: torch's CPU gathers/scatters are ~2x faster with them than int32.
        self.rows = torch.as_tensor(coo.row.astype(np.int64), device=device)
        self.cols = torch.as_tensor(coo.col.astype(np.int64), device=device)
        x = coo.data.astype(np.float64)
        self.logx = torch.as_tensor(np.log(x), dtype=dtype, device=device)
        fx = np.minimum(1.0, (x / config.x_max) ** config.alpha)
        self.fx = torch.as_tensor(fx, dtype=dtype, device=device)

        def init(*shape: int) -> Any:  # the C tool's init: uniform [-0.5, 0.5] / dim
            return (torch.rand(*shape, generator=self.gen, dtype=torch.float64) - 0.5) / dim

        w, c = init(n, dim + 2), init(n, dim + 2)
        w[:, dim + 1] = 1.0
        c[:, dim] = 1.0
        self.w, self.c = w.to(dtype=dtype, device=device), c.to(dtype=dtype, device=device)
        self.hw, self.hc = torch.ones_like(self.w), torch.ones_like(self.c)
        self.dim = dim

    def iteration(self, progress: bool = False) -> float:
        """One pass over all nonzeros in a fresh seeded order; returns the C tool's cost."""
        from tqdm.auto import tqdm

        torch = self.torch
        nnz = self.rows.numel()
        perm = torch.randperm(nnz, generator=self.gen).to(self.device)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        bs = self.cfg.batch_size
        for start in tqdm(range(0, nnz, bs), disable=not progress, leave=False,
                          desc="glove batches", unit="batch"):
            total += self.step(perm[start:start + bs])
        return float(total) / nnz

    def step(self, sel: Any) -> Any:
        """One mini-batch AdaGrad update on the nonzeros ``sel``; returns their summed cost."""
        i, j = self.rows[sel], self.cols[sel]
        wi, cj = self.w.index_select(0, i), self.c.index_select(0, j)
        diff = (wi * cj).sum(1) - self.logx[sel]
        fdiff = self.fx[sel] * diff
        cost = 0.5 * (fdiff * diff).sum(dtype=self.torch.float64)
        clip, eta = self.cfg.grad_clip, self.cfg.eta
        g = fdiff.unsqueeze(1)
        # Both gradients use the parameters from before this step.
        gw = (g * cj).clamp_(-clip, clip).mul_(eta)
        gc = (g * wi).clamp_(-clip, clip).mul_(eta)
        gw[:, self.dim + 1] = 0.0  # the constant-1 column of w
        gc[:, self.dim] = 0.0  # the constant-1 column of c
        self._adagrad(self.w, self.hw, i, gw)
        self._adagrad(self.c, self.hc, j, gc)
        return cost

    @staticmethod
    def _adagrad(param: Any, accum: Any, idx: Any, grad: Any) -> None:
        """Per-entry AdaGrad with the accumulators of before the batch (rows may repeat):
        param[idx] -= grad / sqrt(accum[idx]); accum[idx] += grad^2 (scatter-added)."""
        param.index_add_(0, idx, grad / accum.index_select(0, idx).sqrt_(), alpha=-1.0)
        accum.index_add_(0, idx, grad.mul_(grad))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(word, context) float32 [n, dim] on the host (bias columns dropped)."""
        w = self.w[:, : self.dim].detach().cpu().to(self.torch.float32).numpy()
        c = self.c[:, : self.dim].detach().cpu().to(self.torch.float32).numpy()
        return np.ascontiguousarray(w), np.ascontiguousarray(c)


def train_glove(
    cooc: sp.spmatrix,
    config: GloveConfig = GloveConfig(),
    callback: Callback | None = None,
    logger: Any = None,
    progress: bool = True,
) -> GloveResult:
    """Train GloVe vectors on a symmetric co-occurrence matrix.

    cooc: scipy sparse [n, n] (float; only positive entries are used). ``callback(it, cost)``
    and ``logger.log({"glove/cost": ..., "glove/seconds": ...}, step=it)`` run after every
    iteration (1-based). Returns :class:`GloveResult` with float32 vectors [n, dim].
    """
    import torch
    from tqdm.auto import tqdm

    coo = _check_matrix(cooc)
    device = resolve_device(config.device)
    trainer = _Trainer(coo, config, device)
    costs, seconds = [], []
    bar = tqdm(range(1, config.iterations + 1), disable=not progress, desc="glove",
               unit="it")
    with torch.no_grad():
        for it in bar:
            t0 = time.perf_counter()
            cost = trainer.iteration(progress=progress)
            if not np.isfinite(cost):
                raise FloatingPointError(f"GloVe cost became {cost} at iteration {it}; "
                                         "lower eta or check the co-occurrence values")
            costs.append(cost)
            seconds.append(time.perf_counter() - t0)
            bar.set_postfix(cost=f"{cost:.6f}")
            _report(it, cost, seconds[-1], callback, logger)
    word, context = trainer.result()
    vectors = word + context if config.vectors == "w+c" else word.copy()
    return GloveResult(vectors=vectors, word=word, context=context, costs=costs,
                       seconds=seconds)


def _report(it: int, cost: float, secs: float, callback: Callback | None, logger: Any) -> None:
    log.info("glove iteration %d: cost %.6f (%.1f s)", it, cost, secs)
    if callback is not None:
        callback(it, cost)
    if logger is not None:
        logger.log({"glove/cost": cost, "glove/seconds": secs}, step=it)


def build_glove(
    cooccur: ArtifactRef | str | Path,
    config: GloveConfig,
    store: ArtifactStore,
    callback: Callback | None = None,
    logger: Any = None,
    progress: bool = True,
) -> ArtifactRef:
    """Train on a cooccur artifact and write an **embeddings** artifact (``vectors.npy``
    float32 [n, dim], ``token_ids.npy`` int64 [n], ``meta.json`` with the cost history)."""
    from tokalign_core.cooccur import _read_manifest_digest, load_cooccur

    cooc, token_ids, cmeta = load_cooccur(cooccur)
    result = train_glove(cooc, config, callback=callback, logger=logger, progress=progress)
    folder = Path(cooccur.path if isinstance(cooccur, ArtifactRef) else cooccur)
    meta = {
        "stage": "glove",
        "source": "glove",
        "config": config.model_dump(mode="json"),
        "config_digest": config.digest(),
        "device": resolve_device(config.device),
        "cooccur_artifact": str(folder),
        "cooccur_sha256": _read_manifest_digest(folder),
        "tokenizer": cmeta.get("tokenizer"),
        "tokenizer_digest": cmeta.get("tokenizer_digest"),
        "n": int(token_ids.size),
        "dim": config.dim,
        "nnz": int(cooc.nnz),
        "costs": result.costs,
        "seconds_per_iteration": result.seconds,
    }
    with store.writer("embeddings", meta) as w:
        np.save(w.path("vectors.npy"), result.vectors.astype(np.float32), allow_pickle=False)
        np.save(w.path("token_ids.npy"), token_ids.astype(np.int64), allow_pickle=False)
    return w.ref


def load_embeddings(ref: ArtifactRef | str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(vectors float32 [n, d], token_ids int64 [n], meta) of an embeddings artifact."""
    from tokalign_core.cooccur import _artifact_dir, _read_json

    folder = _artifact_dir(ref, "embeddings", ["vectors.npy", "token_ids.npy"])
    vectors = np.load(folder / "vectors.npy", allow_pickle=False)
    token_ids = np.load(folder / "token_ids.npy", allow_pickle=False)
    return vectors, token_ids, _read_json(folder / "meta.json")
