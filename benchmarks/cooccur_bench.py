"""Co-occurrence counting benchmark: tokens/s and peak memory, 1 and 2 workers.

Real text (a jsonl with a "text" field per document, a folder of such files such as
``.cache/bench/corpus``, or a corpus artifact folder of parquet shards) is tokenized with a
32k byte-level BPE trained on part of it, then the first N tokens (cut at a document
boundary) are written as a tokens artifact of 2 shards and counted with window 15. Each
measurement runs in a fresh process so its peak RSS is its own. Besides wall time it
records this process's CPU seconds, a figure much less sensitive to a shared machine's
load. Results are appended to ``.cache/bench/cooccur/results.jsonl``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cooccur_bench.py \
        --text .cache/bench/corpus --sizes 1e6 1e7 2e7
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(".cache/bench/cooccur")


def read_texts(source: Path) -> list[str]:
    """Documents of a jsonl file, of a folder of *.jsonl files (``.cache/bench/corpus``,
    interleaved file by file so every prefix mixes languages), or of a corpus artifact's
    shard-*.parquet files."""
    if source.is_dir() and list(source.glob("shard-*.parquet")):
        import pyarrow.parquet as pq

        return [t for f in sorted(source.glob("shard-*.parquet"))
                for t in pq.read_table(f, columns=["text"]).column("text").to_pylist()]
    if source.is_dir():
        per_file = [read_texts(f) for f in sorted(source.glob("*.jsonl"))]
        longest = max((len(d) for d in per_file), default=0)
        return [d[k] for k in range(longest) for d in per_file if k < len(d)]
    with source.open() as fh:
        return [json.loads(line)["text"] for line in fh if line.strip()]


def prepare(source: Path, vocab: int) -> Path:
    """Tokenize all documents once (cached): ids.npy uint32 + offsets.npy int64."""
    cache = OUT / f"full-{source.stem}-{vocab}"
    if (cache / "offsets.npy").exists():
        return cache
    from tokalign_core.model import toy

    texts = [t for t in read_texts(source) if t.strip()]
    sample, size = [], 0
    for t in texts:  # ~15 MB of text is plenty for a 32k BPE
        sample.append(t)
        size += len(t)
        if size > 15_000_000:
            break
    t0 = time.time()
    tok = toy.train_bytelevel_bpe(sample, vocab)
    print(f"trained {vocab} BPE on {size / 1e6:.1f} MB in {time.time() - t0:.0f}s", flush=True)
    backend = tok.backend_tokenizer
    ids, lens = [], []
    for k in range(0, len(texts), 512):
        for enc in backend.encode_batch(texts[k:k + 512], add_special_tokens=False):
            ids.append(np.asarray(enc.ids, dtype=np.uint32))
            lens.append(len(enc.ids))
    cache.mkdir(parents=True, exist_ok=True)
    np.save(cache / "ids.npy", np.concatenate(ids))
    np.save(cache / "offsets.npy", np.concatenate(([0], np.cumsum(lens))).astype(np.int64))
    (cache / "vocab_size").write_text(str(len(tok)))
    return cache


def make_tokens(full: Path, n_tokens: int, n_shards: int = 2) -> tuple[Path, bool]:
    """Tokens artifact with the first n_tokens (whole documents; tiled if too few)."""
    ids = np.load(full / "ids.npy", mmap_mode="r")
    offsets = np.load(full / "offsets.npy")
    vocab = int((full / "vocab_size").read_text())
    repeated = n_tokens > ids.size
    reps = -(-n_tokens // ids.size)
    all_ids = np.tile(np.asarray(ids), reps) if repeated else np.asarray(ids)
    tiled = [offsets[:-1] + r * ids.size for r in range(reps)] + [[reps * ids.size]]
    all_off = np.concatenate(tiled) if repeated else offsets
    n_docs = int(np.searchsorted(all_off, n_tokens, side="left"))
    folder = OUT / f"tokens-{full.name}-{n_tokens}"
    folder.mkdir(parents=True, exist_ok=True)
    cuts = np.linspace(0, n_docs, n_shards + 1).astype(int)
    counts = np.zeros(vocab, dtype=np.int64)
    for k in range(n_shards):
        lo, hi = all_off[cuts[k]], all_off[cuts[k + 1]]
        shard = folder / f"shard-{k:05d}"
        shard.mkdir(exist_ok=True)
        np.save(shard / "ids.npy", all_ids[lo:hi])
        np.save(shard / "offsets.npy", all_off[cuts[k]:cuts[k + 1] + 1] - lo)
        counts += np.bincount(all_ids[lo:hi], minlength=vocab)
    np.save(folder / "counts.npy", counts)
    (folder / "meta.json").write_text(json.dumps({"tokenizer": f"bpe{vocab}", "vocab_size": vocab,
                                                  "n_tokens": int(counts.sum())}))
    return folder, repeated


def measure(tokens: str, workers: int) -> dict:
    """Run inside a fresh process: count once, report time and peak RSS."""
    from tokalign_core.configs.cooccur import CooccurConfig

    # Compile (or load the cached) kernels outside the timing.
    from tokalign_core.embed.cooccur import build_cooccur, count_shard, row_lookup
    from tokalign_core.runtime.executor import SerialExecutor, make_executor
    from tokalign_core.store.artifacts import ArtifactStore
    count_shard(np.zeros(40, np.uint32), np.array([0, 40]), row_lookup(np.array([0]), 1))
    t_setup = time.time()
    ex = make_executor(workers) if workers > 1 else SerialExecutor()
    setup = time.time() - t_setup
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    t0, cpu0 = time.time(), time.process_time()
    ref = build_cooccur(tokens, CooccurConfig(), ArtifactStore(OUT / "store"), ex)
    secs, cpu = time.time() - t0, time.process_time() - cpu0
    worker_rss = []
    if workers > 1:
        worker_rss = list(ex.client.run(_rss_mb).values())
    ex.close()
    meta = ref.meta()
    return {"workers": workers, "n_tokens": meta["n_tokens"], "seconds": round(secs, 2),
            "cluster_start_s": round(setup, 2),
            "tokens_per_s": round(meta["n_tokens"] / secs), "nnz": meta["nnz"],
            # this process's CPU seconds: robust to the shared machine's load; with Dask
            # workers the counting runs elsewhere, so only the 1-worker figure is complete
            "cpu_seconds_main": round(cpu, 2),
            "tokens_per_cpu_s": round(meta["n_tokens"] / cpu) if workers == 1 else None,
            "loadavg_before": load_before,
            "n_kept": meta["n_kept"], "peak_rss_mb_main": _rss_mb(),
            "peak_rss_mb_workers": worker_rss, "artifact": ref.path,
            "loadavg": open("/proc/loadavg").read().split()[:3]}


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text", type=Path, help="jsonl ({'text': ...} per line) or corpus folder")
    p.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7, 2e7])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--measure", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:  # child process
        print(json.dumps(measure(args.measure, args.workers[0])))
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    full = prepare(args.text, args.vocab)
    for size in args.sizes:
        tokens, repeated = make_tokens(full, int(size))
        for w in args.workers:
            out = subprocess.run([sys.executable, __file__, "--measure", str(tokens),
                                  "--workers", str(w)], capture_output=True, text=True)
            if out.returncode:
                print(out.stderr[-2000:], file=sys.stderr)
                continue
            row = {**json.loads(out.stdout.strip().splitlines()[-1]), "repeated_text": repeated,
                   "source": str(args.text), "nproc": os.cpu_count()}
            print(json.dumps(row), flush=True)
            with (OUT / "results.jsonl").open("a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
