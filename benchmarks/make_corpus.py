"""Build the benchmark corpus from real text on this machine.

    .venv/bin/python benchmarks/make_corpus.py [--out .cache/bench] [--seed 0]

Writes ``<out>/corpus/<lang>.<domain>.jsonl`` (training text, rows
``{"text", "lang", "domain", "source"}``), ``<out>/eval/<lang>.jsonl`` (held-out text,
disjoint by source file), ``<out>/corpus/README.md`` (files, languages, sizes, doc counts,
filter counts), ``<out>/corpus/summary.json`` and finally ``<out>/corpus/READY``: other
benchmarks wait for that file. Install the Debian text packages first with
``scripts/install_text_packages.sh``; without them the corpus falls back to Python's own
sources and docs (the README says so).

``--compare-roff N`` instead times the built-in roff stripper against ``man -l`` on N
random man pages (the figure in benchmarks/corpus.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tokalign_core.configs.text_corpus import TextCorpusConfig  # noqa: E402
from tokalign_core.data.extract import read_text_file  # noqa: E402
from tokalign_core.data.machine_text import find_man_pages  # noqa: E402
from tokalign_core.data.render import strip_roff  # noqa: E402
from tokalign_core.data.textsources import CorpusSummary, build_text_corpus  # noqa: E402
from tokalign_core.store.artifacts import atomic_write_text  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / ".cache" / "bench"),
                   help="output root; corpus/ and eval/ go below it (default: .cache/bench)")
    p.add_argument("--seed", type=int, default=0, help="shuffle/split seed (default: 0)")
    p.add_argument("--max-mb-per-group", type=float, default=16.0,
                   help="cap of training text per (lang, domain) file in MB (default: 16)")
    p.add_argument("--eval-kb", type=int, default=200,
                   help="held-out text per language in KB (default: 200)")
    p.add_argument("--min-total-mb", type=float, default=100.0,
                   help="warn when the training corpus is smaller (default: 100)")
    p.add_argument("--compare-roff", type=int, default=0, metavar="N",
                   help="only time strip_roff vs `man -l` on N random man pages (default: 0 = off)")
    p.add_argument("--count-tokens", default=None, metavar="SPEC",
                   help="only estimate the corpus's token count under tokenizer SPEC (e.g. "
                        "builtin:qwen2) from the first 200 KB of every file (default: off)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p.parse_args(argv)


def machine() -> str:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = Path("/proc/loadavg").read_text().strip() if Path("/proc/loadavg").exists() else "?"
    return f"nproc={os.cpu_count()}, CPU={cpu}, python={platform.python_version()}, load={load}"


def compare_roff(n: int, seed: int) -> dict:
    """Seconds to turn ``n`` random man pages into text: our stripper vs man -l."""
    pages = find_man_pages()
    if not pages:
        raise SystemExit("no man pages found")
    sample = random.Random(seed).sample(pages, min(n, len(pages)))
    t0 = time.perf_counter()
    ours = sum(len(strip_roff(read_text_file(Path(f.path)))) for f in sample)
    t_ours = time.perf_counter() - t0
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "MANWIDTH": "100"}
    t0 = time.perf_counter()
    theirs = 0
    for f in sample:
        r = subprocess.run(["man", "-l", "-Tutf8", f.path], capture_output=True, env=env)
        theirs += len(r.stdout)
    t_man = time.perf_counter() - t0
    return {"pages": len(sample), "strip_roff_s": round(t_ours, 3), "strip_roff_chars": ours,
            "man_l_s": round(t_man, 3), "man_l_bytes": theirs,
            "speedup": round(t_man / max(t_ours, 1e-9), 1), "machine": machine()}


def count_tokens(corpus_dir: Path, spec: str, sample_bytes: int = 200_000) -> dict:
    """Estimated tokens per file: bytes/token of a leading sample times the file's bytes."""
    from tokalign_core.data.mix import read_jsonl
    from tokalign_core.vocab.tokenizers import load_tokenizer

    tok = load_tokenizer(spec)
    summary = json.loads((corpus_dir / "summary.json").read_text())
    per_file, total = {}, 0
    for key, v in summary["train"].items():
        texts, used = [], 0
        for row in read_jsonl(corpus_dir / f"{key}.jsonl"):
            texts.append(row["text"])
            used += len(row["text"].encode())
            if used >= sample_bytes:
                break
        n = sum(len(x) for x in tok(texts, add_special_tokens=False)["input_ids"])
        est = int(v["bytes"] * n / max(used, 1))
        per_file[key] = {"bytes_per_token": round(used / max(n, 1), 2), "tokens": est}
        total += est
    return {"tokenizer": spec, "total_tokens": total, "files": per_file, "machine": machine()}


