"""Which numeric precision training and inference run in, and one line saying why.

bf16 pays only where the hardware computes in it natively: GPUs that support it, and CPUs with
AVX512-BF16 or AMX (x86) or the BF16 extension (aarch64). Elsewhere torch emulates bf16 matmuls
and they run slower than fp32, so ``auto`` never picks bf16 there.

On a CPU with native bf16, ``auto`` picks bf16 (:data:`CPU_BF16_AUTO`): measured on MiniLM
(docs/benchmarks.md), bf16 training scored within noise of fp32 on 1,000 held-out rows (87.4% vs
86.8%, McNemar p = 0.26) and bf16 ``predict`` gave the same label as fp32 on 100% of 2,000 rows,
while training ran 1.15x faster at lower peak memory and inference about 1.5x faster.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

CPU_BF16_AUTO = True
"""Whether ``auto`` picks bf16 on CPUs with native bf16 (training and inference); see the module docstring."""

# /proc/cpuinfo flags that mean the CPU multiplies bf16 natively (x86 "flags", aarch64 "Features").
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


@functools.lru_cache(maxsize=1)
def cpu_bf16_flags() -> tuple[str, ...]:
    """The native-bf16 flags of this CPU (empty when it has none or /proc/cpuinfo is unreadable).

    ``torch.backends.cpu.get_cpu_capability()`` only says "AVX512" (it does not tell AVX512-BF16
    apart), and oneDNN's bf16 check also accepts plain AVX512 where bf16 is emulated, so the
    kernel's CPU flags decide.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    present = set(value.split())
                    return tuple(f for f in NATIVE_BF16_FLAGS if f in present)
    except OSError:
        pass
    return ()


def cpu_supports_bf16() -> bool:
    return bool(cpu_bf16_flags())


def gpu_supports_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


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
    cpu_auto: Optional[bool] = None,
) -> Precision:
    """Decide the precision from what was asked and what the hardware has (pure: easy to test).

    ``requested``: ``auto``, ``fp32`` (``no`` is Accelerate's name for it), ``bf16`` or ``fp16``.
    ``cpu_flags``: the CPU's native-bf16 flags (see :func:`cpu_bf16_flags`).
    """
    cpu_auto = CPU_BF16_AUTO if cpu_auto is None else cpu_auto
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
    native = "/".join(cpu_flags)
    if cpu_auto:
        return Precision("bf16", f"auto: this CPU has native bf16 ({native})")
    return Precision(
        "fp32", f"auto: this CPU has native bf16 ({native}) but bf16 is opt-in on CPUs; ask for bf16 to use it"
    )


def resolve(requested: str, device_type: Optional[str] = None) -> Precision:
    """:func:`choose` for this machine (``device_type`` defaults to cuda when a GPU is visible)."""
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    return choose(requested, device_type, gpu_bf16=gpu_supports_bf16(), cpu_flags=cpu_bf16_flags())


@contextlib.contextmanager
def frozen_base_in(model: torch.nn.Module, dtype: Optional[torch.dtype]) -> Iterator[int]:
    """Hold every frozen floating-point parameter of ``model`` (the base's linear weights and biases,
    embeddings, LayerNorms) in ``dtype`` while the block runs, then put the original fp32 tensors
    back (bit for bit).

    Under bf16 autocast every linear layer casts its fp32 weight to bf16 on every forward pass, and
    autocast caches only the casts of weights that train: for a frozen base that is a copy of the
    whole encoder per forward. Casting only the linear weights (the first version of this) still
    left fp32 embeddings and LayerNorms, whose fp32 outputs were cast to bf16 again for each
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
def inference_weights_in(model: torch.nn.Module, dtype: Optional[torch.dtype]) -> Iterator[int]:
    """:func:`frozen_base_in` for inference: every floating-point parameter, trained ones included,
    is held in ``dtype`` while the block runs (nothing trains there), then the originals go back.

    Without it bf16 ``predict`` cast every linear weight of the encoder from fp32 on every batch
    (autocast keeps no cast of a weight that does not train across forward passes): on roberta-base
    that is 85M weights read and written per batch of about 1,024 token positions.
    """
    with _parameters_in(model, dtype, trained_too=True) as cast:
        yield cast


@contextlib.contextmanager
def _parameters_in(model: torch.nn.Module, dtype: Optional[torch.dtype], trained_too: bool) -> Iterator[int]:
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
