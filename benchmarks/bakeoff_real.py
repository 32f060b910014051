"""Initialisation bake-off on a real pretrained model, no training (issues 13 and 14).

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/bakeoff_real.py \
        --split test --rows source,random,random-permutation,mean,multivariate,fvt,tokalign++ \
        [--source builtin:smollm2-135m] [--target builtin:qwen2] [--docs 8] \
        [--alignment vecmap=DIR --alignment relative=DIR ...] [--out .cache/bakeoff_real/eval]

Every row initialises a fresh copy of the source model for the target vocabulary through
the production path (:func:`tokalign_core.model.init.initialize`) and scores held-out
documents one at a time (each document in one forward pass, prefixed with BOS). Per
document it keeps the total NLL (nats), the bytes and the source tokenizer's token count,
and reports per group and as the unweighted mean over groups:

- bits per byte = NLL / ln 2 / bytes;
- normalised perplexity = exp(NLL / source-tokenizer tokens) (comparable across
  vocabularies; the source model with its own tokenizer is the reference row);

each with a 95% percentile bootstrap interval over documents (documents resampled with
replacement inside every group, 2,000 resamples; the mean's interval resamples every group
at once).

Held-out text: ``<bench>/eval/<lang>.jsonl`` of ``benchmarks/make_corpus.py`` (disjoint by
source file from the training corpus the representations come from) for en, python, de,
fr, ru, ja; this machine has too little Spanish and Chinese text for the corpus's training
split, so es and zh come from the Debian man pages directly (none of their text is in the
representation corpus). Documents are cut to ``--chars`` characters; shorter consecutive
ones are joined (blank line between) until they reach it. Per group they are put in a
seeded order and alternate validation / test
(validation = 0, 2, 4, ...; test = 1, 3, 5, ...), so ``--docs`` can grow later without
moving a document between the splits. Defaults are chosen on ``--split val`` and reported
on ``--split test``.

Scores are cached per document under ``<out>/scores/<weights digest>.jsonl`` (the digest
is the SHA-256 of the initialised embedding and head matrices and the scoring settings),
so a rerun, a larger ``--docs`` or a new ablation scores only what changed; an interrupted
run resumes at the next document. Results go to ``<out>/<split>.json`` and a markdown
table on stdout.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tokalign_core.align.alignment import Alignment  # noqa: E402
from tokalign_core.configs.init import InitConfig  # noqa: E402
from tokalign_core.store.artifacts import atomic_write_text  # noqa: E402

log = logging.getLogger("bakeoff_real")
GROUPS = ("en", "python", "de", "fr", "es", "ru", "zh", "ja")
MAN_GROUPS = ("es", "zh")  # too little text on this machine for the corpus's training split
BASELINES = ("random", "random-permutation", "mean", "multivariate", "fvt")

# Row name -> how to build it. "align": which --alignment; "init": InitConfig fields;
# "head": a second recipe for an untied LM head (measurement only: the embedding matrix
# comes from the row itself, the head from this recipe).
UNGATED = {"gate_quantile": None}  # copy every aligned row (the default before issue 14)
ROWS: dict[str, dict[str, Any]] = {
    **{b: {"init": {"method": b}} for b in BASELINES},
    "tokalign++": {"align": "vecmap", "init": UNGATED},
    "tokalign": {"align": "relative", "init": UNGATED},
    "hidden-states": {"align": "hidden-csls", "init": UNGATED},
    "hidden-states gate q90": {"align": "hidden-csls", "init": {"gate_quantile": 0.9}},
    # issue 14 ablations (TokAlign++ = the vecmap alignment); "gate q90" is the new default
    "tokalign++ fallback=mean": {"align": "vecmap", "init": {**UNGATED, "fallback": "mean"}},
    "tokalign++ gate q50": {"align": "vecmap", "init": {"gate_quantile": 0.5}},
    "tokalign++ gate q75": {"align": "vecmap", "init": {"gate_quantile": 0.75}},
    "tokalign++ gate q90": {"align": "vecmap", "init": {"gate_quantile": 0.9}},
    "tokalign gate q50": {"align": "relative", "init": {"gate_quantile": 0.5}},
    "tokalign gate q90": {"align": "relative", "init": {"gate_quantile": 0.9}},
    "tokalign++ emb + fvt head": {"align": "vecmap", "init": UNGATED,
                                  "head": {"init": {"method": "fvt"}}},
    "fvt emb + tokalign++ head": {"init": {"method": "fvt"},
                                  "head": {"align": "vecmap", "init": UNGATED}},
    # LM-head calibration (tokalign_core.model.calibrate; needs --target-tokens): first-piece
    # head rows + log-frequency bias folded into the weights. "calibrated" = the new default.
    "tokalign++ calibrated": {"align": "vecmap", "calibrate": True, "init": {}},
    "tokalign++ calibrated passes=0": {"align": "vecmap", "calibrate": True,
                                       "init": {"calibration_passes": 0}},
    "tokalign++ calibrated passes=2": {"align": "vecmap", "calibrate": True,
                                       "init": {"calibration_passes": 2}},
    "tokalign++ ungated calibrated": {"align": "vecmap", "calibrate": True, "init": UNGATED},
    "fvt calibrated": {"calibrate": True, "init": {"method": "fvt", "calibrate_head": True}},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="builtin:smollm2-135m", help="source model spec")
    p.add_argument("--target", default="builtin:qwen2", help="target tokenizer spec")
    p.add_argument("--bench", default=str(ROOT / ".cache" / "bench"),
                   help="benchmark corpus root with eval/ (default: .cache/bench)")
    p.add_argument("--alignment", action="append", default=[], metavar="NAME=DIR",
                   help="an alignment folder (vecmap, relative, hidden-csls; repeatable)")
    p.add_argument("--target-tokens", default=None, metavar="DIR",
                   help="target-side tokens artifact of the representation corpus (the "
                        "calibrated rows' counts and sample documents)")
    p.add_argument("--model-row", action="append", default=[], metavar="NAME=DIR",
                   help="a saved model folder scored as row NAME with the target tokenizer "
                        "(e.g. an adapted model; repeatable; add NAME to --rows)")
    p.add_argument("--rows", default="source," + ",".join(BASELINES) + ",tokalign++",
                   help=f"comma-separated rows: source and {sorted(ROWS)}")
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--docs", type=int, default=8, help="documents per group and split (8)")
    p.add_argument("--groups", default=",".join(GROUPS), help="comma-separated groups")
    p.add_argument("--chars", type=int, default=2000, help="characters per document (2000)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: faster than 2 on a loaded machine)")
    p.add_argument("--seed", type=int, default=0, help="document order and baseline seed")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--out", default=str(ROOT / ".cache" / "bakeoff_real" / "eval"))
    p.add_argument("--merge", action="store_true",
                   help="score nothing, load no model: summarise every row whose cached "
                        "scores cover the split (runs side by side) into <split>.json")
    p.add_argument("--compare", default="", metavar="A:B,...",
                   help="with --merge: paired bootstrap intervals of row A minus row B")
    p.add_argument("--report-only", action="store_true",
                   help="score nothing: report the rows whose documents are all cached "
                        "(written to <out>/<split>.json; scoring runs write "
                        "<split>-<pid>.json, so runs side by side do not collide)")
    return p.parse_args(argv)


# ------------------------------------------------------------------------ texts


def group_docs(args: argparse.Namespace) -> dict[str, list[str]]:
    """group -> the split's documents (each exactly ``--chars`` characters)."""
    from tokalign_core.evaluate.perplexity import load_texts

    wanted = args.groups.split(",")
    corpus = load_texts(Path(args.bench) / "eval")
    need = 2 * args.docs
    out: dict[str, list[str]] = {}
    for g in wanted:
        pool = man_docs(g, args.chars, need * 8, args.seed) if g in MAN_GROUPS else \
            list(corpus.get(g, []))
        random.Random(f"{args.seed}:{g}").shuffle(pool)
        pool = pack(pool, args.chars)
        if len(pool) < need:
            raise SystemExit(f"group {g}: only {len(pool)} documents of {args.chars} "
                             f"characters, {need} needed; lower --docs or --chars")
        out[g] = pool[0 if args.split == "val" else 1: need: 2]
    return out


