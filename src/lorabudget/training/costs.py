"""The cost estimate of a configured run on its prepared data: what ``plan --data`` prints and what
``train`` prints at its start and records in summary.json beside the measured figures.

The pure parts (work, time, memory formulas) are :mod:`lorabudget.model.estimate`'s; the rates
are measured on one layer of the configured model (:mod:`lorabudget.model.layerprobe`). This module
only reads the config the way the training loop does: precision (``auto`` resolved as training
resolves it), bucket ladder, position cap, step count, validation passes, and whether the
frozen-prefix cache is used. One process is assumed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch

from lorabudget.config import RunConfig
from lorabudget.data.batching import BUCKET_MULTIPLE, INFERENCE_BUCKET_MULTIPLE, position_cap
from lorabudget.inference.batched import max_tokens_per_batch
from lorabudget.model import estimate as est
from lorabudget.training.setup import PreparedData


@dataclass(frozen=True)
class RunEstimate:
    time: est.TimeEstimate
    memory: dict[str, int]
    rates: est.Throughput
    cached_layers: int  # layers below this come from the frozen-prefix cache (0: not used)
    cache_note: str

    @property
    def seconds(self) -> float:
        return self.time.seconds

    @property
    def epoch_seconds(self) -> float:
        return self.time.epoch_seconds

    @property
    def peak_bytes(self) -> int:
        return self.memory["total"]

    @property
    def basis(self) -> str:
        return (
            f"FLOP model of this configuration on the data's padded batches ({est.format_flops(self.time.flops)} "
            f"of training), at the rates of {self.rates.basis}; {self.cache_note}; not counted: optimizer, loss, "
            "embeddings, data loading, per-step Python overhead, first use of each new shape"
        )

    def lines(self) -> list[str]:
        t = self.time
        extra = (
            f", {est.format_seconds(t.cache_fill_seconds)} of it filling the prefix cache"
            if t.cache_fill_seconds
            else ""
        ) + (
            f", {est.format_seconds(t.head_init_seconds)} computing the head's class vectors"
            if t.head_init_seconds
            else ""
        )
        return [
            f"estimated training time: {est.format_seconds(t.seconds)} ({est.format_seconds(t.epoch_seconds)} per "
            f"epoch × {t.epochs:.3g}, {est.format_seconds(t.eval_seconds)} of it validation passes{extra}; "
            f"{self.rates.precision}, {self.cache_note})",
            f"estimated peak memory: {est.format_bytes(self.peak_bytes)} (weights "
            f"{est.format_bytes(self.memory['frozen_weights'] + self.memory['trainable'])}, activations "
            f"{est.format_bytes(self.memory['activations'])}, data {est.format_bytes(self.memory['tokens'])}, "
            f"runtime {est.format_bytes(self.memory['runtime'])})",
        ]

    def record(self) -> dict[str, Any]:
        """summary.json's ``estimate``."""
        return {
            "train_seconds": self.time.seconds,
            "head_init_seconds": self.time.head_init_seconds,
            "epoch_seconds": self.time.epoch_seconds,
            "peak_bytes": self.peak_bytes,
            "cached_layers": self.cached_layers,
            "basis": self.basis,
        }


def current_rss() -> int:
    """Resident bytes of this process now (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_rss() -> Optional[int]:
    """This process's peak resident bytes so far (``getrusage``'s ``ru_maxrss``: kB on Linux)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on a POSIX system
        return None
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def schedule(cfg: RunConfig, train_rows: int) -> tuple[int, int, int]:
    """(training micro-batches, optimizer steps, validation passes) of a single-process run."""
    t = cfg.training
    batches = max(1, math.ceil(train_rows / t.batch_size))
    steps_per_epoch = math.ceil(batches / t.gradient_accumulation)
    total = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
    full, rest = divmod(total, steps_per_epoch)
    micro = full * batches + min(rest * t.gradient_accumulation, batches)
    if t.eval_every:
        passes = total // t.eval_every + (1 if total % t.eval_every else 0)
    else:
        passes = full + (1 if rest else 0)
    return micro, total, passes


