"""Which numeric precision training and inference run in, and one line saying why.

GPUs: ``auto`` is bf16 where the GPU supports it, else fp32.

CPUs: ``auto`` is decided by measurement on the machine at hand. Having a native-bf16 flag is not
enough: on an Intel Xeon with AVX512-BF16 but no AMX, bf16 products ran at half the fp32 rate
(a MiniLM-shaped 2048x384->1536 linear: 143 vs 301 GFLOP/s) and 40 steps of a MiniLM training run
took 56 s in bf16 against 41 s in fp32, while on CPUs with AMX or on AMD Zen 5 bf16 products run
several times faster than fp32 (docs/benchmarks.md, one table per CPU kind). So before a run,
:func:`probe` times the model's own linear-layer shapes (one encoder layer: query, key, value,
attention output, FFN in and out) in fp32 and in bf16 the way the run computes them: forward and
input-gradient backward for training (the frozen base gets no weight gradient), forward for
inference, on the run's thread count. bf16 is chosen only when it is at least
:data:`BF16_MARGIN` times faster (see there). The figures are cached on disk per CPU, flags, torch
version, thread count and shapes (:func:`cached_probe`), so the probe runs once per machine.

CPUs without a native-bf16 flag are not probed: torch emulates bf16 there, and one emulated
2048x2048 product took 35 to 80 s on a 2-core AMD EPYC without AVX512, so the probe itself would
blow its budget; ``auto`` is fp32 there.

Accuracy in bf16 was measured on MiniLM (docs/benchmarks.md): bf16 training scored within noise of
fp32 on 1,000 held-out rows (87.4% vs 86.8%, McNemar p = 0.26) and bf16 ``predict`` gave the same
label as fp32 on 100% of 2,000 rows. ``fp32``/``no`` and ``bf16`` force a choice.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from lorabudget.errors import LorabudgetError
from lorabudget.model import cpu as hw
from lorabudget.model import probe as probing
from lorabudget.model.probe import Probe, Workload

BF16_MARGIN = 1.3
"""How much faster bf16 must measure than fp32 in the probe for ``auto`` to pick it on a CPU.

The probe times only the big products; a bf16 run also pays casts (the small fp32 LoRA weights and
their gradients, the loss) and runs its elementwise work at about fp32's speed, so a product-level
gain shrinks end to end (docs/benchmarks.md): on the Intel Xeon with AMX, products 2.5-6x faster
gave training 1.15-1.85x faster; on the Xeon without AMX, products at 0.48x gave a job at 0.73x.
If the products take a share ``f`` of an fp32 step and bf16 adds casts worth ``c`` of it, bf16
breaks even at a product speedup of 1 / (1 - c/f). A MiniLM training run ran its fp32 products at
43% of the fp32 matmul peak over the whole step (so f is about 0.45-0.65), and autocast's extra
casts took about 5% of a step before the frozen base was held in bf16 (fewer since): c of 0.05-0.1
puts break-even at 1.08-1.29x. 1.3x clears that, and the probe's noise on an idle machine (a few
per cent), at the cost of leaving a small bf16 gain unused."""


@dataclass(frozen=True)
class Precision:
    name: str  # "fp32", "bf16" or "fp16"
    reason: str

    @property
    def accelerate_name(self) -> str:
        """The value Accelerate's ``mixed_precision`` takes."""
        return "no" if self.name == "fp32" else self.name

    def line(self, what: str) -> str:
        return f"{what} precision: {self.name} ({self.reason})"


