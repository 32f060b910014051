"""One array-backend switch: NumPy (reference, what CI runs), CuPy (GPU) and torch.

Kernels take arrays and derive their namespace with :func:`array_namespace`, so the same
code runs on NumPy and CuPy. ``resolve_backend("auto")`` picks CuPy only when a CUDA device
is really usable (CuPy imports without a GPU but every operation then raises).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Literal

import numpy as np

BackendName = Literal["auto", "numpy", "cupy", "torch"]


def cupy_available() -> bool:
    """True when CuPy is installed *and* a CUDA device answers."""
    try:
        import cupy  # noqa: F401
        from cupy import cuda

        return bool(cuda.is_available())
    except Exception:
        return False


def torch_cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def resolve_backend(name: BackendName = "auto") -> Literal["numpy", "cupy", "torch"]:
    """Map ``auto`` to the fastest usable backend; validate explicit choices."""
    if name == "auto":
        if cupy_available():
            return "cupy"
        return "torch" if torch_cuda_available() else "numpy"
    if name == "cupy" and not cupy_available():
        raise ImportError(
            "backend 'cupy' requested but CuPy with a CUDA device is not available; "
            "install the extra with `pip install tokalign[gpu]` on a GPU machine, or use "
            "backend='numpy'"
        )
    if name not in ("numpy", "cupy", "torch"):
        raise ValueError(f"unknown backend {name!r}; choose auto, numpy, cupy or torch")
    return name


def get_xp(name: BackendName = "numpy") -> ModuleType:
    """The NumPy-compatible module for a backend name (torch maps to NumPy on host)."""
    resolved = resolve_backend(name)
    if resolved == "cupy":
        import cupy

        return cupy
    return np


def array_namespace(x: Any) -> ModuleType:
    """numpy or cupy, whichever owns ``x`` (vecmap's switch, without star imports)."""
    if type(x).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def asarray(x: Any, backend: BackendName = "numpy", dtype: Any = None) -> Any:
    """Move ``x`` (NumPy, CuPy or torch) onto a backend's device."""
    x = to_numpy(x) if backend != "cupy" else x
    return get_xp(backend).asarray(x, dtype=dtype)


def to_numpy(x: Any) -> np.ndarray:
    """Host NumPy copy of a NumPy, CuPy or torch array."""
    if isinstance(x, np.ndarray):
        return x
    mod = type(x).__module__
    if mod.startswith("cupy"):
        return x.get()
    if mod.startswith("torch"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def torch_device(backend: BackendName = "auto") -> str:
    """torch device string for a backend choice ('cuda' when a GPU is usable)."""
    if backend in ("auto", "torch", "cupy") and torch_cuda_available():
        return "cuda"
    return "cpu"
