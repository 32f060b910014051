"""Initialise a source causal LM for a target tokenizer (TokAlign, ACL 2025, section 3.3;
TokAlign++; METHOD.md section 6).

For every target id t, input-embedding row t and LM-head row t become the source rows
chosen by a :class:`~tokalign_core.model.baselines.RowPlan` (for TokAlign: the aligned source row
``alignment.source_ids[t]``). The matrices are found through ``get_input_embeddings()`` /
``get_output_embeddings()``, so any Hugging Face causal LM works (GPT-NeoX, Llama, GPT-2,
Qwen2, Mistral, Gemma, ...). Tied models stay tied; an LM-head bias is planned like the rows.
The matrices are resized to ``len(target_tokenizer)`` rounded up to ``pad_to_multiple_of``;
padding rows are the mean of the initialised rows. ``config`` and ``generation_config``
take the target tokenizer's bos/eos/pad ids (the reference code leaves Pythia's 0/0, so
``generate()`` stops on the wrong token).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokalign_core.align.alignment import Alignment
from tokalign_core.configs.init import InitConfig
from tokalign_core.model import baselines
from tokalign_core.model import calibrate as calib
from tokalign_core.model import card as model_card
from tokalign_core.model import load as models
from tokalign_core.model.embeddings import embedding_modules, is_tied
from tokalign_core.store.atomic import atomic_dir
from tokalign_core.vocab.tokenizers import load_tokenizer

log = logging.getLogger(__name__)


@dataclass
class InitReport:
    """What :func:`initialize` did (for the model card and logs)."""

    method: str
    target_size: int
    embedding_rows: int
    source_rows: int
    source_real_rows: int
    tied: bool
    has_bias: bool
    counts: dict[str, int] = field(default_factory=dict)
    special_ids: dict[str, int | None] = field(default_factory=dict)


@dataclass
class InitResult:
    model: Any
    report: InitReport


# --------------------------------------------------------------------------------------
# Loading helpers (specs -> objects)
# --------------------------------------------------------------------------------------


def check_remote_code(spec: str, trust_remote_code: bool) -> None:
    """Refuse a model whose config needs custom code (``auto_map``) unless allowed."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(spec, trust_remote_code=False)
    except ValueError as exc:  # transformers refuses unknown architectures here
        if "trust_remote_code" in str(exc) and not trust_remote_code:
            raise ValueError(
                f"{spec} needs custom code from its repository; re-run with "
                "--trust-remote-code if you trust it"
            ) from exc
        if "trust_remote_code" in str(exc):
            return
        raise
    if getattr(cfg, "auto_map", None) and not trust_remote_code:
        raise ValueError(
            f"{spec} declares custom code (config.auto_map={cfg.auto_map}); re-run with "
            "--trust-remote-code if you trust it"
        )


def load_model(spec: Any, trust_remote_code: bool = False, dtype: Any = None) -> Any:
    """A causal LM from a model spec (hub id, folder, ``.gguf``, ``builtin:smollm2-135m``;
    see :mod:`tokalign_core.model.load`); objects pass through unchanged."""
    if not isinstance(spec, (str, os.PathLike)):
        return spec
    where = models.resolve_model(spec)
    check_model_source(where)
    check_remote_code(where, trust_remote_code)
    try:
        return models.load_causal_lm(where, dtype=dtype, trust_remote_code=trust_remote_code)
    except Exception as exc:
        if not Path(where).is_dir() or not _is_damaged_weights(exc):
            raise
        raise ValueError(f"model folder {spec}: its weights cannot be read ({exc}); the file "
                         "is truncated or damaged: save or download the model again") from exc


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def _is_damaged_weights(exc: BaseException) -> bool:
    """A weights file that does not parse (matched by class name: safetensors' error type
    lives in a compiled module)."""
    chain = [e for e in (exc, exc.__cause__, exc.__context__) if e is not None]
    names = {type(e).__name__ for e in chain}
    return bool(names & {"SafetensorError", "HeaderTooLarge", "UnpicklingError"}) or \
        any(isinstance(e, EOFError) for e in chain)


def check_model_source(spec: str) -> None:
    """Fail in one line before transformers does (its messages for a local folder speak of
    repo ids): a path that does not exist, a folder without ``config.json`` or weights, a
    ``config.json`` that is not JSON. Hub ids (``name`` or ``org/name`` that is not a local
    path), ``.gguf`` files and ``builtin:`` aliases (checked by
    :func:`tokalign_core.model.load.resolve_model`) pass through."""
    import json

    if spec.lower().endswith(".gguf") or spec.lower().startswith("builtin:"):
        return
    path = Path(spec).expanduser()
    if not path.exists():
        if spec.startswith(("/", "./", "../", "~")) or spec.count("/") > 1:
            raise FileNotFoundError(f"model path {spec} does not exist; give a model folder "
                                    "(config.json + weights) or a hub id such as org/name")
        return
    if not path.is_dir():
        raise ValueError(f"model {spec} is a file; give the folder that holds config.json "
                         "and the weights")
    config = path / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"model folder {spec} has no config.json: it is not a saved "
                                "model (save it with save_pretrained)")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"model folder {spec}: config.json is not valid JSON ({exc}); "
                         "restore or re-save the model") from exc
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(f"model folder {spec} has no weights (none of "
                                f"{', '.join(WEIGHT_FILES)}); copy or re-save the model")


