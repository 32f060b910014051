"""Map a pure per-shard function over shards: serially, or on a Dask cluster.

Core stages are written as ``per_shard(item) -> result`` plus an explicit merge, and take
an :class:`Executor`. :class:`SerialExecutor` is the single-process reference; the Dask
executor (dask imported lazily) uses a LocalCluster by default or an existing scheduler
address, so the CLI can run one stage on a cluster without Prefect.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol


class Executor(Protocol):
    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]: ...

    def close(self) -> None: ...


class SerialExecutor:
    """Run in this process, in order. The reference every parallel result must equal."""

    def __init__(self, progress: bool = False, desc: str = "shards"):
        self.progress = progress
        self.desc = desc

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        it: Iterable[Any] = items
        if self.progress:
            from tqdm.auto import tqdm

            it = tqdm(items, desc=self.desc, unit="shard")
        return [fn(x) for x in it]

    def close(self) -> None:
        return None


def _pin_threads() -> None:
    # Two cores oversubscribed make torch/BLAS 4-6x slower: one thread per worker.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    # Only an already imported torch needs pinning: a later import reads OMP_NUM_THREADS=1,
    # and importing torch here costs every worker ~5-10 s of start-up for nothing.
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


class DaskExecutor:
    """Dask ``Client.map`` + gather, results in input order.

    ``address=None`` starts a LocalCluster (processes, one thread each, bound to
    127.0.0.1); otherwise connects to the given scheduler (``tcp://host:8786``).
    """

    def __init__(self, address: str | None = None, n_workers: int = 2, progress: bool = True):
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError as exc:  # pragma: no cover - dask is a core dependency
            raise ImportError("the Dask executor needs `pip install dask[distributed]`") from exc
        self._cluster = None
        if address:
            self.client = Client(address)
        else:
            self._cluster = LocalCluster(
                n_workers=n_workers, threads_per_worker=1, processes=True,
                host="127.0.0.1", dashboard_address=None,
            )
            self.client = Client(self._cluster)
        self.client.run(_pin_threads)
        self.progress = progress

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        futures = self.client.map(fn, list(items), pure=False)
        if self.progress:
            import contextlib
            import sys

            from dask.distributed import progress

            # Dask's text bar writes to stdout, where the commands print the artifact path
            # that scripts read: it goes to stderr, like every other progress bar here.
            with contextlib.redirect_stdout(sys.stderr):
                progress(futures, notebook=False)
        return self.client.gather(futures)

    def close(self) -> None:
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_executor(
    workers: int = 1, address: str | None = None, progress: bool = False
) -> Executor:
    """Serial for ``workers <= 1`` and no address; Dask otherwise."""
    if address or workers > 1:
        return DaskExecutor(address=address, n_workers=max(workers, 1), progress=progress)
    return SerialExecutor(progress=progress)
