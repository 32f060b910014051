"""Command-line flags generated from the typed configs, so ``--help``, the Prefect forms
(rendered from the same pydantic fields) and the docs cannot disagree.

:func:`add_config_flags` adds one flag per field of a :class:`FrozenConfig` class, with the
field's description as help text and its default in the help; every flag defaults to
"not given", so :func:`config_from_args` builds the config from ``--config FILE`` (JSON or
YAML) overlaid with exactly the flags the user typed. :func:`add_common_flags` adds the
flags every command shares (``--config``, ``--artifact-root``, ``--no-progress``, ``-v``).

How a field becomes a flag (``--field-name`` unless :class:`Opt` renames it):

* ``bool``: a switch pair ``--name`` / ``--no-name`` (``Opt(yes_no=True)``: ``--name yes|no``);
  ``bool | None``: ``--name auto|yes|no`` (auto = None);
* ``Literal[...]``: a choice; ``int``/``float``/``str``: a typed value, ``none`` for None
  when the field is optional; tuples: one comma-separated value;
* a nested config field listed in ``nested``: its own fields, with a flag prefix.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS_KEY = "_config_flags"  # the parser default holding each command's flag sets
PROGRESS_DEST = "no_progress"


@dataclass(frozen=True)
class Opt:
    """How one field (dotted path for nested fields) deviates from the generated flag.

    ``names``: the flag spellings, first shown first (default ``--field-name``).
    ``negatives``: extra spellings that set a bool field to False (``--keep-special``).
    ``yes_no``: a bool given as ``--name yes|no`` instead of a switch pair.
    ``also``: dotted fields that take this flag's value too unless given themselves
    (``--seed`` seeds VecMap as well). ``clears``: fields reset to None when this flag is
    given (``--token-budget`` drops a ``byte_budget`` from the config file).
    ``metavar``: the value's placeholder in ``--help``.
    """

    names: tuple[str, ...] = ()
    negatives: tuple[str, ...] = ()
    yes_no: bool = False
    also: tuple[str, ...] = ()
    clears: tuple[str, ...] = ()
    metavar: str | None = None


@dataclass
class FlagSpec:
    """One generated flag: where its value goes and how it is shown."""

    path: str  # dotted field path in the config
    dest: str
    flag: str  # the first spelling, used in error messages
    kind: str  # "value", "switch", "list", "yes_no", "auto_yes_no"
    item: Callable[[str], Any] = str
    opt: Opt = field(default_factory=Opt)
    default: Any = None
    required: bool = False
    description: str = ""


@dataclass
class FlagSet:
    """The flags one config class contributed to a parser."""

    cls: type
    label: str  # the stage name used in error messages ("glove settings")
    specs: list[FlagSpec] = field(default_factory=list)

    def by_path(self) -> dict[str, FlagSpec]:
        return {s.path: s for s in self.specs}


# ----------------------------------------------------------------------- field types


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without ``None``, whether None is allowed)."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        return (args[0] if len(args) == 1 else annotation), optional
    return annotation, False


def _config_class(annotation: Any) -> type | None:
    """The FrozenConfig class a (possibly optional) field holds, else None."""
    from tokalign_core.configs.base import FrozenConfig

    inner, _ = _unwrap(annotation)
    return inner if isinstance(inner, type) and issubclass(inner, FrozenConfig) else None


def _nullable(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.strip().lower() == "none" else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")  # argparse's "invalid int value"
    return parse


def show_default(value: Any) -> str:
    """A default as ``--help`` prints it: ``none``, ``on``/``off``, ``a,b`` for tuples,
    ``%g`` for floats (``3.12e+14``, ``0.00064``)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return ",".join(show_default(v) for v in value)
    return str(value)


def field_description(info: Any, name: str) -> str:
    """The field's description; its name in words when a config forgot one."""
    return " ".join((info.description or name.replace("_", " ")).split())


# ---------------------------------------------------------------------- the generator


class Switch(argparse.Action):
    """``--name`` sets True, ``--no-name`` (and the ``negatives``) False."""

    def __init__(self, option_strings: list[str], dest: str, negatives: tuple[str, ...] = (),
                 **kwargs: Any) -> None:
        self.negatives = set(negatives)
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, option_string not in self.negatives)


