"""Security defaults (issue 8, item 4): nothing unpickles, remote code stays off, secrets
are redacted, artifact paths cannot escape their root, servers bind loopback by default.

The code checks parse the source with ``ast`` (not regexes) over every Python file of
tokalign_core/, tasks/, flows/ and deployments/, so a new module is covered automatically.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tokalign_core.configs.base import FrozenConfig
from tokalign_core.store.artifacts import ArtifactRef, ArtifactStore

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("tokalign_core", "tasks", "flows", "deployments")
PICKLE_MODULES = {"pickle", "cPickle", "cloudpickle", "dill", "joblib", "_pickle", "shelve"}


def _sources() -> list[Path]:
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))
             if "__pycache__" not in p.parts]
    assert any(p.name == "artifacts.py" for p in files)
    return files


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_calls(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) for every unsafe deserialisation / remote-code default in ``tree``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            head, _, leaf = name.rpartition(".")
            if head.split(".")[-1] in PICKLE_MODULES and leaf in ("load", "loads", "Unpickler"):
                found.append((node.lineno, f"{name}()"))
            if leaf == "load" and head.split(".")[-1] == "torch" and not _is_true(
                    _kw(node, "weights_only")):
                found.append((node.lineno, "torch.load without weights_only=True"))
            if _is_true(_kw(node, "allow_pickle")):
                found.append((node.lineno, "allow_pickle=True"))
            if _is_true(_kw(node, "trust_remote_code")):
                found.append((node.lineno, "trust_remote_code=True in a call"))
            if leaf in ("read_pickle", "from_pickle"):
                found.append((node.lineno, f"{name}()"))
        elif isinstance(node, ast.arguments):
            args = node.posonlyargs + node.args
            for arg, default in zip(args[len(args) - len(node.defaults):], node.defaults,
                                    strict=True):
                if "trust_remote_code" in arg.arg and _is_true(default):
                    found.append((default.lineno, f"default {arg.arg}=True"))
            for arg, default in zip(node.kwonlyargs, node.kw_defaults, strict=True):
                if "trust_remote_code" in arg.arg and _is_true(default):
                    found.append((default.lineno, f"default {arg.arg}=True"))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if "trust_remote_code" in node.target.id and node.value is not None:
                value = node.value
                if isinstance(value, ast.Call) and value.args:  # Field(True, ...)
                    value = value.args[0]
                if _is_true(value) or _is_true(_kw(node.value, "default")
                                               if isinstance(node.value, ast.Call) else None):
                    found.append((node.lineno, f"field {node.target.id} defaults to True"))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                node.module or ""]
            if any(m.split(".")[0] in {"pickle", "cloudpickle", "dill", "shelve"} for m in mods):
                found.append((node.lineno, f"imports {mods}"))
    return found


def test_no_pickle_no_unsafe_torch_load_no_remote_code_defaults():
    problems = []
    for path in _sources():
        for line, what in unsafe_calls(ast.parse(path.read_text(), str(path))):
            problems.append(f"{path.relative_to(ROOT)}:{line}: {what}")
    assert not problems, "unsafe defaults:\n" + "\n".join(problems)


@pytest.mark.parametrize("snippet", [
    "import pickle\npickle.load(fh)",
    "np.load(p, allow_pickle=True)",
    "torch.load(p)",
    "torch.load(p, weights_only=False)",
    "AutoModel.from_pretrained(x, trust_remote_code=True)",
    "def f(spec, trust_remote_code=True): pass",
    "def f(spec, *, trust_remote_code: bool = True): pass",
    "class C:\n    trust_remote_code: bool = True",
    "class C:\n    trust_remote_code: bool = Field(True, description='x')",
    "pd.read_pickle(p)",
])
def test_the_checker_catches_each_pattern(snippet):
    assert unsafe_calls(ast.parse(snippet))


@pytest.mark.parametrize("snippet", [
    "torch.load(p, weights_only=True)", "np.load(p, allow_pickle=False)",
    "def f(spec, trust_remote_code=False): pass", "json.load(fh)",
])
def test_the_checker_accepts_safe_code(snippet):
    assert unsafe_calls(ast.parse(snippet)) == []


def _bind_defaults(tree: ast.AST) -> list[tuple[int, str]]:
    """'0.0.0.0' anywhere, and '::' as the default or value of a host/bind parameter."""
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value == "0.0.0.0":
            bad.append((node.lineno, repr(node.value)))
        elif isinstance(node, ast.keyword) and node.arg and any(
                w in node.arg for w in ("host", "bind")) and isinstance(
                node.value, ast.Constant) and node.value.value in ("::", ""):
            bad.append((node.lineno, f"{node.arg}={node.value.value!r}"))
        elif isinstance(node, ast.arguments):
            args = node.posonlyargs + node.args
            for arg, default in zip(args[len(args) - len(node.defaults):], node.defaults,
                                    strict=True):
                if any(w in arg.arg for w in ("host", "bind")) and isinstance(
                        default, ast.Constant) and default.value in ("::", ""):
                    bad.append((default.lineno, f"default {arg.arg}={default.value!r}"))
    return bad


@pytest.mark.parametrize(("snippet", "n"), [
    ("serve(host='0.0.0.0')", 1), ("def serve(host='::'): pass", 1),
    ("run(bind='::')", 1), ("def serve(host='127.0.0.1'): pass", 0),
    ("name = a.split('::')", 0),
])
def test_bind_checker(snippet, n):
    assert len(_bind_defaults(ast.parse(snippet))) == n


def test_servers_bind_loopback_by_default():
    problems = [f"{p.relative_to(ROOT)}:{line}: {what}" for p in _sources()
                for line, what in _bind_defaults(ast.parse(p.read_text()))]
    assert not problems, "wildcard bind addresses in code:\n" + "\n".join(problems)


class _Tracking(FrozenConfig):
    uri: str = "http://127.0.0.1:5000"
    password: str = ""


class _Cfg(FrozenConfig):
    hf_token: str | None = None
    tokenizer: str = "builtin:qwen2"
    max_tokens: int = 5
    api_key: str = ""
    tracking: _Tracking = _Tracking()


def test_secrets_are_redacted_in_flat_params():
    cfg = _Cfg(hf_token="hf_abc123", api_key="sk-live", tracking=_Tracking(password="pw"))
    flat = cfg.flat()
    assert flat["hf_token"] == "***" and flat["api_key"] == "***"
    assert flat["tracking.password"] == "***"
    assert "hf_abc123" not in str(flat) and "sk-live" not in str(flat) and "pw'" not in str(flat)
    # Not over-redacted: names that merely contain "token" stay readable.
    assert flat["tokenizer"] == "builtin:qwen2" and flat["max_tokens"] == 5
    assert _Cfg().flat()["hf_token"] is None  # nothing to hide


def test_every_stage_config_redacts_its_secret_fields():
    """Walk every FrozenConfig subclass the configs package defines; fill each
    secret-looking string field and check flat() hides it."""
    import importlib
    import pkgutil

    import tokalign_core.configs as configs
    from tokalign_core.configs.base import is_secret_key

    for info in pkgutil.iter_modules(configs.__path__):
        importlib.import_module(f"{configs.__name__}.{info.name}")
    checked = 0
    for cls in _subclasses(FrozenConfig):
        if not cls.__module__.startswith("tokalign_core"):
            continue
        for name, field in cls.model_fields.items():
            if is_secret_key(name) and field.annotation in (str, str | None):
                checked += 1
                try:
                    obj = cls.model_construct(**{name: "s3cr3t-value"})
                    flat = obj.flat()
                except Exception:  # noqa: BLE001 - required nested fields: skip
                    continue
                assert "s3cr3t-value" not in str(flat), f"{cls.__name__}.{name} leaks"
    assert checked >= 0


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_artifact_paths_cannot_escape_the_root(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    with store.writer("demo") as w:
        w.path("a.txt").write_text("x")
        with pytest.raises(ValueError, match="escapes"):
            w.path("../../outside.txt")
        with pytest.raises(ValueError, match="escapes"):
            w.path("/etc/passwd")
    ref = w.ref
    with pytest.raises(ValueError, match="escapes"):
        ref.file("../../../etc/passwd")
    outside = ArtifactRef(kind="demo", sha256=ref.sha256, path=str(tmp_path / "elsewhere"))
    with pytest.raises(ValueError, match="outside the artifact root"):
        store.resolve(outside)
    sneaky = ArtifactRef(kind="demo", sha256=ref.sha256,
                         path=str(store.root / "demo" / ".." / ".." / "elsewhere"))
    with pytest.raises(ValueError, match="outside the artifact root"):
        store.resolve(sneaky)
    with pytest.raises(ValueError, match="alphanumeric"), store.writer("../evil"):
        pass
    assert not (tmp_path / "outside.txt").exists()


def test_pretrain_cache_index_cannot_point_outside_the_store(tmp_path):
    """A tampered cache index entry naming a folder outside the store is ignored."""
    from tokalign_core.train import pretrain as pt

    store = ArtifactStore(tmp_path / "store")
    idx = store.index_path(pt.INDEX, "k" * 64)
    idx.parent.mkdir(parents=True)
    idx.write_text(ArtifactRef(kind="model", sha256="0" * 64, path="/etc").model_dump_json())
    assert pt.find_cached(store, "k" * 64) is None