def readme(summary: CorpusSummary, config: TextCorpusConfig, seconds: float) -> str:
    """The corpus README: files, languages, sizes, doc counts and filter counts."""
    tot_b = sum(v["bytes"] for v in summary.train.values())
    tot_d = sum(v["docs"] for v in summary.train.values())
    langs = sorted({k.split(".")[0] for k in summary.train})
    lines = [
        "# Benchmark corpus (real text from this machine)",
        "",
        f"Built by `benchmarks/make_corpus.py` in {seconds:.0f} s; "
        f"config `{config.canonical_json()}`.",
        f"Machine: {machine()}.",
        "",
        f"Training text: {tot_b / 1e6:.1f} MB (UTF-8 text bytes) in {tot_d} documents, "
        f"{len(summary.train)} files, labels: {', '.join(langs)}.",
        "Rows: `{\"text\", \"lang\", \"domain\", \"source\"}`; domains: man (man pages), help "
        "(GNOME help), doc (Debian reference / handbook, Python docs), code.",
    ]
    if summary.fallback:
        lines += ["", "**Fallback:** no translated Debian text was found (apt refused or the "
                  "packages are missing), so this corpus holds only English and code from "
                  "Python's own sources and docs. Run scripts/install_text_packages.sh."]
    lines += ["", "| file | docs | MB |", "| --- | ---: | ---: |"]
    for key, v in summary.train.items():
        lines.append(f"| {key}.jsonl | {v['docs']} | {v['bytes'] / 1e6:.2f} |")
    lines += ["", "Held-out evaluation text (`../eval/<lang>.jsonl`, disjoint by source file):",
              "", "| file | docs | KB |", "| --- | ---: | ---: |"]
    for key, v in summary.eval.items():
        lines.append(f"| {key}.jsonl | {v['docs']} | {v['bytes'] / 1e3:.0f} |")
    lines += ["", "Filter counts per (lang.domain) before the split and the caps:", "",
              "| group | files | unreadable | paragraphs kept | wrong script | untranslated "
              "| duplicates | docs |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    s = summary.stats
    for key in sorted(s["files"]):
        lines.append(
            f"| {key} | {s['files'].get(key, 0)} | {s['unreadable'].get(key, 0)} | "
            f"{s['paragraphs_kept'].get(key, 0)} | {s['paragraphs_wrong_script'].get(key, 0)} | "
            f"{s['paragraphs_untranslated'].get(key, 0)} | {s['duplicates'].get(key, 0)} | "
            f"{s['docs'].get(key, 0)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compare_roff:
        print(json.dumps(compare_roff(args.compare_roff, args.seed), indent=2))
        return 0
    out = Path(args.out)
    corpus_dir, eval_dir = out / "corpus", out / "eval"
    if args.count_tokens:
        print(json.dumps(count_tokens(corpus_dir, args.count_tokens), indent=2))
        return 0
    config = TextCorpusConfig(seed=args.seed,
                              max_bytes_per_group=int(args.max_mb_per_group * 1e6),
                              eval_bytes=args.eval_kb * 1000)
    # Rebuild from scratch: a stale READY must never describe new files.
    (corpus_dir / "READY").unlink(missing_ok=True)
    for d in (corpus_dir, eval_dir):
        if d.exists():
            shutil.rmtree(d)
    t0 = time.perf_counter()
    summary = build_text_corpus(config, corpus_dir, eval_dir, progress=not args.no_progress)
    seconds = time.perf_counter() - t0
    atomic_write_text(corpus_dir / "README.md", readme(summary, config, seconds))
    atomic_write_text(corpus_dir / "summary.json", json.dumps(
        {"config": config.model_dump(mode="json"), "train": summary.train,
         "eval": summary.eval, "stats": summary.stats, "fallback": summary.fallback,
         "seconds": round(seconds, 1), "machine": machine()}, indent=2))
    total = sum(v["bytes"] for v in summary.train.values())
    if total < args.min_total_mb * 1e6:
        print(f"warning: corpus is {total / 1e6:.1f} MB < {args.min_total_mb} MB", file=sys.stderr)
    atomic_write_text(corpus_dir / "READY", f"{total}\n")
    print(f"corpus: {total / 1e6:.1f} MB in {len(summary.train)} files, {seconds:.0f} s -> "
          f"{corpus_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
