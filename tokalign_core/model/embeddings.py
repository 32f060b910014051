"""The embedding matrices of a loaded causal LM, found through the Hugging Face API
(``get_input_embeddings`` / ``get_output_embeddings``), so any architecture works.

Used by initialisation (:mod:`tokalign_core.model.init`), the model card and the doctor;
it imports nothing from the library.
"""

from __future__ import annotations

from typing import Any


def embedding_modules(model: Any) -> tuple[Any, Any]:
    """(input embedding module, output projection module) through the HF API."""
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    emb_in = get_in() if callable(get_in) else None
    emb_out = get_out() if callable(get_out) else None
    if emb_in is None or emb_out is None or getattr(emb_out, "weight", None) is None:
        raise ValueError(
            f"{type(model).__name__} has no input/output embeddings API "
            "(get_input_embeddings / get_output_embeddings); load it with "
            "AutoModelForCausalLM, not AutoModel"
        )
    return emb_in, emb_out


def is_tied(model: Any) -> bool:
    """True when the LM head shares the input embedding's storage."""
    emb_in, emb_out = embedding_modules(model)
    return emb_in.weight.data_ptr() == emb_out.weight.data_ptr()
