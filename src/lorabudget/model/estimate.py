"""How long a training run will take and how much memory it will hold, before it starts.

Time is a pure function of (the encoder's shape, how many bottom layers come from the frozen-prefix
cache, the token lengths of the training and validation rows after the run's padding and length
grouping, batch size, steps, validation passes, and two measured rates), so that the same inputs
give the same estimate and a test can inject the rates:

* **Work** is the FLOP model of :mod:`lorabudget.model.flops`, per encoder layer: forward everywhere,
  backward only from the lowest layer whose input or parameters need a gradient (trainable-aware
  depth). The batches are the run's own: :class:`~lorabudget.data.batching.LengthGroupedBatchSampler`
  with the run's seed, each padded to its bucket width (:func:`~lorabudget.data.batching.bucket_widths`,
  steps of 16 in bf16 training and 8 in fp32), epoch by epoch up to the run's step count; validation
  passes use the inference batches (:func:`~lorabudget.data.batching.length_sorted_batches`).
* **Rates** (:class:`Throughput`) are not a matmul peak: they are measured on one real encoder layer
  of the configured model, adapters and dropout included, at the run's chunk shape and precision
  (:mod:`lorabudget.model.layerprobe`), once per machine and cached. Its FLOPs over its time is the
  achieved rate; elementwise work the FLOP model leaves out (softmax, GELU, layer norms, dropout,
  autocast's casts) is therefore inside the rate. ``forward`` is the rate of a layer run without a
  graph (frozen layers below the lowest trainable one, validation passes, filling the prefix cache),
  ``train`` the rate of forward + backward of a trainable layer.
* **Not seen**: the optimizer step, loss, embeddings, data collation and Python's per-step overhead
  (small next to the layers for these models on a CPU), oneDNN's first-use cost per new shape,
  other processes taking the cores, and the drift of the machine's speed between the probe and the run.
* **Frozen-prefix cache** (``cached_layers`` = k > 0): layers below k cost one forward per distinct
  row (training and validation rows, at the inference batches' widths) when the cache is cold, and
  nothing on any pass once it is filled (``warm``).

Peak memory (bytes), :func:`peak_memory`::

    runtime                       the process before the run (interpreter, torch, tokenizer)
  + frozen · 4 (+ frozen · 2 in bf16)  frozen base in fp32, plus its bf16 copy held during the loop
  + trainable · 20                weights, gradients, AdamW's two moments, the best weights' copy (fp32)
  + activations                   largest chunk P positions (``max_batch_positions`` cap), element
                                  size e (2 in bf16, 4 in fp32): saved for backward
                                  P · (10·d + 2·i + 2·h·T) · e per layer with a backward, plus one
                                  frozen layer's working set P · (4·d + 2·i + h·T) · e
  + tokens                        ids (4 bytes a token) and offsets (8 bytes a row), training + validation
  + cache                         the frozen-prefix cache read through memory maps: tokens · d · e
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from lorabudget.data.batching import (
    LengthGroupedBatchSampler,
    bucket_widths,
    bucketed,
    length_sorted_batches,
)
from lorabudget.model.flops import Coefficients, EncoderShape, head_coefficients, layer_coefficients


@dataclass(frozen=True)
class Throughput:
    """Achieved FLOP/s on this machine: ``forward`` (a layer without backward), ``train`` (a layer's
    forward + backward); ``basis`` says how they were obtained."""

    forward: float
    train: float
    precision: str = "fp32"
    basis: str = "given"


@dataclass(frozen=True)
class Sums:
    """Σ B·T, Σ B·T² and Σ B over a list of padded batches (what the FLOP coefficients multiply)."""

    positions: float = 0.0
    positions_sq: float = 0.0
    rows: float = 0.0

    @classmethod
    def of(cls, batches: Sequence[tuple[int, int]]) -> "Sums":
        p = sum(r * w for r, w in batches)
        return cls(float(p), float(sum(r * w * w for r, w in batches)), float(sum(r for r, _ in batches)))

    def __add__(self, other: "Sums") -> "Sums":
        return Sums(self.positions + other.positions, self.positions_sq + other.positions_sq, self.rows + other.rows)

    def scaled(self, factor: float) -> "Sums":
        return Sums(self.positions * factor, self.positions_sq * factor, self.rows * factor)

    def flops(self, coef: Coefficients) -> float:
        return coef.total(self.positions, self.positions_sq, self.rows)


def training_batches(
    lengths: np.ndarray, batch_size: int, seed: int, epoch: int, length_grouping: bool = True, multiple: int = 8
) -> list[tuple[int, int]]:
    """(rows, padded width) of each batch of one training epoch, in the run's order."""
    lengths = np.asarray(lengths)
    if not len(lengths):
        return []
    sampler = LengthGroupedBatchSampler(lengths, batch_size, seed, length_grouping)
    sampler.set_epoch(epoch)
    ladder = bucket_widths(int(lengths.max()), multiple) if multiple > 1 else None
    out = []
    for batch in sampler:
        longest = int(lengths[batch].max())
        width = int(bucketed(np.array([longest]), ladder)[0]) if ladder else longest
        out.append((len(batch), width))
    return out