def add_config_flags(parser: argparse.ArgumentParser, cls: type, *, label: str,
                     opts: dict[str, Opt] | None = None, skip: tuple[str, ...] = (),
                     nested: dict[str, str] | None = None, key: str = "config",
                     title: str | None = None, default_text: str | None = None) -> FlagSet:
    """Add one flag per field of ``cls`` to ``parser`` (an argument group ``title``).

    ``opts``: per-field deviations (by dotted path); ``skip``: fields that get no flag (set
    by the command or only through ``--config``); ``nested``: nested config fields whose
    own fields become flags, with this flag prefix (``{"vecmap": "vecmap-"}``); other
    nested configs are left to ``--config``. ``key`` names the set when a command has
    several (:func:`config_from_args` picks it). ``default_text`` replaces the default
    shown in the help (``the preset's`` when a preset, not the class, supplies it).
    """
    opts = opts or {}
    flag_set = FlagSet(cls, label)
    group = parser.add_argument_group(title or f"{label} settings ({cls.__name__} fields; "
                                      "flags override --config)")
    _add_fields(group, cls, "", "", flag_set, opts, set(skip), nested or {}, key, default_text)
    sets = dict(parser.get_default(FLAGS_KEY) or {})
    sets[key] = flag_set
    parser.set_defaults(**{FLAGS_KEY: sets})
    if key == "config" and parser.get_default("build_config") is None:
        # ``args.build_config(args)`` gives any command's config; commands that add
        # values of their own (corpus sources, training stages) set their builder.
        parser.set_defaults(build_config=config_from_args)
    return flag_set


def _add_fields(group: Any, cls: type, path: str, prefix: str, flag_set: FlagSet,
                opts: dict[str, Opt], skip: set[str], nested: dict[str, str], key: str,
                default_text: str | None) -> None:
    for name, info in cls.model_fields.items():
        dotted = f"{path}{name}"
        if dotted in skip:
            continue
        sub = _config_class(info.annotation)
        if sub is not None:
            if dotted in nested:
                _add_fields(group, sub, f"{dotted}.", nested[dotted], flag_set, opts, skip,
                            nested, key, default_text)
            continue
        spec = _spec(info, name, dotted, prefix, opts.get(dotted, Opt()), key)
        _add_argument(group, spec, info, default_text)
        flag_set.specs.append(spec)


def _spec(info: Any, name: str, dotted: str, prefix: str, opt: Opt, key: str) -> FlagSpec:
    inner, optional = _unwrap(info.annotation)
    flag = opt.names[0] if opt.names else f"--{prefix}{name.replace('_', '-')}"
    spec = FlagSpec(path=dotted, dest=f"{key}:{dotted}", flag=flag, kind="value", opt=opt,
                    default=None if info.is_required() else info.get_default(),
                    required=info.is_required(), description=field_description(info, name))
    if inner is bool:
        spec.kind = "auto_yes_no" if optional else ("yes_no" if opt.yes_no else "switch")
    elif typing.get_origin(inner) in (tuple, list):
        items = [a for a in typing.get_args(inner) if a is not Ellipsis]
        spec.kind, spec.item = "list", _scalar(items[0] if items else str)
    else:
        spec.item = _nullable(_scalar(inner)) if optional else _scalar(inner)
    return spec


def _scalar(annotation: Any) -> Callable[[str], Any]:
    inner, _ = _unwrap(annotation)
    return inner if inner in (int, float) else str


def _choices(info: Any) -> list[str] | None:
    inner, _ = _unwrap(info.annotation)
    if typing.get_origin(inner) is typing.Literal:
        return [str(c) for c in typing.get_args(inner)]
    return None


def help_text(spec: FlagSpec, default_text: str | None = None) -> str:
    """The help line of a generated flag: description, then the default."""
    shown = "required" if spec.required else \
        f"default: {default_text or show_default(spec.default)}"
    return f"{spec.description} ({shown})".replace("%", "%%")


