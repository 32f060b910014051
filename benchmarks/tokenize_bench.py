"""Tokenization overhead of ``tokalign_core.vocab.tokenize`` over the tokenizers library's own
``encode_batch`` on the same documents (target: <= 20%).

For each size it builds a corpus artifact of about N tokens from real text, then times
(interleaved, ``--repeats`` times, best and median reported):

- ``encode_batch``: ``backend.encode_batch(texts[i:i+B], add_special_tokens=False)`` over
  every document, texts already in memory (the library's floor);
- ``encode_batch_fast``: the same without character offsets (what the pipeline calls);
- ``pipeline``: :func:`tokalign_core.vocab.tokenize.tokenize_corpus` with the tokenizer already
  loaded, serial executor: reading parquet, encoding, id checks, counts, writing .npy files,
  the artifact's hashing and atomic commit. Its fixed per-run part (tokenizer digest +
  tokenizer.json) is timed separately and reported.

Text: ``--source`` (any corpus source, e.g. the shared bench corpus under
``.cache/bench/corpus``), else a multilingual mix built here from the machine's man pages
(de, fr, ja, ru, pl, es, ...) and Python's standard library (code).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tokenize_bench.py --tokens 1e6 1e7
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import statistics
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench" / "tokenize"
MAN_LANGS = ("de", "fr", "ja", "ru", "pl", "es", "it", "ko", "tr", "pt_BR", "nl", "sv", "cs")


def _man_text(path: Path) -> str:
    """Rough troff -> text: drop requests/comments, strip inline font escapes."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read().decode("utf-8", errors="replace")
    lines = [ln for ln in raw.splitlines() if not ln.startswith((".", "'", '\\"'))]
    return re.sub(r"\\f[BIRP]|\\-|\\\(..|\\&", "", "\n".join(lines))


def build_source(target_bytes: int) -> Path:
    """A jsonl of paragraphs: half man pages in many languages, half Python code."""
    out = CACHE / f"mix-{target_bytes}.jsonl"
    if out.exists():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    docs: list[str] = []
    half = target_bytes // 2
    size = 0
    for lang in MAN_LANGS:
        for page in sorted(Path("/usr/share/man", lang).rglob("*.gz")):
            for para in _man_text(page).split("\n\n"):
                if len(para.strip()) > 40:
                    docs.append(para)
                    size += len(para.encode())
            if size > half * (MAN_LANGS.index(lang) + 1) / len(MAN_LANGS):
                break
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for py in sorted(stdlib.rglob("*.py")):
        if size > target_bytes:
            break
        try:
            text = py.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for block in text.split("\n\n\n"):
            if block.strip():
                docs.append(block)
                size += len(block.encode())
    tmp = out.with_suffix(".part")
    tmp.write_text("\n".join(json.dumps({"text": d}, ensure_ascii=False) for d in docs) + "\n")
    tmp.rename(out)
    return out


def machine() -> dict[str, str]:
    with open("/proc/cpuinfo") as fh:
        cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")),
                   platform.processor())
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "python": platform.python_version()}


def loadavg() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def time_baseline(backend, texts: list[str], batch: int, fast: bool) -> tuple[float, int]:
    encode = backend.encode_batch_fast if fast else backend.encode_batch
    t0 = time.perf_counter()
    n = 0
    for i in range(0, len(texts), batch):
        n += sum(len(e.ids) for e in encode(texts[i:i + batch], add_special_tokens=False))
    return time.perf_counter() - t0, n


