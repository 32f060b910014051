"""One process vs two Dask workers for ``tokalign tokenize`` and ``tokalign cooccur``,
start-up included: every measurement is the whole CLI command under ``/usr/bin/time -v``
(wall, user + system CPU of the command and its worker processes, peak RSS), run
interleaved (1 worker, 2 workers, 1, 2, ...) so both see the same machine load, with the
1-minute load average quoted before and after each run. Results are appended to
``.cache/bench/parallel/results.jsonl`` and printed as a markdown table.

    python benchmarks/parallel_bench.py --text .cache/bench/corpus --mb 40 68 --rounds 2 \
        [--stages tokenize cooccur] [--code before=/path/to/old/checkout --code after=.]

``--text``: a folder of jsonl files (benchmarks/make_corpus.py's output); ``--mb``: corpus
sizes in MB of text (about 4 bytes per Qwen2 token here, so 40 MB ~ 10M tokens).
Everything but the timed commands (corpus artifacts, and the tokens artifact each
``cooccur`` reads) is built once, outside the timing. ``--code LABEL=DIR`` (repeatable)
times the same commands with the package from another checkout (``PYTHONPATH=DIR``), the
checkouts interleaved too: before/after figures from one session.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / ".cache" / "bench" / "parallel"


def cli(args: list[str], timed: bool = False, code: Path = ROOT) -> tuple[str, dict]:
    """Run ``python -m tokalign ARGS`` with the package of checkout ``code``; return (last
    stdout line, /usr/bin/time figures when ``timed``)."""
    env = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "tokalign", *args]
    if timed:
        cmd = ["/usr/bin/time", "-v", *cmd]
    load = _load()
    proc = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    last = proc.stdout.strip().splitlines()[-1]
    return last, (
        _time_v(proc.stderr) | {"load_before": load, "load_after": _load()} if timed else {}
    )


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def _time_v(stderr: str) -> dict:
    def grab(label: str) -> str:
        m = re.search(rf"{re.escape(label)}: (.+)", stderr)
        return m.group(1).strip() if m else "nan"

    wall = grab("Elapsed (wall clock) time (h:mm:ss or m:ss)")
    parts = [float(p) for p in wall.split(":")]
    secs = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    return {
        "wall_s": round(secs, 2),
        "cpu_s": round(
            float(grab("User time (seconds)")) + float(grab("System time (seconds)")), 2
        ),
        "peak_rss_mb": round(int(grab("Maximum resident set size (kbytes)")) / 1024),
    }


def _code(spec: str) -> tuple[str, Path]:
    label, _, path = spec.partition("=")
    if not path or not (Path(path) / "tokalign").is_dir():
        raise argparse.ArgumentTypeError(f"--code {spec!r}: give LABEL=DIR of a tokalign checkout")
    return label, Path(path).resolve()


def corpus(text: Path, mb: float, store: Path) -> str:
    out, _ = cli(
        [
            "corpus",
            "--source",
            str(text),
            "--format",
            "jsonl",
            "--shards",
            "8",
            "--byte-budget",
            str(int(mb * 1e6)),
            "--artifact-root",
            str(store),
            "--no-progress",
        ]
    )
    return out


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    OUT.mkdir(parents=True, exist_ok=True)
    for mb in args.mb:
        store = OUT / f"store-{mb:g}mb"
        corp = corpus(args.text, mb, store)
        done = sorted((store / "ref" / "tokens").glob("*/MANIFEST.json"))
        tokens = (
            str(done[0].parent)
            if done
            else cli(
                [
                    "tokenize",
                    "--corpus",
                    corp,
                    "--tokenizer",
                    args.tokenizer,
                    "--artifact-root",
                    str(store / "ref"),
                    "--no-progress",
                ]
            )[0]
        )
        n_tokens = json.loads((Path(tokens) / "meta.json").read_text())["n_tokens"]
        stages = {
            "tokenize": [
                "tokenize",
                "--corpus",
                corp,
                "--tokenizer",
                args.tokenizer,
                "--no-progress",
            ],
            "cooccur": ["cooccur", tokens],
        }
        for stage, base in ((k, v) for k, v in stages.items() if k in args.stages):
            for rnd, (label, code), workers in itertools.product(
                range(args.rounds), args.code, (1, 2)
            ):
                # a fresh artifact root per run: nothing is served from a cache
                root = store / f"{stage}-{label}-{rnd}-{workers}"
                shutil.rmtree(root, ignore_errors=True)
                _, fig = cli(
                    [*base, "--workers", str(workers), "--artifact-root", str(root)],
                    timed=True, code=code,
                )
                row = {
                    "code": label,
                    "stage": stage,
                    "mb": mb,
                    "n_tokens": n_tokens,
                    "round": rnd + 1,
                    "workers": workers,
                    **fig,
                    "time": time.strftime("%H:%M:%S"),
                }
                print(json.dumps(row), flush=True)
                with (OUT / "results.jsonl").open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| code | stage | tokens | round | workers | wall s | CPU s | peak RSS MB | load before"
        " / after | wall 1w / 2w | CPU 2w / 1w |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    by = {(r.get("code"), r["stage"], r["mb"], r["round"], r["workers"]): r for r in rows}
    for r in rows:
        one = by.get((r.get("code"), r["stage"], r["mb"], r["round"], 1))
        two = r["workers"] == 2 and one
        ratio = f"{one['wall_s'] / r['wall_s']:.2f}x" if two else ""
        cpu = f"{r['cpu_s'] / one['cpu_s']:.2f}" if two else ""
        lines.append(
            f"| {r.get('code', '')} | {r['stage']} | {r['n_tokens'] / 1e6:.1f}M | {r['round']} | "
            f"{r['workers']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
            f"{r['peak_rss_mb']} | {r['load_before']:.1f} / {r['load_after']:.1f} "
            f"| {ratio} | {cpu} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--text", type=Path, default=ROOT / ".cache" / "bench" / "corpus")
    ap.add_argument("--mb", type=float, nargs="+", default=[40.0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tokenizer", default="builtin:qwen2")
    ap.add_argument(
        "--stages", nargs="+", default=["tokenize", "cooccur"], choices=["tokenize", "cooccur"]
    )
    ap.add_argument(
        "--code", action="append", type=_code, default=None, metavar="LABEL=DIR",
        help="time the package of checkout DIR too, labelled LABEL (repeatable; default: "
        "this checkout)",
    )
    args = ap.parse_args()
    args.code = args.code or [("this", ROOT)]
    print(table(run(args)))


if __name__ == "__main__":
    main()
