"""The classification heads: transformers' own (``head.type: full``) or a small head on a pooled state
(``linear``, ``low_rank``, ``prototype``: :mod:`lorabudget.model.hf_classifier`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

# The head's one definition: the file is also shipped, standalone, as an export's remote code.
from lorabudget.model.layout import model_family


@dataclass
class ClassifierOutput:
    logits: torch.Tensor  # [batch, num_labels]


class EncoderWithLinearHead(nn.Module):
    """A bare encoder (no pooler) followed by a pooled head (``linear``, ``low_rank`` or ``prototype``)."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.config = backbone.config

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: Optional[torch.Tensor] = None,
        **_: Any,
    ) -> ClassifierOutput:
        # token_type_ids: the segments of a sentence pair (BERT); absent for single texts (all zeros).
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return ClassifierOutput(logits=self.head(hidden, attention_mask))


def pooled_encoder(model: nn.Module) -> Optional[EncoderWithLinearHead]:
    """The encoder with a lorabudget pooled head (linear, low_rank, prototype) inside ``model`` (PEFT wraps
    it), None for transformers' own head."""
    return next((m for m in model.modules() if isinstance(m, EncoderWithLinearHead)), None)


def head_module_names(model: nn.Module) -> list[str]:
    """Names of the modules that make up the classification head (trained in full).

    transformers' own head (``head.type: full``) is every module of the sequence-classification model
    beside its base model that holds parameters (DistilBERT's pre_classifier, DeBERTa's pooler,
    ModernBERT's head ...), and the base model's pooler where the classifier reads it (BERT, ALBERT).
    """
    if isinstance(model, EncoderWithLinearHead):
        return ["head"]
    prefix = getattr(model, "base_model_prefix", "")  # absent on a bare module: then no pooler either
    family = model_family(model)
    names = list(family.head_modules) if family else ["classifier"]
    for name, child in model.named_children():
        if name != prefix and name not in names and any(True for _ in child.parameters()):
            names.append(name)
    names = [n for n in names if getattr(model, n, None) is not None]
    base = getattr(model, prefix, None) if prefix else None
    if getattr(base, "pooler", None) is not None:
        # BERT's classifier reads the pooler's output; a fresh task needs it trained too.
        names.append(f"{prefix}.pooler")
    return names
