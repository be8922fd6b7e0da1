"""Load base model weights with the attention implementation Clara selects, and say which revision was loaded."""

from __future__ import annotations

import logging
from typing import Any

from transformers import AutoModelForCausalLM, PreTrainedModel

logger = logging.getLogger(__name__)

# In order of preference; Clara never selects another (flash attention needs a GPU build, flex attention compiles
# for tens of seconds before the first step). Packed batches must give the same logits under each of these.
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


def from_pretrained(base_model: str, options: dict[str, Any]) -> PreTrainedModel:
    """Load with SDPA attention, or eager attention for architectures without SDPA.

    Errors pass through unchanged, torch.OutOfMemoryError above all, so callers can tell them apart.
    """
    preferred, fallback = ATTENTION_IMPLEMENTATIONS
    try:
        return AutoModelForCausalLM.from_pretrained(base_model, attn_implementation=preferred, **options)
    except ValueError as error:
        if "scaled_dot_product_attention" not in str(error):
            raise
        logger.info("The model %s has no SDPA attention, so it falls back to eager attention.", base_model)
    return AutoModelForCausalLM.from_pretrained(base_model, attn_implementation=fallback, **options)


def loaded_revision(model: PreTrainedModel) -> str | None:
    """The hub commit the weights came from; None for a local directory outside the hub cache."""
    revision = getattr(model.config, "_commit_hash", None)
    return str(revision) if revision else None
