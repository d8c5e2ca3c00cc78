"""This machine's processor: its model and flags, and whether it (or the GPU) multiplies bf16 natively."""

from __future__ import annotations

import functools
from typing import Any

import torch

# /proc/cpuinfo flags that mean the CPU multiplies bf16 natively (x86 "flags", aarch64 "Features").
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """This CPU from /proc/cpuinfo's first processor: ``model`` (model name), ``vendor``, ``family``,
    ``model_number``, ``stepping`` and ``flags`` (sorted; aarch64's "Features"); empty values where
    unreadable."""
    import platform

    info: dict[str, Any] = {"model": "", "vendor": "", "family": "", "model_number": "", "stepping": "", "flags": ()}
    keys = {
        "model name": "model",
        "vendor_id": "vendor",
        "cpu family": "family",
        "model": "model_number",
        "stepping": "stepping",
        "CPU implementer": "vendor",
        "CPU part": "model_number",
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    if info["flags"]:
                        break  # the first processor is enough
                    continue
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("flags", "Features"):
                    info["flags"] = tuple(sorted(set(value.split())))
                elif key in keys and not info[keys[key]]:
                    info[keys[key]] = value.strip()
    except OSError:
        pass
    info["model"] = info["model"] or platform.processor() or platform.machine()
    return info


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
