"""Where the frozen prefix of an encoder ends: the lowest layer that holds a trainable parameter."""

from __future__ import annotations

from typing import Optional

from torch import nn

from lorabudget.model.layout import encoder_layers

# Modules outside the layer list that run after every layer: a trainable parameter there (ModernBERT's
# final norm named in adapter.target_modules, a pooler) changes nothing below it.
_ABOVE_THE_LAYERS = ("final_norm", "pooler")
_WHOLE = 1 << 16
_EDGE = 4096


def frozen_prefix_depth(model: nn.Module) -> int:
    """How many encoder layers, from the bottom, hold no trainable parameter and see none below them.

    0 when a trainable parameter sits in the embeddings, in the first layer, or anywhere that is
    neither an encoder layer, the head nor a module that runs after the layers (ModernBERT's final
    norm, a pooler): nothing is then known to be frozen below it. A tensor reachable from several
    layers (VB-LoRA's bank, TinyLoRA's tied vectors) counts at the lowest of them. Layers whose weights
    are shared (ALBERT) count as trainable everywhere they are applied, so 0 there. Works on
    PEFT-wrapped, plain and meta-device models.
    """
    from lorabudget.model.budget import _head_prefixes, _Locator
    from lorabudget.model.layout import layer_sharing

    if layer_sharing(model):
        return 0
    layers = encoder_layers(model)
    locate = _Locator(model)
    heads = _head_prefixes(model)
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if param.requires_grad:
            names.setdefault(id(param), []).append(name)
    lowest = len(layers)
    for reachable in names.values():
        placed = [layer for layer in map(locate.layer, reachable) if layer is not None]
        if placed:  # a bank held by the tuner and used by adapted modules counts where they are
            lowest = min(lowest, *placed)
        elif not all(_above_the_layers(name, heads) for name in reachable):
            return 0
    return max(0, lowest)


def _above_the_layers(name: str, heads: tuple[str, ...]) -> bool:
    if ".modules_to_save." in name or (heads and name.startswith(heads)):
        return True
    parts = name.split(".")
    return any(part in _ABOVE_THE_LAYERS for part in parts)


def split_refusal(model: nn.Module, depth: int) -> Optional[str]:
    """Why ``model`` cannot be run as cached states entering layer ``depth`` plus the layers above
    (None when it can): the family's encoder must pass nothing from its lower layers to the upper ones
    but the hidden states."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) == "deberta-v2" and getattr(config, "conv_kernel_size", 0) > 0:
        return "this DeBERTa model adds a convolution of the embeddings to the first layer's output"
    return None


def prefix_weights_fingerprint(model: nn.Module, depth: int) -> str:
    """A hash of every frozen weight and buffer the states entering layer ``depth`` depend on: the base
    model's tensors outside layers ``depth`` and above (embeddings, layers below, what the encoder
    shares with every layer), named as in the bare encoder, so the same base under another head or
    another method (whose adapters all sit at or above ``depth``) gets the same fingerprint. Tensors of
    up to 65,536 values are hashed whole, larger ones by their ends and an even sample of 65,536 values:
    other weights (another checkpoint, a fine-tuned base) differ nearly everywhere."""
    import hashlib

    import torch
    from transformers import PreTrainedModel

    from lorabudget.model.budget import _Locator

    container = encoder_layers(model)[0].rpartition(".")[0]
    parts = container.split(".")
    base = next(
        (
            ".".join(parts[:n])
            for n in range(len(parts), 0, -1)
            if isinstance(model.get_submodule(".".join(parts[:n])), PreTrainedModel)
        ),
        "",
    )
    locate, heads = _Locator(model), ()
    digest = hashlib.sha256()
    tensors = [*model.named_parameters(), *model.named_buffers()]
    for name, tensor in sorted(tensors, key=lambda item: _bare(item[0], base)):
        layer = locate.layer(name)
        if getattr(tensor, "requires_grad", False) or (layer is not None and layer >= depth):
            continue
        if (base and not name.startswith(base + ".")) or _above_the_layers(name, heads):
            continue
        value = tensor.detach().to("cpu").reshape(-1)
        digest.update(f"{_bare(name, base)}|{value.dtype}|{tuple(tensor.shape)}|".encode())
        if value.numel() > _WHOLE:  # an even sample: hashing MPNet's 80M frozen values whole costs about a second
            value = torch.cat([value[:_EDGE], value[:: value.numel() // _WHOLE], value[-_EDGE:]])
        digest.update(value.contiguous().view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def _bare(name: str, base: str) -> str:
    """A tensor's name inside the bare encoder (no PEFT wrapper, no ``base_layer``)."""
    name = name[len(base) + 1 :] if base and name.startswith(base + ".") else name
    return name.replace(".base_layer.", ".")
