"""Which numeric precision training and inference run in, and one line saying why.

GPUs: ``auto`` is bf16 where the GPU supports it, else fp32.

CPUs: ``auto`` is decided by measurement on the machine at hand. Having a native-bf16 flag is not
enough: on an Intel Xeon with AVX512-BF16 but no AMX, bf16 products ran at half the fp32 rate
(a MiniLM-shaped 2048x384->1536 linear: 143 vs 301 GFLOP/s) and 40 steps of the MiniLM main job
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
import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lorabudget.errors import LorabudgetError

BF16_MARGIN = 1.3
"""How much faster bf16 must measure than fp32 in the probe for ``auto`` to pick it on a CPU.

The probe times only the big products; a bf16 run also pays casts (the small fp32 LoRA weights and
their gradients, the loss) and runs its elementwise work at about fp32's speed, so a product-level
gain shrinks end to end (docs/benchmarks.md): on the Intel Xeon with AMX, products 2.5-6x faster
gave training 1.15-1.85x faster; on the Xeon without AMX, products at 0.48x gave a job at 0.73x.
If the products take a share ``f`` of an fp32 step and bf16 adds casts worth ``c`` of it, bf16
breaks even at a product speedup of 1 / (1 - c/f). The MiniLM main job ran its fp32 products at
43% of the fp32 matmul peak over the whole step (so f is about 0.45-0.65), and autocast's extra
casts took about 5% of a step before the frozen base was held in bf16 (fewer since): c of 0.05-0.1
puts break-even at 1.08-1.29x. 1.3x clears that, and the probe's noise on an idle machine (a few
per cent), at the cost of leaving a small bf16 gain unused."""

PROBE_VERSION = 1
"""Part of the cache key: raise it when the probe measures something else."""

PROBE_MAX_FLOPS = 8e9
"""Per pass (one precision, every product once): larger workloads are probed on fewer rows, so
that the probe stays well under a second (about 40 ms an fp32 training pass on MiniLM's shape)."""

PROBE_BUDGET_S = 0.2
"""Timed repetitions go on at least this long (and :data:`PROBE_MIN_REPEATS` times)..."""

PROBE_MAX_S = 0.4
"""...and up to this long while they are not :data:`PROBE_STABLE` (another process taking the cores
makes single passes several times slower), never more than :data:`PROBE_MAX_REPEATS` times."""

PROBE_MIN_REPEATS, PROBE_MAX_REPEATS = 2, 12

PROBE_BUSY_CORES = 0.5
"""A probe is contended when other processes kept more than this many cores busy during it, beyond
the cores the run leaves free (/proc/stat against this process's own CPU time). Under a busy loop
on the other core of a 2-core machine, the fp32 products ran at 23-52 instead of about 200 GFLOP/s
and the bf16 ratio read anywhere from 1.4x to 4.9x; a contended probe decides its own run but is
not cached."""

PROBE_STABLE = 1.15
"""A probe is stable when, in each precision, the second-best pass took at most this much longer
than the best; an unstable probe decides its own run but is not cached (the next run measures
again)."""

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


# --------------------------------------------------------------------------------------------
# The probe


@dataclass(frozen=True)
class Workload:
    """What the probe times: one encoder layer's linear products (query, key, value and attention
    output ``hidden -> hidden``, FFN ``hidden -> intermediate -> hidden``) on ``rows`` token positions;
    ``training``: forward and the input-gradient backward, else forward only."""

    hidden: int
    intermediate: int
    rows: int
    training: bool

    def products(self) -> list[tuple[int, int]]:
        h, i = self.hidden, self.intermediate
        return [(h, h)] * 4 + [(h, i), (i, h)]

    def flops(self) -> float:
        """Matmul FLOPs of one pass (the backward computes the input gradient only: the same again)."""
        forward = 2.0 * self.rows * sum(k * n for k, n in self.products())
        return forward * (2 if self.training else 1)

    def fitted(self, max_flops: float = PROBE_MAX_FLOPS) -> Workload:
        """The same shapes on fewer rows (at least 128) when one pass would exceed ``max_flops``."""
        if self.flops() <= max_flops:
            return self
        rows = max(128, int(self.rows * max_flops / self.flops()))
        return Workload(self.hidden, self.intermediate, rows, self.training)

    def describe(self) -> str:
        what = "forward + backward" if self.training else "forward"
        return f"hidden {self.hidden}, intermediate {self.intermediate}, {self.rows:,} positions, {what}"


MINILM_ROWS = 1024  # bf16 CPU training chunks and CPU inference batches are about 1,024 positions


def representative(training: bool) -> Workload:
    """MiniLM-L6's shape (hidden 384, intermediate 1,536) on 1,024 positions."""
    return Workload(384, 1536, MINILM_ROWS, training)


def workload_from_config(model_config: Any, rows: int, training: bool) -> Workload:
    """The probe's workload for a transformers config (BERT-style names, DistilBERT's too)."""
    hidden = getattr(model_config, "hidden_size", None) or getattr(model_config, "dim", None)
    if not hidden:
        return representative(training)
    intermediate = getattr(model_config, "intermediate_size", None) or getattr(model_config, "hidden_dim", None)
    return Workload(int(hidden), int(intermediate or 4 * hidden), max(1, int(rows)), training)


def workload_from_model(model: torch.nn.Module, rows: int, training: bool) -> Workload:
    """:func:`workload_from_config` for the first module of ``model`` that carries a config."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and (getattr(config, "hidden_size", None) or getattr(config, "dim", None)):
            return workload_from_config(config, rows, training)
    return representative(training)


@dataclass(frozen=True)
class Probe:
    """fp32 and bf16 time of one pass of ``workload`` (the best of the repetitions)."""

    workload: Workload
    threads: int
    fp32_s: float
    bf16_s: float
    repeats: int
    stable: bool = True
    busy_cores: float | None = None  # other processes' CPU use during the probe, in cores (None: unknown)
    cached: bool = False

    @property
    def contended(self) -> bool:
        """Other processes took the cores the probe ran on (:data:`PROBE_BUSY_CORES`)."""
        if self.busy_cores is None:
            return False
        free = max(0, _usable_cpus() - self.threads)
        return self.busy_cores > free + PROBE_BUSY_CORES

    @property
    def reliable(self) -> bool:
        """Worth caching: stable repetitions on cores no other process was using."""
        return self.stable and not self.contended

    @property
    def speedup(self) -> float:
        """fp32 time over bf16 time: above 1 where bf16 is faster."""
        return self.fp32_s / self.bf16_s

    def gflops(self, precision: str) -> float:
        return self.workload.flops() / (self.fp32_s if precision == "fp32" else self.bf16_s) / 1e9

    def describe(self) -> str:
        return (
            f"fp32 {self.gflops('fp32'):,.0f} GFLOP/s, bf16 {self.gflops('bf16'):,.0f} GFLOP/s: "
            f"bf16 {self.speedup:.2f}x ({self.workload.describe()}, {self.threads} threads)"
        )


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[int]:
    before = torch.get_num_threads()
    if n and n != before:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _pass(workload: Workload, dtype: torch.dtype) -> Callable[[], None]:
    """One pass of the workload's products in ``dtype``, computed the way a run computes them.

    bf16: weights and activations held in bf16 (a run holds the frozen base in bf16 and its residual
    stream is bf16: ``frozen_base_in``, ``inference_weights_in``), the products under CPU autocast.
    Training: the input needs a gradient (layers below train), the weight does not (frozen base).
    """
    gen = torch.Generator().manual_seed(0)
    rows = workload.rows
    tensors = []
    for k, n in workload.products():
        x = torch.randn(rows, k, generator=gen).to(dtype)
        w = (torch.randn(n, k, generator=gen) * k**-0.5).to(dtype)
        b = torch.zeros(n, dtype=dtype)
        grad = torch.randn(rows, n, generator=gen).to(dtype) if workload.training else None
        tensors.append((x.requires_grad_(workload.training), w, b, grad))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)

    def run() -> None:
        if workload.training:
            with autocast:
                for x, w, b, grad in tensors:
                    y = torch.nn.functional.linear(x, w, b)
                    torch.autograd.grad(y, x, grad)
        else:
            with torch.inference_mode(), autocast:
                for x, w, b, _ in tensors:
                    torch.nn.functional.linear(x, w, b)

    return run


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def _cpu_seconds() -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine since boot, this process's CPU seconds); None off Linux.
    Busy counts user, system, interrupts and steal (a hypervisor's other guests)."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            ticks = [int(v) for v in fh.readline().split()[1:9]]
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
    except (OSError, ValueError, ImportError):
        return None
    busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK"), usage.ru_utime + usage.ru_stime


def _stable(times: dict[str, list[float]]) -> bool:
    for values in times.values():
        ordered = sorted(values)
        if len(ordered) < 2 or ordered[1] > ordered[0] * PROBE_STABLE:
            return False
    return True


def probe(workload: Workload, threads: int | None = None, budget_s: float = PROBE_BUDGET_S) -> Probe:
    """Time one pass of ``workload`` in fp32 and in bf16 on ``threads`` threads (default: torch's
    current count), alternating the two, after one untimed pass of each (oneDNN builds its bf16
    kernels per shape on first use). The best pass of each precision counts; repetitions go on for
    ``budget_s``, and up to :data:`PROBE_MAX_S` while they disagree (:data:`PROBE_STABLE`). The
    workload is first fitted to :data:`PROBE_MAX_FLOPS`. On MiniLM's shape on a 2-core AMD EPYC
    (Zen 5): 0.25-0.35 s, 0.6-0.65 s as a fresh process's first torch work (torch's one-off start-up,
    which the run would pay anyway), up to 1.6 s while other processes held the cores.
    Never call it where bf16 is only emulated (minutes per pass)."""
    workload = workload.fitted()
    before, began_all = _cpu_seconds(), time.perf_counter()
    with _threads(threads) as used:
        passes = {"fp32": _pass(workload, torch.float32), "bf16": _pass(workload, torch.bfloat16)}
        for run in passes.values():
            run()  # untimed: first-use costs (thread pool, oneDNN's bf16 kernels for these shapes)
        times: dict[str, list[float]] = {"fp32": [], "bf16": []}
        start, repeats = time.perf_counter(), 0
        while repeats < PROBE_MAX_REPEATS:
            elapsed = time.perf_counter() - start
            if repeats >= PROBE_MIN_REPEATS and elapsed >= budget_s and (_stable(times) or elapsed >= PROBE_MAX_S):
                break
            for name in ("fp32", "bf16") if repeats % 2 == 0 else ("bf16", "fp32"):  # alternating: drift hits both
                began = time.perf_counter()
                passes[name]()
                times[name].append(time.perf_counter() - began)
            repeats += 1
    after, wall = _cpu_seconds(), time.perf_counter() - began_all
    busy = None
    if before is not None and after is not None and wall > 0:
        busy = max(0.0, (after[0] - before[0]) - (after[1] - before[1])) / wall
    return Probe(
        workload, used, min(times["fp32"]), min(times["bf16"]), repeats, stable=_stable(times), busy_cores=busy
    )


def probe_key(workload: Workload, threads: int) -> dict[str, Any]:
    """What a cached probe is valid for: the probe itself, this CPU (model, family, flags), torch's
    version, the thread count and the (fitted) shapes."""
    cpu = cpu_info()
    return {
        "probe_version": PROBE_VERSION,
        "cpu": cpu["model"],
        "cpu_id": f"{cpu['vendor']} family {cpu['family']} model {cpu['model_number']} stepping {cpu['stepping']}",
        "cpu_flags_sha256": hashlib.sha256(" ".join(cpu["flags"]).encode()).hexdigest(),
        "torch": torch.__version__,
        "threads": int(threads),
        "workload": asdict(workload.fitted()),
    }


def probe_cache_path(key: dict[str, Any], cache_dir: str | Path) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return Path(cache_dir) / "precision" / f"bf16-probe-{digest}.json"


def cached_probe(
    workload: Workload,
    threads: int | None = None,
    cache_dir: str | Path | None = None,
    measure: Callable[[Workload, int | None], Probe] | None = None,
) -> Probe:
    """:func:`probe`, read from ``CACHE/precision/`` when it was measured for the same key
    (:func:`probe_key`), else measured and written there (atomically). A cache file that is
    unreadable, does not parse or holds another key is measured again and replaced; a cache that
    cannot be written only costs the next run another probe. ``cache_dir`` defaults to the
    project's (``$LORABUDGET_CACHE`` or ``~/.cache/lorabudget``); ``measure`` replaces :func:`probe`
    (tests)."""
    from lorabudget.io import atomic_write_json, default_cache_dir

    threads = threads or torch.get_num_threads()
    key = probe_key(workload, threads)
    path = probe_cache_path(key, default_cache_dir(str(cache_dir) if cache_dir else None))
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        fp32_s, bf16_s = float(saved["fp32_s"]), float(saved["bf16_s"])
        if saved["key"] == key and fp32_s > 0 and bf16_s > 0 and math.isfinite(fp32_s + bf16_s):
            return Probe(workload.fitted(), threads, fp32_s, bf16_s, int(saved.get("repeats", 0)), cached=True)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    result = (measure or probe)(workload, threads)
    if not result.reliable:
        return result  # decides this run only: the next one measures again
    record = {
        "key": key,
        "fp32_s": result.fp32_s,
        "bf16_s": result.bf16_s,
        "repeats": result.repeats,
        "speedup": result.speedup,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    with contextlib.suppress(OSError):
        atomic_write_json(path, record)
    return result


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
    flags = cpu_bf16_flags() if device_type == "cpu" else ()
    speedup, note = None, ""
    if requested == "auto" and device_type == "cpu" and flags:
        shape = workload() if callable(workload) else workload or representative(training=False)
        try:
            result = cached_probe(shape, threads, cache_dir)
        except RuntimeError:  # a torch build without CPU bf16 kernels: auto stays fp32, with the reason
            result = None
        if result is not None:
            speedup, note = result.speedup, unreliable_note(result)
    return choose(
        requested, device_type, gpu_bf16=gpu_supports_bf16(), cpu_flags=flags, bf16_speedup=speedup, note=note
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
