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

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from tqdm.auto import tqdm

from lorabudget.config import RunConfig
from lorabudget.data.batching import (
    BUCKET_MULTIPLE,
    INFERENCE_BUCKET_MULTIPLE,
    model_inputs,
    position_cap,
    split_rows,
    train_loader,
)
from lorabudget.errors import TrainingStopped
from lorabudget.inference.batched import predict_logits
from lorabudget.methods import registry
from lorabudget.metrics import classification_metrics, format_metrics
from lorabudget.model import budget as budget_mod
from lorabudget.model.build import build_model, keep_4bit_layout_for_training
from lorabudget.model.dropout import fast_attention_dropout, use_fast_dropout
from lorabudget.model.flops import FlopCounter
from lorabudget.model.flops import training_summary as training_flops
from lorabudget.model.precision import frozen_base_in
from lorabudget.rundir.layout import RunDir
from lorabudget.rundir.lifecycle import requested_run_dir
from lorabudget.rundir.weights import save_trained
from lorabudget.signals import Terminated, deferred_termination, stop_pending
from lorabudget.training.setup import (
    LossFn,
    PreparedData,
    budget_json,
    class_weights_for,
    cross_entropy_loss,
    label_distribution,
    make_accelerator,
    make_optimizer,
    make_scheduler,
    plan_or_refuse,
    prepare_data,
    seed_everything,
    weighted_cross_entropy_loss,
)
from lorabudget.training.state import (
    BestKeeper,
    Checkpointer,
    DivergenceGuard,
    LossWindow,
    MetricsLog,
    TrainState,
    finite_or_none,
    set_rng_state,
)
from lorabudget.training.tracking import start_trackers


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


