"""The command line's settings flags come from the typed configs (issue 15): every field of
a command's config has a flag whose ``--help`` shows the field's description and default,
typing the flag sets that field, ``--config FILE`` is overridden by the flags, an unknown
key in the file is a one-line error naming it, and the Prefect forms (rendered from the
same configs) show the same defaults. Expectations are derived here from the config
classes, not from the generator, so a generator that drops, renames or mis-defaults a
field fails."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import pytest

from tokalign import cli
from tokalign.options import DemoOptions, NeighborsOptions, RunFolderConfig
from tokalign_core.configs import (
    AlignConfig,
    CooccurConfig,
    CorpusConfig,
    DoctorConfig,
    EvalAlignConfig,
    EvalConfig,
    GloveConfig,
    HiddenStatesConfig,
    InitConfig,
    LmEvalConfig,
    PipelineConfig,
    PretrainConfig,
    SourceSpec,
    TokenizeConfig,
    TrainConfig,
    VecMapConfig,
)
from tokalign_core.configs.base import FrozenConfig
from tokalign_core.configs.distill import DistillConfig

# command -> (config class, nested sections with flags, fields deliberately without a flag
# (set by the command itself or only through --config), argv the command needs)
COMMANDS: dict[str, tuple[type, tuple[str, ...], set[str], list[str]]] = {
    "cooccur": (CooccurConfig, (), set(), ["t"]),
    "glove": (GloveConfig, (), set(), ["c"]),
    "tokenize": (TokenizeConfig, (), set(), ["--tokenizer", "builtin:qwen2"]),
    "corpus": (CorpusConfig, (), {"sources"}, ["--source", "hf:x"]),
    "align": (AlignConfig, ("vecmap",), set(), [
        "--source-emb", "s", "--target-emb", "t", "--source-tokenizer", "a",
        "--target-tokenizer", "b", "--out", "o"]),
    "init": (InitConfig, (), set(), ["--model", "m", "--target-tokenizer", "t", "--out", "o"]),
    "eval-align": (EvalAlignConfig, (), set(), ["--alignment", "a"]),
    "eval-model": (EvalConfig, (), set(), ["m", "--texts", "t"]),
    "adapt": (TrainConfig, (), {"mode", "stages", "distill"}, [
        "--model", "m", "--tokens", "t", "--out", "o"]),
    "distill": (TrainConfig, ("distill",), {"mode", "stages", "stage_split",
                                            "distill.trust_remote_code"}, [
        "--student", "m", "--teacher", "x", "--tokens", "t", "--out", "o"]),
    "hidden-states": (HiddenStatesConfig, (), set(), ["m", "s", "t"]),
    "doctor": (DoctorConfig, (), set(), ["m"]),
    "lm-eval": (LmEvalConfig, (), set(), ["m", "--tasks", "piqa"]),
    "neighbors": (NeighborsOptions, (), set(), ["tok", "--alignment-run", "r"]),
    "demo": (DemoOptions, (), set(), []),
}
# Commands whose settings start from a named preset: the help shows "the preset's" default.
PRESET_COMMANDS: dict[str, tuple[type, tuple[str, ...], set[str], list[str]]] = {
    "pretrain": (PretrainConfig, (), {"preset"}, []),
}
# `tokalign run`: the pipeline's top-level settings; the stage sections come from --config.
RUN_NESTED = {"corpus", "cooccur", "glove", "align", "align_eval", "init", "adapt",
              "distill", "evaluate"}


def _shown(value: Any) -> str:
    """A default as the help prints it (the convention of the CLI's help)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return ",".join(_shown(v) for v in value)
    return str(value)


def _fields(cls: type, nested: tuple[str, ...], skip: set[str], prefix: str = ""):
    """(dotted path, FieldInfo) of every field that must have a flag."""
    for name, info in cls.model_fields.items():
        path = f"{prefix}{name}"
        if path in skip:
            continue
        inner = [a for a in (typing.get_args(info.annotation) or (info.annotation,))
                 if isinstance(a, type) and issubclass(a, FrozenConfig)]
        if inner:
            if path in nested:
                yield from _fields(inner[0], nested, skip, f"{path}.")
            continue
        yield path, info


def _subparser(name: str):
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    return sub.choices[name]


def _help_lines(name: str, monkeypatch) -> list[str]:
    monkeypatch.setenv("COLUMNS", "100000")  # one line per option: no wrapping
    text = _subparser(name).format_help()
    lines, current = [], ""
    for line in text.splitlines():  # an option's help may still start on the next line
        if line.lstrip().startswith("-") or not line.strip():
            if current:
                lines.append(current)
            current = line.strip()
        else:
            current += " " + line.strip()
    return [*lines, current]


def _flag_line(lines: list[str], action) -> str:
    first = action.option_strings[0]
    found = [ln for ln in lines if ln.startswith(first + " ") or ln.startswith(first + ",")
             or ln == first]
    assert len(found) == 1, (first, found)
    return found[0]


def _actions_by_path(name: str, key: str = "config") -> dict[str, Any]:
    return {a.dest.split(":", 1)[1]: a for a in _subparser(name)._actions
            if a.dest.startswith(f"{key}:")}


def _check_help(command: str, key: str, cls: type, nested: tuple[str, ...], skip: set[str],
                monkeypatch, preset: bool = False) -> None:
    lines = _help_lines(command, monkeypatch)
    actions = _actions_by_path(command, key)
    fields = dict(_fields(cls, nested, skip))
    assert set(actions) == set(fields), "flags and config fields differ"
    for path, info in fields.items():
        line = _flag_line(lines, actions[path])
        description = " ".join((info.description or "").split())
        assert description, f"{cls.__name__}.{path} has no description"
        shown = "required" if info.is_required() else "default: " + (
            "the preset's" if preset else _shown(info.get_default()))
        assert f"{description} ({shown})" in line, (path, line)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_shows_every_field_with_its_description_and_default(command, monkeypatch):
    cls, nested, skip, _ = COMMANDS[command]
    _check_help(command, "config", cls, nested, skip, monkeypatch)


def test_run_folder_flags_come_from_their_config(monkeypatch):
    """`tokalign run` takes its run folder and executor settings from RunFolderConfig (the
    demo from DemoOptions, which extends it with its own run folder)."""
    _check_help("run", "run", RunFolderConfig, (), set(), monkeypatch)
    assert DemoOptions.model_fields["run_dir"].default == "runs/demo"
    assert RunFolderConfig.model_fields["run_dir"].default == "runs/run"
    args = cli.build_parser().parse_args(["run", "--workers", "3", "--dask-address", "tcp://h:1",
                                          "--progress"])
    from tokalign.flags import config_from_args

    assert config_from_args(args, "run", config_path=None) == RunFolderConfig(
        workers=3, dask_address="tcp://h:1", progress=True)


@pytest.mark.parametrize("command", sorted(PRESET_COMMANDS))
def test_preset_commands_show_every_field_with_the_preset_as_default(command, monkeypatch):
    cls, nested, skip, _ = PRESET_COMMANDS[command]
    _check_help(command, "config", cls, nested, skip, monkeypatch, preset=True)


def test_run_shows_the_pipeline_fields_with_the_preset_as_default(monkeypatch):
    lines = _help_lines("run", monkeypatch)
    actions = _actions_by_path("run")
    fields = {n: i for n, i in PipelineConfig.model_fields.items() if n not in RUN_NESTED}
    assert set(actions) == set(fields)
    for name, info in fields.items():
        description = " ".join((info.description or "").split())
        assert description and f"{description} (default: the preset's)" in \
            _flag_line(lines, actions[name])


def _other_values(info: Any) -> list[Any]:
    """Candidate values different from the field's default, for typing its flag."""
    default = info.get_default()
    if typing.get_origin(info.annotation) is tuple:
        item = typing.get_args(info.annotation)[0]
        if typing.get_origin(item) is typing.Literal:
            return [(c,) for c in typing.get_args(item) if (c,) != default]
        return [(0.5, 0.25)] if item is float else [("a", "b")]
    if typing.get_origin(info.annotation) is typing.Literal:
        return [c for c in typing.get_args(info.annotation) if c != default]
    args = typing.get_args(info.annotation)
    kinds = {a for a in (args or (info.annotation,)) if a is not type(None)}
    literal = [a for a in kinds if typing.get_origin(a) is typing.Literal]
    if literal:
        return [c for c in typing.get_args(literal[0]) if c != default]
    if bool in kinds:
        return [not default] if default is not None else [True, False]
    if int in kinds:
        return [v for v in ((default or 0) + 1, (default or 2) - 1, 3) if v != default]
    if float in kinds:
        base = default if default else 0.5
        return [v for v in (base / 2, base * 1.5, 0.25) if v != default]
    if str in kinds:
        return ["some-custom-value"]
    if any(typing.get_origin(a) is tuple for a in kinds):
        return [("a", "b")]
    return []


def _argv_for(action, value: Any) -> list[str]:
    flag = action.option_strings[0]
    if action.nargs == 0:  # a switch pair: --name / --no-name
        return [flag if value else f"--no-{flag[2:]}"]
    if action.choices and set(action.choices) >= {"yes", "no"}:
        return [flag, "yes" if value else "no"]
    if isinstance(value, tuple):
        return [flag, ",".join(map(str, value))]
    return [flag, str(value)]


def _get(cfg: Any, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("command", sorted(COMMANDS | PRESET_COMMANDS))
def test_each_flag_sets_its_own_field(command):
    """Typing one flag changes exactly its field (and nothing else) of the built config."""
    cls, nested, skip, base_argv = (COMMANDS | PRESET_COMMANDS)[command]
    parser = cli.build_parser()
    actions = _actions_by_path(command)
    plain = parser.parse_args([command, *base_argv])
    reference = plain.build_config(plain).model_dump()
    untried = []
    for path, info in _fields(cls, nested, skip):
        for value in _other_values(info):
            args = parser.parse_args([command, *base_argv, *_argv_for(actions[path], value)])
            try:
                cfg = args.build_config(args)
            except cli.UserError:
                continue  # a cross-field rule refuses this value alone; try the next
            expected = str(Path(value).resolve()) if path in ("tokens", "out_dir") else value
            assert _get(cfg, path) == expected, (path, _get(cfg, path))
            changed = {k for k, v in cfg.model_dump().items() if reference[k] != v}
            # align's --seed and --batch-size seed and size VecMap too (as before),
            # distill's --trust-remote-code covers the teacher, and pretrain's --steps
            # alone keeps the preset's warm-up share
            followers = {"align": {"vecmap"}, "distill": {"distill"},
                         "pretrain": {"warmup_steps"}}.get(command, set())
            assert changed <= {path.split(".")[0], *followers}, (path, changed)
            break
        else:
            untried.append(path)
    # Fields whose other values need a second setting (random_std needs method random,
    # gen_* need do_sample, no whitening needs no de-whitening) or match a pattern
    # (topk_dtype) cannot be changed alone; a model's hidden size must stay a multiple of
    # its heads.
    allowed = {"random_std", "distill.gen_temperature", "distill.gen_top_p",
               "distill.topk_dtype", "vecmap.whiten"}
    if command == "pretrain":
        allowed |= {"hidden", "heads"}
    assert set(untried) <= allowed, untried


def _write(tmp_path: Path, name: str, data: dict[str, Any]) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data) if name.endswith(".json") else
                    "\n".join(f"{k}: {json.dumps(v)}" for k, v in data.items()))
    return str(path)


