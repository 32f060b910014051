"""Initialisation bake-off: every init method, no tuning, scored on held-out text.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bakeoff.py \
        [--preset bakeoff] [--steps N] [--tokenizer SPEC] [--target builtin:qwen2] \
        [--alignment NAME=DIR ...] [--target-tokens DIR [--uncalibrated NAME ...]] \
        [--max-docs 16] [--max-chars 1500] [--out .cache/bakeoff]

1. Source model: a small GPT-NeoX with an English-centric byte-level BPE, pretrained here by
   :func:`tokalign_core.train.pretrain.pretrain` (content-hash cached under ``--artifacts``; a
   second run reuses it).
2. Target tokenizer: the real Qwen2 vocabulary (``builtin:qwen2``, 151,646 ids).
3. Alignments: every ``--alignment NAME=DIR`` given (e.g. TokAlign++ GloVe + VecMap from the
   pipeline), plus, unless ``--no-hidden``, two computed here from the source model's hidden
   states (TokAlign++'s "extract from the LLM" representations; both vocabularies then live
   in one space): ``hidden-csls`` (CSLS retrieval) and ``hidden-relative`` (TokAlign's
   relative representations over 300 shared anchors, cosine retrieval). Every alignment
   row uses the default ``InitConfig`` of method ``aligned``: with ``--target-tokens DIR``
   (the target-side tokens artifact of the representation corpus, ``tokalign tokenize``
   with the target tokenizer) that includes the LM-head calibration
   (:mod:`tokalign_core.model.calibrate`), as in ``tokalign init --target-tokens``;
   ``--uncalibrated NAME`` adds the row ``NAME, uncalibrated`` (``calibrate_head=false``)
   for comparison.
4. For the source model itself (reference line) and for every method -- random,
   random-permutation, mean, multivariate, fvt and each alignment -- initialise a fresh copy
   of the source model for the target vocabulary and score held-out text per language /
   domain with :func:`tokalign_core.evaluate.perplexity.evaluate_model`: perplexity normalised to
   the *source* tokenizer's token count (comparable across vocabularies) and bits per byte.

Held-out text: ``<bench>/eval/<lang>.jsonl`` from ``benchmarks/make_corpus.py`` when it is
ready; otherwise a fallback built here: English and 7 other languages from the Debian man
pages on this machine (``/usr/share/man``) and Python code from standard-library
sub-packages (the fallback pretraining only reads top-level stdlib modules). Results go to
``<out>/results.json`` and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import random
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tokalign_core.align.alignment import Alignment, Provenance  # noqa: E402
from tokalign_core.configs.evaluate import EvalConfig  # noqa: E402
from tokalign_core.configs.init import InitConfig  # noqa: E402
from tokalign_core.store.artifacts import atomic_write_text  # noqa: E402

log = logging.getLogger("bakeoff")
BASELINES = ("random", "random-permutation", "mean", "multivariate", "fvt")
FALLBACK_LANGS = ("de", "fr", "es", "ru", "zh", "ja", "pl")
CORPUS_LANGS = ("en", "python", "de", "fr", "es", "ru", "zh", "ja", "pl", "it", "pt", "tr",
                "uk", "nl", "cs")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="bakeoff",
                   help="pretrain preset of the source model (default: bakeoff, ~10.7M params)")
    p.add_argument("--steps", type=int, default=None,
                   help="override the preset's training steps (default: the preset's)")
    p.add_argument("--tokenizer", default=None,
                   help="source tokenizer of the pretrained model: 'train-bpe' or a spec "
                        "(e.g. another model folder, to share the tokenizer of alignments "
                        "computed for it); default: the preset's")
    p.add_argument("--artifacts", default=str(ROOT / ".cache" / "artifacts"),
                   help="artifact store of the pretrained model (default: .cache/artifacts)")
    p.add_argument("--bench", default=str(ROOT / ".cache" / "bench"),
                   help="benchmark corpus root with corpus/ and eval/ (default: .cache/bench)")
    p.add_argument("--target", default="builtin:qwen2", help="target tokenizer spec")
    p.add_argument("--alignment", action="append", default=[], metavar="NAME=DIR",
                   help="an alignment folder to include (repeatable)")
    p.add_argument("--target-tokens", default=None, metavar="DIR",
                   help="target-side tokens artifact of the representation corpus: the "
                        "alignment rows get the default calibrated LM head (default: none, "
                        "uncalibrated)")
    p.add_argument("--uncalibrated", action="append", default=[], metavar="NAME",
                   help="with --target-tokens: also score alignment NAME uncalibrated, as "
                        "row 'NAME, uncalibrated' (repeatable)")
    p.add_argument("--no-hidden", action="store_true",
                   help="skip the hidden-state alignments computed here")
    p.add_argument("--methods", default=",".join(BASELINES),
                   help="comma-separated baselines to run (default: all)")
    p.add_argument("--langs", default=None,
                   help="comma-separated eval groups (default: all available)")
    p.add_argument("--max-docs", type=int, default=16, help="documents per group (default 16)")
    p.add_argument("--max-chars", type=int, default=1500,
                   help="truncate each document to this many characters (default 1500)")
    p.add_argument("--window", type=int, default=256, help="scoring window (default 256)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per batch (default 4)")
    p.add_argument("--hidden-batch", type=int, default=256,
                   help="sequences per batch when extracting hidden states (default 256)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of baselines and sampling")
    p.add_argument("--out", default=str(ROOT / ".cache" / "bakeoff"),
                   help="results folder (default: .cache/bakeoff)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p.parse_args(argv)


# ------------------------------------------------------------------------ eval text


def corpus_eval_groups(bench: Path, max_docs: int) -> dict[str, list[str]]:
    """Held-out groups from make_corpus.py's ``eval/<lang>.jsonl`` (empty if not ready)."""
    from tokalign_core.evaluate.perplexity import load_texts

    eval_dir = bench / "eval"
    if not (bench / "corpus" / "READY").exists() or not eval_dir.is_dir():
        return {}
    return load_texts(eval_dir, max_docs=max_docs)


