"""The ``tokalign.tokenizer.landed`` event: emitted when a new tokenizer is registered
(``tokalign tokenizer register``) or found by the watcher flow; the align and pipeline
deployments have a trigger on it that templates ``payload.spec`` into their
``target_tokenizer`` parameter."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from tokalign_core.store import hashing

EVENT = "tokalign.tokenizer.landed"
RESOURCE_PREFIX = "tokalign.tokenizer."


def tokenizer_identity(spec: str) -> dict[str, str]:
    """``{"spec", "digest", "kind"}`` of a tokenizer spec: a local path is hashed by its
    bytes (absolute path as spec), anything else (hub id, builtin alias) by its name."""
    path = Path(spec).expanduser()
    if path.exists():
        return {"spec": str(path.resolve()), "digest": hashing.sha256_tree(path), "kind": "path"}
    if not spec.strip():
        raise ValueError("empty tokenizer spec; pass a folder, tokenizer.json, *.tiktoken, "
                         "a hub id or builtin:qwen2")
    return {"spec": spec, "digest": hashlib.sha256(spec.encode()).hexdigest(), "kind": "name"}


def emit_tokenizer_landed(spec: str, source: str = "cli") -> dict[str, Any]:
    """Emit the event for ``spec``; returns the identity plus the event id.

    Needs a reachable Prefect API (``PREFECT_API_URL``): events sent to the temporary
    in-process server of a one-off command would be lost, so that case is an error."""
    from prefect.events import emit_event

    ident = tokenizer_identity(spec)
    event = emit_event(
        event=EVENT,
        resource={"prefect.resource.id": f"{RESOURCE_PREFIX}{ident['digest'][:16]}",
                  "prefect.resource.name": ident["spec"][-200:]},
        payload={**ident, "source": source},
    )
    if event is None:
        raise RuntimeError("Prefect did not emit the event (events are disabled or no API is "
                           "configured); set PREFECT_API_URL to your Prefect server")
    return {**ident, "event_id": str(event.id)}