# --------------------------------------------------------------------------------------
# Embedding surgery
# --------------------------------------------------------------------------------------


def padded_rows(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple``."""
    return -(-n // multiple) * multiple


def source_real_rows(model: Any, source_tok: Any, alignment: Alignment | None) -> int:
    """Rows of the source matrix that belong to real tokens: the source tokenizer's length
    (Pythia: 50,277 of 50,304), else the alignment's source size, else every row."""
    rows = embedding_modules(model)[0].weight.shape[0]
    if source_tok is not None:
        n = len(source_tok)
    elif alignment is not None:
        n = alignment.source_size
    else:
        log.warning("no source tokenizer or alignment: treating all %d rows as real", rows)
        n = rows
    if n > rows:
        raise ValueError(
            f"source tokenizer has {n} tokens but the model's embedding has {rows} rows; "
            "is it the tokenizer of this model?"
        )
    return n


def make_plan(
    cfg: InitConfig, target_tok: Any, source_tok: Any, alignment: Alignment | None,
    n_source: int,
) -> baselines.RowPlan:
    """The row plan for ``cfg.method`` (see :mod:`tokalign_core.model.baselines`)."""
    n_target = len(target_tok)
    if cfg.method == "aligned":
        if alignment is None:
            raise ValueError("method='aligned' needs an alignment (run `tokalign align`)")
        return baselines.plan_aligned(alignment, cfg.fallback, target_tok, source_tok, n_source,
                                      min_score=cfg.min_score,
                                      gate_quantile=cfg.gate_quantile)
    if cfg.method == "fvt":
        return baselines.plan_fvt(target_tok, source_tok, n_source)
    shared = None
    if cfg.reuse_shared:
        shared = baselines.shared_source_ids(target_tok, source_tok, alignment, n_source)
    return baselines.plan_statistical(
        cfg.method, n_target, n_source, shared, cfg.seed, cfg.random_std
    )


def _with_padding(rows, total: int):
    """float32 [V_t, d] -> [total, d]: padding rows are the mean of the given rows."""
    import torch

    extra = total - rows.shape[0]
    if extra <= 0:
        return rows
    return torch.cat([rows, rows.mean(0, keepdim=True).expand(extra, -1)], 0)


def _check_plan(plan: baselines.RowPlan, n_source: int) -> None:
    copied = plan.copy_from[plan.copy_from >= 0]
    if len(copied) and copied.max() >= n_source:
        raise ValueError(
            f"the plan copies source row {int(copied.max())} but the source has only "
            f"{n_source} real rows (padding rows are untrained and never copied)"
        )


def initialize(
    source_model: Any,
    target_tokenizer: Any,
    alignment: Alignment | None = None,
    cfg: InitConfig | None = None,
    source_tokenizer: Any = None,
    calibration: calib.CalibrationData | None = None,
) -> InitResult:
    """Initialise ``source_model`` (object or spec; modified in place) for
    ``target_tokenizer`` and return the model plus a report of what was done.
    ``calibration`` (target corpus statistics) enables the LM-head calibration
    (:mod:`tokalign_core.model.calibrate`, ``cfg.calibrate_head``)."""
    cfg = cfg or InitConfig()
    model = load_model(source_model, cfg.trust_remote_code)
    target_tok = load_tokenizer(target_tokenizer, cfg.trust_remote_code)
    source_tok = load_tokenizer(source_tokenizer, cfg.trust_remote_code)
    emb_in, emb_out = embedding_modules(model)
    tied = is_tied(model)
    n_target, rows_before = len(target_tok), emb_in.weight.shape[0]
    n_source = source_real_rows(model, source_tok, alignment)
    if alignment is not None:
        alignment.check_tokenizers(source_tok, target_tok)
        alignment.check_sizes(n_target, n_source)
    plan = make_plan(cfg, target_tok, source_tok, alignment, n_source)
    _check_plan(plan, n_source)
    calibrating = wants_calibration(cfg, calibration, source_tok, n_target)
    source_head = emb_out.weight[:n_source].detach().clone() if calibrating else None
    new = _materialize_all(plan, emb_in, emb_out, tied, n_source, cfg.seed)
    total = padded_rows(n_target, cfg.pad_to_multiple_of)
    _install(model, new, total, tied)
    if calibrating:
        plan.counts.update(_calibrate(model, cfg, calibration, target_tok, source_tok,
                                      source_head, n_target, plan.fvt_pieces))
        tied = is_tied(model)
    special = set_special_ids(model, target_tok)
    report = InitReport(
        method=cfg.method, target_size=n_target, embedding_rows=total, source_rows=rows_before,
        source_real_rows=n_source, tied=tied, has_bias=new["bias"] is not None,
        counts=dict(plan.counts), special_ids=special,
    )
    log.info("initialised %s rows (%s): %s", n_target, cfg.method, plan.counts)
    return InitResult(model, report)


def initialize_model(
    source_model: Any,
    target_tokenizer: Any,
    alignment: Alignment | None = None,
    cfg: InitConfig | None = None,
    source_tokenizer: Any = None,
) -> Any:
    """:func:`initialize`, returning only the model."""
    return initialize(source_model, target_tokenizer, alignment, cfg, source_tokenizer).model


def wants_calibration(cfg: InitConfig, data: calib.CalibrationData | None,
                      source_tok: Any, n_target: int) -> bool:
    """Whether to calibrate the LM head (``cfg.calibrate_head``; None = for method aligned
    when the target corpus statistics are given)."""
    if cfg.calibrate_head is False:
        return False
    if cfg.calibrate_head is None and (cfg.method != "aligned" or data is None):
        return False
    if data is None:
        raise ValueError(
            "calibrate_head=true needs the target corpus statistics: pass the target-side "
            "tokens artifact (init --target-tokens DIR, from `tokalign tokenize`) or set "
            "calibrate_head=false"
        )
    if source_tok is None:
        raise ValueError("the head calibration needs the source tokenizer (first pieces): "
                         "pass source_tokenizer=... or set calibrate_head=false")
    if len(data.counts) > n_target:
        raise ValueError(
            f"the target tokens count {len(data.counts)} ids but the target tokenizer has "
            f"{n_target}: pass the tokens artifact made with the target tokenizer "
            "(`tokalign tokenize --tokenizer <target>`)"
        )
    return True


def _calibrate(model: Any, cfg: InitConfig, data: calib.CalibrationData, target_tok: Any,
               source_tok: Any, source_head: Any, n_target: int,
               known_pieces: dict[int, Any]) -> dict[str, Any]:
    """First-piece head rows + fitted log-frequency bias, folded into the weights
    (:mod:`tokalign_core.model.calibrate`); the counts for the report."""
    import numpy as np
    import torch

    n_source = source_head.shape[0]
    shared = baselines.shared_source_ids(target_tok, source_tok, None, n_source)
    first = calib.first_pieces(target_tok, source_tok, shared, n_source, known_pieces)
    _, head = embedding_modules(model)
    rows = head.weight.detach().clone()
    ok = np.flatnonzero(first >= 0)
    rows[torch.from_numpy(ok)] = source_head[torch.from_numpy(first[ok])].to(rows.dtype)
    if is_tied(model):
        calib.untie_head(model, rows)
    else:
        with torch.no_grad():
            head.weight.copy_(rows)
    _, head = embedding_modules(model)
    states = calib.head_inputs(model, data.blocks)
    b = calib.family_bias(first, data.counts, n_source, cfg.calibration_alpha,
                          cfg.calibration_floor)
    kls: list[float] = []
    if cfg.calibration_passes:
        b, kls = calib.fit_bias(states, head.weight.detach()[:n_target].float(), data.counts,
                                b, cfg.calibration_passes, cfg.calibration_alpha)
    full = np.full(head.weight.shape[0], cfg.calibration_floor)  # padding rows: never used
    full[:n_target] = b
    how = calib.fold_bias(model, full, states)
    out: dict[str, Any] = {"calibrated_first_piece": int(len(ok)),
                           "calibration_positions": int(len(states)),
                           "calibration_fold": how["fold"],
                           "calibration_fold_residual": round(how["fold_residual"], 6)}
    if kls:
        out["calibration_kl_first"], out["calibration_kl_last"] = kls[0], kls[-1]
    return out


def _materialize_all(plan, emb_in, emb_out, tied: bool, n_source: int, seed: int) -> dict:
    """New float32 rows [V_t, d] for the input matrix, the output matrix (None when tied)
    and the LM-head bias [V_t] (None when absent). Distinct seeds per matrix so the
    random baselines do not give the input and output rows the same noise."""
    new_in = baselines.materialize(plan, emb_in.weight[:n_source], seed)
    new_out = None if tied else baselines.materialize(plan, emb_out.weight[:n_source], seed + 1)
    bias = getattr(emb_out, "bias", None)
    new_bias = None
    if bias is not None:
        new_bias = baselines.materialize(plan, bias[:n_source, None], seed + 2)[:, 0]
    return {"in": new_in, "out": new_out, "bias": new_bias}


def _install(model: Any, new: dict, total: int, tied: bool) -> None:
    """Resize to ``total`` rows and write the new rows (+ mean padding) in place."""
    import torch

    with models.transformers_lock():  # resizing re-ties through patched global state
        model.resize_token_embeddings(total, mean_resizing=False)
    emb_in, emb_out = embedding_modules(model)
    with torch.no_grad():
        emb_in.weight.copy_(_with_padding(new["in"], total).to(emb_in.weight.dtype))
        if not tied:
            emb_out.weight.copy_(_with_padding(new["out"], total).to(emb_out.weight.dtype))
        if new["bias"] is not None:
            padded = _with_padding(new["bias"][:, None], total)[:, 0]
            emb_out.bias.copy_(padded.to(emb_out.bias.dtype))
    model.config.vocab_size = total
    if tied and not is_tied(model):
        raise RuntimeError("resizing untied a tied model; please report this model class")
    if not tied and is_tied(model):
        raise RuntimeError("resizing tied an untied model; please report this model class")


def set_special_ids(model: Any, tokenizer: Any) -> dict[str, int | None]:
    """Copy the tokenizer's bos/eos/pad ids into ``config`` and ``generation_config``.

    ``generation_config.pad_token_id`` falls back to eos when the tokenizer has no pad (what
    ``generate()`` would do anyway, without the warning); ``config.pad_token_id`` stays the
    tokenizer's (possibly None) so the config does not claim a pad token that is not there."""
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    for key, value in ids.items():
        setattr(model.config, key, value)
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.bos_token_id = ids["bos_token_id"]
        gen.eos_token_id = ids["eos_token_id"]
        gen.pad_token_id = ids["pad_token_id"] if ids["pad_token_id"] is not None \
            else ids["eos_token_id"]
    return ids


# --------------------------------------------------------------------------------------
# A shallower student (for distillation from the full-depth model)
# --------------------------------------------------------------------------------------


def decoder_layers(model: Any) -> tuple[Any, str]:
    """(the ``nn.ModuleList`` of decoder blocks, its dotted name): the module list whose
    length is ``config.num_hidden_layers`` (``model.layers`` in Llama, ``gpt_neox.layers``,
    GPT-2's ``transformer.h``), found by shape so no table of families is needed."""
    import torch

    n = getattr(model.config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module, name
    raise ValueError(
        f"{type(model).__name__}: no module list of config.num_hidden_layers={n} decoder "
        "blocks; cannot choose layers for this architecture"
    )


def kept_layer_ids(n_layers: int, keep: int) -> list[int]:
    """``keep`` layer indices spread evenly over ``n_layers``, first and last included
    (30 -> 15: 0, 2, 4, ..., 27, 29): the embedding-side and output-side blocks matter most."""
    if not 1 <= keep <= n_layers:
        raise ValueError(f"cannot keep {keep} of {n_layers} layers; choose 1..{n_layers}")
    if keep == 1:
        return [n_layers - 1]
    return sorted({round(i * (n_layers - 1) / (keep - 1)) for i in range(keep)})


def keep_layers(model: Any, keep: int) -> list[int]:
    """Drop all but ``keep`` evenly spread decoder layers of ``model`` in place (a
    shallower student sharing the vocabulary; Sajjad et al. 2023 found keeping spread
    layers a strong start for distillation). Renumbers the kept blocks' ``layer_idx`` (the
    KV cache is indexed by it) and trims per-layer config lists. Returns the kept ids."""
    import torch

    layers, name = decoder_layers(model)
    ids = kept_layer_ids(len(layers), keep)
    kept = torch.nn.ModuleList([layers[i] for i in ids])
    for new_idx, block in enumerate(kept):
        for sub in block.modules():
            if hasattr(sub, "layer_idx"):
                sub.layer_idx = new_idx
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, kept)
    cfg = model.config
    for key, value in list(vars(cfg).items()):
        if isinstance(value, list) and len(value) == cfg.num_hidden_layers:
            setattr(cfg, key, [value[i] for i in ids])  # e.g. layer_types
    cfg.num_hidden_layers = len(ids)
    return ids


# --------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------


def save_initialized(
    model: Any, tokenizer: Any, out_dir: str | Path, card_info: Any = None,
    overwrite: bool = False,
) -> Path:
    """Save model (safetensors) + tokenizer + README.md model card into ``out_dir``.

    Written to a temporary sibling folder and renamed into place, so a crash never leaves
    a half-written model. ``card_info``: a :class:`tokalign_core.model.card.CardInfo`, a
    dict of its fields, or None (a minimal card)."""
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True / --overwrite")
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        info = model_card.as_card_info(card_info)
        (tmp / "README.md").write_text(model_card.render(info, model, tokenizer))
    return out