def fallback_eval_groups(max_docs: int, seed: int, progress: bool) -> dict[str, list[str]]:
    """English + other languages from man pages; Python code from stdlib sub-packages."""
    from tokalign_core.data.extract import extract_docs
    from tokalign_core.data.machine_text import find_man_pages

    rng = random.Random(seed)
    pages = find_man_pages()
    groups: dict[str, list[str]] = {}
    for lang in ("en", *FALLBACK_LANGS):
        files = [f for f in pages if f.lang == lang]
        rng.shuffle(files)
        docs = []
        for doc in extract_docs(files[: max_docs * 8], max_doc_chars=4000, progress=progress):
            docs.append(doc.text)
            if len(docs) >= max_docs:
                break
        if docs:
            groups[lang] = docs
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = sorted(p for p in stdlib.glob("*/*.py") if "test" not in p.parts[-2])
    rng.shuffle(code)
    groups["python"] = [p.read_text(encoding="utf-8", errors="replace") for p in
                        code[:max_docs]]
    return groups


def eval_groups(args: argparse.Namespace) -> tuple[dict[str, list[str]], str]:
    groups = corpus_eval_groups(Path(args.bench), args.max_docs)
    source = "corpus eval split"
    if not groups:
        groups = fallback_eval_groups(args.max_docs, args.seed, not args.no_progress)
        source = "fallback (man pages + stdlib sub-packages)"
    if args.langs:
        wanted = args.langs.split(",")
        groups = {k: v for k, v in groups.items() if k in wanted}
    groups = {k: [d[: args.max_chars] for d in v] for k, v in groups.items()}
    return groups, source


# ------------------------------------------------------------------------ alignments


def hidden_alignments(model, src_tok, tgt_tok, args) -> dict[str, Alignment]:
    """hidden-csls and hidden-relative alignments from the source model's hidden states."""
    from tokalign_core.align.build import build_alignment
    from tokalign_core.configs.align import AlignConfig
    from tokalign_core.configs.hidden_states import HiddenStatesConfig
    from tokalign_core.embed.artifact import Embeddings
    from tokalign_core.embed.hidden_states import extract_hidden_states
    from tokalign_core.model.baselines import fvt_pieces
    from tokalign_core.vocab.vocab import build_vocab, shared_tokens

    rows = model.get_input_embeddings().weight.shape[0]
    t0 = time.time()
    s_vec, t_vec = extract_hidden_states(model, src_tok, tgt_tok,
                                         HiddenStatesConfig(batch_size=args.hidden_batch),
                                         progress=not args.no_progress)
    log.info("hidden states: %.0f s", time.time() - t0)
    shared = shared_tokens(build_vocab(src_tok, n_rows=rows), build_vocab(tgt_tok))
    pieces, _ = fvt_pieces(tgt_tok, src_tok)
    fallback = {t: p.tolist() for t, p in pieces.items()}
    src = Embeddings(s_vec.vectors, s_vec.token_ids)
    tgt = Embeddings(t_vec.vectors, t_vec.token_ids)
    out = {}
    for name, cfg in (("hidden-csls", AlignConfig(method="cosine", retrieval="csls")),
                      ("hidden-relative", AlignConfig(method="relative"))):
        t0 = time.time()
        res = build_alignment(src, tgt, shared, len(tgt_tok), len(src_tok), cfg,
                              fallback_source_ids=fallback)
        log.info("%s: %.0f s, %s", name, time.time() - t0, res.alignment.counts())
        res.alignment.meta["seconds"] = round(time.time() - t0, 1)
        out[name] = res.alignment
    return out


