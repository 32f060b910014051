"""The compose stack's safe defaults (issue 8, item 4): secrets come from the environment,
never from a file in the repository, and every published port binds loopback only.

Checked on ``docker/compose.yaml`` and every ``docker/Dockerfile*``:

* an environment variable whose name looks secret (``*PASSWORD*``, ``*SECRET*``,
  ``*TOKEN*``, ``*API_KEY*``, ...) has exactly the value ``${VAR:?message}``: compose
  refuses to start without it, and there is no literal and no ``:-default`` fallback;
* a password inside a URL (``scheme://user:password@host``) in any environment value or
  command is such a reference too (or ``$${VAR}``, expanded in the container from a
  variable the same service receives as a reference);
* no image build bakes a secret in (``ENV``/``ARG`` with a secret-looking name and a value,
  or a URL with a password);
* every ``ports`` entry publishes on ``127.0.0.1`` (short or long syntax).

The checkers themselves are run on bad snippets so that a checker that passes everything
fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile*"))

SECRET_NAME = re.compile(r"PASSW(OR)?D|SECRET|TOKEN|API_?KEY|CREDENTIAL|PRIVATE_KEY",
                         re.IGNORECASE)
# Names that contain a marker but hold no secret.
NOT_SECRET = {"TOKENIZERS_PARALLELISM"}
REQUIRED_REF = re.compile(r"^\$\{(?P<var>[A-Za-z_][A-Za-z0-9_]*):\?[^}]*\}$")
# scheme://user:password@host -> the password part.
URL_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^:/@\s]+:(?P<pw>[^@\s]+)@", re.IGNORECASE)
CONTAINER_REF = re.compile(r"^\$\$\{?(?P<var>[A-Za-z_][A-Za-z0-9_]*)\}?$")


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict (compose allows a mapping or ``KEY=VALUE`` list)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _commands(service: dict[str, Any]) -> list[str]:
    out = []
    for key in ("command", "entrypoint"):
        value = service.get(key)
        if isinstance(value, list):
            out.append(" ".join(map(str, value)))
        elif value:
            out.append(str(value))
    return out


def _password_problems(where: str, text: str, env: dict[str, str]) -> list[str]:
    problems = []
    for match in URL_PASSWORD.finditer(text):
        pw = match.group("pw")
        inside = CONTAINER_REF.match(pw)
        if REQUIRED_REF.match(pw):
            continue
        if inside and REQUIRED_REF.match(env.get(inside.group("var"), "")):
            continue
        problems.append(f"{where}: URL password {pw!r} is not a ${{VAR:?...}} reference")
    return problems


def compose_problems(doc: dict[str, Any]) -> list[str]:
    """Every secret or port violation of a parsed compose file (empty list = safe)."""
    problems: list[str] = []
    for name, service in (doc.get("services") or {}).items():
        env = _environment(service)
        for key, value in env.items():
            where = f"services.{name}.environment.{key}"
            if SECRET_NAME.search(key) and key not in NOT_SECRET and not REQUIRED_REF.match(
                    value):
                problems.append(f"{where}: secret {value!r} is not a ${{VAR:?...}} reference")
            problems += _password_problems(where, value, env)
        for text in _commands(service):
            problems += _password_problems(f"services.{name}.command", text, env)
        problems += _port_problems(name, service.get("ports") or [])
    return problems


def _port_problems(service: str, ports: list[Any]) -> list[str]:
    problems = []
    for port in ports:
        if isinstance(port, dict):  # long syntax
            ok = port.get("host_ip") == "127.0.0.1"
        else:
            ok = str(port).startswith("127.0.0.1:")
        if not ok:
            problems.append(f"services.{service}.ports: {port!r} does not bind 127.0.0.1")
    return problems


def dockerfile_problems(text: str) -> list[str]:
    """``ENV``/``ARG`` secrets with values and URL passwords in a Dockerfile."""
    problems = []
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip().rstrip("\\").strip()
        words = stripped.split()
        if words and words[0].upper() in {"ENV", "ARG"}:
            words = words[1:]
        for word in words:
            key, sep, value = word.partition("=")
            if sep and SECRET_NAME.search(key) and key not in NOT_SECRET and value:
                problems.append(f"line {n}: {key} is given a value in the image")
        if URL_PASSWORD.search(line):
            problems.append(f"line {n}: URL with a password")
    return problems


# ------------------------------------------------------------------------------- tests


def test_compose_reads_secrets_from_the_environment_and_binds_loopback():
    doc = yaml.safe_load(COMPOSE.read_text())
    assert doc.get("services"), "docker/compose.yaml defines no services"
    assert compose_problems(doc) == []
    # The stack really has secrets (so the check above was not vacuous) and every one of
    # them must be provided: compose fails fast with the message naming the variable.
    refs = {m.group("var") for svc in doc["services"].values()
            for v in _environment(svc).values()
            for m in re.finditer(r"\$\{(?P<var>\w+):\?", v)}
    assert {"POSTGRES_PASSWORD", "MLFLOW_DB_PASSWORD"} <= refs
    published = [p for svc in doc["services"].values() for p in svc.get("ports") or []]
    assert published, "no published ports: the loopback check ran on nothing"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_no_secret_is_baked_into_an_image(path):
    assert dockerfile_problems(path.read_text()) == []


def test_no_env_file_with_secrets_in_the_repository():
    # `.env` next to the compose file is read automatically by compose; it must never be
    # part of the repository.
    for env_file in (ROOT / "docker" / ".env", ROOT / ".env"):
        if env_file.exists():
            pytest.fail(f"{env_file} exists; secrets must come from the caller's environment")


BAD_COMPOSE = {
    "literal password": {"environment": {"POSTGRES_PASSWORD": "hunter2"}},
    "default fallback": {"environment": {"POSTGRES_PASSWORD": "${POSTGRES_PASSWORD:-x}"}},
    "optional reference": {"environment": {"MLFLOW_TRACKING_TOKEN": "${TOKEN}"}},
    "list syntax literal": {"environment": ["API_KEY=abc123"]},
    "URL password": {"environment": {"DB_URL": "postgresql://u:hunter2@db:5432/x"}},
    "command URL password": {"command": "mlflow server --backend-store-uri "
                                        "postgresql://u:hunter2@db/x"},
    "container var not from env": {"command": "run postgresql://u:$${PW}@db/x",
                                   "environment": {"PW": "literal"}},
    "all interfaces": {"ports": ["5000:5000"]},
    "explicit 0.0.0.0": {"ports": ["0.0.0.0:4200:4200"]},
    "long syntax": {"ports": [{"target": 80, "published": 8080}]},
}


@pytest.mark.parametrize("case", sorted(BAD_COMPOSE))
def test_checker_flags_bad_compose(case):
    assert compose_problems({"services": {"svc": BAD_COMPOSE[case]}}), case


def test_checker_accepts_safe_compose():
    safe = {"services": {"db": {
        "environment": {"POSTGRES_PASSWORD": "${POSTGRES_PASSWORD:?set it}",
                        "URL": "postgresql://u:${POSTGRES_PASSWORD:?set it}@db/x",
                        "TOKENIZERS_PARALLELISM": "false"},
        "command": "serve postgresql://u:$${POSTGRES_PASSWORD}@db/x",
        "ports": ["127.0.0.1:5432:5432", {"target": 80, "published": 80,
                                          "host_ip": "127.0.0.1"}]}}}
    assert compose_problems(safe) == []


@pytest.mark.parametrize("line", ["ENV HF_TOKEN=hf_abc", "ARG DB_PASSWORD=x",
                                  "ENV A=1 MLFLOW_TRACKING_PASSWORD=pw",
                                  "RUN pip install --index-url https://u:pw@pypi.example/"])
def test_checker_flags_bad_dockerfile_lines(line):
    assert dockerfile_problems(f"FROM python:3.11\n{line}\n")


def test_checker_accepts_a_clean_dockerfile():
    text = "FROM python:3.11\nARG HF_TOKEN\nENV TOKENIZERS_PARALLELISM=false\n"
    assert dockerfile_problems(text) == []