def agree(accelerator, value: Any) -> Any:
    """The main process's ``value``, on every process."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


@dataclass
class Session:
    """What the loop's steps share: the prepared objects and the state that checkpoints save."""

    cfg: RunConfig
    run_dir: Path
    accelerator: Any
    model: Any  # prepared (possibly DDP-wrapped)
    optimizer: Any
    scheduler: Any
    data: PreparedData
    metrics: MetricsLog
    checkpoints: Checkpointer
    log: Callable[[str], None]
    total_steps: int
    loader: Any = None  # prepared: batches of the training rows
    sampler: Any = None  # the loader's batch sampler, which needs set_epoch each epoch
    num_epochs: int = 1
    max_positions: Optional[int] = None  # memory cap: wider batches run in row chunks
    state: TrainState = field(default_factory=TrainState)
    best: BestKeeper = field(default_factory=BestKeeper)
    window: LossWindow = None  # type: ignore[assignment] - set in __post_init__ (needs the device)
    guard: DivergenceGuard = None  # type: ignore[assignment]
    flop_sums: FlopCounter = field(default_factory=FlopCounter)
    start: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.window = LossWindow(self.accelerator.device)
        self.guard = DivergenceGuard(self.accelerator.device)
        self.unwrapped = self.accelerator.unwrap_model(self.model)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]

    @classmethod
    def start_loop(cls, cfg, run_dir, accelerator, model, data, checkpoints, log, resumed) -> "Session":
        """The loader, optimizer and schedule, prepared by Accelerate; a resumed run's state restored."""
        t = cfg.training
        bf16 = accelerator.mixed_precision == "bf16"
        if t.fast_dropout:
            use_fast_dropout(model)
        if cfg.model.quantization == "nf4":
            keep_4bit_layout_for_training(model)  # bitsandbytes' CPU eval layout cannot train
        # Bucket widths: bf16 matrix products (oneDNN) build a kernel per shape, so bf16 gets the coarse
        # ladder (multiples of 16); fp32 pays per padded position instead (multiples of 16 cost it 16% of
        # its speed; exact widths fragment the heap to 1.9 GB over a MiniLM run), so it gets steps of 8.
        multiple = BUCKET_MULTIPLE if bf16 else INFERENCE_BUCKET_MULTIPLE
        tokens, labels = data.train_tokens, data.train.labels
        loader = train_loader(
            tokens,
            labels,
            data.pad_id,
            t.batch_size,
            t.seed,
            t.length_grouping,
            t.num_workers,
            bucket_multiple=multiple,
        )
        optimizer = make_optimizer(model, cfg)
        sampler = loader.batch_sampler  # kept: prepare() wraps it, and it needs set_epoch each epoch
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        # The loader's own generator: its per-epoch seed draw leaves the global RNG (which a resume restores) alone.
        loader.generator = torch.Generator().manual_seed(t.seed)
        steps_per_epoch = math.ceil(len(loader) / t.gradient_accumulation)
        total = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
        scheduler = make_scheduler(optimizer, t.scheduler, int(t.warmup_ratio * total), total)
        offset = resumed["metrics_offset"] if resumed else None
        trackers = start_trackers(accelerator, cfg)
        metrics = MetricsLog(RunDir(run_dir).metrics_path, accelerator.is_main_process, offset, trackers)
        run = cls(
            cfg,
            run_dir,
            accelerator,
            model,
            optimizer,
            scheduler,
            data,
            metrics,
            checkpoints,
            log,
            total,
            loader,
            sampler,
            math.ceil(total / steps_per_epoch),
            position_cap(t.max_batch_positions, accelerator.device.type, bf16),
            best=BestKeeper(keep_last=cfg.data.train_on_validation),
        )
        if resumed:
            checkpoints.restore(resumed, model, optimizer, scheduler, run.state, run.window, run.best)
            state = run.state
            log(f"resuming {run_dir} at step {state.step} of {total} (epoch {state.epoch}, batch {state.micro})")
            set_rng_state(resumed["per_process"][accelerator.process_index]["rng"])  # last: nothing above draws from it
        return run

    def training_context(self) -> contextlib.ExitStack:
        """bf16: the frozen base cast once, not on every forward; on a CPU, fast attention dropout."""
        stack = contextlib.ExitStack()
        bf16 = self.accelerator.mixed_precision == "bf16"
        stack.enter_context(frozen_base_in(self.unwrapped, torch.bfloat16 if bf16 else None))
        if self.cfg.training.fast_dropout and self.accelerator.device.type == "cpu":  # attention probabilities too
            stack.enter_context(fast_attention_dropout(self.unwrapped))
        stack.enter_context(deferred_termination())  # SIGTERM/SIGHUP: stop at the next step boundary
        return stack

    def forward_backward(self, batch: dict[str, torch.Tensor], loss_fn: LossFn) -> None:
        """One batch's loss and gradients, accumulated (in row chunks under the memory cap)."""
        loss = torch.zeros((), device=self.accelerator.device)
        for part, share in split_rows(batch, self.max_positions):
            logits = self.model(**model_inputs(part)).logits
            part_loss = loss_fn(logits, part) * share
            self.accelerator.backward(part_loss / self.cfg.training.gradient_accumulation)
            loss += part_loss.detach()
        self.flop_sums.add(batch["input_ids"].shape[0], batch["input_ids"].shape[1])
        self.window.add(loss, batch)
        self.guard.add_loss(loss)
        self.state.positions_seen += batch["input_ids"].numel()

    def optimizer_step(self) -> None:
        t = self.cfg.training
        clip = t.max_grad_norm > 0
        grad_norm = self.accelerator.clip_grad_norm_(self.trainable, t.max_grad_norm) if clip else None
        self.optimizer.step()
        registry.after_optimizer_step(self.unwrapped, self.cfg.adapter.method, self.state.step)  # before zero_grad
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.guard.end_step(self.state.step, grad_norm)

    def after_step(self, epoch_pos: float, epoch_end: bool, progress, on_eval) -> Optional[TrainingStopped]:
        """Log, evaluate, checkpoint and call ``on_eval`` as the schedule says; what ``on_eval`` stopped."""
        t, state, last = self.cfg.training, self.state, self.state.step == self.total_steps
        if state.step % t.log_every == 0 or last:
            self.log_train(epoch_pos, progress)
        pause_start = time.perf_counter()
        evaluated = (state.step % t.eval_every == 0 if t.eval_every else epoch_end) or last
        result = self.evaluate(epoch_pos) if evaluated else None
        every = bool(t.checkpoint_every) and state.step % t.checkpoint_every == 0
        saved = (evaluated or every) and not last and not state.done
        if saved:
            self.checkpoint()
        stopped = None
        if evaluated:
            main = self.accelerator.is_main_process
            stopped = agree(self.accelerator, run_on_eval(on_eval, state.step, result) if main else None)
            state.done = state.done or stopped is not None
        signum = stop_pending()
        if signum is not None and not last and not state.done:
            if not saved:  # cheap: trainable weights and optimizer state only
                self.checkpoint()
            raise Terminated(signum, f"checkpoint at step {state.step} of {self.total_steps} saved")
        self.window.start += time.perf_counter() - pause_start  # logged throughput counts training time only
        return stopped

    def elapsed(self) -> float:
        """Wall time of all sessions of this run (a resumed run adds its earlier ones)."""
        return self.state.elapsed_s + time.perf_counter() - self.start

    def check_finite(self) -> None:
        kept = (
            f"the {'last evaluated' if self.best.keep_last else 'best'} finite adapter (step {self.best.step}) and the "
            f"last checkpoint are kept in {self.run_dir}"
            if self.best.metrics
            else "no evaluation had finished, so no adapter was saved"
        )
        self.guard.check(self.accelerator, kept)

    def log_train(self, epoch_pos: float, progress) -> None:
        self.check_finite()
        mean_loss, tokens, rows, seconds = self.window.close(self.accelerator)
        self.metrics.write(
            type="train",
            step=self.state.step,
            epoch=epoch_pos,
            loss=mean_loss,
            lr=self.scheduler.get_last_lr()[0],
            samples_per_s=rows / seconds,
            tokens_per_s=tokens / seconds,
            elapsed_s=self.elapsed(),
        )
        progress.set_postfix(loss=f"{mean_loss:.4f}", samples_s=f"{rows / seconds:.1f}")
        self.state.rows_seen += rows
        self.state.tokens_seen += tokens

    def evaluate(self, epoch_pos: float) -> dict[str, Any]:
        """Validate, keep the best adapter, decide early stopping."""
        self.check_finite()
        eval_start, step, t = time.perf_counter(), self.state.step, self.cfg.training
        result = evaluate_during_training(self.model, self.data, self.cfg, self.accelerator)
        improved = self.best.offer(step, result, self.unwrapped)
        self.metrics.write(
            type="eval",
            step=step,
            epoch=epoch_pos,
            accuracy=result["accuracy"],
            macro_f1=result["macro_f1"],
            loss=result["loss"],
            best=improved,
            elapsed_s=self.elapsed(),
        )
        self.log(
            f"step {step}: validation accuracy {result['accuracy']:.4f}, macro F1 "
            f"{result['macro_f1']:.4f}, loss {result['loss']:.4f}"
            + (" (rows it trains on)" if self.best.keep_last else " (best so far)" if improved else "")
        )
        if improved and self.accelerator.is_main_process:
            save_trained(self.unwrapped, RunDir(self.run_dir).adapter_dir)
        if self.best.patience_spent(t.early_stopping_patience):
            self.log(f"early stopping: no gain in validation accuracy for {self.best.evals_without_gain} evaluations")
            self.state.done = True
        self.state.eval_seconds += time.perf_counter() - eval_start
        return result

    def checkpoint(self) -> None:
        self.check_finite()
        self.state.elapsed_s, self.start = self.elapsed(), time.perf_counter()
        self.checkpoints.save(
            self.model, self.optimizer, self.scheduler, self.state, self.window, self.best, self.metrics.offset()
        )


