"""Sharded tokenization of a corpus artifact with one tokenizer -> a **tokens** artifact.

TokAlign (METHOD.md section 1) tokenizes the same documents with the source and the target
tokenizer; a document boundary later resets the co-occurrence window, so documents are kept
apart by offsets. Layout (``docs/ARCHITECTURE.md``)::

    shard-00000/ids.npy      uint32 [n_tokens]   all documents of the shard concatenated
    shard-00000/offsets.npy  int64  [n_docs + 1] document d is ids[offsets[d]:offsets[d+1]]
    heldout/ids.npy, heldout/offsets.npy
    counts.npy               int64  [vocab_size] frequency of every id over training shards
    tokenizer.json           the exact backend used (provenance; workers load it)
    meta.json                tokenizer, tokenizer_digest, vocab_size, add_bos, add_eos, ...

BOS/EOS are explicit: documents are encoded without the tokenizer's post-processor and
BOS/EOS are inserted here. ``add_bos=None`` means "what ``tokenizer(text)`` does" (the
reference code: BOS for Gemma / LLaMA3, none for Pythia / Qwen2); EOS only when asked.
With the default the ids equal ``tokenizer(text)["input_ids"]`` for tokenizers whose
post-processor adds at most a BOS. Special-token strings inside the text (e.g. a literal
``<|endoftext|>``) are matched as specials, as ``tokenizer(text)`` does. ``counts.npy``
includes inserted BOS/EOS ids.

Parallelism: one pure function per shard (:func:`tokenize_shard`) mapped by a
``tokalign_core.runtime.executor`` executor, plus an explicit merge (sum of the training counts).
Workers write their shard's arrays straight into the artifact's temp folder, so a Dask
cluster must share the artifact root's filesystem (as it must the corpus). Memory per
worker: one batch of documents plus the shard's per-document lengths; ids stream to disk.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokalign_core.configs.tokenize import TokenizeConfig
from tokalign_core.data.corpus import heldout_file, iter_text_batches, shard_files
from tokalign_core.runtime.executor import Executor, SerialExecutor
from tokalign_core.store.artifacts import ArtifactRef, ArtifactStore, read_meta, verify_input
from tokalign_core.vocab.tokenizers import (
    backend_of,
    cached_backend,
    canonical_backend_json,
    load_tokenizer,
    remember_backend,
    tokenizer_digest,
)

log = logging.getLogger(__name__)

UINT32_LIMIT = 2**32
_COPY_CHUNK = 1 << 24  # elements per copy when finalising a .npy from its raw part file


@dataclass(frozen=True)
class ShardJob:
    """Everything a worker needs for one split; small and picklable."""

    name: str  # "shard-00000" or "heldout": also the output sub-folder
    source: str  # corpus parquet file
    out_dir: str  # the artifact's temp folder
    tokenizer_json: str
    tokenizer_digest: str
    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    batch_size: int
    count: bool  # training shards feed counts.npy, the held-out split does not
    single_thread: bool  # inside a worker process: no rayon pool per worker


class _NpyAppender:
    """Append 1-D chunks to a raw part file; :meth:`finish` turns it into ``.npy``.

    Keeps memory at one chunk while the total length is unknown until the end."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path = path
        self.part = path.with_name(path.name + ".part")
        self.dtype = np.dtype(dtype)
        self.fh = open(self.part, "wb")  # noqa: SIM115 - closed in finish()
        self.n = 0

    def append(self, arr: np.ndarray) -> None:
        self.fh.write(np.ascontiguousarray(arr, dtype=self.dtype).tobytes())
        self.n += len(arr)

    def finish(self) -> int:
        self.fh.close()
        if self.n == 0:  # a zero-length memmap is not allowed
            np.save(self.path, np.empty(0, dtype=self.dtype), allow_pickle=False)
            self.part.unlink()
            return 0
        out = np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype, shape=(self.n,))
        raw = np.memmap(self.part, dtype=self.dtype, mode="r", shape=(self.n,))
        for start in range(0, self.n, _COPY_CHUNK):
            out[start:start + _COPY_CHUNK] = raw[start:start + _COPY_CHUNK]
        out.flush()
        del out, raw
        self.part.unlink()
        return self.n


