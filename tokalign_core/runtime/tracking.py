"""Metrics loggers: a tiny protocol that core loops take (``log(metrics, step)``, ``close()``).

Implementations: :class:`NullLogger`, :class:`JsonlLogger` (always safe, local), and
:class:`MlflowLogger` (imported lazily; rank 0 only; attaches to the run named by
``MLFLOW_RUN_ID`` so a DeepSpeed subprocess logs into its parent's run). If the MLflow
server goes away mid-run, the MLflow logger keeps going locally and says so once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tokalign_core.configs.base import redact_userinfo

log = logging.getLogger(__name__)


@runtime_checkable
class MetricsLogger(Protocol):
    def log(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def close(self) -> None: ...


class NullLogger:
    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        return None

    def close(self) -> None:
        return None


class JsonlLogger:
    """Append one JSON object per call to a file (flushed, so a crash loses nothing)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", buffering=1)  # noqa: SIM115 - closed by close()

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        row = {"step": step, "time": time.time(), **_finite(metrics)}
        self._fh.write(json.dumps(row) + "\n")

    def close(self) -> None:
        self._fh.close()


class MlflowLogger:
    """Log to MLflow; on any tracking error fall back to local-only and warn once."""

    def __init__(self, prefix: str = "", run_id: str | None = None):
        import mlflow  # lazy: core stays importable without MLflow

        self._mlflow = mlflow
        self.prefix = prefix
        self.run_id = run_id or os.environ.get("MLFLOW_RUN_ID")
        self.failed = False

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.failed or not is_rank_zero():
            return
        data = {f"{self.prefix}{k}": v for k, v in _finite(metrics).items()}
        try:
            if self.run_id:
                from mlflow.entities import Metric

                ts = int(time.time() * 1000)
                batch = [Metric(k, float(v), ts, step or 0) for k, v in data.items()]
                self._mlflow.MlflowClient().log_batch(self.run_id, metrics=batch)
            else:
                self._mlflow.log_metrics(data, step=step)
        except Exception as exc:  # tracking must never kill training
            self.failed = True
            log.warning("MLflow logging failed (%s); metrics continue in the local JSONL log",
                        redact_userinfo(str(exc)))

    def close(self) -> None:
        return None


class MultiLogger:
    """Fan out to several loggers."""

    def __init__(self, *loggers: MetricsLogger):
        self.loggers = [lg for lg in loggers if lg is not None]

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        for lg in self.loggers:
            lg.log(metrics, step)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()


def default_logger(jsonl_path: str | Path | None = None, prefix: str = "") -> MetricsLogger:
    """JSONL (when a path is given) plus MLflow when a run is attached via env."""
    loggers: list[MetricsLogger] = []
    if jsonl_path is not None:
        loggers.append(JsonlLogger(jsonl_path))
    if os.environ.get("MLFLOW_RUN_ID") and is_rank_zero():
        try:
            loggers.append(MlflowLogger(prefix=prefix))
        except ImportError:
            log.warning("MLFLOW_RUN_ID is set but mlflow is not installed; logging locally")
    return MultiLogger(*loggers)


def is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _finite(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out[k] = f
    return out
