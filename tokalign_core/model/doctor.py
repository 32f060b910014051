"""Pre-flight checks of a (model, tokenizer) pair before heavy work (issue 4, item 3).

Two questions, two entry points:

- :func:`diagnose_pair` (``tokalign doctor SOURCE TARGET``): is this source model ready to
  get TARGET's vocabulary? The source model is checked with its own tokenizer, the target
  tokenizer on its own (specials, chat template, reachable tokens), and the pair for what
  the swap will do (new matrix size, shared tokens that seed the alignment). A target
  larger than the model's matrix is the point of the swap, not a blocker.
- :func:`diagnose` (``tokalign doctor MODEL --with-tokenizer TOK``): does MODEL work with
  TOK as it is now (e.g. a folder after ``tokalign init``)?

:func:`diagnose` answers, in seconds and without loading weights (the
model is built on PyTorch's ``meta`` device from its config):

- custom code: ``config.auto_map`` needs ``--trust-remote-code`` (refused otherwise);
- sizes: tokenizer length vs embedding rows vs ``config.vocab_size``;
- tied or untied embeddings, and whether ``config.tie_word_embeddings`` agrees;
- special tokens: bos / eos / pad / unk present, ids inside the matrix, config and
  generation-config ids equal to the tokenizer's;
- chat template: special-token-looking strings it uses exist as single tokens;
- unreachable tokens: ids whose own text does not encode back to that id (a cheap proxy for
  tokens the merges can never produce; sampled on large vocabularies, and said so).

Each finding has a severity: ``ok``, ``warning`` or ``blocker``. Blockers make the CLI exit 1.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from tokalign_core.configs.doctor import DoctorConfig

SEVERITIES = ("ok", "warning", "blocker")
# Strings in a chat template that look like special tokens: <|im_start|>, <start_of_turn>,
# </s>, [INST], <|eot_id|>, <｜Assistant｜> ...
CHAT_TOKEN_RE = re.compile(
    r"<\|[^|<>\s]{1,40}\|>|<｜[^<>]{1,40}｜>|</?[a-z][a-z0-9_]{0,30}>|\[/?[A-Z][A-Z_]{1,20}\]"
)


@dataclass
class Finding:
    check: str
    severity: str
    message: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class DoctorReport:
    """All findings of one run."""

    model: str
    tokenizer: str
    findings: list[Finding] = field(default_factory=list)
    swap: bool = False  # tokenizer = the target of a vocabulary swap (diagnose_pair)

    def add(self, check: str, severity: str, message: str, **detail: Any) -> None:
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {severity!r}")
        self.findings.append(Finding(check, severity, message, detail))

    @property
    def blockers(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "blocker"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def by_check(self, check: str) -> list[Finding]:
        return [f for f in self.findings if f.check == check]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)

    def table(self) -> str:
        """A printable table: one line per finding, worst first."""
        order = {s: i for i, s in enumerate(reversed(SEVERITIES))}
        rows = sorted(self.findings, key=lambda f: order[f.severity])
        width = max([len(f.check) for f in rows] + [5])
        head = (f"source model {self.model} -> target tokenizer {self.tokenizer}" if self.swap
                else f"model {self.model} / tokenizer {self.tokenizer}")
        lines = [f"tokalign doctor: {head}",
                 f"{'severity':<9} {'check':<{width}} message"]
        lines += [f"{f.severity.upper():<9} {f.check:<{width}} {f.message}" for f in rows]
        lines.append(f"{len(self.blockers)} blocker(s), {len(self.warnings)} warning(s)")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


def diagnose(model: Any, tokenizer: Any, cfg: DoctorConfig = DoctorConfig()) -> DoctorReport:
    """Run every check. ``model``: a loaded model, a config, or a hub id / folder (only its
    config is read; weights are never loaded). ``tokenizer``: object or spec."""
    report = DoctorReport(_name(model), _name(tokenizer))
    config = _config(model, cfg.trust_remote_code)
    if not check_remote_code(report, config, cfg.trust_remote_code):
        return report
    if isinstance(model, (str, os.PathLike)) or _is_config(model):
        model = _meta_model(config, cfg.trust_remote_code)
    from tokalign_core.vocab.tokenizers import load_tokenizer

    tok = load_tokenizer(tokenizer, cfg.trust_remote_code)
    rows = check_embeddings(report, model)
    check_sizes(report, tok, rows, model.config)
    check_specials(report, tok, model, rows)
    check_chat_template(report, tok)
    check_reachable(report, tok, cfg.max_check_tokens, cfg.seed)
    return report


def diagnose_pair(source: Any, target: Any, source_tokenizer: Any = None,
                  cfg: DoctorConfig = DoctorConfig()) -> DoctorReport:
    """Pre-flight of a vocabulary swap: ``source`` (model: object, config or spec) with its
    own tokenizer (``source_tokenizer``, default the model's), ``target`` (the new
    vocabulary) on its own, and the pair. Checks are named ``source.*``, ``target.*`` and
    ``pair.*``."""
    report = DoctorReport(_name(source), _name(target), swap=True)
    src = diagnose(source, source_tokenizer if source_tokenizer is not None else source, cfg)
    _merge(report, "source", src)
    if any(f.check == "remote_code" and f.severity == "blocker" for f in src.findings):
        return report
    from tokalign_core.vocab.tokenizers import load_tokenizer

    tgt_tok = load_tokenizer(target, cfg.trust_remote_code)
    tgt = DoctorReport(report.model, report.tokenizer)
    check_specials(tgt, tgt_tok, None, 0)
    check_chat_template(tgt, tgt_tok)
    check_reachable(tgt, tgt_tok, cfg.max_check_tokens, cfg.seed)
    _merge(report, "target", tgt)
    src_tok = load_tokenizer(source_tokenizer if source_tokenizer is not None else source,
                             cfg.trust_remote_code)
    rows = next((f.detail["rows"] for f in src.by_check("embeddings") if "rows" in f.detail), 0)
    check_swap(report, src_tok, tgt_tok, rows)
    return report


def _merge(into: DoctorReport, side: str, part: DoctorReport) -> None:
    """``part``'s findings in ``into``, check names prefixed with ``side``."""
    for f in part.findings:
        into.add(f"{side}.{f.check}", f.severity, f.message, **f.detail)


