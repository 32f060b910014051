"""Cost of checking a cached artifact before trusting it: sizes only (the old flow-cache
check) vs full sha256 (now), cold (first time in a process) and warm (memo hit).

    OMP_NUM_THREADS=1 python benchmarks/verify_cost.py --mb 256 --files 4 --rounds 2

Builds one artifact of ``--mb`` MB in ``--files`` files in a temp store, waits until the
files are "settled" (older than hashing.RACY_NS, so the memo may remember them), then
measures in rounds A B C A B C: A = ``verify(full=False)``, B = ``verify(full=True,
memo=True)`` after ``clear_memo()`` (cold), C = the same again without clearing (warm).
Prints one line per measurement and the medians."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from tokalign_core.store import hashing
from tokalign_core.store.artifacts import ArtifactStore, verify


def build(root: Path, mb: int, files: int):
    store = ArtifactStore(root)
    chunk = os.urandom(1 << 20)
    with store.writer("bench") as w:
        for i in range(files):
            with open(w.path(f"part-{i}.bin"), "wb") as fh:
                for _ in range(mb // files):
                    fh.write(chunk)
    return w.ref


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=256)
    p.add_argument("--files", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ref = build(Path(tmp), args.mb, args.files)
        time.sleep(hashing.RACY_NS / 1e9 + 0.5)  # let the memo remember the files
        results: dict[str, list[float]] = {"sizes": [], "full-cold": [], "full-warm": []}
        for r in range(args.rounds):
            results["sizes"].append(timed(lambda: verify(ref, full=False)))
            hashing.clear_memo()
            results["full-cold"].append(timed(lambda: verify(ref, full=True, memo=True)))
            results["full-warm"].append(timed(lambda: verify(ref, full=True, memo=True)))
            for name, values in results.items():
                print(f"round {r} {name:10s} {values[-1] * 1000:9.2f} ms")
        print(f"\n{args.mb} MB in {args.files} files, medians:")
        for name, values in results.items():
            print(f"  {name:10s} {statistics.median(values) * 1000:9.2f} ms")


if __name__ == "__main__":
    main()
