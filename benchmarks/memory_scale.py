"""Peak memory of co-occurrence counting and GloVe against corpus size (bounded by a budget).

Real text from this machine (``benchmarks/make_corpus.py``) is tokenized once with Qwen2
(``builtin:qwen2``); the first N tokens (whole documents, no repetition) become a tokens
artifact of 2 shards. Each measurement runs in a fresh process under ``/usr/bin/time -v``
(its "Maximum resident set size" is the figure), niced, one at a time:

* ``cooccur``: ``build_cooccur`` with window 15, min count 5 and the given
  ``memory_budget_mb`` (runs spilled to disk past it, merged streaming);
* ``glove``: ``build_glove`` on that artifact (nonzeros streamed from disk in buckets
  past ``memory_budget_mb``), 100 dims, 2 iterations, 2 threads;
* ``cooccur-base`` / ``glove-base``: the same with an earlier checkout's code
  (``--baseline-src``, e.g. ``git worktree add /tmp/base <commit>``), which holds the whole
  matrix in memory; the counts are compared with the new ones for exact equality.

    nice -n 10 .venv/bin/python benchmarks/memory_scale.py --text .cache/bench/corpus \\
        --sizes 1e7 5e7 --stages cooccur-base glove glove-base --baseline-src /tmp/base

Results are appended to ``.cache/bench/memscale/results.jsonl``, one JSON row each.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / ".cache" / "bench" / "memscale"


def read_texts(source: Path) -> list[str]:
    """Documents of a folder of ``*.jsonl`` files, interleaved file by file so every
    prefix mixes languages and domains."""
    per_file = []
    for f in sorted(source.glob("*.jsonl")):
        with f.open() as fh:
            per_file.append([json.loads(line)["text"] for line in fh if line.strip()])
    longest = max((len(d) for d in per_file), default=0)
    return [d[k] for k in range(longest) for d in per_file if k < len(d)]


def prepare(source: Path, max_tokens: int, spec: str = "builtin:qwen2") -> Path:
    """Tokenize documents once, until ``max_tokens`` (cached): ids.npy uint32, offsets.npy
    int64."""
    cache = OUT / "full-qwen2"
    if (cache / "offsets.npy").exists():
        return cache
    from tokalign_core.vocab.tokenizers import load_tokenizer

    tok = load_tokenizer(spec)
    backend = tok.backend_tokenizer
    texts = read_texts(source)
    ids, lens = [], []
    t0 = time.time()
    total = 0
    for k in range(0, len(texts), 256):
        for enc in backend.encode_batch(texts[k:k + 256], add_special_tokens=False):
            ids.append(np.asarray(enc.ids, dtype=np.uint32))
            lens.append(len(enc.ids))
            total += len(enc.ids)
        if k % 5120 == 0:
            print(f"  {k} documents, {total} tokens, {time.time() - t0:.0f}s", flush=True)
        if total >= max_tokens:
            break
    cache.mkdir(parents=True, exist_ok=True)
    np.save(cache / "ids.npy", np.concatenate(ids))
    np.save(cache / "offsets.npy", np.concatenate(([0], np.cumsum(lens))).astype(np.int64))
    (cache / "vocab_size").write_text(str(len(tok)))
    print(f"tokenized {len(lens)} documents, {sum(lens)} tokens in {time.time() - t0:.0f}s",
          flush=True)
    return cache


def make_tokens(full: Path, n_tokens: int, n_shards: int = 2) -> Path:
    """A tokens artifact folder with the first ``n_tokens`` (cut at a document end)."""
    ids = np.load(full / "ids.npy", mmap_mode="r")
    offsets = np.load(full / "offsets.npy")
    if n_tokens > ids.size:
        raise SystemExit(f"the corpus has {ids.size} tokens < {n_tokens}; build a larger one")
    vocab = int((full / "vocab_size").read_text())
    n_docs = int(np.searchsorted(offsets, n_tokens, side="left"))
    folder = OUT / f"tokens-{n_tokens}"
    if (folder / "counts.npy").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    cuts = np.linspace(0, n_docs, n_shards + 1).astype(int)
    counts = np.zeros(vocab, dtype=np.int64)
    for k in range(n_shards):
        lo, hi = offsets[cuts[k]], offsets[cuts[k + 1]]
        shard = folder / f"shard-{k:05d}"
        shard.mkdir(exist_ok=True)
        np.save(shard / "ids.npy", np.asarray(ids[lo:hi]))
        np.save(shard / "offsets.npy", offsets[cuts[k]:cuts[k + 1] + 1] - lo)
        counts += np.bincount(ids[lo:hi], minlength=vocab)
    np.save(folder / "counts.npy", counts)
    (folder / "meta.json").write_text(json.dumps({"tokenizer": "builtin:qwen2",
                                                  "vocab_size": vocab,
                                                  "n_tokens": int(counts.sum())}))
    return folder


# ---------------------------------------------------------------------------------------
# Children (one measurement each, in a fresh process)
# ---------------------------------------------------------------------------------------


def child_cooccur(tokens: str, budget: float, store: str) -> dict:
    """build_cooccur (window 15, min count 5); an earlier checkout has no budget field."""
    from tokalign_core.configs.cooccur import CooccurConfig
    from tokalign_core.embed.cooccur import build_cooccur
    from tokalign_core.store.artifacts import ArtifactStore

    has_budget = "memory_budget_mb" in CooccurConfig.model_fields
    cfg = CooccurConfig(**({"memory_budget_mb": budget} if has_budget else {}))
    t0, cpu0 = time.time(), time.process_time()
    ref = build_cooccur(tokens, cfg, ArtifactStore(OUT / store))
    meta = ref.meta()
    return {"seconds": round(time.time() - t0, 2),
            "cpu_seconds": round(time.process_time() - cpu0, 2), "artifact": ref.path,
            "nnz": meta["nnz"], "n_kept": meta["n_kept"], "n_tokens": meta["n_tokens"],
            "spilled_runs": meta.get("spilled_runs")}


def child_glove(cooccur: str, budget: float, iterations: int, dim: int) -> dict:
    from tokalign_core.configs.glove import GloveConfig
    from tokalign_core.embed.glove import build_glove
    from tokalign_core.store.artifacts import ArtifactStore

    cfg = GloveConfig(dim=dim, iterations=iterations, threads=2, device="cpu",
                      memory_budget_mb=budget)
    t0 = time.time()
    ref = build_glove(cooccur, cfg, ArtifactStore(OUT / "store"), progress=False)
    meta = ref.meta()
    return {"seconds": round(time.time() - t0, 2), "costs": meta["costs"],
            "seconds_per_iteration": [round(s, 2) for s in meta["seconds_per_iteration"]],
            "nnz": meta["nnz"], "buckets": meta["buckets"], "spilled": meta["spilled"],
            "threads": meta["threads"]}


def child_glove_base(cooccur: str, iterations: int, dim: int) -> dict:
    """The earlier in-memory engine (its package first on sys.path): whole matrix loaded."""
    from tokalign_core.configs.glove import GloveConfig
    from tokalign_core.embed.cooccur import load_cooccur
    from tokalign_core.embed.glove import train_glove

    cfg = GloveConfig(dim=dim, iterations=iterations, threads=2, device="cpu")
    t0 = time.time()
    cooc, _, _ = load_cooccur(cooccur)
    res = train_glove(cooc, cfg, progress=False)
    return {"seconds": round(time.time() - t0, 2), "costs": res.costs,
            "seconds_per_iteration": [round(s, 2) for s in res.seconds], "nnz": int(cooc.nnz)}


def run_child(args: list[str], src: Path) -> dict:
    """Run this script's child mode under /usr/bin/time -v (niced); its row + peak RSS."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    cmd = ["nice", "-n", "10", "/usr/bin/time", "-v", sys.executable, str(Path(__file__).resolve()),
           *args]
    load = Path("/proc/loadavg").read_text().split()[:3]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=src)
    if out.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{out.stderr[-3000:]}")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr)
    wall = re.search(r"Elapsed \(wall clock\) time.*: (.+)", out.stderr)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    return {**row, "peak_rss_mb": round(int(peak.group(1)) / 1024, 1),
            "wall": wall.group(1).strip(), "loadavg_before": load,
            "loadavg_after": Path("/proc/loadavg").read_text().split()[:3]}


