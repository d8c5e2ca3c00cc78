"""The training loop, on Hugging Face Accelerate: :func:`train` reads top to bottom.

1. Plan the model on the meta device and refuse to start over budget (``start_run``).
2. Load data, split validation off, tokenize (cached).
3. Build the real model and check the live trainable count equals the plan.
4. AdamW + warm-up/decay; length-grouped batches (``Session.start_loop``); per batch forward and backward
   (``Session.forward_backward``), per optimizer step the update (``Session.optimizer_step``), then logging,
   evaluation every N steps and at each epoch end, the checkpoint and early stopping (``Session.after_step``);
   the best adapter by validation accuracy is kept.
5. Restore the best weights, write the adapter, eval.json and summary.json into the run directory (``finish``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from tqdm.auto import tqdm

from lorabudget.config import RunConfig
from lorabudget.errors import TrainingStopped
from lorabudget.metrics import format_metrics
from lorabudget.model import budget as budget_mod
from lorabudget.model.build import build_model
from lorabudget.model.flops import training_summary as training_flops
from lorabudget.rundir.layout import RunDir
from lorabudget.rundir.lifecycle import requested_run_dir
from lorabudget.training.costs import announce_estimate, current_rss, peak_rss
from lorabudget.training.prefix_cache import refuse_prefix_cache, warm_for
from lorabudget.training.session import Session
from lorabudget.training.setup import (
    LossFn,
    PreparedData,
    budget_json,
    cross_entropy_loss,
    label_distribution,
    make_accelerator,
    plan_or_refuse,
    prepare_data,
    record_rows,
    seed_everything,
    training_loss,
)
from lorabudget.training.state import (
    Checkpointer,
    finite_or_none,
)


def epoch_batches(loader, sampler, epoch: int, skip: int, accelerator):
    """``(micro index, batch)`` of one epoch, the first ``skip`` batches left out (a resumed epoch).

    The batch order is a pure function of seed and epoch, so skipping reproduces the interrupted
    epoch's remaining batches exactly.
    """
    sampler.set_epoch(epoch)
    loader.set_epoch(epoch)  # the prepared loader re-sets its sampler's epoch from its own counter
    if skip:
        loader = accelerator.skip_first_batches(loader, skip)
    return enumerate(loader, start=skip)


def start_run(cfg: RunConfig, run_dir: Path, data: Optional[PreparedData], log, accelerator, resumed: bool):
    """Plan (refusing to start over budget), load data, build the model and check its live count;
    a new run's config, budget and tokenizer are written. Returns (model, data, live breakdown)."""
    planned = plan_or_refuse(cfg, log)
    if data is None:  # before the plan is printed: a problem with the data is the first thing said
        data = prepare_data(cfg, log)
    log(
        budget_mod.format_breakdown(
            planned, cfg.budget.max_trainable_params, f"plan for {cfg.name}:", cfg.adapter.method
        )
    )
    t = cfg.training
    seed_everything(t.seed)
    # The training length, which AdaLoRA's rank schedule needs when the model is built.
    batches = math.ceil(len(data.train) / (t.batch_size * accelerator.num_processes))
    planned_steps = t.max_steps or max(1, math.ceil(t.epochs * math.ceil(batches / t.gradient_accumulation)))
    model = build_model(cfg, weights=True, total_steps=planned_steps).model
    live = budget_mod.breakdown(model)
    if live.total != planned.total:  # would be a bug in planning: never train on an unchecked count
        raise RuntimeError(f"live trainable count {live.total:,} differs from the plan {planned.total:,}")
    refuse_prefix_cache(cfg, model)  # `true` where it cannot work: before the run directory is made
    if accelerator.is_main_process and not resumed:
        run_dir.mkdir(parents=True, exist_ok=True)
        files = RunDir(run_dir)
        files.write_config(cfg)
        files.write_budget(budget_json(live, cfg))
        record_rows(run_dir, data)
        data.tokenizer.save_pretrained(str(files.tokenizer_dir))
    accelerator.wait_for_everyone()
    return model, data, live