def _add_argument(group: Any, spec: FlagSpec, info: Any, default_text: str | None) -> None:
    names = list(spec.opt.names) or [spec.flag]
    kwargs: dict[str, Any] = {"dest": spec.dest, "default": argparse.SUPPRESS,
                              "help": help_text(spec, default_text)}
    if spec.kind == "switch":
        base = names[0][2:]
        negatives = (f"--no-{base}", *spec.opt.negatives)
        group.add_argument(*names, *negatives, action=Switch, negatives=negatives, **kwargs)
        return
    if spec.kind in ("yes_no", "auto_yes_no"):
        choices = ["yes", "no"] if spec.kind == "yes_no" else ["auto", "yes", "no"]
        group.add_argument(*names, choices=choices, **kwargs)
        return
    if spec.kind == "list":
        kwargs["metavar"] = spec.opt.metavar or "A,B"
    else:
        kwargs["type"] = spec.item
        kwargs["choices"] = _choices(info)
        if kwargs["choices"] is None:
            kwargs["metavar"] = spec.opt.metavar or {int: "N", float: "X"}.get(
                _unwrap(info.annotation)[0], spec.path.rsplit(".", 1)[-1].upper())
    group.add_argument(*names, **kwargs)


# ------------------------------------------------------------------ building the config


def given(args: argparse.Namespace, key: str = "config") -> dict[str, Any]:
    """``{dotted field: value}`` of the flags of set ``key`` that were typed, converted
    (lists split on commas; ``yes``/``no``/``auto`` to True/False/None)."""
    from tokalign.cli import UserError

    flag_set = _flag_set(args, key)
    values: dict[str, Any] = {}
    for spec in flag_set.specs:
        if spec.dest not in vars(args):
            continue
        raw = getattr(args, spec.dest)
        if spec.kind in ("yes_no", "auto_yes_no"):
            values[spec.path] = {"yes": True, "no": False, "auto": None}[raw]
        elif spec.kind == "list":
            items = [x.strip() for x in str(raw).split(",") if x.strip()]
            if not items and raw.strip().lower() != "none":
                raise UserError(f"{spec.flag} is empty; give a comma-separated list "
                                f"such as {spec.flag} a,b")
            try:
                values[spec.path] = tuple(spec.item(x) for x in items) if items else None
            except ValueError as exc:
                raise UserError(f"{spec.flag} {raw!r}: {exc}") from exc
        else:
            values[spec.path] = raw
    return values


def _flag_set(args: argparse.Namespace, key: str) -> FlagSet:
    sets = getattr(args, FLAGS_KEY, None) or {}
    if key not in sets:
        raise KeyError(f"this command has no generated flags {key!r}")
    return sets[key]


def config_from_args(args: argparse.Namespace, key: str = "config", *,
                     base: dict[str, Any] | None = None, fixed: dict[str, Any] | None = None,
                     fix: Callable[[dict[str, Any]], None] | None = None,
                     config_path: str | None | bool = True) -> Any:
    """The config of flag set ``key``: ``base`` (default: the ``--config`` file, else the
    class defaults), the typed flags over it, then ``fixed`` (values the command decides),
    then ``fix(data)`` (in-place touches such as absolute paths). Invalid or unknown
    settings are a :class:`~tokalign.cli.UserError` naming the flag or the file."""
    flag_set = _flag_set(args, key)
    if config_path is True:
        config_path = getattr(args, "config", None)
    data = dict(base) if base is not None else (
        read_config(flag_set.cls, config_path) if config_path else {})
    values = given(args, key)
    specs = flag_set.by_path()
    for path, value in values.items():
        _set(data, path, value)
        for follower in specs[path].opt.also:
            if follower not in values and has_field(flag_set.cls, follower):
                _set(data, follower, value)
        for cleared in specs[path].opt.clears:
            if cleared not in values and has_field(flag_set.cls, cleared):
                _set(data, cleared, None)
    for path, value in (fixed or {}).items():
        _set(data, path, value)
    if fix is not None:
        fix(data)
    return validate(flag_set, data, config_path or None)


def has_field(cls: type, path: str) -> bool:
    """True when the dotted ``path`` names a field of ``cls`` (through nested configs)."""
    *parents, last = path.split(".")
    for part in parents:
        info = cls.model_fields.get(part)
        cls = _config_class(info.annotation) if info is not None else None
        if cls is None:
            return False
    return last in cls.model_fields


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        child = data.get(part)
        data[part] = dict(child) if isinstance(child, dict) else {}
        data = data[part]
    data[last] = value


def read_config(cls: type, path: str | Path) -> dict[str, Any]:
    """The settings in a JSON/YAML config file, refusing (in one line) a key ``cls`` does
    not have, with the closest known key."""
    from tokalign_core.configs.base import read_config_file

    data = read_config_file(Path(path))
    check_known(cls, data, f"--config {path}")
    return data


