"""tokalign_core: the pure library behind tokalign (TokAlign / TokAlign++).

Usable without Prefect, MLflow or CuPy: nothing here imports them at module import time.
Submodules are imported on demand (``from tokalign_core.align import vecmap``).
"""

__version__ = "0.1.0"