def train(
    cfg: RunConfig,
    run_dir: Path,
    loss_fn: LossFn = cross_entropy_loss,
    data: Optional[PreparedData] = None,
    log: Callable[[str], None] = print,
    extra_summary: Optional[dict[str, Any]] = None,
    on_eval: Optional[Callable[[int, dict[str, Any]], None]] = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir`` and return the run summary (also written to summary.json).

    ``resume``: continue from ``run_dir/checkpoint`` exactly where it was written. ``on_eval(step,
    result)`` is called on the main process after every validation evaluation (and its checkpoint);
    raising :class:`TrainingStopped` there ends the run early: the best checkpoint is written out as
    for a finished run (summary field ``stopped_early``), then the exception is raised again with its
    ``summary`` set. A non-finite loss or gradient norm raises :class:`TrainingDiverged`, keeping the
    best finite adapter and the last finite checkpoint.

    ``training.threads`` holds for the run only: the caller's torch thread count is restored on return.
    """
    threads = torch.get_num_threads()
    try:
        return _train(cfg, run_dir, loss_fn, data, log, extra_summary, on_eval, resume)
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def use_threads(cfg: RunConfig, resumed: Optional[dict[str, Any]], log: Callable[[str], None]) -> None:
    """``training.threads``; a resumed run keeps the thread count it started with unless
    ``training.threads`` now asks for another: sums split over another number of threads round
    otherwise, and the run would not end bit for bit as an uninterrupted one."""
    started, asked = (resumed or {}).get("threads"), cfg.training.threads
    if started and asked and asked != started:
        log(
            f"resuming with {asked} torch thread(s) (training.threads) where the run started with {started}: "
            "its weights may differ from an uninterrupted run's in the last bits"
        )
    elif started:
        if started != torch.get_num_threads():
            log(
                f"resuming with {started} torch thread(s), as the run started ({torch.get_num_threads()} here "
                "otherwise), so it ends as it would have"
            )
        asked = started
    if asked:
        torch.set_num_threads(asked)


def _train(
    cfg: RunConfig,
    run_dir: Path,
    loss_fn: LossFn,
    data: Optional[PreparedData],
    log: Callable[[str], None],
    extra_summary: Optional[dict[str, Any]],
    on_eval: Optional[Callable[[int, dict[str, Any]], None]],
    resume: bool,
) -> dict[str, Any]:
    checkpoints = Checkpointer(run_dir)
    resumed = checkpoints.load() if resume else None  # before any weights load: a bad checkpoint fails fast
    # A resumed run keeps the precision it started in (`auto` measures, and may measure otherwise now).
    accelerator = make_accelerator(cfg, run_dir, log, started_in=resumed.get("mixed_precision") if resumed else None)
    main = accelerator.is_main_process
    if not main:
        log = lambda *_: None  # noqa: E731 - only the main process talks and writes
    use_threads(cfg, resumed, log)
    runtime = current_rss()  # before data and weights: the estimate counts those itself
    model, data, live = start_run(cfg, run_dir, data, log, accelerator, resumed is not None)
    if main:  # the estimate beside the measured figures in summary.json
        precision = "bf16" if accelerator.mixed_precision == "bf16" else "fp32"
        warm = warm_for(cfg, accelerator, model, data)
        estimate = announce_estimate(cfg, data, log, precision, runtime, warm_cache=warm)
        extra_summary = {**(extra_summary or {}), "estimate": estimate}
    loss_fn = training_loss(cfg, loss_fn, data.train.labels, log)  # distillation weights its own gold term
    run = Session.start_loop(cfg, run_dir, accelerator, model, data, checkpoints, log, resumed)
    state, total, loader = run.state, run.total_steps, run.loader
    progress = tqdm(
        total=total,
        initial=state.step,
        desc=f"train {RunDir(requested_run_dir(run_dir)).display_name}",
        disable=not main,
        unit="step",
        dynamic_ncols=True,
    )
    stopped: Optional[TrainingStopped] = None
    run.start = time.perf_counter()
    run.model.train()
    try:
        with run.training_context():
            for epoch in range(state.epoch, run.num_epochs):
                if state.done or state.step >= total:
                    break
                for micro, batch in epoch_batches(loader, run.sampler, epoch, state.micro, accelerator):
                    run.forward_backward(batch, loss_fn)
                    epoch_end = micro + 1 == len(loader)
                    if (micro + 1) % cfg.training.gradient_accumulation and not epoch_end:
                        continue  # gradients accumulate over several batches
                    run.optimizer_step()
                    state.epoch, state.micro = (epoch, micro + 1) if not epoch_end else (epoch + 1, 0)
                    progress.update(1)
                    epoch_pos = round(epoch + (micro + 1) / len(loader), 4)
                    stopped = run.after_step(epoch_pos, epoch_end, progress, on_eval) or stopped
                    if state.done or state.step >= total:
                        break
    finally:
        progress.close()
        run.metrics.close()
    run.check_finite()
    run.best.restore_into(run.unwrapped)  # what the caller gets matches the saved adapter
    summary = finish(run, live, extra_summary, stopped)
    if stopped is not None:
        stopped.summary = summary
        raise stopped
    return summary


def run_summary(run: Session, live, extra_summary: Optional[dict[str, Any]]) -> dict[str, Any]:
    """summary.json's figures of a run whose loop has ended."""
    cfg, data, state, best, accelerator = run.cfg, run.data, run.state, run.best, run.accelerator
    train_time = run.elapsed()
    train_only = train_time - state.eval_seconds  # throughput counts the training steps alone
    summary = {
        "name": cfg.name,
        "method": cfg.adapter.method,
        "quantization": cfg.model.quantization,
        "trainable_params": live.total,
        "head_params": live.head,
        "adapter_params": live.adapter_total,
        "budget": cfg.budget.max_trainable_params,
        "best_step": best.step,
        "steps": state.step,
        "train_rows": train_rows(data),
        "validation_rows": len(data.validation),
        "validation_accuracy": best.metrics["accuracy"],
        **({"validation_micro_f1": best.metrics["micro_f1"]} if "micro_f1" in best.metrics else {}),
        "validation_macro_f1": best.metrics["macro_f1"],
        # True: the validation rows were trained on too, so the two figures above are no estimate.
        "validation_trained_on": cfg.data.train_on_validation,
        "train_time_s": train_time,  # wall time of the loop, evaluations and checkpoint saves included
        "peak_rss_bytes": peak_rss(),  # this process's peak resident memory so far (getrusage)
        "eval_time_s": state.eval_seconds,
        "samples_per_s": state.rows_seen / train_only if train_only > 0 else None,
        "tokens_per_s": state.tokens_seen / train_only if state.tokens_seen and train_only > 0 else None,
        "padded_fraction": 1 - state.tokens_seen / (state.positions_seen * accelerator.num_processes)
        if state.positions_seen
        else None,
        "processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
        "frozen_prefix": run.prefix_info.summary(),
        "head_init_s": state.head_init_s,  # the head's class vectors, computed before the loop's clock starts
        # FLOPs of the steps this process ran (after a resume: the resumed part only).
        **training_flops(
            run.unwrapped,
            run.flop_sums,
            state.tokens_seen,
            data.train_tokens.lengths,
            train_only,
            accelerator.mixed_precision,
            accelerator.device,
            accelerator.num_processes,
            cached_layers=run.prefix.depth if run.prefix is not None else 0,
        ),
        "class_names": list(cfg.class_names),
        "train_label_distribution": label_distribution(data.train.labels, cfg.num_labels),
        "long_text": data.long_text,  # rows longer than max_length: tokens cut, or windows trained on
    }
    return {**summary, **(extra_summary or {})}


def train_rows(data: PreparedData) -> int:
    """Training rows (texts), not the windows ``data.long_text: chunks`` trains on."""
    windowed = data.long_text is not None and data.long_text["mode"] == "chunks"
    return data.long_text["train"]["rows"] if windowed else len(data.train)


def finish(run: Session, live, extra_summary: Optional[dict[str, Any]], stopped) -> dict[str, Any]:
    """Write eval.json and summary.json of a run whose best weights are in place; drop its checkpoint."""
    cfg, best = run.cfg, run.best
    summary = run_summary(run, live, extra_summary)
    if stopped is not None:
        summary["stopped_early"] = str(stopped) or type(stopped).__name__
    if run.accelerator.is_main_process:
        files = RunDir(run.run_dir)
        summary["adapter_sha256"] = files.adapter_checksums()
        trained_on = ", trained on" if cfg.data.train_on_validation else ""
        files.write_eval(
            best.metrics,
            f"validation ({cfg.data.validation or 'split of ' + cfg.data.train}{trained_on})",
            "validation",
        )
        files.write_summary(finite_or_none(summary))
        run.checkpoints.remove()  # a finished run has nothing to resume
        run.log(format_metrics(best.metrics))
        key = best.metrics.get("primary_metric", "accuracy")
        what, ci = key.replace("_f1", " F1"), best.metrics[f"{key}_ci95"]
        kept = (
            f"last weights kept (validation {what} {best.accuracy:.4f} on {best.metrics['n']:,} rows it trained on: "
            f"no estimate)"
            if cfg.data.train_on_validation
            else f"best validation {what} {best.accuracy:.4f} (95% CI {ci[0]:.4f}–{ci[1]:.4f} on "
            f"{best.metrics['n']:,} rows)"
        )
        run.log(
            f"{kept} at step {best.step}; trained {run.state.step} steps in {summary['train_time_s']:.1f}s; "
            f"run directory: {requested_run_dir(run.run_dir)}"  # not the hidden --overwrite sibling
        )
    run.accelerator.wait_for_everyone()
    return summary
