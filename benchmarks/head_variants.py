"""LM-head variants on the gated TokAlign++ init, scored on validation documents (issue 14).

The prototype that chose the head calibration (benchmarks/bakeoff_real.md, "LM-head
calibration"). Each variant starts from ``G`` (the gated TokAlign++ default, tied) or ``F``
(FVT) and adds ``;``-separated options:

- ``head=first``: untie; head row of t = the source row of t's first source piece;
- ``bias=S``: a logit bias, S x log((c_T(t) + a) / (c_S(p1) + a)) (target count over the
  first piece's source count), with ``fam=1`` S x log((c_T(t) + a) / family total) (the
  library's formula); applied exactly through an LM-head bias (measurement only) unless
  ``fold=1`` (folded along the least-varying direction of the final hidden states, as the
  library does);
- ``fit=K;ntexts=N``: K passes fitting the bias to the target unigram distribution on the
  hidden states of N training documents (from ``fam=1``'s bias when given, else from 0).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/head_variants.py \
        "G,F,G+head=first;bias=1;fam=1,G+head=first;bias=1;fam=1;fold=1" \
        --work .cache/bakeoff_real

Scores go to the bake-off's per-document cache (``<work>/eval/scores``) and one line per
variant to ``<work>/eval/head_variants.jsonl``.
"""
import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import bakeoff_real as B  # noqa: E402

from tokalign_core.align.alignment import Alignment, Provenance  # noqa: E402
from tokalign_core.model.baselines import fvt_pieces  # noqa: E402

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
log = logging.getLogger("proto")
pre = argparse.ArgumentParser(description=__doc__.split("\n")[0])
pre.add_argument("variants", help="comma-separated variants (see the module docstring)")
pre.add_argument("--work", default=str(ROOT / ".cache" / "bakeoff_real"),
                 help="bake-off work folder (store/, align/vecmap, eval/)")
pre.add_argument("--source-counts", default="store/tokens/92adf9766f3b8ffed43f46de/counts.npy")
pre.add_argument("--target-counts", default="store/tokens/8c42efc015540d0c2c2207a9/counts.npy")
pre.add_argument("--corpus", default="store/corpus/78c66391109fe9d4ec27d539",
                 help="corpus artifact (under --work) whose shards give the training documents")
opts, rest = pre.parse_known_args()
WORK = Path(opts.work)
variants = opts.variants.split(",")
args = B.parse_args(["--split", "val", "--docs", "8", "--groups", "en,python,ru,ja",
                     "--alignment", f"vecmap={WORK / 'align' / 'vecmap'}",
                     "--out", str(WORK / "eval"), *rest])
torch.set_num_threads(1)
groups = B.group_docs(args)
bld = B.Builder(args)
ali = Alignment.load(bld.alignments["vecmap"])
nT = len(bld.tgt_tok)
c_T = np.load(WORK / opts.target_counts).astype(np.float64)
c_S = np.load(WORK / opts.source_counts).astype(np.float64)
log.info("counts %s %s", c_T.shape, c_S.shape)
E_s = bld.source.get_input_embeddings().weight.detach().clone()
nS = E_s.shape[0]
shared = np.isin(ali.provenance, (Provenance.SHARED, Provenance.SPECIAL))
p1 = np.where(shared, ali.source_ids, -1).astype(np.int64)
pieces, _ = fvt_pieces(bld.tgt_tok, bld.src_tok, np.flatnonzero(~shared), nS)
for t, p in pieces.items():
    p1[t] = p[0]
log.info("first pieces: %d of %d (shared %d)", (p1 >= 0).sum(), nT, shared.sum())

def bias(alpha=0.5, lo=-12.0, hi=1.0, scale=1.0, fam=False):
    ct = np.zeros(nT)
    ct[:min(nT, len(c_T))] = c_T[:nT]
    cs = np.where(p1 >= 0, c_S[np.clip(p1, 0, len(c_S) - 1)], 0.0)
    if fam:  # P(t | a target token starts with p1): split p1's mass over its family
        tot = np.zeros(nS)
        ok = p1 >= 0
        np.add.at(tot, p1[ok], ct[ok] + alpha)
        cs = np.where(ok, tot[np.clip(p1, 0, nS - 1)], 0.0) - alpha
    b = np.log((ct + alpha) / (cs + alpha))
    b = np.clip(b, lo, hi) * scale
    b[p1 < 0] = lo * scale
    return b

def first_head(model):
    W = model.get_input_embeddings().weight.detach().clone()
    ok = np.flatnonzero(p1 >= 0)
    W[torch.from_numpy(ok)] = E_s[torch.from_numpy(p1[ok])]
    return W

def add_bias(model, b):
    head = model.lm_head
    new = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    new.weight = head.weight
    full = np.zeros(head.out_features)
    full[:nT] = b
    new.bias = torch.nn.Parameter(torch.tensor(full, dtype=new.weight.dtype))
    model.lm_head = new