def encode_ids(backend, texts: Sequence[str], vocab_size: int, bos_id: int | None,
               eos_id: int | None, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Encode a batch with the Rust batch encoder; return ``(ids uint32 [n_tokens],
    lengths int64 [n_docs])`` with BOS/EOS inserted per document.

    Raises ValueError when an id is outside ``[0, vocab_size)`` (a tokenizer whose model
    and added tokens disagree) naming ``where``."""
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # no char offsets
    lists = [e.ids for e in encode(list(texts), add_special_tokens=False)]
    lens = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    flat = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int64, count=int(lens.sum()))
    if flat.size and (int(flat.max()) >= vocab_size or int(flat.min()) < 0):
        bad = int(flat.max()) if int(flat.max()) >= vocab_size else int(flat.min())
        raise ValueError(
            f"{where}: the tokenizer produced id {bad} outside its vocabulary of {vocab_size}; "
            "its tokenizer.json is inconsistent (model vocab vs added tokens)"
        )
    extra = (bos_id is not None) + (eos_id is not None)
    if not extra:
        return flat.astype(np.uint32), lens
    return _insert_specials(flat, lens, bos_id, eos_id), lens + extra


def _insert_specials(flat: np.ndarray, lens: np.ndarray, bos_id: int | None,
                     eos_id: int | None) -> np.ndarray:
    extra = (bos_id is not None) + (eos_id is not None)
    new_lens = lens + extra
    ends = np.cumsum(new_lens)
    starts = ends - new_lens
    out = np.empty(int(ends[-1]) if len(ends) else 0, dtype=np.uint32)
    content = np.ones(out.shape, dtype=bool)
    if bos_id is not None:
        out[starts] = bos_id
        content[starts] = False
    if eos_id is not None:
        out[ends - 1] = eos_id
        content[ends - 1] = False
    out[content] = flat
    return out


def tokenize_shard(job: ShardJob) -> dict[str, Any]:
    """Tokenize one corpus parquet file into ``<out_dir>/<name>/{ids,offsets}.npy``.

    Pure given its inputs (same bytes whichever process runs it). Returns
    ``{"name", "n_docs", "n_tokens", "counts": int64 [vocab_size] or None}``."""
    if job.single_thread:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    backend = cached_backend(job.tokenizer_json, job.tokenizer_digest)
    folder = Path(job.out_dir) / job.name
    folder.mkdir(parents=True, exist_ok=True)
    ids_out = _NpyAppender(folder / "ids.npy", np.uint32)
    lengths: list[np.ndarray] = []
    counts = np.zeros(job.vocab_size, dtype=np.int64) if job.count else None
    for texts in iter_text_batches(job.source, job.batch_size):
        ids, lens = encode_ids(backend, texts, job.vocab_size, job.bos_id, job.eos_id,
                               where=f"{job.source}")
        ids_out.append(ids)
        lengths.append(lens)
        if counts is not None and ids.size:
            counts += np.bincount(ids, minlength=job.vocab_size)
    n_tokens = ids_out.finish()
    offsets = np.zeros(sum(len(x) for x in lengths) + 1, dtype=np.int64)
    if lengths:
        np.cumsum(np.concatenate(lengths), out=offsets[1:])
    np.save(folder / "offsets.npy", offsets, allow_pickle=False)
    return {"name": job.name, "n_docs": len(offsets) - 1, "n_tokens": n_tokens,
            "counts": counts}


def resolve_bos_eos(tok, cfg: TokenizeConfig) -> tuple[int | None, int | None]:
    """BOS/EOS ids to insert. ``add_bos=None`` follows the tokenizer's own post-processor:
    BOS when ``tokenizer(text)`` prepends its ``bos_token_id``. Forcing a special the
    tokenizer lacks is an error naming the tokenizer."""
    bos, eos = tok.bos_token_id, tok.eos_token_id
    add_bos = default_add_bos(tok) if cfg.add_bos is None else cfg.add_bos
    if add_bos and bos is None:
        raise ValueError(f"add_bos=True but tokenizer {cfg.tokenizer!r} has no BOS token; "
                         "set add_bos to false or null")
    if cfg.add_eos and eos is None:
        raise ValueError(f"add_eos=True but tokenizer {cfg.tokenizer!r} has no EOS token")
    return (bos if add_bos else None), (eos if cfg.add_eos else None)


def default_add_bos(tok) -> bool:
    """True when the tokenizer's post-processor prepends its BOS (LLaMA3, Gemma)."""
    if tok.bos_token_id is None:
        return False
    backend = backend_of(tok)
    with_special = backend.encode("a b", add_special_tokens=True).ids
    without = backend.encode("a b", add_special_tokens=False).ids
    return len(with_special) > len(without) and with_special[0] == tok.bos_token_id


def tokenize_corpus(
    corpus: ArtifactRef,
    cfg: TokenizeConfig,
    store: ArtifactStore,
    executor: Executor | None = None,
    tok=None,
) -> ArtifactRef:
    """Tokenize every training shard and the held-out split of ``corpus`` -> tokens ref.

    ``executor``: Serial (default) or Dask; the result is byte-identical either way.
    ``tok``: an already loaded tokenizer for ``cfg.tokenizer`` (skips loading)."""
    if corpus.kind != "corpus":
        raise ValueError(f"expected a corpus artifact, got a {corpus.kind!r} artifact "
                         f"({corpus.path})")
    verify_input(corpus, "corpus")  # every shard's sha256 before any is tokenized
    tok = tok if tok is not None else load_tokenizer(cfg.tokenizer, cfg.trust_remote_code)
    vocab_size = len(tok)
    if vocab_size > UINT32_LIMIT:
        raise ValueError(f"tokenizer {cfg.tokenizer!r} has {vocab_size} ids: more than uint32")
    bos_id, eos_id = resolve_bos_eos(tok, cfg)
    executor = executor or SerialExecutor()
    canonical = canonical_backend_json(tok)
    digest = tokenizer_digest(tok, canonical)
    # In-process (and in workers forked from this process, see executor.DaskExecutor):
    # no re-read of tokenizer.json. Remote workers read the artifact's copy.
    remember_backend(digest, backend_of(tok))
    with store.writer("tokens") as w:
        tok_json = w.path("tokenizer.json")
        tok_json.write_text(canonical, encoding="utf-8")
        jobs = _jobs(corpus, cfg, w.dir, str(tok_json), digest, vocab_size, bos_id, eos_id,
                     single_thread=not isinstance(executor, SerialExecutor))
        results = executor.map(tokenize_shard, jobs)
        meta = _merge(results, w, cfg, corpus, digest, vocab_size, bos_id, eos_id)
    assert w.ref is not None
    log.info("tokens: %d docs, %d tokens in %d shards -> %s",
             meta["n_docs"], meta["n_tokens"], meta["n_shards"], w.ref.path)
    return w.ref


def _jobs(corpus: ArtifactRef, cfg: TokenizeConfig, out_dir: Path, tok_json: str,
          digest: str, vocab_size: int, bos_id: int | None, eos_id: int | None,
          single_thread: bool) -> list[ShardJob]:
    sources = [(f.name.removesuffix(".parquet"), f, True) for f in shard_files(corpus)]
    sources.append(("heldout", heldout_file(corpus), False))
    return [
        ShardJob(name=name, source=str(path), out_dir=str(out_dir), tokenizer_json=tok_json,
                 tokenizer_digest=digest, vocab_size=vocab_size, bos_id=bos_id, eos_id=eos_id,
                 batch_size=cfg.batch_size, count=count, single_thread=single_thread)
        for name, path, count in sources
    ]


def _merge(results: list[dict[str, Any]], w, cfg: TokenizeConfig, corpus: ArtifactRef,
           digest: str, vocab_size: int, bos_id: int | None, eos_id: int | None
           ) -> dict[str, Any]:
    """Explicit merge: sum the training shards' counts, check doc counts, write meta."""
    train = [r for r in results if r["counts"] is not None]
    held = next(r for r in results if r["name"] == "heldout")
    counts = np.zeros(vocab_size, dtype=np.int64)
    for r in train:
        counts += r["counts"]
    np.save(w.path("counts.npy"), counts, allow_pickle=False)
    _check_doc_counts(corpus, train, held)
    meta = {
        "tokenizer": cfg.tokenizer,
        "tokenizer_digest": digest,
        "vocab_size": vocab_size,
        "add_bos": bos_id is not None,
        "add_eos": eos_id is not None,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "n_docs": sum(r["n_docs"] for r in train),
        "n_tokens": sum(r["n_tokens"] for r in train),
        "n_shards": len(train),
        "shards": [{"name": r["name"], "n_docs": r["n_docs"], "n_tokens": r["n_tokens"]}
                   for r in train],
        "heldout": {"name": "heldout", "n_docs": held["n_docs"], "n_tokens": held["n_tokens"]},
        "corpus_sha256": corpus.sha256,
        "config": cfg.model_dump(mode="json"),
        "config_digest": cfg.digest(),
    }
    w.path("meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return meta


def _check_doc_counts(corpus: ArtifactRef, train: list[dict[str, Any]], held: dict[str, Any]):
    cmeta = corpus.meta()
    expected = [s["docs"] for s in cmeta["shards"]] + [cmeta["heldout"]["docs"]]
    got = [r["n_docs"] for r in train] + [held["n_docs"]]
    if expected != got:
        raise ValueError(f"corpus {corpus.path} lists {expected} documents per shard but "
                         f"{got} were tokenized; the corpus artifact is inconsistent")


# ------------------------------------------------------------------------ reading back


def split_names(ref: ArtifactRef) -> list[str]:
    """``["shard-00000", ..., "heldout"]`` of a tokens artifact."""
    meta = ref.meta()
    return [s["name"] for s in meta["shards"]] + ["heldout"]


def load_split(ref: ArtifactRef, name: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(ids uint32 [n_tokens], offsets int64 [n_docs + 1])`` of one split (memory-mapped
    by default)."""
    mode = "r" if mmap else None
    ids = np.load(ref.file(f"{name}/ids.npy"), mmap_mode=mode, allow_pickle=False)
    offsets = np.load(ref.file(f"{name}/offsets.npy"), allow_pickle=False)
    return ids, offsets


def iter_docs(ids: np.ndarray, offsets: np.ndarray) -> Iterator[np.ndarray]:
    """Each document's ids (views into ``ids``)."""
    for start, end in itertools.pairwise(offsets.tolist()):
        yield ids[start:end]


def load_counts(ref: ArtifactRef) -> np.ndarray:
    """int64 [vocab_size]: frequency of each id over the training shards."""
    return np.load(ref.file("counts.npy"), allow_pickle=False)


def check_shard_names(folder: Path, names: list[str]) -> None:
    """A tokens folder is complete only with exactly the shards its ``meta.json`` counts
    (``shard-00000`` .. ``shard-<n_shards-1>``): a deleted shard is an error, never a
    smaller corpus. Folders whose meta does not count shards are not checked."""
    n = read_meta(Path(folder)).get("n_shards")
    if not isinstance(n, int) or isinstance(n, bool):
        return
    expected = [f"shard-{k:05d}" for k in range(n)]
    if sorted(names) != expected:
        missing = sorted(set(expected) - set(names))
        extra = sorted(set(names) - set(expected))
        raise FileNotFoundError(
            f"tokens artifact {folder} is incomplete: meta.json counts {n} shards, found "
            f"{len(names)} (missing {missing or 'none'}, unexpected {extra or 'none'}); "
            "rebuild it with `tokalign tokenize`"
        )
