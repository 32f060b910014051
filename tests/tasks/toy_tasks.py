"""A tiny content-cached task and flow used by the caching tests (run in-process and as
``python -m tests.tasks.toy_tasks RUN_DIR SRC`` in a child process).

``TOKALIGN_TEST_CODE_HASH`` pins ``tokalign_core.store.hashing.code_hash`` so the tests do not
depend on other files of the library changing while they run."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from prefect import flow

from tasks.caching import Workspace
from tasks.common import stage_task
from tasks.records import result_storage
from tasks.runtime import store
from tokalign_core.store import hashing

if os.environ.get("TOKALIGN_TEST_CODE_HASH"):
    hashing.code_hash = lambda: os.environ["TOKALIGN_TEST_CODE_HASH"]


@stage_task("toy-upper", retries=0)
def upper(ws: Workspace, src: Path, factor: int = 1) -> object:
    """Upper-case a file into an artifact; count executions in <run_dir>/calls.txt."""
    ws.root.mkdir(parents=True, exist_ok=True)
    with open(ws.root / "calls.txt", "a") as fh:
        fh.write("call\n")
    with store(ws).writer("upper") as w:
        w.path("u.txt").write_text(Path(src).read_text().upper() * factor)
    return w.ref


@flow(name="toy-cache-flow")
def toy_flow(ws: Workspace, src: Path, factor: int = 1) -> object:
    # The flows' storage (flows.common.Runner.bind): owner-only folder, checked records.
    return upper.with_options(result_storage=result_storage(ws.results_dir))(ws, src, factor)


def calls(run_dir: Path) -> int:
    f = Path(run_dir) / "calls.txt"
    return len(f.read_text().splitlines()) if f.exists() else 0


if __name__ == "__main__":
    ref = toy_flow(Workspace(run_dir=sys.argv[1]), Path(sys.argv[2]))
    print("REF " + json.dumps(ref.model_dump()))
