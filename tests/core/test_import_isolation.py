"""tokalign_core is a pure library: every module imports with prefect, mlflow, cupy and
deepspeed made unimportable (a meta-path finder raising ImportError for them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("prefect", "mlflow", "cupy", "cupyx", "deepspeed")

PROBE = r"""
import importlib, importlib.abc, json, pkgutil, sys, traceback

BLOCKED = set(sys.argv[1].split(","))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked by the isolation test")
        return None

sys.meta_path.insert(0, Block())
import tokalign_core

failed = {}
names = ["tokalign_core"] + [m.name for m in pkgutil.walk_packages(
    tokalign_core.__path__, "tokalign_core.")]
for name in names:
    if name.endswith("__main__"):
        continue  # running it would execute the CLI with this probe's argv
    try:
        importlib.import_module(name)
    except Exception:
        failed[name] = traceback.format_exc(limit=3)
try:
    from tokalign.cli import build_parser
    build_parser()  # imports every commands/* module and builds its options
except Exception:
    failed["cli.build_parser"] = traceback.format_exc(limit=3)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps({"names": names, "failed": failed, "leaked": leaked}))
"""


def _probe(blocked: tuple[str, ...]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(blocked)], cwd=ROOT, capture_output=True,
        text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                                     "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_module_imports_without_orchestration_packages():
    result = _probe(BLOCKED)
    assert len(result["names"]) > 10  # really walked the package
    assert "tokalign_core.train.pretrain" in result["names"]
    assert not result["failed"], "\n\n".join(f"{k}:\n{v}" for k, v in result["failed"].items())
    assert result["leaked"] == []


def test_the_blocker_really_blocks():
    """Guard against a finder that blocks nothing: blocking a package the core needs
    (numpy) must make imports fail."""
    result = _probe(("numpy",))
    assert "tokalign_core.align.alignment" in result["failed"]
    assert "blocked by the isolation test" in result["failed"]["tokalign_core.align.alignment"]