def choose(
    requested: str,
    device_type: str,
    gpu_bf16: bool = False,
    cpu_flags: tuple[str, ...] = (),
    bf16_speedup: float | None = None,
    margin: float = BF16_MARGIN,
    note: str = "",
) -> Precision:
    """Decide the precision from what was asked, what the hardware has and what was measured (pure:
    easy to test).

    ``requested``: ``auto``, ``fp32`` (``no`` is Accelerate's name for it), ``bf16`` or ``fp16``.
    ``cpu_flags``: the CPU's native-bf16 flags (see :func:`cpu_bf16_flags`). ``bf16_speedup``: fp32
    time over bf16 time of the probe on this CPU (:func:`probe`; ``None``: not measured); ``note``
    is added to an ``auto`` decision made from it.
    """
    if requested in ("no", "fp32"):
        return Precision("fp32", "requested")
    if requested in ("bf16", "fp16"):
        if device_type == "cpu" and requested == "fp16":
            # Accelerate silently runs fp32 when fp16 is asked for on a CPU: say so instead.
            return Precision("fp32", "fp16 was requested, but fp16 mixed precision is not available on CPUs")
        if device_type == "cpu" and requested == "bf16" and not cpu_flags:
            return Precision(
                "bf16", "requested; this CPU has no native bf16, so bf16 is emulated and likely slower than fp32"
            )
        if device_type == "cpu" and requested == "bf16" and bf16_speedup is not None and bf16_speedup < 1:
            return Precision("bf16", f"requested; bf16 measured {bf16_speedup:.2f}x fp32's speed on this CPU")
        return Precision(requested, "requested")
    if requested != "auto":
        raise ValueError(f"unknown precision {requested!r}")  # the config and CLI only allow the values above
    if device_type == "cuda":
        if gpu_bf16:
            return Precision("bf16", "auto: this GPU supports bf16")
        return Precision("fp32", "auto: this GPU has no bf16 support")
    if device_type != "cpu":
        return Precision("fp32", f"auto: fp32 on {device_type}")
    if not cpu_flags:
        return Precision("fp32", "auto: this CPU has no native bf16 (no avx512_bf16/amx_bf16 flag)")
    if bf16_speedup is None or not math.isfinite(bf16_speedup):
        return Precision("fp32", "auto: bf16 could not be measured on this CPU")
    note = f"; {note}" if note else ""
    if bf16_speedup >= margin:
        return Precision("bf16", f"auto: measured {bf16_speedup:.2f}x faster than fp32 here{note}")
    return Precision(
        "fp32", f"auto: bf16 measured {bf16_speedup:.2f}x here, under the {margin:g}x it must win by{note}"
    )


WorkloadSpec = Workload | Callable[[], Workload] | None
AUTO_ENV = "LORABUDGET_AUTO_PRECISION"
"""``fp32`` or ``bf16``: what ``auto`` picks on a CPU, without a probe (a machine or a CI job that wants
one fixed choice, e.g. identical runs on a shared, loaded machine where probes vary)."""


def resolve(
    requested: str,
    device_type: str | None = None,
    workload: WorkloadSpec = None,
    threads: int | None = None,
    cache_dir: str | Path | None = None,
) -> Precision:
    """:func:`choose` for this machine (``device_type`` defaults to cuda when a GPU is visible).

    ``auto`` on a CPU with native bf16 runs the cached probe (:func:`cached_probe`) on ``workload``
    (a :class:`Workload`, or a function making one, called only then; default: MiniLM's shape for
    inference) on ``threads`` threads (default: torch's current count)."""
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    pinned = os.environ.get(AUTO_ENV, "")
    if requested == "auto" and device_type == "cpu" and pinned:
        if pinned not in ("fp32", "bf16"):
            raise LorabudgetError(f"{AUTO_ENV}={pinned[:40]!r}: use fp32 or bf16 (or unset it to measure)")
        return Precision(pinned, f"auto: {AUTO_ENV}={pinned}")
    flags = hw.cpu_bf16_flags() if device_type == "cpu" else ()
    speedup, note = None, ""
    if requested == "auto" and device_type == "cpu" and flags:
        shape = workload() if callable(workload) else workload or probing.representative(training=False)
        try:
            result = probing.cached_probe(shape, threads, cache_dir)
        except RuntimeError:  # a torch build without CPU bf16 kernels: auto stays fp32, with the reason
            result = None
        if result is not None:
            speedup, note = result.speedup, unreliable_note(result)
    return choose(
        requested, device_type, gpu_bf16=hw.gpu_supports_bf16(), cpu_flags=flags, bf16_speedup=speedup, note=note
    )