def start_run(cfg: RunConfig, run_dir: Path, data: Optional[PreparedData], log, accelerator, resumed: bool):
    """Plan (refusing to start over budget), load data, build the model and check its live count;
    a new run's config, budget and tokenizer are written. Returns (model, data, live breakdown)."""
    planned = plan_or_refuse(cfg, log)
    log(
        budget_mod.format_breakdown(
            planned, cfg.budget.max_trainable_params, f"plan for {cfg.name}:", cfg.adapter.method
        )
    )
    if data is None:
        data = prepare_data(cfg, log)
    t = cfg.training
    seed_everything(t.seed)
    # The training length, which AdaLoRA's rank schedule needs when the model is built.
    batches = math.ceil(len(data.train) / (t.batch_size * accelerator.num_processes))
    planned_steps = t.max_steps or max(1, math.ceil(t.epochs * math.ceil(batches / t.gradient_accumulation)))
    model = build_model(cfg, weights=True, total_steps=planned_steps).model
    live = budget_mod.breakdown(model)
    if live.total != planned.total:  # would be a bug in planning: never train on an unchecked count
        raise RuntimeError(f"live trainable count {live.total:,} differs from the plan {planned.total:,}")
    if accelerator.is_main_process and not resumed:
        run_dir.mkdir(parents=True, exist_ok=True)
        files = RunDir(run_dir)
        files.write_config(cfg)
        files.write_budget(budget_json(live, cfg))
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
    """
    checkpoints = Checkpointer(run_dir, method=cfg.adapter.method)
    resumed = checkpoints.load() if resume else None  # before any weights load: a bad checkpoint fails fast
    # A resumed run keeps the precision it started in (`auto` measures, and may measure otherwise now).
    accelerator = make_accelerator(cfg, run_dir, log, started_in=resumed.get("mixed_precision") if resumed else None)
    checkpoints.accelerator = accelerator
    main = accelerator.is_main_process
    if not main:
        log = lambda *_: None  # noqa: E731 - only the main process talks and writes
    if cfg.training.threads:
        torch.set_num_threads(cfg.training.threads)
    model, data, live = start_run(cfg, run_dir, data, log, accelerator, resumed is not None)
    weights = class_weights_for(cfg, data.train.labels)
    if weights is not None and loss_fn is cross_entropy_loss:  # distillation weights its own gold term
        loss_fn = weighted_cross_entropy_loss(weights)
        log("class weights (balanced): " + ", ".join(f"{n} {w:.3f}" for n, w in zip(cfg.class_names, weights)))
    run = Session.start_loop(cfg, run_dir, accelerator, model, data, checkpoints, log, resumed)
    state, total, loader = run.state, run.total_steps, run.loader
    progress = tqdm(
        total=total, initial=state.step, desc=f"train {cfg.name}", disable=not main, unit="step", dynamic_ncols=True
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
    flops = (run.unwrapped, run.flop_sums)
    summary = finish(
        cfg, run_dir, data, live, state, run.best, run.elapsed(), accelerator, extra_summary, stopped, log, flops
    )
    if stopped is not None:
        stopped.summary = summary
        raise stopped
    return summary


def run_on_eval(on_eval, step: int, result: dict[str, Any]) -> Optional[TrainingStopped]:
    """Call the ``on_eval`` hook; a :class:`TrainingStopped` it raises is returned, not raised."""
    if on_eval is None:
        return None
    try:
        on_eval(step, result)
    except TrainingStopped as err:
        return err
    return None


def finish(
    cfg, run_dir, data, live, state, best, train_time, accelerator, extra_summary, stopped, log, flops=None
) -> dict[str, Any]:
    """Write eval.json and summary.json of a run whose best weights are in place; drop its checkpoint."""
    main = accelerator.is_main_process
    eval_seconds, rows_seen, tokens_seen, positions_seen = (
        state.eval_seconds,
        state.rows_seen,
        state.tokens_seen,
        state.positions_seen,
    )
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
        "train_rows": len(data.train),
        "validation_rows": len(data.validation),
        "validation_accuracy": best.accuracy,
        "validation_macro_f1": best.metrics["macro_f1"],
        # True: the validation rows were trained on too, so the two figures above are no estimate.
        "validation_trained_on": cfg.data.train_on_validation,
        "train_time_s": train_time,  # wall time of the loop, evaluations and checkpoint saves included
        "eval_time_s": eval_seconds,
        # Throughput of the training steps alone (evaluation time taken out).
        "samples_per_s": rows_seen / (train_time - eval_seconds) if train_time > eval_seconds else None,
        "tokens_per_s": tokens_seen / (train_time - eval_seconds)
        if tokens_seen and train_time > eval_seconds
        else None,
        "padded_fraction": 1 - tokens_seen / (positions_seen * accelerator.num_processes) if positions_seen else None,
        "processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
        # FLOPs of the steps this process ran (after a resume: the resumed part only).
        **(
            training_flops(
                flops[0],
                flops[1],
                tokens_seen,
                data.train_tokens.lengths,
                train_time - eval_seconds,
                accelerator.mixed_precision,
                accelerator.device,
                accelerator.num_processes,
            )
            if flops
            else {}
        ),
        "class_names": list(cfg.class_names),
        "train_label_distribution": label_distribution(data.train.labels, cfg.num_labels),
        **(extra_summary or {}),
    }
    if stopped is not None:
        summary["stopped_early"] = str(stopped) or type(stopped).__name__
    if main:
        files = RunDir(run_dir)
        summary["adapter_sha256"] = files.adapter_checksums()
        trained_on = ", trained on" if cfg.data.train_on_validation else ""
        files.write_eval(
            best.metrics,
            f"validation ({cfg.data.validation or 'split of ' + cfg.data.train}{trained_on})",
            "validation",
        )
        files.write_summary(finite_or_none(summary))
        Checkpointer(run_dir).remove()  # a finished run has nothing to resume
        log(format_metrics(best.metrics))
        kept = (
            f"last weights kept (validation accuracy {best.accuracy:.4f} on {best.metrics['n']:,} rows it trained on: "
            f"no estimate)"
            if cfg.data.train_on_validation
            else f"best validation accuracy {best.accuracy:.4f} (95% CI {best.metrics['accuracy_ci95'][0]:.4f}–"
            f"{best.metrics['accuracy_ci95'][1]:.4f} on {best.metrics['n']:,} rows)"
        )
        log(
            f"{kept} at step {best.step}; trained {state.step} steps in {train_time:.1f}s; "
            f"run directory: {requested_run_dir(run_dir)}"  # not the hidden --overwrite sibling
        )
    accelerator.wait_for_everyone()
    return summary


def evaluate_during_training(model, data: PreparedData, cfg: RunConfig, accelerator) -> dict[str, Any]:
    logits = predict_logits(model, data.validation_tokens, data.pad_id, cfg.training.eval_batch_size, accelerator)
    return classification_metrics(logits, data.validation.labels, cfg.class_names)