CHUNKS_PER_DOC = 3  # held-out Python and Japanese are too few files for 32 documents


def pack(docs: list[str], chars: int, per_doc: int = CHUNKS_PER_DOC) -> list[str]:
    """Documents of exactly ``chars`` characters, in order. A long document gives up to
    ``per_doc`` consecutive chunks (more would make the bootstrap's documents too alike);
    short documents and the tails of long ones (held-out man pages of some languages are
    mostly shorter than 2,000 characters) are joined with a blank line until they reach
    ``chars``, and a joined text's remainder starts the next."""
    out, buf = [], ""
    for d in docs:
        d = d.strip()
        n = len(d) // chars
        out.extend(d[i * chars:(i + 1) * chars] for i in range(min(per_doc, n)))
        tail = d[n * chars:].strip() if n < per_doc else ""
        if not tail:
            continue
        buf = f"{buf}\n\n{tail}" if buf else tail
        if len(buf) >= chars:
            out.append(buf[:chars])
            buf = buf[chars:].strip()
    return out


def man_docs(lang: str, chars: int, want: int, seed: int) -> list[str]:
    """Documents of >= ``chars`` characters from this machine's man pages in ``lang``,
    in a fixed order (files sorted, then a seeded shuffle)."""
    from tokalign_core.data.extract import extract_docs
    from tokalign_core.data.machine_text import find_man_pages

    files = sorted((f for f in find_man_pages() if f.lang == lang), key=lambda f: f.path)
    random.Random(seed).shuffle(files)
    docs: list[str] = []
    for doc in extract_docs(files, max_doc_chars=4 * chars, progress=False):
        docs.append(doc.text)
        if len(docs) >= want:
            break
    return docs


