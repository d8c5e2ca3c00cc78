"""Running an encoder from layer k: the hidden states entering layer k captured once (``capture``), and
a forward pass whose layers below k are skipped, those states given to layer k instead (``from_layer``).

Both go through the model's own forward, so whatever its encoder derives from the inputs and hands to
every layer (the attention mask, MPNet's relative position bias, ModernBERT's rotary embeddings and
sliding-window masks, DeBERTa's relative positions) is computed exactly as usual: it depends on the
batch's shape and mask, never on the lower layers' output. The embeddings still run (a lookup, cheap)
and their output is dropped. Families whose encoder passes more than the hidden states from a lower
layer upward are refused by ``model.prefix.split_refusal``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from lorabudget.model.layout import encoder_layers


class _Captured(Exception):
    """Stops a forward pass once the states entering layer k are known."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden


def _layer_list(model: nn.Module) -> tuple[nn.ModuleList, int]:
    """The encoder's ModuleList of layers (every family keeps its layers in one list) and its length."""
    names = encoder_layers(model)
    container = model.get_submodule(names[0].rpartition(".")[0])
    if not all(n.rpartition(".")[0] == names[0].rpartition(".")[0] for n in names):
        raise ValueError("the encoder's layers are not one list")  # ALBERT: never split (shared layers)
    return container, len(names)


def _hidden_of(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def capture(model: nn.Module, depth: int, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The hidden states [B, T, H] entering layer ``depth`` for ``inputs`` (the layers above never run).
    Call it in eval mode and without gradients for states that match a training forward without dropout."""
    container, _ = _layer_list(model)

    def stop(_module: nn.Module, args: tuple, kwargs: dict) -> Any:
        raise _Captured(_hidden_of(args, kwargs))

    handle = container[depth].register_forward_pre_hook(stop, with_kwargs=True)
    try:
        model(**inputs)
    except _Captured as done:
        return done.hidden
    finally:
        handle.remove()
    raise RuntimeError(f"layer {depth} never ran")  # a bug, not bad input


@contextlib.contextmanager
def from_layer(model: nn.Module, depth: int, hidden: torch.Tensor) -> Iterator[None]:
    """Within the block, a forward pass of ``model`` skips layers 0..depth-1 and gives layer ``depth``
    the states ``hidden`` [B, T, H] instead (in their own dtype: the one they were captured in).

    The layer list holds only the layers from ``depth`` on meanwhile; it is whole again afterwards,
    so saving, evaluation and export see the full model."""
    container, count = _layer_list(model)
    if not 0 < depth < count:
        raise ValueError(f"cannot start at layer {depth} of {count}")  # a bug, not bad input
    full = container._modules
    upper = list(full.values())[depth:]

    def inject(_module: nn.Module, args: tuple, kwargs: dict) -> Any:
        given = _hidden_of(args, kwargs)
        if given.shape[:2] != hidden.shape[:2]:
            raise RuntimeError(f"cached states {tuple(hidden.shape)} for inputs {tuple(given.shape)}")  # a bug
        return _with_hidden(args, kwargs, hidden)

    handle = upper[0].register_forward_pre_hook(inject, with_kwargs=True)
    container._modules = type(full)((str(i), m) for i, m in enumerate(upper))
    try:
        yield
    finally:
        container._modules = full
        handle.remove()