def inference_batches(lengths: np.ndarray, batch_size: int, max_tokens: Optional[int]) -> list[tuple[int, int]]:
    """(rows, padded width) of each inference batch (validation passes, filling the prefix cache)."""
    lengths = np.asarray(lengths)
    if not len(lengths):
        return []
    ladder = bucket_widths(int(lengths.max()), 8)
    padded = bucketed(lengths, ladder)
    return [(len(b), int(padded[b[0]])) for b in length_sorted_batches(lengths, batch_size, max_tokens, ladder)]


@dataclass(frozen=True)
class Workload:
    """What a run computes, in batch sums: the training micro-batches of each epoch (the last one
    possibly cut short by the step count), one validation pass, the validation pass count, and the
    rows the prefix cache would be filled from, and the inference pass over the training rows that
    computes the head's class vectors before training (empty when the head needs none)."""

    epochs: tuple[Sums, ...]
    validation: Sums
    eval_passes: int
    cache_fill: Sums = field(default_factory=Sums)
    head_init: Sums = field(default_factory=Sums)


def run_workload(
    train_lengths: np.ndarray,
    validation_lengths: np.ndarray,
    batch_size: int,
    seed: int,
    micro_batches: int,
    eval_passes: int,
    eval_batch_size: int,
    eval_max_tokens: Optional[int],
    length_grouping: bool = True,
    multiple: int = 8,
    head_init: bool = False,
) -> Workload:
    """:class:`Workload` of ``micro_batches`` training batches (across as many epochs as they span);
    ``head_init``: the head's class vectors are computed from the training rows first."""
    epochs, left, epoch = [], micro_batches, 0
    while left > 0:
        batches = training_batches(train_lengths, batch_size, seed, epoch, length_grouping, multiple)
        if not batches:
            break
        epochs.append(Sums.of(batches[:left]))
        left -= len(batches)
        epoch += 1
    validation = Sums.of(inference_batches(validation_lengths, eval_batch_size, eval_max_tokens))
    train_pass = Sums.of(inference_batches(train_lengths, eval_batch_size, eval_max_tokens))
    return Workload(
        tuple(epochs), validation, eval_passes, train_pass + validation, train_pass if head_init else Sums()
    )


@dataclass(frozen=True)
class TimeEstimate:
    seconds: float  # the whole training loop, validation passes, a cold cache fill and the head's start included
    epoch_seconds: float  # one full epoch: its training batches and its share of validation passes
    train_seconds: float  # training batches only
    eval_seconds: float  # all validation passes
    cache_fill_seconds: float  # filling the frozen-prefix cache (0: warm or not used)
    epochs: float
    flops: float
    head_init_seconds: float = 0.0  # the class vectors' pass over the training rows (0: the head needs none)


def _layers_seconds(
    layers: list[tuple[Coefficients, Coefficients]], sums: Sums, rates: Throughput, first: int, backward: bool
) -> float:
    seconds = 0.0
    for fwd, bwd in layers[first:]:
        if backward and (bwd.per_position or bwd.per_position_sq):
            seconds += sums.flops(fwd + bwd) / rates.train
        else:
            seconds += sums.flops(fwd) / rates.forward
    return seconds


