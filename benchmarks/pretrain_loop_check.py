"""Pretrain the ``micro`` preset for 40 steps (4 warm-up) on standard-library text and save
its weights, to compare the pretraining loop across commits (benchmarks/pretrain_loop.md).

    python benchmarks/pretrain_loop_check.py run OUT.pt [--old-schedule]
    python benchmarks/pretrain_loop_check.py compare A.pt B.pt

``--old-schedule`` swaps the LR schedule pretraining had before it used the training
package's (warm-up ``(s+1)/(W+1)``, cosine reaching the floor at the last step), so the
remaining difference between commits is the loop itself. Run the first form with
``PYTHONPATH`` at an export of the older commit to get its weights.
"""

from __future__ import annotations

import argparse
import math
import tempfile


def old_schedule(step: int, steps: int, warmup: int, floor: float) -> float:
    """The pretraining schedule before the merge (for the comparison only)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min((step - warmup) / max(steps - 1 - warmup, 1), 1.0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def run(out: str, swap: bool) -> None:
    import torch

    from tokalign_core.model import toy
    from tokalign_core.train import pretrain as pt

    torch.set_num_threads(1)
    docs = toy.stdlib_texts(300, seed=1)
    texts = pt.TrainingTexts(docs[20:], {"en": docs[:20]}, "stdlib")
    if swap:
        pt.warmup_cosine = old_schedule
    res = pt.pretrain(pt.preset("micro", steps=40, warmup_steps=4), tempfile.mkdtemp(),
                      texts=texts, progress=False)
    model, _ = pt.load_pretrained(res.ref)
    torch.save(model.state_dict(), out)
    print(f"bits/byte {res.metrics['eval_bpb/en']:.6f}  loss EMA "
          f"{res.metrics['final_loss_ema']:.6f}")


def compare(a: str, b: str) -> None:
    import torch

    x, y = torch.load(a), torch.load(b)
    diff = max(float((x[k] - y[k]).abs().max()) for k in x)
    same = all(torch.equal(x[k], y[k]) for k in x)
    print(f"max |w_a - w_b| = {diff:.3g}  bitwise identical: {same}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["run", "compare"])
    p.add_argument("paths", nargs="+")
    p.add_argument("--old-schedule", action="store_true")
    args = p.parse_args()
    if args.what == "run":
        run(args.paths[0], args.old_schedule)
    else:
        compare(*args.paths[:2])


if __name__ == "__main__":
    main()
