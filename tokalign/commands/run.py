"""``tokalign run``: the whole cached pipeline on your model and tokenizer, in one command.

The same embedded defaults as ``tokalign demo`` (a temporary Prefect server, a SQLite MLflow
store and a Dask LocalCluster, all inside the run folder). The settings come from a preset
or a ``PipelineConfig`` file, with flags for the fields people change most. A rerun with the
same inputs is served from the content-hash cache.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tokalign.flags import Opt, add_common_flags, add_config_flags, config_from_args, read_config

PRESET_HELP = "tiny (seconds, tests), tokalign, tokalign++ (default), paper-scale"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "run",
        help="run the whole pipeline (align, init + baselines, adapt, distil, evaluate) on "
             "your model and tokenizer",
        description=(
            "Align SOURCE's vocabulary to TARGET's on your corpus, initialise the model "
            "(TokAlign / TokAlign++ and the baselines), adapt it in two stages, distil it "
            "when a teacher is given, evaluate every model, and print the summary, where the "
            "models are and where the MLflow store is. Settings: --preset or --config "
            "(a PipelineConfig JSON/YAML; dump one with `python -c \"from "
            "tokalign_core.configs import PipelineConfig as P; "
            "print(P.preset('tokalign++').model_dump_json(indent=2))\"`), then the flags "
            "below. Runs on a temporary Prefect server, SQLite MLflow and a Dask "
            "LocalCluster inside --run-dir (or the servers PREFECT_API_URL / "
            "MLFLOW_TRACKING_URI name)."
        ),
    )
    p.add_argument("--preset", default=None, metavar="NAME",
                   help=f"named settings when no --config: {PRESET_HELP}")
    from tokalign_core.configs.pipeline import PipelineConfig

    add_config_flags(p, PipelineConfig, label="pipeline", default_text="the preset's",
                     opts={name: Opt(metavar="SPEC") for name in (
                         "source_model", "source_tokenizer", "target_tokenizer")},
                     title="pipeline settings (PipelineConfig fields; the stage sections "
                     "via --config)")
    p.add_argument("--corpus", action="append", default=None, metavar="PATH",
                   help="text both tokenizers see: a file, folder, glob or hf:<dataset>; "
                        "repeat for several sources, mixed equally (replaces the config's "
                        "sources)")
    p.add_argument("--byte-budget", type=int, default=None, metavar="N",
                   help="read at most N bytes of corpus text (default: the config's)")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help="optimizer steps of adaptation (and distillation) (default: the "
                        "config's)")
    p.add_argument("--teacher", default=None, metavar="SPEC",
                   help="distil from this model, which must use the target tokenizer "
                        "(default: the config's teacher, if any)")
    from tokalign.commands.demo import RUN_FOLDER_OPTS
    from tokalign.options import RunFolderConfig

    add_config_flags(p, RunFolderConfig, label="run folder", key="run", opts=RUN_FOLDER_OPTS,
                     title="run folder (RunFolderConfig fields)")
    add_common_flags(p, config="PipelineConfig (instead of a --preset)", progress=False)
    p.set_defaults(func=run, build_config=build_config)


def build_config(args: argparse.Namespace) -> Any:
    """The PipelineConfig of a ``tokalign run`` (preset or file, then the flags)."""
    from pydantic import ValidationError

    from tokalign.cli import UserError
    from tokalign_core.configs.pipeline import PRESETS, PipelineConfig

    if args.config and args.preset:
        raise UserError("give --config or --preset, not both (a config file already holds "
                        "every setting)")
    if args.preset and args.preset not in PRESETS:
        raise UserError(f"unknown --preset {args.preset!r}; choose from {list(PRESETS)}")
    if args.config and not Path(args.config).is_file():
        raise UserError(f"--config {args.config}: no such file")
    try:
        base = read_config(PipelineConfig, args.config) if args.config \
            else PipelineConfig.preset(args.preset or "tokalign++").model_dump(mode="json")
        base = PipelineConfig.model_validate(base).model_dump(mode="json")
    except ValidationError as exc:
        raise UserError(f"invalid pipeline settings in --config {args.config}: {exc}") from exc
    return config_from_args(args, base=base, fix=lambda data: _overlay(data, args))


def _overlay(data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from tokalign.cli import UserError
    from tokalign_core.configs.distill import DistillConfig

    if args.corpus:
        data["corpus"]["sources"] = [{"path": p} for p in args.corpus]
    if args.byte_budget is not None:
        data["corpus"].update(byte_budget=args.byte_budget, token_budget=None)
    if args.teacher is not None:
        if data.get("distill") is None:
            if data.get("adapt") is None:
                raise UserError("--teacher needs adaptation settings to copy for distillation")
            data["distill"] = {**data["adapt"], "mode": "distill"}
        data["distill"]["distill"] = {**(data["distill"].get("distill") or {}),
                                      "teacher": args.teacher}
        data["distill"]["distill"] = DistillConfig.model_validate(
            data["distill"]["distill"]).model_dump(mode="json")
    if args.steps is not None:
        for key in ("adapt", "distill"):
            if data.get(key) is not None:
                data[key]["total_steps"] = args.steps
    return data


def check_inputs(cfg: Any) -> None:
    """Fail before any server starts when a local input is missing."""
    from tokalign.cli import UserError
    from tokalign_core.configs.pipeline import is_unset

    def local(spec: str) -> bool:
        return spec.startswith(("/", "./", "../", "~")) or Path(spec).expanduser().exists()

    for s in cfg.corpus.sources:
        if not s.path.startswith("hf:") and not any(ch in s.path for ch in "*?[") \
                and not Path(s.path).expanduser().exists():
            raise UserError(f"corpus source {s.path!r} does not exist; pass --corpus PATH "
                            "(a file, folder, glob or hf:<dataset>)")
    checks = [("--source-model", cfg.source_model), ("--target-tokenizer", cfg.target_tokenizer)]
    if cfg.source_tokenizer:
        checks.append(("--source-tokenizer", cfg.source_tokenizer))
    for flag, spec in checks:
        if spec == "(tiny)" or is_unset(spec):
            raise UserError(f"{flag} is not set (the preset has a placeholder); pass {flag}")
        if local(spec) and not Path(spec).expanduser().exists():
            raise UserError(f"{flag} {spec}: no such file or folder")


def run(args: argparse.Namespace) -> int:
    from tokalign.commands.demo import embedded_workspace, run_flow

    folder = config_from_args(args, "run", config_path=None)
    cfg = build_config(args)
    check_inputs(cfg)
    ws = embedded_workspace(folder)
    from flows.pipeline import pipeline_flow

    return run_flow(cfg.title(), pipeline_flow, cfg, ws)
