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

import contextlib
from typing import Iterator, Optional

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


def dropped(x: torch.Tensor, p: float) -> torch.Tensor:
    """``x`` with a :func:`keep_mask` applied: dropped elements zero, kept ones scaled to keep the expectation."""
    keep, scale = keep_mask(x.shape, p)
    return x * keep * scale


class FastDropout(nn.Dropout):
    """:class:`torch.nn.Dropout` with cheaper masks on a CPU (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu" or self.p >= 1:
            return super().forward(x)
        return dropped(x, self.p)


def use_fast_dropout(model: nn.Module) -> int:
    """Replace every plain :class:`torch.nn.Dropout` in ``model`` (the encoder's, the head's and the
    adapters', e.g. PEFT's ``lora_dropout``) by a :class:`FastDropout` with the same ``p``.

    Attention-probability dropout, which transformers' attention functions apply themselves (they
    read ``module.dropout.p``), is :func:`fast_attention_dropout`'s. Returns how many modules were replaced.
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


FAST_DROPOUT_ATTENTION = "lorabudget_sdpa_fast_dropout"
"""The name under which :func:`fast_dropout_attention` is registered with transformers' AttentionInterface."""


def fast_dropout_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    is_causal: Optional[bool] = None,
    **kwargs,
):
    """transformers' SDPA attention, with the attention probabilities' dropout mask from :func:`keep_mask`.

    With dropout on a CPU, torch's ``scaled_dot_product_attention`` takes its math path: fp32 products
    and softmax (bf16 inputs are upcast), then a ``bernoulli_`` mask over every probability, 8-10% of
    a bf16 MiniLM LoRA step. This computes the same math path with the cheaper mask (in bf16 when the
    inputs are bf16, see below). Everything else
    (evaluation, no dropout, a GPU, causal or grouped-query attention, position biases) goes to
    transformers' own ``sdpa_attention_forward`` unchanged.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    plain = (
        dropout > 0
        and module.training
        and query.device.type == "cpu"
        and not is_causal
        and getattr(module, "is_causal", True) is False
        and getattr(module, "num_key_value_groups", 1) == 1
        and kwargs.get("position_bias") is None
        and kwargs.get("softcap") is None
    )
    if not plain:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    # bf16 inputs (a bf16 frozen base) stay bf16: torch's math path would upcast them, but bf16
    # products and softmax were +2% samples/s and 63 MB less saved for backward per 2,048-position
    # chunk on MiniLM (docs/benchmarks.md); the held-out check covers their accuracy.
    out_dtype = query.dtype
    compute_dtype = torch.bfloat16 if query.dtype == torch.bfloat16 else torch.float32
    with torch.autocast(query.device.type, enabled=False):
        query, key, value = (t.to(compute_dtype) for t in (query, key, value))
        scores = torch.matmul(query, key.transpose(-1, -2)) * scale
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:  # True: attend
                scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
            else:
                scores = scores + attention_mask.to(compute_dtype)
        output = torch.matmul(dropped(scores.softmax(dim=-1), dropout), value).to(out_dtype)
    return output.transpose(1, 2).contiguous(), None


@contextlib.contextmanager
def fast_attention_dropout(model: nn.Module) -> Iterator[int]:
    """Route the SDPA attention of ``model``'s transformers models through :func:`fast_dropout_attention`
    while the block runs; restore their attention setting afterwards. Yields how many model configs
    were switched (models on another attention implementation are left alone)."""
    from transformers import AttentionInterface, PreTrainedModel
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(FAST_DROPOUT_ATTENTION, fast_dropout_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(FAST_DROPOUT_ATTENTION, sdpa_mask)  # the masks SDPA gets
    configs = {id(m.config): m.config for m in model.modules() if isinstance(m, PreTrainedModel)}
    switched = [c for c in configs.values() if c._attn_implementation == "sdpa"]
    for config in switched:
        config._attn_implementation = FAST_DROPOUT_ATTENTION
    try:
        yield len(switched)
    finally:
        for config in switched:
            config._attn_implementation = "sdpa"
