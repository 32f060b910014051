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


# --- static checks: every import statement, module level or inside a function ---------------

import ast  # noqa: E402

CORE = ROOT / "tokalign_core"
FORBIDDEN = ("flows", "tasks", "deployments", "tokalign")
# the ``python -m tokalign_core`` entry point forwards to the CLI (its docstring says so)
ALLOWED_TO_IMPORT_CLI = {"tokalign_core.__main__"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported_names(path: Path, name: str | None = None) -> list[tuple[int, str, tuple[str, ...]]]:
    """Every module an import in ``path`` names: ``(line, module, imported names)``, for
    ``import a.b``, ``from a.b import c`` (relative ones resolved) and
    ``importlib.import_module("a.b")`` with a string literal, at any depth of the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = (name or _module_name(path)).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: list[tuple[int, str, tuple[str, ...]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.append((node.lineno, module, tuple(a.name for a in node.names)))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(
                node.func, "id", None)) == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value, ()))
    return found


def _core_files() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_the_library_never_names_flows_tasks_deployments_or_the_cli():
    """tokalign_core is a library: no import of the orchestration layers or of the CLI
    package, not even one hidden inside a function."""
    bad = []
    for path in _core_files():
        name = _module_name(path)
        for line, module, _ in _imported_names(path):
            top = module.split(".")[0]
            if top in FORBIDDEN and not (top == "tokalign" and name in ALLOWED_TO_IMPORT_CLI):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "the library must not import these:\n" + "\n".join(bad)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the tokalign_core modules it imports (function-level imports included).
    ``from pkg import sub`` points at ``pkg.sub`` when that is a module, else at ``pkg``."""
    modules = {_module_name(p) for p in _core_files()}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for path in _core_files():
        name = _module_name(path)
        for _, module, names in _imported_names(path):
            if module.split(".")[0] != "tokalign_core":
                continue
            subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules]
            targets = subs + ([module] if len(subs) < len(names) or not names else [])
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in sorted(graph):
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_no_import_circles_inside_the_library():
    graph = _import_graph()
    assert "tokalign_core.store.hashing" in graph["tokalign_core.store.artifacts"]  # walked
    cycles = []
    while (cycle := _find_cycle(graph)) is not None:
        cycles.append(" -> ".join(cycle))
        graph[cycle[-2]].discard(cycle[-1])  # cut it and look for the next one
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_the_cycle_finder_finds_a_cycle():
    """Guard: the finder reports a planted circle and passes an acyclic graph."""
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_static_scan_sees_function_level_imports(tmp_path):
    """Guard: imports inside functions, relative imports and import_module literals count."""
    src = tmp_path / "x.py"
    src.write_text("def f():\n    from flows.common import y\n"
                   "    importlib.import_module('tasks.z')\n    from ..store import artifacts\n")
    got = [m for _, m, _ in _imported_names(src, "tokalign_core.embed.x")]
    assert got == ["flows.common", "tasks.z", "tokalign_core.store"] or sorted(got) == sorted(
        ["flows.common", "tasks.z", "tokalign_core.store"])
