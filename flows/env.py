"""Environment defaults for self-contained local runs. Import and call this *before*
anything imports Prefect: Prefect reads its settings once, at import time."""

from __future__ import annotations

import os
from pathlib import Path

# A fresh PREFECT_HOME migrates a new SQLite database on first start: minutes on a busy
# 2-core machine, far beyond Prefect's 20 s default.
STARTUP_TIMEOUT_SECONDS = "300"


def embedded_defaults(run_dir: str | Path) -> None:
    """A temporary Prefect server whose home is inside the run folder (unless an API URL or
    PREFECT_HOME is already set), a generous startup timeout, no analytics or telemetry."""
    root = Path(run_dir).expanduser().resolve()
    if not os.environ.get("PREFECT_API_URL"):
        os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
                          STARTUP_TIMEOUT_SECONDS)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
