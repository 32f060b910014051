"""Does adaptation move the direction the LM-head calibration folded its bias along?

On a model whose head has no bias and whose final norm is an RMSNorm (SmolLM2), the
calibration's log-frequency bias b [V] is folded into the head rows along the direction u
in which the head inputs h vary least, scaled so that mean(h . u) = 1 on the calibration
sample (``tokalign_core.model.calibrate.least_varying_direction``): the logits then carry
b_t * (h . u), i.e. b_t wherever h . u stays near 1. Training the transformer layers can
move h . u; this script measures by how much.

    python benchmarks/fold_drift.py --init INIT_MODEL --adapted ADAPTED_MODEL \
        --tokens QWEN2_TOKENS [--blocks 16] [--seed 1]

It draws ``--blocks`` document openings (512 tokens) from the tokens artifact (seed 1 by
default, other documents than the init's seed-0 sample), takes the head inputs of both
models, computes u from the initialised model and prints mean and standard deviation of
h . u for each model, plus the adapted model's own least-varying spread.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tokalign_core.model.calibrate import (  # noqa: E402
    CalibrationData,
    head_inputs,
    least_varying_direction,
)
from tokalign_core.model.init import load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--init", required=True, help="the calibrated model as initialised")
    ap.add_argument("--adapted", required=True, help="the same model after adaptation")
    ap.add_argument("--tokens", required=True, help="target-side tokens artifact")
    ap.add_argument("--blocks", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    blocks = CalibrationData.from_tokens(args.tokens, args.blocks, 512, args.seed).blocks
    states = {name: head_inputs(load_model(path), blocks)  # float32 [positions, d]
              for name, path in (("init", args.init), ("adapted", args.adapted))}
    u, spread = least_varying_direction(states["init"])
    out = {"positions": int(states["init"].shape[0]), "init_spread": round(spread, 4)}
    for name, h in states.items():
        p = np.sort(h.double().numpy() @ u)
        out[name] = {"mean_h_u": round(float(p.mean()), 4), "std_h_u": round(float(p.std()), 4),
                     "p5_p95": [round(float(p[len(p) // 20]), 3),
                                round(float(p[-len(p) // 20]), 3)]}
    out["adapted_own_spread"] = round(least_varying_direction(states["adapted"])[1], 4)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