def check_known(cls: type, data: dict[str, Any], where: str, prefix: str = "") -> None:
    """Raise a UserError for the first key of ``data`` (nested configs too) that is not a
    field of ``cls``."""
    from tokalign.cli import UserError, did_you_mean

    for name, value in data.items():
        info = cls.model_fields.get(name)
        if info is None:
            known = list(cls.model_fields)
            raise UserError(f"{where}: unknown setting {prefix + name!r} for "
                            f"{cls.__name__}{did_you_mean(name, known)}; known settings: "
                            f"{', '.join(known)}")
        sub = _config_class(info.annotation)
        if sub is not None and isinstance(value, dict):
            check_known(sub, value, where, f"{prefix}{name}.")


def validate(flag_set: FlagSet, data: dict[str, Any], config_path: str | None) -> Any:
    """``flag_set.cls`` from ``data``; pydantic's errors as one line naming the flags."""
    from pydantic import ValidationError

    from tokalign.cli import UserError

    try:
        return flag_set.cls.model_validate(data)
    except ValidationError as exc:
        specs = flag_set.by_path()
        where = f" (from --config {config_path} and the flags)" if config_path else ""
        problems = [_problem(err, specs) for err in exc.errors()]
        raise UserError(f"invalid {flag_set.label} settings{where}: "
                        + "; ".join(problems)) from exc


def _problem(err: dict[str, Any], specs: dict[str, FlagSpec]) -> str:
    """One pydantic error as ``--flag value: message`` (or the config key's path)."""
    path = ".".join(str(p) for p in err.get("loc", ()))
    spec = specs.get(path)
    if err.get("type") == "missing":
        if spec is not None:
            return f"{spec.flag} is required (or `{path}` in a --config file)"
        return f"`{path}` is required in the --config file"
    name = spec.flag if spec is not None else (path or "settings")
    message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if spec is not None and "input" in err and not isinstance(err["input"], dict):
        return f"{name} {json.dumps(err['input'], default=str)}: {message}"
    return f"{name}: {message}"


# ------------------------------------------------------------------- the common flags


def add_common_flags(parser: argparse.ArgumentParser, *, config: str | None = None,
                     artifact_root: bool = False, progress: bool = True,
                     artifact_aliases: tuple[str, ...] = ()) -> None:
    """The flags shared by the commands: ``--config FILE`` (``config`` names what the file
    holds), ``--artifact-root DIR`` (commands that write to the artifact store),
    ``--no-progress`` (unless a config field already gave it) and ``-v``."""
    from tokalign.cli import DEFAULT_ARTIFACT_ROOT

    g = parser.add_argument_group("common")
    if config:
        g.add_argument("--config", metavar="FILE", default=None,
                       help=f"{config} as JSON/YAML; flags given on the command line override "
                       "its values (default: none)")
    if artifact_root:
        g.add_argument("--artifact-root", *artifact_aliases, dest="artifact_root",
                       metavar="DIR", default=DEFAULT_ARTIFACT_ROOT,
                       help="folder of the content-addressed artifact store; created when "
                       f"missing (default: {DEFAULT_ARTIFACT_ROOT})")
    if progress and "--no-progress" not in parser._option_string_actions:
        g.add_argument("--no-progress", dest=PROGRESS_DEST, action="store_true",
                       help="hide progress bars (default: shown on stderr)")
    g.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="debug logging")
    parser.usage = compact_usage(parser)


def compact_usage(parser: argparse.ArgumentParser) -> str:
    """``prog --required X ... POSITIONAL [options]``: the usage line without the dozens
    of optional settings flags (``--help`` lists them by group)."""
    words = []
    required = {s.dest for flags in (parser.get_default(FLAGS_KEY) or {}).values()
                for s in flags.specs if s.required}
    for action in parser._actions:
        if action.option_strings and (action.required or action.dest in required):
            words.append(f"{action.option_strings[0]} {action.metavar or action.dest.upper()}")
    for action in parser._actions:
        if not action.option_strings and action.nargs != argparse.SUPPRESS:
            name = action.metavar or action.dest
            words.append(f"[{name}]" if action.nargs == "?" else name)
    return " ".join(["%(prog)s", *words, "[options]"])


def show_progress(args: argparse.Namespace) -> bool:
    """False when ``--no-progress`` was given."""
    return not getattr(args, PROGRESS_DEST, False)
