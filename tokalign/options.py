"""Typed settings of the commands whose options have no meaning in the library: where the
flow-running commands (``demo``, ``run``) keep their run and how they execute it, what the
demo builds, and how ``neighbors`` shows a target token. Their flags are generated from
these classes (:mod:`tokalign.flags`) like every stage config's."""

from __future__ import annotations

from pydantic import Field

from tokalign_core.configs.base import FrozenConfig


class RunFolderConfig(FrozenConfig):
    """Where ``tokalign run`` keeps a run and how it executes the flows (never part of a
    cache key)."""

    run_dir: str = Field("runs/run", description="artifacts, models, Prefect results, logs "
                         "and mlflow.db")
    workers: int = Field(2, ge=1, description="Dask LocalCluster processes for sharded "
                         "stages; 1 = serial")
    dask_address: str | None = Field(None, description="use an existing Dask scheduler "
                                     "(tcp://host:8786) instead")
    progress: bool = Field(False, description="show the stages' progress bars")


class DemoOptions(RunFolderConfig):
    """What ``tokalign demo`` builds, and where."""

    target: str = Field("builtin:qwen2", description="target tokenizer: builtin:qwen2, a "
                        "folder, tokenizer.json, *.tiktoken or a hub id")
    quick: bool = Field(False, description="a micro source model pretrained here and tiny "
                        "budgets: a wiring smoke test in a few minutes, not a quality result")
    run_dir: str = Field("runs/demo", description="artifacts, models, Prefect results, logs "
                         "and mlflow.db")


class NeighborsOptions(FrozenConfig):
    """How ``tokalign neighbors`` reads TOKEN and shows its neighbours."""

    top: int = Field(5, ge=1, description="how many source tokens to list")
    by_id: bool = Field(False, description="TOKEN is a target token id")
    as_json: bool = Field(False, description="print JSON instead of a table")