def test_config_file_values_are_overridden_by_explicit_flags(tmp_path):
    parser = cli.build_parser()
    path = _write(tmp_path, "g.yaml", {"dim": 7, "iterations": 3, "engine": "torch"})
    args = parser.parse_args(["glove", "c", "--config", path, "--dim", "9"])
    assert args.build_config(args) == GloveConfig(dim=9, iterations=3, engine="torch")

    path = _write(tmp_path, "a.json", {"method": "relative", "vecmap": {"init_size": 50}})
    args = parser.parse_args(["align", *COMMANDS["align"][3], "--config", path,
                              "--seed", "5", "--vocab-cutoff", "60"])
    cfg = args.build_config(args)
    assert cfg.method == "relative" and cfg.seed == 5 and cfg.vecmap.seed == 5
    assert cfg.vecmap.init_size == 50 and cfg.vecmap.vocab_cutoff == 60

    run = TrainConfig(model="m", tokens="t", out_dir="o", mode="distill", seq_len=64,
                      distill=DistillConfig(teacher="x", kl_weight=0.5), total_steps=9)
    path = _write(tmp_path, "run.json", run.model_dump(mode="json"))
    args = parser.parse_args(["distill", "--config", path, "--temperature", "2",
                              "--level", "sentence", "--lr", "1e-4", "--prompt-len", "8"])
    cfg = args.build_config(args)
    assert cfg.mode == "sentence-distill" and cfg.seq_len == 64 and cfg.total_steps == 9
    assert cfg.distill.kl_weight == 0.5 and cfg.distill.temperature == 2.0
    assert cfg.distill.prompt_len == 8 and [s.lr for s in cfg.stages] == [1e-4, 1e-4]
    assert cfg.tokens == str(Path("t").resolve())  # absolute for the training subprocess

    path = _write(tmp_path, "c.json", {"sources": [{"path": "hf:a"}], "byte_budget": 100})
    args = parser.parse_args(["corpus", "--config", path, "--token-budget", "50"])
    cfg = args.build_config(args)
    assert cfg.token_budget == 50 and cfg.byte_budget is None  # the file's budget yields
    assert [s.path for s in cfg.sources] == ["hf:a"]

    path = _write(tmp_path, "h.yaml", {"batch_size": 4, "max_length": 9, "add_bos": False})
    args = parser.parse_args(["hidden-states", "m", "s", "t", "--config", path,
                              "--max-length", "12", "--device", "cpu"])
    assert args.build_config(args) == HiddenStatesConfig(batch_size=4, max_length=12,
                                                         add_bos=False, device="cpu")

    path = _write(tmp_path, "l.json", {"tasks": ["piqa"], "limit": 0.5})
    args = parser.parse_args(["lm-eval", "m", "--config", path, "--limit", "20"])
    cfg = args.build_config(args)
    assert cfg.tasks == ("piqa",) and cfg.limit == 20 and cfg.limit_arg() == 20
    assert isinstance(cfg.limit_arg(), int)

    small = PretrainConfig(hidden=32, heads=2, steps=9, warmup_steps=0, train_bytes=500)
    path = _write(tmp_path, "p.json", small.model_dump(mode="json"))
    args = parser.parse_args(["pretrain", "--config", path, "--seed", "5", "--threads", "1"])
    assert args.build_config(args) == small.model_copy(update={"seed": 5, "threads": 1})


