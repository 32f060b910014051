"""Frozen, typed configuration base with a stable digest.

Every stage config derives from :class:`FrozenConfig`. The same objects are Prefect flow
parameters (rendered as UI forms), part of cache keys, MLflow params (flattened) and the
JSON handed to a training subprocess.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
)

from tokalign_core.store.atomic import atomic_write_text

T = TypeVar("T", bound="FrozenConfig")

# Keys whose values never leave the process in logs or MLflow params.
SECRET_WORDS = {"secret", "password", "passwd", "credential", "credentials", "auth"}
# "scheme://user:password@host": the userinfo part of a URI (MLflow, S3, Postgres URLs).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/@\s]+)@")
COUNT_WORDS = {"per", "max", "min", "num", "n", "eos", "bos", "pad", "unk", "sep", "special"}


class FrozenConfig(BaseModel):
    """Immutable config; unknown keys are errors so typos fail loudly, and so are
    non-finite numbers (``inf``, ``nan``, JSON ``Infinity``: a GloVe ``x_max`` of infinity
    would train nothing) and booleans given for numbers (``"window": true`` would silently
    become 1)."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", protected_namespaces=(), allow_inf_nan=False
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name is not None:
            field = cls.model_fields.get(info.field_name)
            if field is not None and _number_not_bool(field.annotation):
                raise ValueError(
                    f"{info.field_name} is a number, got the boolean {value}; write a number"
                )
        return value

    @model_serializer(mode="wrap")
    def _redact_uris(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ):  # no return type: keeps the schema
        # JSON dumps leave the process (Prefect flow parameters and deployments, MLflow
        # params, run.json): credentials inside URIs never do. Python dumps keep them.
        data = handler(self)
        return redact_uris(data) if info.mode_is_json() else data

    def canonical_json(self) -> str:
        """JSON with sorted keys: the input of :meth:`digest`."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        """sha256 hex of the canonical JSON; stable across processes and Python versions."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def flat(self, prefix: str = "") -> dict[str, Any]:
        """Flattened ``a.b.c -> value`` dict with secrets redacted (for MLflow params)."""
        return flatten(self.model_dump(mode="json"), prefix)

    @classmethod
    def load(cls: type[T], path: str | Path) -> T:
        """Read a JSON or YAML file into this config. A missing file, a folder, text that
        does not parse and invalid values are errors naming the file (ValueError /
        FileNotFoundError)."""
        path = Path(path)
        data = read_config_file(path)
        try:
            return cls.model_validate(data)
        except Exception as exc:  # pydantic's message lists each bad field
            raise ValueError(f"invalid {cls.__name__} in {path}: {exc}") from exc

    def save(self, path: str | Path) -> Path:
        """Write pretty JSON atomically."""
        return atomic_write_text(Path(path), json.dumps(self.model_dump(mode="json"), indent=2))


def absolute_local_path(spec: str) -> str:
    """``spec`` as an absolute path when it names something on this machine (``data.txt``,
    ``./data.txt`` and ``/abs/data.txt`` then give one config digest and one artifact), or
    a glob whose folder does; hub ids, ``hf:``/``builtin:`` specs and URIs stay as typed."""
    import glob as globlib
    import os

    if not spec or ":" in spec.split("/")[0]:
        return spec
    path = Path(spec).expanduser()
    if path.exists():
        return str(path.resolve())
    if globlib.has_magic(spec):
        return os.path.abspath(path)
    return spec


def redact_userinfo(text: str) -> str:
    """``http://user:pass@host/x`` -> ``http://***@host/x``, anywhere in ``text`` (URIs
    inside error messages too)."""
    return _USERINFO.sub(r"\g<scheme>***@", text) if "://" in text else text


def redact_uris(data: Any) -> Any:
    """:func:`redact_userinfo` applied to every string of a JSON-like tree."""
    if isinstance(data, str):
        return redact_userinfo(data)
    if isinstance(data, dict):
        return {k: redact_uris(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(redact_uris(v) for v in data)
    return data


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping in a JSON (``.json`` and anything else) or YAML (``.yaml``/``.yml``)
    config file; errors name the file and say what to give instead."""
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    if path.is_dir():
        raise ValueError(f"config {path} is a folder; give a JSON or YAML file")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise ValueError(
                f"config file {path} is not valid YAML{where}: "
                f"{getattr(exc, 'problem', None) or exc}"
            ) from exc
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"config file {path} is not valid JSON (line {exc.lineno}, "
                f"column {exc.colno}: {exc.msg}); YAML files need a .yaml "
                "suffix"
            ) from exc
    if not isinstance(data, dict):
        raise ValueError(
            f"config file {path} holds a {type(data).__name__}, not a mapping of settings"
        )
    return data


def _number_not_bool(annotation: Any) -> bool:
    """True when a field annotation accepts int/float but not bool (``int | None`` too)."""
    import types
    import typing

    seen: set[Any] = set()
    todo = [annotation]
    while todo:
        item = todo.pop()
        if typing.get_origin(item) is typing.Annotated:
            todo.append(typing.get_args(item)[0])
        elif typing.get_origin(item) in (typing.Union, types.UnionType):
            todo.extend(typing.get_args(item))
        else:
            seen.add(item)
    return bool(seen & {int, float}) and bool not in seen


def is_secret_key(key: str) -> bool:
    """True when a (flattened) key names a secret: ``hf_token``, ``access_token``,
    ``mlflow.password``, ``api_key``, ``aws_secret_access_key``, ``db_credentials``.

    Matching is by whole words of the last key part, so settings that merely mention tokens
    (``tokenize_batch_size``, ``bytes_per_token``, ``max_tokens``) stay visible; ``token``
    counts only as the last word and not after ``per``/``max``/``min``/``num``.
    """
    words = [w for w in re.split(r"[_\-.]+", key.rsplit(".", 1)[-1].lower()) if w]
    if not words:
        return False
    if any(w in SECRET_WORDS for w in words) or "apikey" in words:
        return True
    if "api" in words and "key" in words:
        return True
    return words[-1] == "token" and (len(words) == 1 or words[-2] not in COUNT_WORDS)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts/lists into dotted keys; secret-looking keys become ``***`` and
    credentials inside URIs ``scheme://***@host``."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    key = prefix[:-1]
    if isinstance(data, list):
        data = json.dumps(data)
    if isinstance(data, str):
        data = redact_userinfo(data)
    out[key] = "***" if (is_secret_key(key) and data not in (None, "")) else data
    return out
