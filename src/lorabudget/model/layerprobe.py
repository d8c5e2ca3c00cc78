"""The training-time estimate's rates: one real encoder layer of the configured model, timed on this
CPU at the run's chunk shape and precision, cached per machine like the bf16 probe.

Why a layer and not a matmul loop: the FLOP model counts products only, and a training step spends a
large share of its time elsewhere (softmax, GELU, layer norms, dropout masks, autocast's casts,
PEFT's wrappers). On the Intel Xeon with AMX of docs/benchmarks.md a whole MiniLM run achieved
202 GFLOP/s in bf16 where the bf16 probe's bare products ran at 741-845 (about a quarter), and 75
GFLOP/s in fp32 against the probe's 188-200 (about 0.4): a constant efficiency factor would be wrong
for one precision or the other. Timing the layer as the run builds it (its adapters, its attention
implementation, the fast dropout, the frozen base in bf16 under autocast) puts that elementwise work
inside the measured rate instead. The layer gets random weights (no checkpoint is read: the time of a
product does not depend on the values).

The layer timed is the second-lowest one with a backward where there is one (its input requires grad,
as for every trainable layer but the lowest), else the lowest; the forward rate is the same layer in
training mode without a graph (what frozen layers cost during training).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from lorabudget.model import probe as probing
from lorabudget.model.estimate import Throughput, format_rate
from lorabudget.model.flops import EncoderShape, backward_coefficients, forward_coefficients

LAYER_PROBE_VERSION = 1
"""Part of the cache key: raise it when the layer probe measures something else."""

LAYER_PROBE_BUDGET_S = 0.15
"""Timed repetitions go on at least this long (and :data:`LAYER_PROBE_MIN_REPEATS` times; a MiniLM
layer's forward + backward on 1,024 positions takes tens of milliseconds on two idle cores)..."""
LAYER_PROBE_MAX_S = 0.6
"""...and up to this long while the repetitions disagree (``probe.PROBE_STABLE``)."""
LAYER_PROBE_MIN_REPEATS, LAYER_PROBE_MAX_REPEATS = 3, 12


@dataclass(frozen=True)
class LayerTiming:
    """Best times of one layer's forward (no graph) and forward + backward, and their FLOPs."""

    layer: int
    rows: int
    width: int
    precision: str
    threads: int
    forward_s: float
    train_s: float
    forward_flops: float
    train_flops: float
    repeats: int = 0
    stable: bool = True
    busy_cores: Optional[float] = None
    cached: bool = False

    @property
    def reliable(self) -> bool:
        if not self.stable:
            return False
        if self.busy_cores is None:
            return True
        return self.busy_cores <= max(0, probing._usable_cpus() - self.threads) + probing.PROBE_BUSY_CORES

    def throughput(self) -> Throughput:
        how = "cached" if self.cached else "measured now"
        basis = (
            f"layer {self.layer} of this model timed on this CPU ({how}: {self.rows} rows × {self.width} positions, "
            f"{self.precision}, {self.threads} threads): forward {format_rate(self.forward_flops / self.forward_s)}, "
            f"forward + backward {format_rate(self.train_flops / self.train_s)} achieved"
        )
        return Throughput(self.forward_flops / self.forward_s, self.train_flops / self.train_s, self.precision, basis)


def probed_layer(model: torch.nn.Module, shape: EncoderShape) -> tuple[int, bool]:
    """(index of the layer to time, whether its input requires grad)."""
    from lorabudget.model.flops import layer_coefficients

    trains = [bool(b.per_position or b.per_position_sq) for _, b in layer_coefficients(shape)]
    lowest = trains.index(True) if any(trains) else len(trains) - 1
    index = lowest + 1 if lowest + 1 < len(trains) and trains[lowest + 1] else lowest
    input_rg = shape.embeddings_trainable or any(trains[:index])
    return max(index, 0), input_rg


def _materialize(layer: torch.nn.Module) -> None:
    """Random weights for a meta-device layer, in place (matrices N(0, 0.02), vectors ones)."""
    gen = torch.Generator().manual_seed(0)
    layer.to_empty(device="cpu")
    with torch.no_grad():
        for p in layer.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            else:
                p.fill_(1.0)
        for b in layer.buffers():
            if b.is_floating_point():
                b.zero_()


def _passes(layer, d: int, rows: int, width: int, bf16: bool, input_rg: bool) -> dict[str, Callable[[], None]]:
    gen = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if bf16 else torch.float32
    hidden = torch.randn(rows, width, d, generator=gen).to(dtype)
    mask = torch.ones(rows, 1, 1, width, dtype=torch.bool)

    def call(x):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = layer(x, attention_mask=mask)
        return out[0] if isinstance(out, tuple) else out

    def forward() -> None:
        with torch.no_grad():
            call(hidden)

    def train() -> None:
        out = call(hidden.detach().requires_grad_(input_rg))
        if out.requires_grad:
            out.float().sum().backward()

    return {"forward": forward, "train": train}


def probe_layer(
    model: torch.nn.Module,
    shape: EncoderShape,
    rows: int,
    width: int,
    precision: str = "fp32",
    threads: Optional[int] = None,
    fast_dropout: bool = True,
    budget_s: float = LAYER_PROBE_BUDGET_S,
) -> LayerTiming:
    """Time one encoder layer of ``model`` (built on the meta device; the layer is given random
    weights in place, so pass a model built for this) on ``rows`` × ``width`` positions."""
    from lorabudget.model.dropout import fast_attention_dropout, use_fast_dropout
    from lorabudget.model.layout import encoder_layers
    from lorabudget.model.precision import frozen_base_in

    index, input_rg = probed_layer(model, shape)
    layer = dict(model.named_modules())[encoder_layers(model)[index]]
    _materialize(layer)
    layer.train()
    bf16 = precision == "bf16"
    one = EncoderShape(shape.hidden, (shape.layers[index],), embeddings_trainable=input_rg)
    fwd = forward_coefficients(one).batch(rows, width)
    train_flops = fwd + backward_coefficients(one).batch(rows, width)
    before, began_all = probing._cpu_seconds(), time.perf_counter()
    with contextlib.ExitStack() as stack:
        # Dropout draws from the global generator: a run's masks must not depend on whether this was cached.
        stack.enter_context(torch.random.fork_rng(devices=[]))
        used = stack.enter_context(probing._threads(threads))
        stack.enter_context(frozen_base_in(layer, torch.bfloat16 if bf16 else None))
        if fast_dropout:
            use_fast_dropout(layer)
            stack.enter_context(fast_attention_dropout(model))
        passes = _passes(layer, shape.hidden, rows, width, bf16, input_rg)
        for run in passes.values():
            run()  # untimed: first-use costs (oneDNN kernels for these shapes, allocator)
        times: dict[str, list[float]] = {"forward": [], "train": []}
        start, repeats = time.perf_counter(), 0
        while repeats < LAYER_PROBE_MAX_REPEATS:
            elapsed = time.perf_counter() - start
            stable = probing._stable(times)
            if repeats >= LAYER_PROBE_MIN_REPEATS and elapsed >= budget_s and (stable or elapsed >= LAYER_PROBE_MAX_S):
                break
            for name in ("forward", "train") if repeats % 2 == 0 else ("train", "forward"):
                began = time.perf_counter()
                passes[name]()
                times[name].append(time.perf_counter() - began)
            repeats += 1
    after, wall = probing._cpu_seconds(), time.perf_counter() - began_all
    busy = None
    if before is not None and after is not None and wall > 0:
        busy = max(0.0, (after[0] - before[0]) - (after[1] - before[1])) / wall
    return LayerTiming(
        index, rows, width, precision, used, min(times["forward"]), min(times["train"]), fwd, train_flops,
        repeats, probing._stable(times), busy,
    )  # fmt: skip


def layer_probe_key(
    model: torch.nn.Module, shape: EncoderShape, rows: int, width: int, precision: str, threads: int, fast: bool
) -> dict[str, Any]:
    """What a cached layer timing is valid for: this machine (the bf16 probe's key: CPU, flags, torch,
    threads), the layer (class, attention implementation, its sites' shapes and what trains), the
    chunk shape and the precision."""
    from lorabudget.model.layout import encoder_layers

    index, input_rg = probed_layer(model, shape)
    module = dict(model.named_modules())[encoder_layers(model)[index]]
    config = getattr(model, "config", None)
    intermediate = shape.layers[index].sites["intermediate"].n_out
    machine = probing.probe_key(probing.Workload(shape.hidden, intermediate, rows * width, True), threads)
    return {
        "layer_probe_version": LAYER_PROBE_VERSION,
        "machine": machine,
        "layer_class": type(module).__name__,
        "attention": str(getattr(config, "_attn_implementation", None)),
        "layer_shape": json.loads(json.dumps(asdict(shape.layers[index]), default=str)),
        "input_requires_grad": input_rg,
        "rows": int(rows),
        "width": int(width),
        "precision": precision,
        "fast_dropout": bool(fast),
    }


def cached_layer_probe(
    model: torch.nn.Module,
    shape: EncoderShape,
    rows: int,
    width: int,
    precision: str,
    threads: Optional[int] = None,
    cache_dir: Optional[str | Path] = None,
    fast_dropout: bool = True,
    measure: Optional[Callable[..., LayerTiming]] = None,
) -> LayerTiming:
    """:func:`probe_layer`, read from ``CACHE/precision/layer-probe-*.json`` when it was measured
    for the same key, else measured and (when reliable: stable, cores not taken) written there.
    ``measure`` replaces :func:`probe_layer` (tests)."""
    from lorabudget.io import atomic_write_json, default_cache_dir

    threads = threads or torch.get_num_threads()
    key = layer_probe_key(model, shape, rows, width, precision, threads, fast_dropout)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = Path(default_cache_dir(str(cache_dir) if cache_dir else None)) / "precision" / f"layer-probe-{digest}.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        values = [float(saved[k]) for k in ("forward_s", "train_s", "forward_flops", "train_flops")]
        if saved["key"] == key and all(v > 0 and math.isfinite(v) for v in values):
            return LayerTiming(int(saved["layer"]), rows, width, precision, threads, *values, cached=True)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    result = (measure or probe_layer)(model, shape, rows, width, precision, threads, fast_dropout)
    if result.reliable:
        record = {"key": key, **asdict(result), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        record.pop("cached", None)
        with contextlib.suppress(OSError):
            atomic_write_json(path, record)
    return result
