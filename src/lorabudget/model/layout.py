"""The encoder's layout discovered from a built model: its family, its layers, shared layers."""

from __future__ import annotations

from typing import Optional

from torch import nn

from lorabudget.errors import LorabudgetError
from lorabudget.methods.sites import Family, LayerSharing, family_of


def model_family(model: nn.Module) -> Optional[Family]:
    """The encoder family (methods/sites.py) of a model, PEFT-wrapped or not; None when no family has it."""
    return family_of(getattr(getattr(model, "config", None), "model_type", None))


def _holds_linear(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Linear) for m in module.modules())


def encoder_layers(model: nn.Module) -> list[str]:
    """Full names of the encoder's layers, in order, discovered from the model.

    The layers are the items of the innermost ModuleLists whose every item holds a Linear
    (``encoder.layer`` in BERT, ``transformer.layer`` in DistilBERT, ``layers`` in ModernBERT, each
    ``albert_layer_groups.G.albert_layers`` in ALBERT): no path is assumed.
    """
    lists = [
        (name, len(module))
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) and all(_holds_linear(m) for m in module)
    ]
    inner = [(name, n) for name, n in lists if not any(other.startswith(name + ".") for other, _ in lists)]
    if not inner:
        raise LorabudgetError(
            f"model type '{getattr(getattr(model, 'config', None), 'model_type', '?')}' is not supported: "
            "lorabudget found no list of encoder layers in it (a ModuleList of layers holding Linear modules)"
        )
    return [f"{name}.{i}" for name, n in inner for i in range(n)]


def layer_sharing(model: nn.Module) -> Optional[LayerSharing]:
    """How often the layers' weights are applied, where a model reuses them (ALBERT); else None."""
    applied = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    distinct = len(encoder_layers(model))
    if isinstance(applied, int) and applied > distinct:
        return LayerSharing(distinct, applied)
    return None


def model_notes(model: nn.Module) -> list[str]:
    """What ``plan`` says about the model's layout: fused modules, shared layers."""
    notes = []
    family = model_family(model)
    if family and family.fused:
        notes.append(family.fused)
    sharing = layer_sharing(model)
    if sharing:
        notes.append(sharing.note())
    return notes
