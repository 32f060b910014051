"""The tokenizer watcher: a scheduled flow that looks at a folder of tokenizers and emits
``tokalign.tokenizer.landed`` for every tokenizer it has not seen (or whose bytes changed),
remembering what it has seen in a JSON file, so the align/pipeline deployments rerun for
each new vocabulary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow

from tasks.events import emit_tokenizer_landed, tokenizer_identity
from tokalign_core.store.artifacts import atomic_write_text

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def find_tokenizers(folder: Path) -> list[Path]:
    """Tokenizer specs directly under ``folder``: sub-folders holding a tokenizer file,
    ``*.tiktoken`` rank files and loose ``*tokenizer*.json`` files; sorted."""
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        is_dir_tok = entry.is_dir() and any((entry / n).exists() for n in TOKENIZER_FILES)
        is_file_tok = entry.is_file() and (
            entry.suffix == ".tiktoken"
            or (entry.suffix == ".json" and "tokenizer" in entry.name))
        if is_dir_tok or is_file_tok:
            found.append(entry)
    return found


def new_tokenizers(folder: Path, seen: dict[str, str]) -> list[dict[str, str]]:
    """Identities of tokenizers whose digest differs from ``seen[spec]``."""
    idents = [tokenizer_identity(str(p)) for p in find_tokenizers(folder)]
    return [i for i in idents if seen.get(i["spec"]) != i["digest"]]


@flow(name="watch-tokenizers", log_prints=True)
def watch_tokenizers(folder: str, state_file: str | None = None) -> list[dict[str, Any]]:
    """Emit the landed event for each new tokenizer in ``folder``; state in ``state_file``
    (default ``<folder>/.tokalign-seen.json``)."""
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"tokenizer folder {root} does not exist; create it or fix "
                                "the watcher deployment's `folder` parameter")
    state = Path(state_file) if state_file else root / ".tokalign-seen.json"
    seen: dict[str, str] = json.loads(state.read_text()) if state.exists() else {}
    emitted = []
    for ident in new_tokenizers(root, seen):
        emitted.append(emit_tokenizer_landed(ident["spec"], source="watcher"))
        seen[ident["spec"]] = ident["digest"]
        # Save after each event: a crash never re-announces what was already sent.
        atomic_write_text(state, json.dumps(seen, indent=2, sort_keys=True))
    print(f"{len(emitted)} new tokenizer(s) in {root}")
    return emitted