# ------------------------------------------------------------------------ models


class Builder:
    """Loads the source model once and builds each row's initialised copy."""

    def __init__(self, args: argparse.Namespace):
        from tokalign_core.model.init import load_model
        from tokalign_core.vocab.tokenizers import load_tokenizer

        self.args = args
        t0 = time.time()
        self.source = load_model(args.source)
        self.src_tok = load_tokenizer(args.source)
        self.tgt_tok = load_tokenizer(args.target)
        log.info("loaded %s and tokenizers in %.0f s", args.source, time.time() - t0)
        self.alignments: dict[str, Path] = {}
        for spec in args.alignment:
            name, _, folder = spec.partition("=")
            if not (Path(folder) / "alignment.npz").exists():
                raise SystemExit(f"--alignment {spec}: no alignment.npz in {folder}")
            self.alignments[name] = Path(folder)

    def init_cfg(self, recipe: dict) -> InitConfig:
        fields = {"seed": self.args.seed, "method": "aligned" if "align" in recipe else
                  "fvt", **recipe.get("init", {})}
        return InitConfig(**fields)

    def alignment(self, recipe: dict) -> Alignment | None:
        name = recipe.get("align")
        if name is None:
            return None
        if name not in self.alignments:
            raise SystemExit(f"row needs --alignment {name}=DIR")
        return Alignment.load(self.alignments[name])

    def calibration(self, recipe: dict) -> Any:
        """The target corpus statistics for a calibrated row, else None (uncalibrated)."""
        from tokalign_core.model.calibrate import CalibrationData

        if not recipe.get("calibrate"):
            return None
        if not self.args.target_tokens:
            raise SystemExit("calibrated rows need --target-tokens DIR")
        return CalibrationData.for_init(self.args.target_tokens, self.init_cfg(recipe))

    def build(self, recipe: dict) -> tuple[Any, dict]:
        """(initialised model, init counts); an untied head comes from ``recipe['head']``."""
        from tokalign_core.model.init import initialize

        ali = self.alignment(recipe)
        res = initialize(copy.deepcopy(self.source), self.tgt_tok, ali,
                         self.init_cfg(recipe), self.src_tok, self.calibration(recipe))
        model, counts = res.model, dict(res.report.counts)
        if "head" in recipe:
            head_ali = self.alignment(recipe["head"])
            other = initialize(copy.deepcopy(self.source), self.tgt_tok, head_ali,
                               self.init_cfg(recipe["head"]), self.src_tok)
            untie(model, other.model.get_input_embeddings().weight)
            counts = {"embeddings": counts, "head": dict(other.report.counts)}
        return model, counts