def test_pretrain_flags_overlay_the_preset(capsys):
    """Without --config the flags overlay --preset's settings (demo by default); --steps
    alone keeps the preset's warm-up share, as before the flags were generated."""
    from tokalign_core.configs.pretrain import PRESETS

    parser = cli.build_parser()
    args = parser.parse_args(["pretrain"])
    assert args.build_config(args) == PRESETS["demo"]
    args = parser.parse_args(["pretrain", "--preset", "demo", "--steps", "40", "--lr", "1e-3"])
    cfg = args.build_config(args)
    assert (cfg.steps, cfg.warmup_steps, cfg.lr, cfg.hidden) == (40, 4, 1e-3, 128)
    args = parser.parse_args(["pretrain", "--preset", "micro", "--steps", "8",
                              "--warmup-steps", "3", "--hidden", "64", "--heads", "4"])
    cfg = args.build_config(args)
    assert (cfg.preset, cfg.steps, cfg.warmup_steps, cfg.hidden, cfg.heads) == (
        "micro", 8, 3, 64, 4)
    assert cli.main(["pretrain", "--preset", "micro", "--config", "x.json"]) == 2
    assert "give --config or --preset, not both" in capsys.readouterr().err
    assert cli.main(["pretrain", "--preset", "micro", "--hidden", "33"]) == 2
    assert "invalid pretrain settings: settings: hidden=33 must be divisible by heads=2" in \
        capsys.readouterr().err