def given_alignments(specs: list[str]) -> dict[str, Path]:
    """NAME -> alignment folder (loaded only when that method runs, so a resumed run does
    not read alignments it already scored)."""
    out = {}
    for spec in specs:
        if "=" not in spec:
            raise SystemExit(f"--alignment expects NAME=DIR, got {spec!r}")
        name, folder = spec.split("=", 1)
        if not (Path(folder) / "alignment.npz").exists():
            raise SystemExit(f"--alignment {name}: {folder} holds no alignment.npz; run "
                             "`tokalign align` first or fix the path")
        out[name] = Path(folder)
    return out


def cached_hidden_alignments(path: Path, src_tok, tgt_tok, args) -> dict[str, Path]:
    """:func:`hidden_alignments` saved under ``<out>/hidden/<model digest>/<name>`` and
    reused by later runs on the same source model."""
    from tokalign_core.model.init import load_model

    folder = Path(args.out) / "hidden" / path.name
    names = ("hidden-csls", "hidden-relative")
    if not all((folder / n / "meta.json").exists() for n in names):  # written last
        for name, ali in hidden_alignments(load_model(str(path)), src_tok, tgt_tok,
                                           args).items():
            ali.save(folder / name)
    return {n: folder / n for n in names}


def part_key(name: str, path: Path, alignment: Path | None, groups: dict, args,
             cfg: InitConfig | None = None, calibration: str = "") -> str:
    """What one method's scores depend on: the source model, the method, its init settings
    (``cfg``), the alignment file's bytes, the calibration input (``calibration``: a digest
    of the target tokens, empty when the row is not calibrated), the evaluation texts and
    the scoring settings."""
    h = hashlib.sha256()
    for part in (str(path), name, args.target, str(args.window), str(args.batch_size),
                 str(args.seed), cfg.digest() if cfg is not None else "", calibration):
        h.update(part.encode() + b"\0")
    if alignment is not None:
        h.update(hashlib.sha256((alignment / "alignment.npz").read_bytes()).digest())
    for lang in sorted(groups):
        for doc in groups[lang]:
            h.update(lang.encode() + b"\0" + doc.encode() + b"\0")
    return h.hexdigest()


def run_cached(name: str, path: Path, alignment: Path | None, groups: dict, args,
               compute, cfg: InitConfig | None = None, calibration: str = "") -> dict:
    """One method's result from ``<out>/parts`` when its key matches, else ``compute()``
    (written atomically): an interrupted bake-off resumes at the next method, and adding
    an ``--alignment`` later scores only the new one."""
    key = part_key(name, path, alignment, groups, args, cfg, calibration)
    file = Path(args.out) / "parts" / f"{key[:24]}.json"
    if file.exists():
        log.info("%s: from %s", name, file)
        return json.loads(file.read_text())["result"]
    res = compute()
    file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(file, json.dumps({"name": name, "key": key, "result": res},
                                       default=str))
    return res


def alignment_rows(alignments: dict[str, Path], args) -> list[tuple[str, Path, InitConfig]]:
    """(row name, alignment folder, init settings) of every alignment row: each alignment
    with the default settings of method ``aligned`` (calibrated when ``--target-tokens`` is
    given), then ``NAME, uncalibrated`` (``calibrate_head=false``) for each
    ``--uncalibrated NAME``."""
    unknown = [n for n in args.uncalibrated if n not in alignments]
    if unknown:
        raise SystemExit(f"--uncalibrated {unknown[0]!r} is not an alignment row; choose from "
                         f"{sorted(alignments)}")
    if args.uncalibrated and not args.target_tokens:
        raise SystemExit("--uncalibrated needs --target-tokens DIR (without it every "
                         "alignment row is uncalibrated already)")
    rows = [(n, f, InitConfig(method="aligned", seed=args.seed)) for n, f in alignments.items()]
    rows += [(f"{n}, uncalibrated", alignments[n],
              InitConfig(method="aligned", seed=args.seed, calibrate_head=False))
             for n in args.uncalibrated]
    return rows


