"""The bf16 probe: the model's own linear-layer shapes timed in fp32 and bf16 on this CPU, cached per machine.

:mod:`lorabudget.model.precision` decides from its figures; see there for why a measurement.
"""

from __future__ import annotations

import contextlib
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

from lorabudget.model import cpu as hw

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
    cpu = hw.cpu_info()
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
