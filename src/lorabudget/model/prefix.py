"""Where the frozen prefix of an encoder ends: the lowest layer that holds a trainable parameter."""

from __future__ import annotations

from torch import nn

from lorabudget.model.layout import encoder_layers


def frozen_prefix_depth(model: nn.Module) -> int:
    """How many encoder layers, from the bottom, hold no trainable parameter and see none below them.

    0 when a trainable parameter sits in the embeddings, in the first layer, or anywhere that is
    neither an encoder layer nor the head (nothing is then known to be frozen below it). Layers
    whose weights are shared (ALBERT) count as trainable everywhere they are applied, so 0 there.
    Works on PEFT-wrapped, plain and meta-device models.
    """
    from lorabudget.model.budget import breakdown
    from lorabudget.model.layout import layer_sharing

    if layer_sharing(model):
        return 0
    layers = encoder_layers(model)
    trained = breakdown(model)
    if trained.other or trained.shared:
        return 0
    lowest = min((layer for layer, _, _ in trained.sites), default=len(layers))
    return max(0, min(lowest, len(layers)))