def run_size(n_tokens: int, args, tok, store) -> dict:
    from tokalign_core.configs.corpus import CorpusConfig, SourceSpec
    from tokalign_core.configs.tokenize import TokenizeConfig
    from tokalign_core.data.corpus import build_corpus, heldout_file, read_texts, shard_files
    from tokalign_core.vocab.tokenize import tokenize_corpus
    from tokalign_core.vocab.tokenizers import backend_of, canonical_backend_json, tokenizer_digest

    sources = [SourceSpec(path=s) for s in args.source] or [
        SourceSpec(path=str(build_source(int(n_tokens * args.bytes_per_token * 1.3))))]
    ccfg = CorpusConfig(sources=sources, token_budget=n_tokens,
                        bytes_per_token=args.bytes_per_token, n_shards=args.shards)
    t0 = time.perf_counter()
    corpus = build_corpus(ccfg, store, progress=False)
    corpus_s = time.perf_counter() - t0
    files = shard_files(corpus) + [heldout_file(corpus)]
    texts = [t for f in files for t in read_texts(f)]
    n_bytes = sum(len(t.encode()) for t in texts)
    backend = backend_of(tok)
    cfg = TokenizeConfig(tokenizer=args.tokenizer, batch_size=args.batch_size)
    t0 = time.perf_counter()
    tokenizer_digest(tok)
    canonical_backend_json(tok)
    fixed_s = time.perf_counter() - t0
    runs: dict[str, list[float]] = {"encode_batch": [], "encode_batch_fast": [], "pipeline": []}
    loads = []
    for _ in range(args.repeats):  # interleaved: shared-load drift hits all three alike
        loads.append(loadavg())
        s, n = time_baseline(backend, texts, args.batch_size, fast=False)
        runs["encode_batch"].append(s)
        runs["encode_batch_fast"].append(time_baseline(backend, texts, args.batch_size, True)[0])
        t0 = time.perf_counter()
        ref = tokenize_corpus(corpus, cfg, store, tok=tok)
        runs["pipeline"].append(time.perf_counter() - t0)
        assert ref.meta()["n_tokens"] + ref.meta()["heldout"]["n_tokens"] == n
    import shutil

    shutil.rmtree(ref.path)
    best = {k: min(v) for k, v in runs.items()}
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "target_tokens": n_tokens, "tokens": n, "bytes": n_bytes, "docs": len(texts),
        "corpus_build_s": round(corpus_s, 2), "fixed_s": round(fixed_s, 2),
        "best_s": {k: round(v, 3) for k, v in best.items()},
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "overhead_best_vs_encode_batch": round(best["pipeline"] / best["encode_batch"] - 1, 3),
        "overhead_median_vs_encode_batch": round(med["pipeline"] / med["encode_batch"] - 1, 3),
        "overhead_best_vs_fast": round(best["pipeline"] / best["encode_batch_fast"] - 1, 3),
        "tokens_per_s_pipeline": round(n / best["pipeline"]),
        "loadavg": loads,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=float, nargs="+", default=[1e6, 1e7],
                   help="corpus sizes in tokens (default: 1e6 1e7)")
    p.add_argument("--tokenizer", default="builtin:qwen2", help="tokenizer spec")
    p.add_argument("--source", action="append", default=[],
                   help="corpus source(s); default: man pages + stdlib mix built here")
    p.add_argument("--bytes-per-token", type=float, default=3.5,
                   help="bytes per token for the budget (default 3.5)")
    p.add_argument("--shards", type=int, default=4, help="corpus shards (default 4)")
    p.add_argument("--batch-size", type=int, default=1024, help="documents per encode call")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    p.add_argument("--out", default=str(CACHE / "results.jsonl"), help="results (jsonl)")
    args = p.parse_args()

    from tokalign_core.store.artifacts import ArtifactStore
    from tokalign_core.vocab.tokenizers import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    CACHE.mkdir(parents=True, exist_ok=True)
    store = ArtifactStore(tempfile.mkdtemp(prefix="tokbench-", dir=CACHE))
    info = {"machine": machine(), "tokenizer": args.tokenizer,
            "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "(unset)")}
    print(json.dumps(info))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as fh:
        for n in args.tokens:
            res = {**info, **run_size(int(n), args, tok, store)}
            print(json.dumps(res), flush=True)
            fh.write(json.dumps(res) + "\n")
    import shutil

    shutil.rmtree(store.root, ignore_errors=True)


if __name__ == "__main__":
    main()
