"""GPU paths against the NumPy / CPU reference (``-m gpu``; skipped without a CUDA GPU).

Each test runs one kernel on both sides of the backend switch with the same inputs and
compares the results: CuPy retrieval and VecMap against NumPy, GloVe's torch engine on
CUDA against the same engine on CPU, and a DeepSpeed ZeRO-1 training run on CUDA against
the same run on CPU. ``benchmarks/gpu.sh`` runs these tests and the GPU benchmarks on a GPU
machine in one command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tokalign_core.runtime.backend import cupy_available, torch_cuda_available

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not (cupy_available() and torch_cuda_available()),
        reason="needs CuPy and torch with a CUDA GPU",
    ),
]
REPO = Path(__file__).resolve().parents[2]


def _pair(n: int = 3000, d: int = 64, seed: int = 0):
    """x [n, d] and a rotated, noised copy z (row i of z matches row i of x)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    z = (x @ q + 0.05 * rng.standard_normal((n, d))).astype(np.float32)
    return x, z


@pytest.mark.parametrize("method", ["csls", "cosine"])
def test_retrieval_cupy_matches_numpy(method):
    import cupy

    from tokalign_core.align.retrieval import retrieve_both
    from tokalign_core.runtime.backend import to_numpy

    x, z = _pair()
    cpu = retrieve_both(x, z, method, 10, 64)
    gpu = retrieve_both(cupy.asarray(x), cupy.asarray(z), method, 10, 64)
    for a, b in zip(cpu, gpu, strict=True):
        idx = to_numpy(b.indices)
        # float32 GEMMs on two devices can swap near-ties: allow a handful
        assert (idx == a.indices).mean() > 0.999
        np.testing.assert_allclose(to_numpy(b.best_cos), a.best_cos, atol=1e-4)


def test_vecmap_cupy_matches_numpy():
    from tokalign_core.align import vecmap
    from tokalign_core.configs.align import VecMapConfig

    x, z = _pair(n=2000, d=48, seed=1)
    seeds = (np.arange(0, 2000, 10), np.arange(0, 2000, 10))
    base = dict(init="shared", vocab_cutoff=2000, max_iterations=40)
    cpu = vecmap.fit(x, z, VecMapConfig(backend="numpy", **base), seed_pairs=seeds)
    gpu = vecmap.fit(x, z, VecMapConfig(backend="cupy", **base), seed_pairs=seeds)
    assert gpu.meta["backend"] == "cupy"
    assert isinstance(gpu.x_mapped, np.ndarray)  # results come back to the host
    assert gpu.src.shape == cpu.src.shape
    same = ((gpu.src == cpu.src) & (gpu.trg == cpu.trg)).mean()
    assert same > 0.99
    np.testing.assert_allclose(gpu.x_mapped, cpu.x_mapped, atol=2e-3)
    np.testing.assert_allclose(gpu.z_mapped, cpu.z_mapped, atol=2e-3)


def test_glove_cuda_matches_cpu():
    import scipy.sparse as sp

    from tokalign_core.configs.glove import GloveConfig
    from tokalign_core.embed.glove import train_glove

    rng = np.random.default_rng(2)
    n = 400
    dense = rng.poisson(2.0, (n, n)).astype(np.float64)
    cooc = sp.csr_matrix(np.triu(dense) + np.triu(dense, 1).T)
    cfg = dict(dim=16, iterations=8, engine="torch", seed=0, batch_size=4096)
    cpu = train_glove(cooc, GloveConfig(device="cpu", **cfg), progress=False)
    gpu = train_glove(cooc, GloveConfig(device="cuda", **cfg), progress=False)
    assert gpu.engine == "torch"
    assert gpu.costs[-1] < gpu.costs[0]
    # same seed and batch order; only float summation order differs
    np.testing.assert_allclose(gpu.costs, cpu.costs, rtol=0.02)
    np.testing.assert_allclose(gpu.vectors, cpu.vectors, atol=5e-2)


def test_deepspeed_on_cuda_matches_cpu(tmp_path, bpe_tok, texts):
    from safetensors.numpy import load_file

    from tokalign_core.configs.train import TrainConfig
    from tokalign_core.model import toy
    from tokalign_core.train.data import write_tokens_artifact

    docs = [bpe_tok(t)["input_ids"] for t in texts[:200]]
    write_tokens_artifact(
        tmp_path / "tokens", [docs[:80], docs[80:180]], heldout=docs[180:], vocab_size=len(bpe_tok)
    )
    model = toy.tiny_gpt_neox(len(bpe_tok), hidden=32)
    model.save_pretrained(tmp_path / "neox")
    bpe_tok.save_pretrained(tmp_path / "neox")
    finals = {}
    for device, visible in (("cpu", ""), ("cuda", os.environ.get("CUDA_VISIBLE_DEVICES", "0"))):
        cfg = TrainConfig.tiny(
            str(tmp_path / "neox"),
            str(tmp_path / "tokens"),
            str(tmp_path / device),
            seq_len=32,
            micro_batch_size=2,
            tokens_per_step=128,
            total_steps=4,
            checkpoint_every=10,
            eval_blocks=4,
            precision="fp32",
            save_final=True,
        )
        run_json = tmp_path / f"{device}.json"
        run_json.write_text(cfg.model_dump_json())
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=visible, PYTHONPATH=str(REPO))
        proc = subprocess.run(
            [sys.executable, "-m", "tokalign_core.train", "--config", str(run_json)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = sorted((tmp_path / device).rglob("model.safetensors"))[-1]
        finals[device] = load_file(str(out))
        summary = list((tmp_path / device).rglob("*.json"))
        assert summary, "the run wrote no summary"
    for name, ref in finals["cpu"].items():
        np.testing.assert_allclose(finals["cuda"][name], ref, rtol=1e-2, atol=1e-3, err_msg=name)
    assert json.dumps(sorted(finals["cpu"])) == json.dumps(sorted(finals["cuda"]))