def cached_layers_used(setting: Any, depth: int, passes: int, warm: bool) -> tuple[int, str]:
    """How many bottom layers the frozen-prefix cache serves, and why (``training.cache_frozen_layers``);
    ``passes``: the most passes over the training or the validation rows (the rule training's ``auto`` follows)."""
    if depth <= 0:
        return 0, "no frozen prefix to cache"
    if setting is False:
        return 0, f"frozen-prefix cache off (layers 0-{depth - 1} are frozen)"
    if setting is True or warm or passes > 1:
        state = "warm" if warm else "cold: filled first"
        return depth, f"layers 0-{depth - 1} from the frozen-prefix cache ({state})"
    return 0, f"frozen-prefix cache not used: one pass over the rows (layers 0-{depth - 1} are frozen)"


def estimate_run(
    cfg: RunConfig,
    data: PreparedData,
    precision: Optional[str] = None,
    rates: Optional[est.Throughput] = None,
    runtime_bytes: Optional[int] = None,
    warm_cache: bool = False,
    measure: bool = True,
) -> RunEstimate:
    """The estimate for ``cfg`` trained on ``data`` on this machine's CPU. ``precision`` (fp32 or bf16)
    defaults to what training resolves; ``rates`` to the cached layer probe; ``runtime_bytes`` to this
    process's resident memory now. Raises ``LorabudgetError`` for encoders the FLOP model cannot read."""
    from lorabudget.errors import LorabudgetError
    from lorabudget.model.build import build_model
    from lorabudget.model.flops import encoder_shape
    from lorabudget.training.prefix_cache import passes, unusable
    from lorabudget.training.prototypes import reads_training_rows

    if torch.cuda.is_available() and rates is None:
        raise LorabudgetError("the time estimate is measured for CPU runs; this machine trains on its GPU")
    t = cfg.training
    precision = precision or resolved_precision(cfg)
    bf16 = precision == "bf16"
    multiple = BUCKET_MULTIPLE if bf16 else INFERENCE_BUCKET_MULTIPLE
    cap = position_cap(t.max_batch_positions, "cpu", bf16)
    model = build_model(cfg, weights=False).model
    shape = encoder_shape(model)
    micro, total, evaluations = schedule(cfg, len(data.train_tokens))
    eval_tokens = max_tokens_per_batch("cpu", t.eval_batch_size)
    init_pass = reads_training_rows(cfg)  # the head's class vectors from the training rows, before training
    work = est.run_workload(
        data.train_tokens.lengths,
        data.validation_tokens.lengths,
        t.batch_size,
        t.seed,
        micro,
        evaluations,
        t.eval_batch_size,
        eval_tokens,
        t.length_grouping,
        multiple,
        head_init=init_pass,
    )
    depth, why_not = unusable(cfg, model)  # the cache's own rules: the same depth, the same refusals
    most = max(passes(cfg, total, len(work.epochs)))  # over the training or the validation rows, as training counts
    k, note = cached_layers_used(t.cache_frozen_layers, 0 if why_not else depth, most, warm_cache)
    if rates is None:
        rates = measured_rates(cfg, model, shape, work, cap, precision, measure=measure)
    timing = est.estimate_time(shape, work, rates, cached_layers=k, warm=warm_cache)
    memory = est.peak_memory(memory_inputs(cfg, model, shape, data, cap, multiple, bf16, k, runtime_bytes))
    return RunEstimate(timing, memory, rates, k, note)


def resolved_precision(cfg: RunConfig) -> str:
    """The precision a CPU training run of ``cfg`` resolves to (``auto`` measured as training does)."""
    from lorabudget.io import default_cache_dir
    from lorabudget.model.precision import resolve
    from lorabudget.training.setup import training_workload

    threads = cfg.training.threads or torch.get_num_threads()
    chosen = resolve(
        cfg.training.mixed_precision,
        "cpu",
        workload=lambda: training_workload(cfg),
        threads=threads,
        cache_dir=default_cache_dir(cfg.data.cache_dir),
    )
    return "bf16" if chosen.name == "bf16" else "fp32"


