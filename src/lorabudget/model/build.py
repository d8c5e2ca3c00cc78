"""Building the classifier: the base model, its head, and the adapters wrapped around it by PEFT.

The same function builds the model for ``plan`` (on the meta device, from the config alone, no
weights read) and for ``train`` (real weights), so the planned trainable-parameter count is the
live count by construction; ``tests/test_budget.py`` checks it anyway.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.util
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from lorabudget.config import HeadConfig, RunConfig
from lorabudget.errors import LorabudgetError, first_line
from lorabudget.methods import registry
from lorabudget.model.budget import breakdown
from lorabudget.model.head_choice import choose_head, head_limit, largest_rank, low_rank_params
from lorabudget.model.heads import EncoderWithLinearHead, head_module_names
from lorabudget.model.hf_classifier import make_head

# Imported from here by the data, run-folder and inference layers.
from lorabudget.model.hub import from_pretrained, hub_reachable, load_model_config, load_tokenizer, quiet_transformers
from lorabudget.model.layout import model_notes
from lorabudget.model.limits import check_adapter_size, check_max_length
from lorabudget.model.placement import AdapterSite, plan_sites

__all__ = [
    "BuiltModel",
    "build_base",
    "build_model",
    "hub_reachable",
    "keep_4bit_layout_for_training",
    "load_model_config",
    "load_tokenizer",
    "merge_adapters",
    "quantization_config",
    "resolve_head",
]


def quantization_config(cfg: RunConfig, head_modules: list[str]):
    """bitsandbytes settings for ``model.quantization`` (None for ``none``); the head stays in full precision."""
    kind = cfg.model.quantization
    if kind == "none":
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise LorabudgetError(
            f"model.quantization: {kind} needs bitsandbytes: pip install 'lorabudget[quant]' "
            "(or pip install bitsandbytes)"
        )
    from transformers import BitsAndBytesConfig

    skip = list(head_modules) + ["pooler", "classifier"]
    if kind == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.float32,
            llm_int8_skip_modules=skip,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


def keep_4bit_layout_for_training(model: nn.Module) -> int:
    """Stop bitsandbytes from repacking ``model``'s 4-bit weights for its CPU inference kernel.

    bitsandbytes (0.50) repacks a ``Linear4bit`` weight into an AVX512-BF16 layout the first time the
    layer runs in eval mode without gradients, and keeps that layout; the kernel it then uses has no
    backward, so training after a validation pass failed ("a view of a leaf Variable that requires
    grad is being used in an in-place operation", in the second epoch of an nf4 run). The
    training model's validation passes take the trainable path instead. Inference models (``predict``)
    keep the fast layout. Returns how many layers were set.
    """
    layers = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def build_base(cfg: RunConfig, model_config: Any, pretrained: bool) -> nn.Module:
    """The model before adapters; ``pretrained=False`` builds from the config with random weights."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    head: HeadConfig = cfg.head
    # Planning (pretrained=False) never quantizes: trainable counts do not depend on it.
    quant = quantization_config(cfg, ["head"]) if pretrained else None
    extra = {"quantization_config": quant} if quant is not None else {}
    with quiet_transformers(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bitsandbytes' notes on CPU kernels and dtype casts
        if head.type == "full":
            if not pretrained:
                return AutoModelForSequenceClassification.from_config(model_config)
            return from_pretrained(
                AutoModelForSequenceClassification, cfg.model.name, "weights", config=model_config, **extra
            )
        if not pretrained:
            backbone = AutoModel.from_config(model_config)
        else:
            backbone = from_pretrained(AutoModel, cfg.model.name, "weights", config=model_config, **extra)
    if getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None  # unused by a pooled head; dropping it keeps it out of every count
    dropout = getattr(model_config, "hidden_dropout_prob", 0.1)
    pooled = make_head(head.type, model_config.hidden_size, cfg.num_labels, head.pooling, dropout, head.rank)
    if quant is not None:
        pooled.to(next(backbone.parameters()).device)
    return EncoderWithLinearHead(backbone, pooled)


@dataclass
class BuiltModel:
    model: nn.Module  # a peft.PeftModel, or the plain model for method ``full``
    sites: list[AdapterSite]
    config_source: str
    notes: list[str] = dataclasses.field(default_factory=list)
    """What ``plan`` says about the model's layout (fused modules, ALBERT's shared layers)."""


# Stands in for the training length when only counting: no method's count depends on it.
PLANNING_STEPS = 1000


def build_model(cfg: RunConfig, weights: bool = True, total_steps: Optional[int] = None) -> BuiltModel:
    """Build the classifier with the configured adapter method.

    ``weights=False`` builds on the meta device from the architecture config alone (no weights are
    read or allocated); that is what ``plan`` uses. Trainable parameters are identical either way.
    ``total_steps`` is the training length (AdaLoRA's rank schedule needs it).
    """
    from peft import get_peft_model

    method = registry.get_method(cfg.adapter.method)
    model_config, config_source = load_model_config(cfg, allow_builtin=not weights)
    check_max_length(cfg, model_config)
    resolve_head(cfg, model_config)  # normally done when the config was resolved; a no-op then
    if weights:
        base = build_base(cfg, model_config, pretrained=True)
    else:
        with torch.device("meta"):
            base = build_base(cfg, model_config, pretrained=False)
    sites = plan_sites(base, cfg.adapter)
    heads = head_module_names(base)
    if method.build is None:  # full fine-tuning: every weight trains, nothing wraps the model
        for param in base.parameters():
            param.requires_grad_(True)
        return BuiltModel(base, sites, config_source, model_notes(base))
    if weights and cfg.model.quantization != "none":
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    try:
        peft_cfg = method.build(cfg, sites, heads, total_steps or PLANNING_STEPS)
    except (TypeError, ValueError) as err:  # PEFT's own checks of adapter.options values; its text is unbounded
        text = first_line(err)
        raise LorabudgetError(
            f"adapter.options rejected by PEFT for method '{cfg.adapter.method}': "
            + (text if len(text) <= 200 else text[:197] + "...")
        ) from None
    base_params = sum(p.numel() for p in base.parameters())
    with torch.device("meta") if not weights else contextlib.nullcontext(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT's notes on meta tensors and frozen heads; not the user's concern
        try:
            peft_model = get_peft_model(base, peft_cfg)
        except (ValueError, TypeError) as err:  # PEFT's own refusals of a placement or an option
            raise LorabudgetError(
                f"adapter.method '{method.name}' cannot be built with these settings: {first_line(err)}"
            ) from err
    if not weights:  # counted on the meta device before any real build allocates it
        check_adapter_size(cfg, sum(p.numel() for p in peft_model.parameters() if p.requires_grad), base_params)
    return BuiltModel(peft_model, sites, config_source, model_notes(base))


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold the adapters into the base weights and return the plain model with its trained head.

    The trained head copies are put in place first: PEFT's generic unload (every method but LoRA)
    assumes a wrapped head is a single Linear and fails on RoBERTa's head, BERT's pooler or ours.
    """
    from peft.utils.other import ModulesToSaveWrapper

    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent_name, _, child_name = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child_name, module.modules_to_save[module.active_adapters[0]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.merge_and_unload()


def _hidden_size(cfg: RunConfig, model_config: Any) -> int:
    if model_config is None:
        try:
            model_config, _ = load_model_config(cfg, allow_builtin=True)
        except LorabudgetError as err:
            raise LorabudgetError(
                f"head.type {cfg.head.type} needs the hidden size of model '{cfg.model.name}', which cannot be "
                f"read ({first_line(err)[:160]}); set head.type to linear, prototype or low_rank with head.rank"
            ) from None
    return int(model_config.hidden_size)


def _adapter_params(cfg: RunConfig) -> int:
    """Trainable parameters besides the head, counted on the meta device with a linear head."""
    probe = copy.deepcopy(cfg)
    probe.head.type, probe.head.rank = "linear", None
    counted = breakdown(build_model(probe, weights=False).model)
    return counted.total - counted.head


def resolve_head(cfg: RunConfig, model_config: Any = None) -> Optional[str]:
    """Make ``cfg.head`` concrete in place (``auto``, ``low_rank`` without a rank); return the reason for
    an ``auto`` choice (also kept as ``cfg.head.chosen_because`` for ``plan``), else None.

    Leaves the head alone while the class count is unknown (the data decides it later). Refuses a
    ``low_rank`` rank that is not below the hidden size (that head would be no smaller than ``linear``)."""
    head = cfg.head
    needs_choice = head.type == "auto" or (head.type == "low_rank" and head.rank is None)
    checks_rank = head.type == "low_rank" and head.rank is not None
    if not (needs_choice or checks_rank):
        return None
    try:
        classes = cfg.num_labels
    except LorabudgetError:
        return None
    hidden = _hidden_size(cfg, model_config)
    if checks_rank:
        if head.rank >= hidden:
            raise LorabudgetError(
                f"config key 'head.rank': {head.rank} is not below the hidden size {hidden} of {cfg.model.name}, so "
                "the low_rank head would be no smaller than linear's; use head.type: linear or a smaller rank"
            )
        return None
    budget = cfg.budget.max_trainable_params
    adapters = _adapter_params(cfg) if budget is not None else 0
    if head.type == "low_rank":
        if budget is None:
            raise LorabudgetError("config key 'head.rank': set it; with an unlimited budget no rank is the largest")
        limit, why = head_limit(budget, adapters)
        rank = min(largest_rank(hidden, classes, limit), hidden - 1)
        if rank < 1:
            raise LorabudgetError(
                f"config key 'head.rank': no low_rank head fits (r=1 costs {low_rank_params(hidden, classes, 1):,} > "
                f"{why}); use head.type: prototype"
            )
        head.rank = rank
        head.chosen_because = f"head.rank null: the largest rank within {why}"  # plan's line, not a config field
        return None
    choice = choose_head(hidden, classes, budget, adapters, cfg.model.problem_type == "multi_label")
    head.type, head.rank = choice.type, choice.rank
    head.chosen_because = choice.reason  # not a config field: plan's line, never written to config.yaml
    return choice.reason