@pytest.mark.parametrize(("command", "data", "needles"), [
    ("glove", {"dimm": 3}, ["'dimm'", "did you mean 'dim'?", "GloveConfig"]),
    ("align", {"vecmap": {"init_sise": 5}}, ["'vecmap.init_sise'", "'init_size'"]),
    ("eval-model", {"window": 64, "strides": 8}, ["'strides'", "'stride'"]),
    ("doctor", {"max_check": 5}, ["'max_check'", "'max_check_tokens'", "DoctorConfig"]),
    ("hidden-states", {"batchsize": 4}, ["'batchsize'", "'batch_size'"]),
    ("pretrain", {"stepz": 4}, ["'stepz'", "'steps'", "PretrainConfig"]),
])
def test_unknown_key_in_config_is_one_line_naming_it(command, data, needles, tmp_path,
                                                       capsys):
    path = _write(tmp_path, "bad.json", data)
    argv = [command, *(COMMANDS | PRESET_COMMANDS)[command][3], "--config", path]
    assert cli.main(argv) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"tokalign {command}: error: --config {path}: unknown setting")
    for needle in needles:
        assert needle in err, (needle, err)


def test_missing_and_invalid_values_name_the_flag(capsys):
    assert cli.main(["tokenize", "--corpus", "x"]) == cli.EXIT_USER_ERROR
    assert "--tokenizer is required" in capsys.readouterr().err
    assert cli.main(["glove", "c", "--dim", "0"]) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "invalid glove settings: --dim 0: Input should be greater than or equal to 1" in err