def _not_cached(*_args, **_kwargs):
    from lorabudget.errors import LorabudgetError

    raise LorabudgetError(
        "this machine's layer timing for this model is not cached yet (`lorabudget plan CONFIG --data FILE` "
        "measures it; a training process never times a layer itself, so its results cannot depend on it)"
    )


def measured_rates(
    cfg: RunConfig, model, shape, work: est.Workload, cap: Optional[int], precision: str, measure: bool = True
):
    """The layer probe at the run's typical chunk: the token-weighted mean padded width of the
    training batches, as many rows of it as the position cap holds (at most a batch). ``model``: the
    run's meta-device model; a probe gives one of its layers weights in place, which changes none of the
    counts read from it afterwards. ``measure=False``: only a cached timing (a run's start), else
    :class:`LorabudgetError`."""
    from lorabudget.io import default_cache_dir
    from lorabudget.model.layerprobe import cached_layer_probe

    first = work.epochs[0] if work.epochs else est.Sums(1.0, 64.0, 1.0)
    width = max(8, int(round(first.positions_sq / first.positions / 8)) * 8) if first.positions else 64
    rows = max(1, min(cfg.training.batch_size, (cap // width) if cap else cfg.training.batch_size))
    timing = cached_layer_probe(
        model,
        shape,
        rows,
        width,
        precision,
        threads=cfg.training.threads or torch.get_num_threads(),
        cache_dir=default_cache_dir(cfg.data.cache_dir),
        fast_dropout=cfg.training.fast_dropout,
        measure=None if measure else _not_cached,
    )
    return timing.throughput()


def memory_inputs(cfg, model, shape, data: PreparedData, cap, multiple, bf16, k, runtime_bytes) -> est.MemoryInputs:
    from lorabudget.model.flops import layer_coefficients

    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    frozen = sum(p.numel() for p in params if not p.requires_grad)
    positions, width = est.largest_chunk(data.train_tokens.lengths, cfg.training.batch_size, cap, multiple)
    config = getattr(model, "config", None)
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_heads", 0) or 1)
    backward_layers = sum(1 for _, b in layer_coefficients(shape) if b.per_position or b.per_position_sq)
    tokens = int(data.train_tokens.offsets[-1]) + int(data.validation_tokens.offsets[-1])
    rows = len(data.train_tokens) + len(data.validation_tokens)
    return est.MemoryInputs(
        frozen_params=frozen,
        trainable_params=trainable,
        hidden=shape.hidden,
        intermediate=shape.layers[0].sites["intermediate"].n_out if shape.layers else 0,
        heads=heads,
        backward_layers=backward_layers,
        bf16=bf16,
        chunk_positions=positions,
        chunk_width=width,
        tokens=tokens,
        rows=rows,
        cache_tokens=tokens if k else 0,
        runtime_bytes=current_rss() if runtime_bytes is None else runtime_bytes,
    )


def announce_estimate(
    cfg: RunConfig,
    data: PreparedData,
    log,
    precision: str,
    runtime_bytes: Optional[int] = None,
    warm_cache: bool = False,
) -> Optional[dict[str, Any]]:
    """Log the estimate at a run's start (two lines) and return summary.json's ``estimate``; an
    estimate that cannot be made is one line saying why, never an error. ``warm_cache``: the run's
    frozen-prefix states are on disk already, so no fill is counted."""
    try:
        with torch.random.fork_rng(devices=[]):  # the run's random draws are the same with or without it
            estimate = estimate_run(
                cfg, data, precision=precision, runtime_bytes=runtime_bytes, warm_cache=warm_cache, measure=False
            )
    except Exception as err:  # noqa: BLE001 - an estimate never stops a run
        log(f"no time estimate: {err}")
        return None
    for line in estimate.lines():
        log(line)
    return estimate.record()