def estimate_time(
    shape: EncoderShape,
    work: Workload,
    rates: Throughput,
    cached_layers: int = 0,
    warm: bool = False,
) -> TimeEstimate:
    """Seconds of a training loop (see the module docstring); ``cached_layers``: layers below this
    come from the frozen-prefix cache (0: no cache), filled first unless ``warm``."""
    layers = layer_coefficients(shape)
    head_fwd, head_bwd = head_coefficients(shape)
    k = max(0, min(cached_layers, len(layers)))

    def train_part(sums: Sums) -> float:
        return _layers_seconds(layers, sums, rates, k, True) + sums.flops(head_fwd + head_bwd) / rates.train

    per_epoch = [train_part(s) for s in work.epochs]
    one_pass = (
        _layers_seconds(layers, work.validation, rates, k, False) + work.validation.flops(head_fwd) / rates.forward
    )
    fill = 0.0 if warm or not k else _layers_seconds(layers[:k], work.cache_fill, rates, 0, False)
    head_init = _layers_seconds(layers, work.head_init, rates, k, False)
    train = sum(per_epoch)
    evals = one_pass * work.eval_passes
    full_epoch = work.epochs[0] if work.epochs else Sums()
    n_epochs = sum(s.rows for s in work.epochs) / full_epoch.rows if full_epoch.rows else 0.0
    epoch_seconds = (per_epoch[0] if per_epoch else 0.0) + (evals / n_epochs if n_epochs else 0.0)
    total_flops = sum(s.flops(c) for s in work.epochs for c in [f + b for f, b in layers[k:]])
    return TimeEstimate(
        train + evals + fill + head_init, epoch_seconds, train, evals, fill, n_epochs, total_flops, head_init
    )


@dataclass(frozen=True)
class MemoryInputs:
    frozen_params: int
    trainable_params: int
    hidden: int
    intermediate: int
    heads: int
    backward_layers: int  # layers with a backward (at or above the lowest trainable parameter)
    bf16: bool
    chunk_positions: int  # padded positions of the largest chunk (within max_batch_positions)
    chunk_width: int  # its width (attention is T² per row)
    tokens: int  # training + validation tokens
    rows: int  # training + validation rows
    cache_tokens: int = 0  # tokens held in the frozen-prefix cache (0: no cache)
    runtime_bytes: int = 0  # the process before the run


def peak_memory(m: MemoryInputs) -> dict[str, int]:
    """Peak resident bytes by part (the formula in the module docstring); ``total`` is their sum."""
    e = 2 if m.bf16 else 4
    d, i, h, p, t = m.hidden, m.intermediate, m.heads, m.chunk_positions, m.chunk_width
    parts = {
        "runtime": m.runtime_bytes,
        "frozen_weights": m.frozen_params * (6 if m.bf16 else 4),
        "trainable": m.trainable_params * 20,
        "activations": p * e * ((10 * d + 2 * i + 2 * h * t) * m.backward_layers + (4 * d + 2 * i + h * t)),
        "tokens": m.tokens * 4 + (m.rows + 2) * 8,
        "prefix_cache": m.cache_tokens * d * e,
    }
    parts["total"] = sum(parts.values())
    return parts


def largest_chunk(lengths: np.ndarray, batch_size: int, cap: Optional[int], multiple: int) -> tuple[int, int]:
    """(positions, width) of the largest training chunk: the widest batch, cut to the position cap
    the way :func:`~lorabudget.data.batching.split_rows` cuts it."""
    lengths = np.asarray(lengths)
    if not len(lengths):
        return 0, 0
    width = int(bucketed(np.array([int(lengths.max())]), bucket_widths(int(lengths.max()), multiple))[0])
    rows = min(batch_size, len(lengths))
    if cap and rows * width > cap:
        pieces = math.ceil(rows / max(1, cap // width))
        rows = math.ceil(rows / pieces)
    return rows * width, width


def format_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_rate(flops_per_s: float) -> str:
    g = flops_per_s / 1e9
    return f"{g:,.0f} GFLOP/s" if g >= 10 else f"{g:.2g} GFLOP/s"


def format_flops(flops: float) -> str:
    for unit, size in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if flops >= size:
            return f"{flops / size:,.3g} {unit}"
    return f"{flops:,.0f} FLOP"


def format_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n / 1e3:.0f} kB"