def calibration_input(args) -> tuple[Any, str]:
    """(the target corpus statistics, a digest of them) from ``--target-tokens``, or
    (None, "") without it. The digest covers the counts and every shard's ids and offsets,
    everything :meth:`CalibrationData.from_tokens` reads."""
    from tokalign_core.model.calibrate import CalibrationData

    if not args.target_tokens:
        return None, ""
    folder = Path(args.target_tokens)
    try:
        data = CalibrationData.for_init(folder, InitConfig(method="aligned", seed=args.seed))
    except ValueError as exc:
        raise SystemExit(f"--target-tokens {folder}: {exc}") from exc
    h = hashlib.sha256()
    for file in [folder / "counts.npy", *sorted(folder.glob("shard-*/ids.npy")),
                 *sorted(folder.glob("shard-*/offsets.npy"))]:
        h.update(file.relative_to(folder).as_posix().encode() + b"\0")
        with open(file, "rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
    return data, h.hexdigest()


def piece_agreement(alignment: Alignment, src_tok, tgt_tok, groups: dict) -> dict:
    """Why an alignment helps or hurts the LM head, measured without a model: over the
    target-token occurrences of the evaluation texts that the alignment *retrieved*
    (provenance ALIGNED; shared/special tokens are copied, and FALLBACK rows -- no vector,
    alignment row = the rarest piece of the token's source tokenization -- get the FVT
    mean at init, so neither is the alignment's choice), the share whose aligned source
    token is the FIRST piece of the token's source tokenization (the piece the source
    model predicts at that position, so the copied head row scores the right token) and
    the share aligned to ANY of its pieces; also the mean number of target ids that share
    the chosen source row (copies split that row's probability) and the share of the
    non-shared occurrences that are FALLBACK."""
    import numpy as np

    from tokalign_core.model.baselines import fvt_pieces

    occ = np.concatenate([np.asarray(ids, np.int64) for docs in groups.values() for ids in
                          tgt_tok(docs, add_special_tokens=False)["input_ids"]])
    src_ids = np.asarray(alignment.source_ids)
    prov = np.asarray(alignment.provenance)
    non_shared = occ[~np.isin(prov[occ], (Provenance.SHARED, Provenance.SPECIAL))]
    occ = non_shared[prov[non_shared] == Provenance.ALIGNED]
    pieces, _ = fvt_pieces(tgt_tok, src_tok, target_ids=np.unique(occ).tolist())
    first = np.array([pieces[t][0] == src_ids[t] if t in pieces else False for t in occ])
    anyp = np.array([src_ids[t] in pieces[t] if t in pieces else False for t in occ])
    copied = src_ids[prov == Provenance.ALIGNED]
    copies = np.bincount(copied, minlength=len(src_tok))
    n = len(occ)
    return {"aligned_occurrences": int(n),
            "fallback_share": float(1 - n / len(non_shared)) if len(non_shared) else 0.0,
            "first_piece": float(first.mean()) if n else 0.0,
            "any_piece": float(anyp.mean()) if n else 0.0,
            "row_copies": float(copies[src_ids[occ]].mean()) if n else 0.0}


# ------------------------------------------------------------------------ runs


def score(model, tok, src_tok, groups, args) -> dict:
    from tokalign_core.evaluate.perplexity import evaluate_model

    cfg = EvalConfig(window=args.window, stride=args.window // 2, batch_size=args.batch_size)
    return evaluate_model(model, tok, groups, src_tok, cfg,
                          progress=not args.no_progress).to_dict()


def run_method(name: str, path: Path, src_tok, tgt_tok, alignment, groups, args,
               cfg: InitConfig, calibration: Any = None) -> dict:
    """Initialise a fresh copy of the source model with ``cfg`` (and ``calibration``, the
    target corpus statistics, for a calibrated head) and score it."""
    from tokalign_core.model.init import initialize, load_model

    t0 = time.time()
    result = initialize(load_model(str(path)), tgt_tok, alignment, cfg, src_tok, calibration)
    t_init = time.time() - t0
    t0 = time.time()
    res = score(result.model, tgt_tok, src_tok, groups, args)
    res.update({"init_seconds": round(t_init, 1), "eval_seconds": round(time.time() - t0, 1),
                "counts": result.report.counts, "init_config": cfg.model_dump(mode="json")})
    log.info("%s: mean norm ppl %.4g, bpb %.3f (init %.0f s)", name,
             res["macro"]["norm_ppl"], res["macro"]["bits_per_byte"], t_init)
    return res


def table(results: dict[str, dict], metric: str) -> str:
    groups = sorted(next(iter(results.values()))["groups"])
    head = "| method | " + " | ".join(groups) + " | mean |"
    lines = [head, "|---" * (len(groups) + 2) + "|"]
    for name, res in results.items():
        cells = [_fmt(res["groups"][g][metric]) for g in groups]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_fmt(res['macro'][metric])} |")
    return "\n".join(lines)


def _fmt(v: float) -> str:
    return f"{v:.3g}" if v < 1e4 else f"{v:.2e}"


def machine() -> dict:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")),
               "?")
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "loadavg": Path("/proc/loadavg").read_text().split()[:3]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    from tokalign_core.model.init import load_model
    from tokalign_core.train import pretrain
    from tokalign_core.vocab.tokenizers import load_tokenizer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    cfg = pretrain.preset(args.preset, steps=args.steps, threads=args.threads,
                          tokenizer=args.tokenizer)
    pre = pretrain.pretrain(cfg, args.artifacts, corpus_dir=Path(args.bench) / "corpus",
                            progress=not args.no_progress)
    path = Path(pre.ref.path)
    log.info("source model %s (cached=%s) in %.0f s", path, pre.cached, time.time() - t0)
    src_tok = load_tokenizer(str(path))
    tgt_tok = load_tokenizer(args.target)
    groups, text_source = eval_groups(args)
    log.info("eval groups (%s): %s", text_source, {k: len(v) for k, v in groups.items()})

    alignments = given_alignments(args.alignment)
    if not args.no_hidden:
        alignments.update(cached_hidden_alignments(path, src_tok, tgt_tok, args))
    rows = alignment_rows(alignments, args)
    calibration, calibration_digest = calibration_input(args)
    results: dict[str, dict] = {}

    def own_vocab() -> dict:
        t0 = time.time()
        res = score(load_model(str(path)), src_tok, src_tok, groups, args)
        return {**res, "eval_seconds": round(time.time() - t0, 1)}

    results["source model (own vocab)"] = run_cached("source model (own vocab)", path,
                                                     None, groups, args, own_vocab)
    # init_cfg, not cfg: ``cfg`` is the pretraining config the report records below
    for name in [m for m in args.methods.split(",") if m]:
        init_cfg = InitConfig(method=name, seed=args.seed)  # baselines: never calibrated
        results[name] = run_cached(name, path, None, groups, args, lambda n=name, c=init_cfg:
                                   run_method(n, path, src_tok, tgt_tok, None, groups, args,
                                              c), init_cfg)
    for name, folder, init_cfg in rows:
        data = calibration if init_cfg.calibrate_head is not False else None
        digest = calibration_digest if data is not None else ""
        results[name] = run_cached(name, path, folder, groups, args, lambda n=name, f=folder,
                                   c=init_cfg, d=data: run_method(n, path, src_tok, tgt_tok,
                                                                  Alignment.load(f), groups,
                                                                  args, c, d),
                                   init_cfg, digest)
    diagnosis = {name: piece_agreement(Alignment.load(folder), src_tok, tgt_tok, groups)
                 for name, folder in alignments.items()}
    report = {"machine": machine(), "piece_agreement": diagnosis, "source_model": str(path),
              "pretrain_cached": pre.cached,
              "pretrain_config": cfg.model_dump(mode="json"),
              "pretrain_metrics": pre.metrics, "target": args.target,
              "target_tokens": args.target_tokens, "target_tokens_digest": calibration_digest,
              "eval_text": text_source, "docs": {k: len(v) for k, v in groups.items()},
              "args": vars(args), "results": results}
    atomic_write_text(out / "results.json", json.dumps(report, indent=2, default=str))
    print("\n## Normalised perplexity (NLL / source-tokenizer tokens), no tuning\n")
    print(table(results, "norm_ppl"))
    print("\n## Bits per byte\n")
    print(table(results, "bits_per_byte"))
    print("\n## Length change vs the source tokenizer (tokens)\n")
    target_rows = [v for k, v in results.items() if not k.startswith("source model")]
    if target_rows:  # every target-vocabulary run tokenizes the same way: show one row
        print(table({f"{args.target} vs source": target_rows[0]}, "length_change"))
    if diagnosis:
        print("\n## Aligned source row vs the target token's source pieces "
              "(retrieved target tokens of the evaluation text; FALLBACK excluded)\n")
        print("| alignment | first piece | any piece | target ids per copied row | "
              "fallback share of non-shared |")
        print("|---|---|---|---|---|")
        for name, d in diagnosis.items():
            print(f"| {name} | {d['first_piece']:.1%} | {d['any_piece']:.1%} | "
                  f"{d['row_copies']:.0f} | {d['fallback_share']:.1%} |")
    print(f"\nmachine: {report['machine']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
