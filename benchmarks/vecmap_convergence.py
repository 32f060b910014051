"""VecMap schedules side by side on real GloVe vectors: the paper's schedule (preset
``paper``) against the default (stop at a dropout-free fixed point), interleaved
(paper, default, paper, default), same vectors, same seed dictionary and held-out pairs.

Reports per run: iterations, wall / CPU seconds of the alignment (VecMap + the final
CSLS retrieval), stop reason, held-out P@1 (shared tokens hidden from the seed
dictionary, as ``tokalign align --holdout``), and writes each run's per-iteration curve
(objective, dictionary change, keep probability) to ``<out>/<run>.history.json`` plus a
markdown table to ``<out>/table.md``.

    benchmarks/real_vectors.sh .cache/vecmap-real 100 10    # the GloVe vectors
    python benchmarks/vecmap_convergence.py --work .cache/vecmap-real --cutoff 5000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load(work: Path):
    from tokalign_core.embed.artifact import Embeddings
    from tokalign_core.vocab.tokenizers import load_tokenizer
    from tokalign_core.vocab.vocab import build_vocab, shared_tokens

    sides = dict(line.split() for line in (work / "embeddings.txt").read_text().splitlines())
    source, target = Embeddings.load(sides["source"]), Embeddings.load(sides["target"])
    s_tok = load_tokenizer(str(work / "smollm2-tokenizer"))
    t_tok = load_tokenizer("builtin:qwen2")
    shared = shared_tokens(build_vocab(s_tok), build_vocab(t_tok))
    return source, target, shared, len(s_tok), len(t_tok)


def run_one(name: str, vecmap_cfg, data, holdout: float, seed: int) -> dict:
    from tokalign_core.align.build import build_alignment
    from tokalign_core.align.metrics import precision_at_1
    from tokalign_core.configs.align import AlignConfig
    from tokalign_core.vocab.vocab import split_shared

    source, target, shared, s_size, t_size = data
    seed_pairs, heldout = split_shared(shared, holdout, seed)
    t0, c0 = time.perf_counter(), time.process_time()
    out = build_alignment(
        source, target, seed_pairs, t_size, s_size, AlignConfig(vecmap=vecmap_cfg, seed=seed)
    )
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    meta = out.alignment.meta
    hist = out.history
    return {
        "run": name,
        "iterations": len(hist),
        "stop_reason": meta.get("stop_reason"),
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "p_at_1": round(precision_at_1(out.alignment.source_ids, heldout), 4),
        "n_heldout": len(heldout),
        "n_seed": len(seed_pairs),
        "final_objective": hist[-1]["objective"] if hist else None,
        "final_change": hist[-1].get("dictionary_change") if hist else None,
        "load": Path("/proc/loadavg").read_text().split()[0],
        "history": hist,
    }


def main() -> None:
    from tokalign_core.configs.align import VecMapConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "vecmap-real")
    ap.add_argument("--cutoff", type=int, default=20000, help="vocab_cutoff (both runs)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--holdout", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--runs",
        nargs="+",
        default=["paper", "default"],
        choices=["paper", "default"],
        help="schedules, in this order",
    )
    ap.add_argument("--out", type=Path, default=ROOT / ".cache" / "vecmap-real" / "runs")
    args = ap.parse_args()
    data = load(args.work)
    configs = {"paper": VecMapConfig.preset("paper"), "default": VecMapConfig()}
    configs = {k: v for k, v in configs.items() if k in args.runs}
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for rnd in range(args.rounds):
        for name, cfg in configs.items():  # interleaved
            cfg = cfg.model_copy(update={"vocab_cutoff": args.cutoff})
            row = run_one(name, cfg, data, args.holdout, args.seed)
            (args.out / f"{name}-{rnd + 1}.history.json").write_text(
                json.dumps(row.pop("history"), indent=1)
            )
            row["round"] = rnd + 1
            print(json.dumps(row), flush=True)
            rows.append(row)
    lines = [
        "| run | round | iterations | stop | wall s | CPU s | held-out P@1 | "
        "final objective | final dictionary change | load |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['run']} | {r['round']} | {r['iterations']} | {r['stop_reason']} | "
        f"{r['wall_s']} | {r['cpu_s']} | {r['p_at_1']:.4f} ({r['n_heldout']} pairs) | "
        f"{r['final_objective']:.5f} | {r['final_change']:.5f} | {r['load']} |"
        for r in rows
    ]
    (args.out / f"table-{'-'.join(args.runs)}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