def untie(model: Any, head_weight: Any) -> None:
    """Give ``model`` its own LM head ``head_weight`` [V, d] (measurement only: the
    library keeps tied models tied)."""
    import torch

    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(head_weight.detach().clone())
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()


def weights_digest(model: Any, settings: str) -> str:
    """SHA-256 of the embedding and head matrices (one when tied) and the scoring settings."""
    h = hashlib.sha256(settings.encode())
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    h.update(emb.detach().contiguous().numpy().tobytes())
    if head.data_ptr() != emb.data_ptr():
        h.update(b"untied")
        h.update(head.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------ scoring


def doc_key(group: str, text: str) -> str:
    return hashlib.sha256(f"{group}\0{text}".encode()).hexdigest()[:24]


def read_cache(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by an interruption: score it again
            continue
        out[row["doc"]] = row
    return out


def score_row(model: Any, tok: Any, src_tok: Any, groups: dict[str, list[str]],
              cache_file: Path) -> dict[str, list[dict]]:
    """Per group, per document: {nll, n_scored, bytes, ref_tokens}; cached documents are
    read, the rest scored one per forward pass and appended to ``cache_file``."""
    from tokalign_core.configs.evaluate import EvalConfig
    from tokalign_core.evaluate.perplexity import score_documents

    cached = read_cache(cache_file)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cfg = EvalConfig(window=8192, stride=8192, batch_size=1)
    out: dict[str, list[dict]] = {}
    todo = sum(doc_key(g, d) not in cached for g, docs in groups.items() for d in docs)
    done, t0 = 0, time.time()
    for g, docs in groups.items():
        rows = []
        for d in docs:
            key = doc_key(g, d)
            if key not in cached:
                nll, k = score_documents(model, tok, [d], cfg, progress=False)[0]
                cached[key] = {"doc": key, "group": g, "nll": nll, "n_scored": k}
                with cache_file.open("a") as fh:
                    fh.write(json.dumps(cached[key]) + "\n")
                done += 1
                log.info("  %s doc %d/%d: %d tokens, %.1f s/doc", g, done, todo, k,
                         (time.time() - t0) / done)
            rows.append({**cached[key], "bytes": len(d.encode()),
                         "ref_tokens": len(src_tok(d, add_special_tokens=False)["input_ids"])})
        out[g] = rows
    return out


# ------------------------------------------------------------------------ statistics


def group_metrics(rows: list[dict], idx: np.ndarray | None = None) -> tuple[float, float]:
    """(bits per byte, normalised perplexity) of documents ``rows[idx]``."""
    nll = np.array([r["nll"] for r in rows])
    nb = np.array([r["bytes"] for r in rows])
    nr = np.array([r["ref_tokens"] for r in rows])
    if idx is not None:
        nll, nb, nr = nll[idx], nb[idx], nr[idx]
    return nll.sum() / math.log(2) / nb.sum(), math.exp(nll.sum() / nr.sum())


def summarise(per_doc: dict[str, list[dict]], resamples: int, seed: int) -> dict:
    """Point values and 95% bootstrap intervals per group and for the mean over groups."""
    rng = np.random.default_rng(seed)
    groups = sorted(per_doc)
    boot = {g: np.array([group_metrics(per_doc[g], rng.integers(0, len(per_doc[g]),
                                                                   len(per_doc[g])))
                         for _ in range(resamples)]) for g in groups}
    out: dict[str, Any] = {"groups": {}}
    for g in groups:
        bpb, ppl = group_metrics(per_doc[g])
        lo, hi = np.percentile(boot[g], [2.5, 97.5], axis=0)
        out["groups"][g] = {"bits_per_byte": [bpb, lo[0], hi[0]],
                            "norm_ppl": [ppl, lo[1], hi[1]], "docs": len(per_doc[g])}
    point = np.mean([[out["groups"][g]["bits_per_byte"][0], out["groups"][g]["norm_ppl"][0]]
                     for g in groups], axis=0)
    means = np.mean([boot[g] for g in groups], axis=0)  # [resamples, 2]
    lo, hi = np.percentile(means, [2.5, 97.5], axis=0)
    out["mean"] = {"bits_per_byte": [point[0], lo[0], hi[0]],
                   "norm_ppl": [point[1], lo[1], hi[1]]}
    return out


# ------------------------------------------------------------------------ report


def cell(v: list[float], digits: int) -> str:
    f = f"{{:.{digits}f}}" if v[0] < 1e4 else "{:.3g}"
    return f"{f.format(v[0])} [{f.format(v[1])}, {f.format(v[2])}]"


def table(results: dict[str, dict], metric: str, digits: int) -> str:
    groups = sorted(next(iter(results.values()))["summary"]["groups"])
    lines = ["| row | " + " | ".join(groups) + " | mean |", "|---" * (len(groups) + 2) + "|"]
    for name, res in results.items():
        s = res["summary"]
        cells = [cell(s["groups"][g][metric], digits) for g in groups]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {cell(s['mean'][metric], digits)} |")
    return "\n".join(lines)


def print_tables(results: dict[str, dict], split: str) -> None:
    print(f"\n## Bits per byte ({split} documents, 95% bootstrap intervals)\n")
    print(table(results, "bits_per_byte", 3))
    print(f"\n## Normalised perplexity ({split} documents, 95% bootstrap intervals)\n")
    print(table(results, "norm_ppl", 2))


def row_digests(out: Path) -> dict[str, dict]:
    """row name -> {digest, counts} from ``<out>/rows.jsonl`` (appended by every scoring run;
    a later line wins) and the older ``rows.json`` index."""
    rows: dict[str, dict] = {}
    if (out / "rows.json").exists():
        rows.update(json.loads((out / "rows.json").read_text()))
    if (out / "rows.jsonl").exists():
        for line in (out / "rows.jsonl").read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[row["name"]] = row
    return rows


def paired_difference(a: dict[str, list[dict]], b: dict[str, list[dict]], resamples: int,
                      seed: int) -> dict[str, list[float]]:
    """Bits per byte of row ``a`` minus row ``b`` on the same documents, per group and for
    the mean over groups, with a 95% paired bootstrap interval (one draw of documents per
    resample, used for both rows: the rows' own intervals ignore that they share texts)."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {}
    draws = []
    for g in sorted(a):
        n = len(a[g])
        idx = [rng.integers(0, n, n) for _ in range(resamples)]
        diff = np.array([group_metrics(a[g], i)[0] - group_metrics(b[g], i)[0] for i in idx])
        point = group_metrics(a[g])[0] - group_metrics(b[g])[0]
        out[g] = [point, *np.percentile(diff, [2.5, 97.5])]
        draws.append(diff)
    mean = np.mean(draws, axis=0)
    out["mean"] = [float(np.mean([out[g][0] for g in sorted(a)])),
                   *np.percentile(mean, [2.5, 97.5])]
    return out


def print_differences(results: dict[str, dict], pairs: list[str], resamples: int,
                      seed: int) -> None:
    """Markdown table of paired differences ``A-B`` for each ``A:B`` in ``pairs``."""
    rows = []
    for pair in pairs:
        a, _, b = pair.partition(":")
        if a not in results or b not in results:
            print(f"(paired difference {pair}: a row is not fully scored)")
            continue
        d = paired_difference(results[a]["per_doc"], results[b]["per_doc"], resamples, seed)
        rows.append((f"{a} - {b}", d))
    if not rows:
        return
    cols = [g for g in rows[0][1] if g != "mean"] + ["mean"]
    print("\n### Paired differences in bits per byte (same documents, 95% paired bootstrap)\n")
    print("| rows | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, d in rows:
        print(f"| {name} | " + " | ".join(cell(d[c], 3) for c in cols) + " |")


def merge(args: argparse.Namespace, out: Path) -> int:
    """Summarise every row whose cached scores cover the split's documents, from the
    per-document cache alone (no model is loaded): runs side by side merge here."""
    from tokalign_core.vocab.tokenizers import load_tokenizer

    groups = group_docs(args)
    src_tok = load_tokenizer(args.source)
    wanted = [r for r in args.rows.split(",") if r]
    known = row_digests(out)
    results, missing = {}, []
    for name in wanted + [r for r in known if r not in wanted]:
        if name not in known:
            missing.append(name)
            continue
        cache = read_cache(out / "scores" / f"{known[name]['digest'][:24]}.jsonl")
        if not all(doc_key(g, d) in cache for g, ds in groups.items() for d in ds):
            missing.append(name)
            continue
        per_doc = {g: [{**cache[doc_key(g, d)], "bytes": len(d.encode()), "ref_tokens": len(
            src_tok(d, add_special_tokens=False)["input_ids"])} for d in ds]
            for g, ds in groups.items()}
        results[name] = {"summary": summarise(per_doc, args.resamples, args.seed),
                         "counts": known[name].get("counts", {}),
                         "digest": known[name]["digest"], "per_doc": per_doc}
    if not results:
        raise SystemExit(f"no row has all its {args.split} documents scored in {out}")
    atomic_write_text(out / f"{args.split}.json", json.dumps(
        {"split": args.split, "args": vars(args), "not_scored": missing,
         "docs": {g: len(d) for g, d in groups.items()}, "results": results},
        indent=1, default=str))
    print_tables(results, args.split)
    print_differences(results, [p for p in args.compare.split(",") if p], args.resamples,
                      args.seed)
    if missing:
        print(f"\nnot (fully) scored: {', '.join(missing)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.merge:
        return merge(args, out)
    groups = group_docs(args)
    log.info("%s split: %s documents of %d characters", args.split,
             {g: len(d) for g, d in groups.items()}, args.chars)
    builder = Builder(args)
    settings = f"window=whole-doc bos=1 v1 chars={args.chars}"
    results: dict[str, dict] = {}
    missing = []
    for name in [r for r in args.rows.split(",") if r]:
        t0 = time.time()
        folders = dict(spec.partition("=")[::2] for spec in args.model_row)
        if name == "source":
            model, tok, counts = builder.source, builder.src_tok, {}
        elif name in folders:
            from tokalign_core.model.init import load_model

            model, tok, counts = load_model(folders[name]), builder.tgt_tok, {}
        elif name in ROWS:
            model, counts = builder.build(ROWS[name])
            tok = builder.tgt_tok
        else:
            raise SystemExit(f"unknown row {name!r}; choose source or {sorted(ROWS)}")
        digest = weights_digest(model, settings)
        t_init = time.time() - t0
        out.mkdir(parents=True, exist_ok=True)
        with (out / "rows.jsonl").open("a") as fh:  # appends: runs side by side are safe
            fh.write(json.dumps({"name": name, "digest": digest, "counts": counts},
                                default=str) + "\n")
        cache = out / "scores" / f"{digest[:24]}.jsonl"
        if args.report_only:  # report rows whose documents are all scored, score nothing
            cached = read_cache(cache)
            if not all(doc_key(g, d) in cached for g, ds in groups.items() for d in ds):
                missing.append(name)
                continue
        per_doc = score_row(model, tok, builder.src_tok, groups, cache)
        results[name] = {"summary": summarise(per_doc, args.resamples, args.seed),
                         "counts": counts, "digest": digest,
                         "init_seconds": round(t_init, 1),
                         "seconds": round(time.time() - t0, 1), "per_doc": per_doc}
        m = results[name]["summary"]["mean"]
        log.info("%s: mean bpb %.3f [%.3f, %.3f] (%.0f s)", name, *m["bits_per_byte"],
                 time.time() - t0)
        del model
    if missing:
        print(f"not (fully) scored yet: {', '.join(missing)}")
    if not results:
        return 0
    report = {"split": args.split, "args": vars(args), "loadavg": Path("/proc/loadavg").read_text(),
              "docs": {g: len(d) for g, d in groups.items()}, "results": results}
    name = f"{args.split}.json" if args.report_only else f"{args.split}-{os.getpid()}.json"
    atomic_write_text(out / name, json.dumps(report, indent=1, default=str))
    print_tables(results, args.split)
    return 0


if __name__ == "__main__":
    sys.exit(main())
