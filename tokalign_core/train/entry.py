"""The command line of one training process:
``python -m tokalign_core.train --config run.json`` (also what ``deepspeed --module`` and
``torchrun -m`` run)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from tokalign_core.configs.train import TrainConfig
from tokalign_core.train.loop import run_training


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tokalign_core.train",
        description="Run one TokAlign training job (adapt / distill / sentence-distill) from "
        "a TrainConfig JSON or YAML file. Works alone, under the deepspeed launcher "
        "(--module) and under torchrun.")
    p.add_argument("--config", required=True, help="path of run.json (a TrainConfig)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None,
                   help="set by the deepspeed launcher; LOCAL_RANK in the environment wins")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    try:
        cfg = TrainConfig.load(args.config)
    except FileNotFoundError:
        print(f"train: error: config {args.config} does not exist", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
    result = run_training(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"final_model": str(result.final_model), "steps": result.global_step,
                          "resumed_from": result.resumed_from}))
    return 0