@pytest.mark.parametrize("command", sorted(COMMANDS | PRESET_COMMANDS))
def test_common_flags_on_every_command(command):
    """--config, -v and a way to hide progress bars everywhere; --artifact-root where
    the command writes to the artifact store."""
    argv = (COMMANDS | PRESET_COMMANDS)[command][3]
    options = {o for a in _subparser(command)._actions for o in a.option_strings}
    assert {"--config", "-v"} <= options, command
    if command not in ("init", "doctor", "neighbors", "lm-eval"):  # no progress bar of ours
        assert "--no-progress" in options, command
    if command in ("corpus", "tokenize", "cooccur", "glove", "hidden-states", "pretrain"):
        assert "--artifact-root" in options
    args = cli.build_parser().parse_args(["-v", command, *argv])
    assert args.verbose is True  # a subcommand's -v does not reset the global one
    args = cli.build_parser().parse_args([command, *argv, "-v"])
    assert args.verbose is True


def _form_definitions() -> dict[str, Any]:
    from prefect.utilities.callables import parameter_schema

    from flows.forms import pipeline_form

    return parameter_schema(pipeline_form.fn).model_dump()["definitions"]


def test_prefect_forms_and_cli_show_the_same_defaults(monkeypatch):
    """The served pipeline form renders the same configs (advanced.pipeline): each field
    the CLI has a flag for has the same description and default in the form's schema."""
    definitions = _form_definitions()
    checked = 0
    for command, (cls, nested, skip, _) in COMMANDS.items():
        lines = _help_lines(command, monkeypatch)
        actions = _actions_by_path(command)
        for path, _ in _fields(cls, nested, skip):
            owner = cls
            for part in path.split(".")[:-1]:
                owner = {"vecmap": VecMapConfig, "distill": DistillConfig}[part]
            if owner.__name__ not in definitions:
                continue  # TokenizeConfig: the pipeline holds its fields at the top level
            prop = definitions[owner.__name__]["properties"][path.rsplit(".", 1)[-1]]
            line = _flag_line(lines, actions[path])
            assert " ".join(prop["description"].split()) in line, (command, path)
            if "default" in prop:
                assert f"(default: {_shown(prop['default'])})" in line, (command, path, prop)
            checked += 1
    assert checked > 100
    assert definitions["SourceSpec"]["properties"]["format"]["default"] == \
        SourceSpec.model_fields["format"].default
    advanced = definitions["Advanced"]["properties"]
    for name in ("workers", "dask_address"):  # the run folder: the CLI and the form agree
        assert advanced[name].get("default") == RunFolderConfig.model_fields[name].default


def test_demo_runs_the_options_its_flags_built(monkeypatch, tmp_path):
    """`tokalign demo` hands the DemoOptions its flags built to the flow: the target and
    --quick shape the DemoConfig, the run folder settings the workspace."""
    from tokalign.commands import demo as demo_cmd

    seen: dict[str, Any] = {}
    monkeypatch.setattr(demo_cmd, "embedded_workspace", lambda opts: seen.setdefault("ws", opts))
    monkeypatch.setattr(demo_cmd, "run_flow",
                        lambda what, flow, cfg, ws: seen.setdefault("cfg", cfg) and 0)
    assert cli.main(["demo", "--quick", "--target", "/tok/llama3", "--workers", "1",
                     "--run-dir", str(tmp_path / "d")]) == 0
    assert seen["ws"] == DemoOptions(quick=True, target="/tok/llama3", workers=1,
                                     run_dir=str(tmp_path / "d"))
    assert seen["cfg"].pipeline.target_tokenizer == "/tok/llama3"
    assert seen["cfg"].source is not None  # quick: a micro source model pretrained here
