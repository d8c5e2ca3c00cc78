"""Dropout whose masks cost a third to a half of torch's on a CPU.

torch's CPU dropout draws one value from its (serial, Mersenne Twister) generator per element:
about 15 ns an element on a 2-core Intel Xeon of this project's machines, which made dropout masks 41% of a MiniLM
LoRA training step in fp32 and 47% in bf16 (torch profiler, docs/benchmarks.md), more than all the
matrix products. :class:`FastDropout` takes two masks from each 31-bit draw of the same generator
(15 bits each), so it draws half as many numbers and does the rest with vectorised integer ops.
The drop probability is rounded to a multiple of 1/32768 (0.1 becomes 0.100006) and kept elements
are scaled by the inverse of that exact keep rate, so the output's expectation equals the input's,
as with :class:`torch.nn.Dropout`. Masks come from torch's default generator: ``torch.manual_seed``
makes them reproducible, and a resumed run's restored RNG state continues them.

Only CPU tensors take the fast path; on a GPU (where torch's Philox dropout is cheap) and in eval
mode it behaves exactly like :class:`torch.nn.Dropout`. It has no parameters or buffers, so
swapping it in changes no state dict, saved adapter or export.
"""

from __future__ import annotations

import torch
from torch import nn

LEVELS = 1 << 15  # a draw of torch's int32 ``random_()`` holds 31 random bits: two 15-bit halves


def keep_mask(shape: torch.Size, p: float) -> tuple[torch.Tensor, float]:
    """A boolean keep mask of ``shape`` with drop probability ``round(p * 32768) / 32768``, and the
    scale (one over the keep rate) that keeps the expectation."""
    n = shape.numel()
    half = (n + 1) // 2
    draws = torch.empty(half, dtype=torch.int32).random_()  # uniform on [0, 2**31)
    cut = round(p * LEVELS)
    keep = torch.empty(2 * half, dtype=torch.bool)
    torch.ge(draws & (LEVELS - 1), cut, out=keep[:half])
    torch.ge(draws >> 16, cut, out=keep[half:])
    return keep[:n].view(shape), LEVELS / (LEVELS - cut)


class FastDropout(nn.Dropout):
    """:class:`torch.nn.Dropout` with cheaper masks on a CPU (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu" or self.p >= 1:
            return super().forward(x)
        keep, scale = keep_mask(x.shape, self.p)
        return x * keep * scale


def use_fast_dropout(model: nn.Module) -> int:
    """Replace every plain :class:`torch.nn.Dropout` in ``model`` (the encoder's, the head's and the
    adapters', e.g. PEFT's ``lora_dropout``) by a :class:`FastDropout` with the same ``p``.

    Attention-probability dropout that a model applies functionally (transformers' attention
    functions read ``module.dropout.p``) is left to torch. Returns how many modules were replaced.
    """
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                fast = FastDropout(child.p, inplace=child.inplace)
                fast.train(child.training)
                setattr(parent, name, fast)
                replaced += 1
    return replaced