def unreliable_note(result: Probe) -> str:
    """Why a probe was not cached ("" for a reliable one)."""
    if result.contended:
        return f"measured while other processes kept {result.busy_cores:.1f} cores busy: not cached"
    if not result.stable:
        return "its repetitions disagreed: not cached"
    return ""


@contextlib.contextmanager
def frozen_base_in(model: torch.nn.Module, dtype: torch.dtype | None) -> Iterator[int]:
    """Hold every frozen floating-point parameter of ``model`` (the base's linear weights and biases,
    embeddings, LayerNorms) in ``dtype`` while the block runs, then put the original fp32 tensors
    back (bit for bit).

    Under bf16 autocast every linear layer casts its fp32 weight to bf16 on every forward pass, and
    autocast caches only the casts of weights that train: for a frozen base that is a copy of the
    whole encoder per forward. Casting only the linear weights would still
    leave fp32 embeddings and LayerNorms, whose fp32 outputs are cast to bf16 again for each
    consumer (query, key, value and their adapters), with the gradients cast back: 388 casts per
    chunk's forward and backward on MiniLM, 200 with the whole frozen base in bf16, and a bf16
    residual stream that halves what is saved for backward (docs/benchmarks.md has the figures).
    A frozen tensor never changes, so it is cast once here. PEFT's own cast of an adapter's input to
    the adapter's fp32 dtype is switched off inside the block (``cast_input_dtype_enabled``): autocast
    would cast it straight back. Trained parameters stay fp32 (the optimizer's master weights), and
    bitsandbytes' quantized layers are left as they are. Every forward pass inside the block must
    run under autocast (the prepared model does). ``dtype`` None or fp32: nothing changes. Yields
    how many parameters were cast.
    """
    with _parameters_in(model, dtype, trained_too=False) as cast:
        yield cast


@contextlib.contextmanager
def inference_weights_in(model: torch.nn.Module, dtype: torch.dtype | None) -> Iterator[int]:
    """:func:`frozen_base_in` for inference: every floating-point parameter, trained ones included,
    is held in ``dtype`` while the block runs (nothing trains there), then the originals go back.

    Without it bf16 ``predict`` cast every linear weight of the encoder from fp32 on every batch
    (autocast keeps no cast of a weight that does not train across forward passes): on roberta-base
    that is 85M weights read and written per batch of about 1,024 token positions.
    """
    with _parameters_in(model, dtype, trained_too=True) as cast:
        yield cast


@contextlib.contextmanager
def _parameters_in(model: torch.nn.Module, dtype: torch.dtype | None, trained_too: bool) -> Iterator[int]:
    originals: list[tuple[torch.nn.Module, str, torch.nn.Parameter]] = []
    input_casts: list[tuple[torch.nn.Module, bool]] = []
    if dtype not in (None, torch.float32):
        for module in model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                input_casts.append((module, module.cast_input_dtype_enabled))
                module.cast_input_dtype_enabled = False
            if type(module).__module__.startswith("bitsandbytes"):
                continue
            for name, weight in list(module._parameters.items()):
                if (
                    weight is not None
                    and (trained_too or not weight.requires_grad)
                    and weight.is_floating_point()
                    and weight.dtype != dtype
                ):
                    originals.append((module, name, weight))
                    module._parameters[name] = torch.nn.Parameter(weight.detach().to(dtype), requires_grad=False)
    try:
        yield len(originals)
    finally:
        for module, name, weight in originals:
            module._parameters[name] = weight
        for module, enabled in input_casts:
            module.cast_input_dtype_enabled = enabled