def _base(args: argparse.Namespace) -> Path:
    if args.baseline_src is None:
        raise SystemExit("the -base stages need --baseline-src (a checkout of the earlier code)")
    return args.baseline_src


def same_matrix(a: str, b: str) -> bool:
    """Whether two cooccur artifacts hold identical CSR arrays and token ids."""
    import scipy.sparse as sp

    x, y = sp.load_npz(Path(a) / "cooc.npz"), sp.load_npz(Path(b) / "cooc.npz")
    ids_equal = np.array_equal(np.load(Path(a) / "token_ids.npy"),
                               np.load(Path(b) / "token_ids.npy"))
    return bool(ids_equal and x.dtype == y.dtype and x.shape == y.shape
                and all(np.array_equal(getattr(x, k), getattr(y, k))
                        for k in ("indptr", "indices", "data")))


def record(row: dict) -> None:
    print(json.dumps(row), flush=True)
    with (OUT / "results.jsonl").open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text", type=Path, default=ROOT / ".cache" / "bench" / "corpus",
                   help="folder of *.jsonl from benchmarks/make_corpus.py")
    p.add_argument("--sizes", type=float, nargs="+", default=[1e7, 5e7])
    p.add_argument("--stages", nargs="+", default=["glove"],
                   choices=["cooccur-base", "glove", "glove-base"],
                   help="after `cooccur` (always run): cooccur-base (the earlier checkout's "
                   "in-memory counting, compared for equality), glove, glove-base; repeat a "
                   "stage to alternate runs (A B A B)")
    p.add_argument("--cooccur-budget", type=float, default=None,
                   help="cooccur memory_budget_mb (default: the config's)")
    p.add_argument("--glove-budget", type=float, default=None,
                   help="GloVe memory_budget_mb (default: the config's)")
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--dim", type=int, default=100)
    p.add_argument("--baseline-src", type=Path, help="checkout with the earlier engine")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        kind, *rest = args.child
        fns = {"cooccur": lambda: child_cooccur(rest[0], float(rest[1]), "store"),
               "cooccur-base": lambda: child_cooccur(rest[0], 0.0, "store-base"),
               "glove": lambda: child_glove(rest[0], float(rest[1]), args.iterations, args.dim),
               "glove-base": lambda: child_glove_base(rest[0], args.iterations, args.dim)}
        print(json.dumps(fns[kind]()))
        return
    from tokalign_core.configs.cooccur import CooccurConfig
    from tokalign_core.configs.glove import GloveConfig

    cb = args.cooccur_budget or CooccurConfig().memory_budget_mb
    gb = args.glove_budget or GloveConfig().memory_budget_mb
    OUT.mkdir(parents=True, exist_ok=True)
    full = prepare(args.text, int(max(args.sizes) * 1.02))
    for size in args.sizes:
        tokens = make_tokens(full, int(size))
        base = {"n_tokens_target": int(size), "nproc": os.cpu_count()}
        row = run_child(["--child", "cooccur", str(tokens), str(cb)], ROOT)
        record({**base, "stage": "cooccur", "memory_budget_mb": cb, **row})
        cooc = row["artifact"]
        for stage in args.stages:
            extra = ["--iterations", str(args.iterations), "--dim", str(args.dim)]
            if stage == "cooccur-base":
                row = run_child(["--child", "cooccur-base", str(tokens)], _base(args))
                row["equal_to_new"] = same_matrix(cooc, row["artifact"])
                record({**base, "stage": "cooccur-base", **row})
            elif stage == "glove":
                row = run_child([*extra, "--child", "glove", cooc, str(gb)], ROOT)
                record({**base, "stage": "glove", "memory_budget_mb": gb, **row})
            elif stage == "glove-base":
                row = run_child([*extra, "--child", "glove-base", cooc], _base(args))
                record({**base, "stage": "glove-base", **row})


if __name__ == "__main__":
    main()