def check_swap(report: DoctorReport, src_tok: Any, tgt_tok: Any, rows: int,
               pad_multiple: int = 64) -> None:
    """What the swap does to the matrices, and how many tokens the two vocabularies share
    (the alignment's seed dictionary; none at all leaves VecMap unseeded)."""
    n = len(tgt_tok)
    new_rows = -(-n // pad_multiple) * pad_multiple
    report.add("pair.vocabulary", "ok",
               f"target has {n} tokens (source {len(src_tok)}): `tokalign init` replaces the "
               f"{rows}-row embedding and LM head with {new_rows} rows (padded to a multiple "
               f"of {pad_multiple})", target_tokens=n, source_tokens=len(src_tok),
               rows=rows, new_rows=new_rows)
    from tokalign_core.vocab.vocab import build_vocab, overlap_stats, shared_tokens

    s_vocab, t_vocab = build_vocab(src_tok), build_vocab(tgt_tok)
    stats = overlap_stats(s_vocab, t_vocab, shared_tokens(s_vocab, t_vocab))
    n_shared, share = stats["n_shared"], stats["target_share"]
    detail = {"n_shared": n_shared, "target_share": share}
    if n_shared == 0:
        report.add("pair.shared_tokens", "warning",
                   "the vocabularies share no token: the alignment has no seed dictionary; "
                   "set align.vecmap.init to 'unsupervised'", **detail)
    else:
        report.add("pair.shared_tokens", "ok",
                   f"{n_shared} target tokens ({share:.1%}) also exist in the source "
                   "vocabulary: they are copied directly and seed the alignment", **detail)


def _name(obj: Any) -> str:
    if isinstance(obj, (str, os.PathLike)):
        return str(obj)
    return getattr(obj, "name_or_path", None) or type(obj).__name__


def _is_config(obj: Any) -> bool:
    from transformers import PretrainedConfig

    return isinstance(obj, PretrainedConfig)


def _config(model: Any, trust_remote_code: bool) -> Any:
    if _is_config(model):
        return model
    if not isinstance(model, (str, os.PathLike)):
        return model.config
    from transformers import AutoConfig

    try:
        from tokalign_core.model.load import resolve_model

        where = resolve_model(model)  # a .gguf or builtin alias: its converted folder
        return AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ValueError(
                f"{model} needs custom code from its repository; re-run with "
                "--trust-remote-code if you trust it"
            ) from exc
        raise


def _meta_model(config: Any, trust_remote_code: bool) -> Any:
    """The model's modules with shapes but no memory (PyTorch meta device)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tokalign_core.model.load import transformers_lock

    with transformers_lock(), torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------


def check_remote_code(report: DoctorReport, config: Any, trust_remote_code: bool) -> bool:
    """Blocker when the config declares custom code and the user did not allow it.
    Returns False when the remaining checks must not run."""
    auto_map = getattr(config, "auto_map", None)
    if not auto_map:
        report.add("remote_code", "ok", "no custom code needed")
        return True
    if not trust_remote_code:
        report.add("remote_code", "blocker",
                   "the model declares custom code (config.auto_map); re-run with "
                   "--trust-remote-code if you trust its repository", auto_map=auto_map)
        return False
    report.add("remote_code", "warning", "custom code allowed by --trust-remote-code",
               auto_map=auto_map)
    return True


def check_embeddings(report: DoctorReport, model: Any) -> int:
    """Embedding API present; tied or untied. Returns the input matrix's row count."""
    from tokalign_core.model.embeddings import embedding_modules, is_tied

    try:
        emb_in, emb_out = embedding_modules(model)
    except ValueError as exc:
        report.add("embeddings", "blocker", str(exc))
        return 0
    tied = _tied_storage(model) if _on_meta(emb_in) else is_tied(model)
    declared = bool(getattr(model.config, "tie_word_embeddings", False))
    rows, dim = emb_in.weight.shape
    report.add("embeddings", "ok", f"{rows} x {dim} input rows; {'tied' if tied else 'untied'} "
               "LM head" + (" with bias" if getattr(emb_out, "bias", None) is not None else ""),
               rows=rows, dim=dim, tied=tied)
    if tied != declared:
        report.add("embeddings", "warning",
                   f"config.tie_word_embeddings={declared} but the weights are "
                   f"{'tied' if tied else 'untied'}; saving and reloading may change that")
    return rows


def _on_meta(module: Any) -> bool:
    device = getattr(module.weight, "device", None)
    return device is not None and device.type == "meta"


def _tied_storage(model: Any) -> bool:
    """Meta tensors have no storage: tied means the same Parameter object."""
    emb_in, emb_out = model.get_input_embeddings(), model.get_output_embeddings()
    return emb_in.weight is emb_out.weight


def check_sizes(report: DoctorReport, tok: Any, rows: int, config: Any) -> None:
    """Tokenizer length vs embedding rows vs config.vocab_size."""
    n = len(tok)
    vocab = getattr(config, "vocab_size", None)
    if rows and n > rows:
        report.add("sizes", "blocker",
                   f"tokenizer has {n} tokens but the embedding has {rows} rows: ids >= {rows} "
                   "would index out of range; initialise for this tokenizer with `tokalign "
                   "init` first", tokenizer=n, rows=rows)
    elif rows and n < rows:
        report.add("sizes", "ok", f"embedding padded: {rows} rows for {n} tokens "
                   f"({rows - n} padding rows, never produced)", tokenizer=n, rows=rows)
    elif rows:
        report.add("sizes", "ok", f"tokenizer and embedding both have {n} entries")
    if vocab is not None and rows and vocab != rows:
        report.add("sizes", "warning",
                   f"config.vocab_size={vocab} but the embedding has {rows} rows",
                   vocab_size=vocab, rows=rows)


def check_specials(report: DoctorReport, tok: Any, model: Any, rows: int) -> None:
    """Roles present, ids inside the matrix, config/generation ids equal the tokenizer's
    (``model`` None, ``rows`` 0: the tokenizer alone)."""
    for role, severity in (("eos", "blocker"), ("bos", "warning"), ("pad", "warning"),
                           ("unk", "ok")):
        tid = getattr(tok, f"{role}_token_id", None)
        if tid is None:
            why = {"eos": "generate() cannot stop and documents cannot be separated; set "
                          "tokenizer.eos_token",
                   "bos": "documents start without a BOS (fine for GPT-2/Qwen-style models)",
                   "pad": "batched generation pads with eos instead",
                   "unk": "no unk token (normal for byte-level tokenizers)"}[role]
            report.add("special_tokens", severity, f"no {role} token: {why}", role=role)
            continue
        if rows and tid >= rows:
            report.add("special_tokens", "blocker",
                       f"{role} id {tid} is outside the embedding ({rows} rows)", role=role)
        else:
            report.add("special_tokens", "ok",
                       f"{role} = {tok.convert_ids_to_tokens(tid)!r} (id {tid})", role=role)
        if model is not None:
            _compare_config_id(report, model, role, tid)


def _compare_config_id(report: DoctorReport, model: Any, role: str, tid: int) -> None:
    key = f"{role}_token_id"
    if role == "unk":
        return
    for name, cfg in (("config", model.config),
                      ("generation_config", getattr(model, "generation_config", None))):
        if cfg is None or not hasattr(cfg, key):
            continue
        value = getattr(cfg, key)
        ids = value if isinstance(value, list) else [value]
        if value is None and role == "pad":
            continue
        if tid not in ids:
            report.add("special_tokens", "warning",
                       f"{name}.{key}={value} but the tokenizer's {role} id is {tid}; "
                       "`tokalign init` sets it (or fix the config)", where=name, role=role)


def chat_template_tokens(tok: Any) -> list[str]:
    """Special-token-looking strings inside the tokenizer's chat template(s)."""
    template = getattr(tok, "chat_template", None)
    if not template:
        return []
    if isinstance(template, dict):
        template = "\n".join(template.values())
    return sorted(set(CHAT_TOKEN_RE.findall(template)))


def check_chat_template(report: DoctorReport, tok: Any) -> None:
    """Each special-looking string of the chat template should be one vocabulary token."""
    found = chat_template_tokens(tok)
    if not found:
        report.add("chat_template", "ok", "no chat template (or no special tokens in it)")
        return
    vocab = tok.get_vocab()
    missing = [s for s in found if s not in vocab]
    if missing:
        report.add("chat_template", "warning",
                   f"chat template uses {len(missing)} token(s) missing from the vocabulary "
                   f"(they will be split into pieces): {missing[:10]}", missing=missing)
    else:
        report.add("chat_template", "ok", f"all {len(found)} chat-template tokens are in the "
                   "vocabulary", tokens=found)


def unreachable_tokens(tok: Any, max_check: int = 20000, seed: int = 0) -> tuple[list[int], int]:
    """Ids the tokenizer cannot produce on their own.

    BPE tokenizers: run the BPE model itself on the token's vocabulary piece (after
    normalisation and pre-tokenization, e.g. ``Ġthe`` / ``▁the``); a token the merges never
    build comes back as several pieces. Other models: decode the id and encode the text,
    expecting ``[id]`` back. Special/added tokens and texts that are not valid alone (half
    a UTF-8 character) are skipped. A few flagged tokens may still appear inside longer
    pre-tokens. A seeded sample of ``max_check`` ids is checked on larger vocabularies.
    Returns (unreachable ids, ids checked)."""
    skip = set(tok.all_special_ids) | set(getattr(tok, "added_tokens_decoder", {}) or {})
    ids = [i for i in range(len(tok)) if i not in skip]
    if len(ids) > max_check:
        ids = sorted(random.Random(seed).sample(ids, max_check))
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None and json.loads(backend.to_str())["model"].get("type") == "BPE":
        pieces = tok.convert_ids_to_tokens(ids)
        bad = [i for i, p in zip(ids, pieces, strict=True)
               if [t.id for t in backend.model.tokenize(p)] != [i]]
        return bad, len(ids)
    texts = tok.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)
    keep = [(i, t) for i, t in zip(ids, texts, strict=True) if t and "\ufffd" not in t]
    enc = tok([t for _, t in keep], add_special_tokens=False)["input_ids"] if keep else []
    bad = [i for (i, _), e in zip(keep, enc, strict=True) if list(e) != [i]]
    return bad, len(keep)


def check_reachable(report: DoctorReport, tok: Any, max_check: int, seed: int) -> None:
    bad, checked = unreachable_tokens(tok, max_check, seed)
    sampled = len(tok) > max_check
    scope = f"{checked} sampled ids (of {len(tok)})" if sampled else f"{checked} ids"
    if not bad:
        report.add("reachable", "ok", f"every one of {scope} round-trips", checked=checked)
        return
    share = len(bad) / max(checked, 1)
    examples = [tok.convert_ids_to_tokens(i) for i in bad[:8]]
    report.add("reachable", "warning" if share > 0.01 else "ok",
               f"{len(bad)} of {scope} do not encode back to themselves ({share:.1%}); "
               f"e.g. {examples}. Their embedding rows will rarely or never train.",
               unreachable=bad[:1000], checked=checked, sampled=sampled)
