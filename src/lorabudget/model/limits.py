"""Sizes a model cannot take, refused with one line while only its config is known (before any weights load)."""

from __future__ import annotations

import os
from typing import Any

from lorabudget.config import RunConfig
from lorabudget.errors import LorabudgetError

# Models whose position ids start after the padding id (RoBERTa's embeddings): the first
# ``pad_token_id + 1`` positions are never used by a token.
PADDING_OFFSET_TYPES = ("roberta", "xlm-roberta", "camembert", "mpnet")


def usable_positions(model_config: Any) -> int | None:
    """How many tokens the model's learned absolute position embeddings can encode; None when its
    positions are relative or rotary (DeBERTa-v3, ModernBERT: no table to run past)."""
    positions = getattr(model_config, "max_position_embeddings", None)
    if not isinstance(positions, int) or positions <= 0:
        return None
    model_type = getattr(model_config, "model_type", "")
    if model_type == "modernbert" or getattr(model_config, "position_biased_input", True) is False:
        return None
    if getattr(model_config, "position_embedding_type", "absolute") not in (None, "absolute"):
        return None
    pad = getattr(model_config, "pad_token_id", None)
    offset = pad + 1 if model_type in PADDING_OFFSET_TYPES and isinstance(pad, int) else 0
    return positions - offset


def check_max_length(cfg: RunConfig, model_config: Any) -> None:
    """Refuse a ``model.max_length`` longer than the model's position embeddings reach."""
    usable = usable_positions(model_config)
    if usable is None or cfg.model.max_length <= usable:
        return
    positions = model_config.max_position_embeddings
    offset = positions - usable
    reach = f"{positions} minus its padding offset {offset} = {usable}" if offset else str(positions)
    raise LorabudgetError(
        f"model.max_length: {cfg.model.max_length} is more tokens than model '{cfg.model.name}' has positions for "
        f"(max_position_embeddings {reach}); set model.max_length to at most {usable}"
    )


def physical_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_adapter_size(cfg: RunConfig, trainable: int, base_params: int) -> None:
    """Refuse an adapter larger than its base model whose fp32 weights alone exceed this machine's memory.

    Either condition alone is a legitimate configuration (a big adapter on a tiny model; a large
    full fine-tune planned on a laptop for a GPU); both together is a typo such as ``adapter.r=1000000000``,
    which would otherwise end in an allocator error or the kernel's OOM killer once the weights load.
    """
    memory = physical_memory_bytes()
    if trainable <= base_params or memory is None or trainable * 4 <= memory:
        return
    raise LorabudgetError(
        f"adapter: {trainable:,} trainable parameters ({trainable * 4 / 1e9:,.0f} GB in fp32 alone) is more than "
        f"the base model's {base_params:,} parameters and more than this machine's {memory / 1e9:.0f} GB of memory; "
        "lower adapter.r or narrow adapter.modules/layers"
    )