def hidden_direction(model, texts):
    """u with E[h.u] = 1 and least variance: u = C^-1 m / (m' C^-1 m)."""
    hs = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: hs.append(i[0][0].detach()))
    with torch.no_grad():
        for t in texts:
            ids = bld.tgt_tok(t, return_tensors="pt")["input_ids"][:, :1024]
            model(ids)
    hook.remove()
    H = torch.cat(hs).double().numpy()
    m = H.mean(0)
    C = np.cov(H.T) + 1e-6 * np.eye(H.shape[1])
    z = np.linalg.solve(C, m)
    u = z / (m @ z)
    proj = H @ u
    log.info("direction: %d states, h.u mean %.4f std %.4f", len(H), proj.mean(), proj.std())
    return u, float(proj.std())

def lm_inputs(model, texts, max_len=1024):
    """Final hidden states (the LM head's inputs) [n, d] of ``texts`` (target tokens)."""
    hs = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: hs.append(i[0][0].detach()))
    with torch.no_grad():
        for t in texts:
            ids = bld.tgt_tok(t, return_tensors="pt")["input_ids"][:, :max_len]
            model(ids)
    hook.remove()
    return torch.cat(hs)

def fit_bias(model, texts, passes, alpha=0.5, b0=None):
    """Per-token logit bias b [nT] so the model's mean predicted distribution over the
    hidden states of ``texts`` matches the target unigram distribution of the corpus."""
    H = lm_inputs(model, texts)
    W = model.lm_head.weight.detach()[:nT]
    ct = np.zeros(nT)
    ct[:min(nT, len(c_T))] = c_T[:nT]
    pi = (ct + alpha) / (ct + alpha).sum()
    b = np.zeros(nT) if b0 is None else b0.copy()
    for k in range(passes):
        q = torch.zeros(nT, dtype=torch.float64)
        bt = torch.from_numpy(b).float()
        for i in range(0, len(H), 1024):
            z = H[i:i + 1024] @ W.T + bt
            q += torch.softmax(z, -1).double().sum(0)
        q = (q / len(H)).numpy()
        kl = float((pi * np.log(pi / q)).sum())
        log.info("fit pass %d: KL(unigram || mean prediction) %.4f over %d states", k, kl, len(H))
        b = b + np.log(pi / q)
    return b

def fold(model, b, u):
    W = model.lm_head.weight.detach().clone()
    W[:nT] += torch.from_numpy(np.outer(b, u)).to(W.dtype)
    model.lm_head.weight = torch.nn.Parameter(W)

def train_texts(n=24):
    """n training documents (first 2,000 characters), drawn evenly from the 8 shards."""
    import pyarrow.parquet as pq
    root = WORK / opts.corpus
    rng = np.random.default_rng(0)
    out = []
    for k in range(8):
        col = pq.read_table(root / f"shard-{k:05d}.parquet").column("text").to_pylist()
        out += [col[i][:2000] for i in rng.choice(len(col), -(-n // 8), replace=False)]
    rng.shuffle(out)
    return out[:n]

def build(v):
    base, _, opts = v.partition("+")
    model, _ = bld.build(B.ROWS["tokalign++ gate q90" if base == "G" else "fvt"])
    o = dict(kv.split("=") for kv in opts.split(";") if kv) if opts else {}
    head = o.get("head", "tied")
    if head == "first":
        B.untie(model, first_head(model))
    elif head == "untie":
        B.untie(model, model.get_input_embeddings().weight)
    extra = ""
    if "fit" in o:
        b0 = bias(fam=True) if o.get("fam") == "1" else None
        b = fit_bias(model, train_texts(int(o.get("ntexts", 16))), int(o["fit"]), b0=b0)
        o.setdefault("bias", "1")
        b = b * float(o["bias"])
        if o.get("fold") == "1":
            if head == "tied":
                B.untie(model, model.get_input_embeddings().weight)
            u, sd = hidden_direction(model, train_texts(24)[-8:])
            fold(model, b, u)
        else:
            add_bias(model, b)
            extra = "bias" + __import__("hashlib").sha256(b.tobytes()).hexdigest()[:16]
        return model, extra
    if "bias" in o:
        b = bias(alpha=float(o.get("alpha", 0.5)), lo=float(o.get("lo", -12)),
                 scale=float(o["bias"]), fam=o.get("fam") == "1")
        if o.get("fold") == "1":
            if head == "tied":
                B.untie(model, model.get_input_embeddings().weight)
            u, sd = hidden_direction(model, train_texts())
            fold(model, b, u)
        else:
            add_bias(model, b)
            extra = "bias" + __import__("hashlib").sha256(b.tobytes()).hexdigest()[:16]
    return model, extra

settings = f"window=whole-doc bos=1 v1 chars={args.chars}"
out = WORK / "eval"
res = {}
for v in variants:
    t0 = time.time()
    model, extra = build(v)
    digest = B.weights_digest(model, settings + extra)
    per_doc = B.score_row(model, bld.tgt_tok, bld.src_tok, groups,
                          out / "scores" / f"{digest[:24]}.jsonl")
    s = B.summarise(per_doc, 1000, 0)
    res[v] = s
    line = {"variant": v, "digest": digest, "mean": s["mean"]["bits_per_byte"],
            **{g: s["groups"][g]["bits_per_byte"][0] for g in s["groups"]},
            "s": round(time.time() - t0)}
    print(json.dumps(line), flush=True)
    with open(out / "head_variants.jsonl", "a") as fh:
        fh.write(json.dumps(line) + "\n")
    del model
