"""A BERT-family encoder with a small head on a pooled final hidden state: lorabudget's ``linear``,
``low_rank`` and ``prototype`` heads.

``lorabudget export --format hf`` copies this file into the exported folder as
``modeling_lorabudget.py`` and registers it in ``config.json`` (``auto_map``), so that plain
``transformers`` loads the model with ``trust_remote_code=True`` and no lorabudget installed:

    pipeline("text-classification", model=DIR, trust_remote_code=True)

The config also registers :class:`LorabudgetTextClassificationPipeline` (``custom_pipelines``):
the ``text-classification`` pipeline then cuts texts at the tokenizer's ``model_max_length`` (the
training ``max_length``) as training did, instead of feeding longer texts whole.

No standard ``*ForSequenceClassification`` class has this head: RoBERTa's puts dense+tanh before
the output layer, BERT's reads the pooler (dense+tanh on the first token), and mean pooling is in
neither. This file must import nothing but torch and transformers.

Module names (``backbone``, ``head.out_proj``, ``head.down``, ``head.prototypes``) are those of
lorabudget's training model, so a lorabudget PEFT adapter loads onto this class unchanged.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel, TextClassificationPipeline
from transformers.modeling_outputs import SequenceClassifierOutput


class LorabudgetClassifierConfig(PreTrainedConfig):
    """``encoder``: the encoder's own config as a dict (``model_type`` included); ``pooling``:
    ``first`` (first token's final state) or ``mean`` (mean over the real, unpadded tokens);
    ``head_type`` and ``head_rank``: which head sits on the pooled state (:func:`make_head`)."""

    model_type = "lorabudget_classifier"
    encoder: Optional[dict] = None
    pooling: str = "first"
    head_dropout: float = 0.1
    head_type: str = "linear"  # linear, low_rank or prototype
    head_rank: Optional[int] = None  # low_rank's inner width

    def encoder_config(self):
        values = dict(self.encoder or {})
        return AutoConfig.for_model(values.pop("model_type", "bert"), **values)


def pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[batch, seq, hidden] -> [batch, hidden]: the first token's state, or the mean over real tokens."""
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
        return (hidden_states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return hidden_states[:, 0]


class PooledLinearHead(nn.Module):
    """``hidden_states`` [batch, seq, hidden] and ``attention_mask`` [batch, seq] -> logits [batch, labels].

    ``linear``: one Linear layer, hidden·classes + classes parameters."""

    def __init__(self, hidden_size: int, num_labels: int, pooling: str, dropout: float):
        super().__init__()
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.dropout(pool(hidden_states, attention_mask, self.pooling)))


class LowRankHead(nn.Module):
    """``low_rank``: hidden -> rank (``down``, no bias) -> classes (``out_proj``, with bias):
    rank·(hidden + classes) + classes parameters. A bias on ``down`` would add nothing ``out_proj``'s
    bias cannot express, since nothing nonlinear sits between the two."""

    def __init__(self, hidden_size: int, num_labels: int, pooling: str, dropout: float, rank: int):
        super().__init__()
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.down = nn.Linear(hidden_size, rank, bias=False)
        self.out_proj = nn.Linear(rank, num_labels)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.down(self.dropout(pool(hidden_states, attention_mask, self.pooling))))


PROTOTYPE_SCALE = 10.0  # the temperature a prototype head starts at (cosines in [-1, 1] become logits)


class PrototypeHead(nn.Module):
    """``prototype``: one fixed vector per class (``prototypes``, a persistent buffer computed from the
    frozen encoder before training, never trained); logits = ``scale`` · cos(pooled - m, prototype - m)
    + ``bias``, where m is the mean of the class vectors (centring, as SimpleShot does: pooled
    sentence embeddings share a large common direction that would make every cosine alike).
    Trainable: ``scale`` (1) and ``bias`` (one per class) = classes + 1 parameters."""

    def __init__(self, hidden_size: int, num_labels: int, pooling: str, dropout: float):
        super().__init__()
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("prototypes", torch.zeros(num_labels, hidden_size), persistent=True)
        self.scale = nn.Parameter(torch.tensor(PROTOTYPE_SCALE))
        self.bias = nn.Parameter(torch.zeros(num_labels))

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.dropout(pool(hidden_states, attention_mask, self.pooling))
        vectors = self.prototypes.to(pooled.dtype)
        centre = vectors.mean(0)
        x = nn.functional.normalize(pooled - centre, dim=-1)
        p = nn.functional.normalize(vectors - centre, dim=-1)
        return self.scale.to(pooled.dtype) * (x @ p.t()) + self.bias.to(pooled.dtype)


HEAD_TYPES = ("linear", "low_rank", "prototype")


def make_head(
    head_type: str, hidden_size: int, num_labels: int, pooling: str, dropout: float, rank: Optional[int] = None
) -> nn.Module:
    """The head module of ``head_type`` (one of :data:`HEAD_TYPES`)."""
    if head_type == "low_rank":
        if not rank or rank < 1:
            raise ValueError(f"a low_rank head needs a rank >= 1, got {rank!r}")
        return LowRankHead(hidden_size, num_labels, pooling, dropout, int(rank))
    if head_type == "prototype":
        return PrototypeHead(hidden_size, num_labels, pooling, dropout)
    if head_type == "linear":
        return PooledLinearHead(hidden_size, num_labels, pooling, dropout)
    raise ValueError(f"unknown head type {head_type!r}; known: {', '.join(HEAD_TYPES)}")


class LorabudgetForSequenceClassification(PreTrainedModel):
    config_class = LorabudgetClassifierConfig
    base_model_prefix = "backbone"

    def __init__(self, config: LorabudgetClassifierConfig):
        super().__init__(config)
        encoder_config = config.encoder_config()
        self.backbone = AutoModel.from_config(encoder_config)
        if getattr(self.backbone, "pooler", None) is not None:
            self.backbone.pooler = None  # the head pools by itself; the encoder's pooler is not part of the model
        self.head = make_head(
            config.head_type,
            encoder_config.hidden_size,
            config.num_labels,
            config.pooling,
            config.head_dropout,
            config.head_rank,
        )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # Only a fresh head (no weights loaded) ever uses these values; the encoder initialises itself.
        if isinstance(module, nn.Linear) and module in (
            getattr(self.head, "out_proj", None),
            getattr(self.head, "down", None),
        ):
            module.weight.data.normal_(mean=0.0, std=0.02)
            if module.bias is not None:
                module.bias.data.zero_()

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        token_type_ids: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        # token_type_ids: BERT tokenizers send zeros for one text (the model's default) and the segments
        # of a sentence pair, which lorabudget trains with.
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        logits = self.head(hidden, attention_mask)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


class LorabudgetTextClassificationPipeline(TextClassificationPipeline):
    """The standard text-classification pipeline, truncating by default (``truncation=False`` turns it off)."""

    def _sanitize_parameters(self, **kwargs):
        kwargs.setdefault("truncation", True)
        return super()._sanitize_parameters(**kwargs)
