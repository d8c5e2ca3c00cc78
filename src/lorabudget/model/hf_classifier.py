"""A BERT-family encoder with one Linear layer on a pooled final hidden state: lorabudget's ``linear`` head.

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

Module names (``backbone``, ``head.out_proj``) are those of lorabudget's training model, so a
lorabudget PEFT adapter loads onto this class unchanged.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel, TextClassificationPipeline
from transformers.modeling_outputs import SequenceClassifierOutput


class LorabudgetClassifierConfig(PreTrainedConfig):
    """``encoder``: the encoder's own config as a dict (``model_type`` included); ``pooling``:
    ``first`` (first token's final state) or ``mean`` (mean over the real, unpadded tokens)."""

    model_type = "lorabudget_classifier"
    encoder: Optional[dict] = None
    pooling: str = "first"
    head_dropout: float = 0.1

    def encoder_config(self):
        values = dict(self.encoder or {})
        return AutoConfig.for_model(values.pop("model_type", "bert"), **values)


class PooledLinearHead(nn.Module):
    """``hidden_states`` [batch, seq, hidden] and ``attention_mask`` [batch, seq] -> logits [batch, labels]."""

    def __init__(self, hidden_size: int, num_labels: int, pooling: str, dropout: float):
        super().__init__()
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "mean":
            mask = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
            pooled = (hidden_states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        else:
            pooled = hidden_states[:, 0]
        return self.out_proj(self.dropout(pooled))


class LorabudgetForSequenceClassification(PreTrainedModel):
    config_class = LorabudgetClassifierConfig
    base_model_prefix = "backbone"

    def __init__(self, config: LorabudgetClassifierConfig):
        super().__init__(config)
        encoder_config = config.encoder_config()
        self.backbone = AutoModel.from_config(encoder_config)
        if getattr(self.backbone, "pooler", None) is not None:
            self.backbone.pooler = None  # the head pools by itself; the encoder's pooler is not part of the model
        self.head = PooledLinearHead(encoder_config.hidden_size, config.num_labels, config.pooling, config.head_dropout)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear) and module is self.head.out_proj:
            module.weight.data.normal_(mean=0.0, std=0.02)
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
