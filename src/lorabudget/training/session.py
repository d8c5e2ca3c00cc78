"""A training run in progress: the prepared model, optimizer, data and schedule, and the state a
checkpoint saves. :func:`lorabudget.training.loop.train` drives it step by step."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

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
from lorabudget.metrics import classification_metrics
from lorabudget.metrics_multilabel import thresholds_of
from lorabudget.model.build import keep_4bit_layout_for_training
from lorabudget.model.dropout import fast_attention_dropout, use_fast_dropout
from lorabudget.model.flops import FlopCounter
from lorabudget.model.precision import frozen_base_in
from lorabudget.rundir.layout import RunDir
from lorabudget.rundir.lifecycle import requested_run_dir
from lorabudget.rundir.weights import save_trained
from lorabudget.signals import Terminated, deferred_termination, stop_pending
from lorabudget.training.prefix_cache import PrefixInfo, PrefixRun, start_prefix
from lorabudget.training.prototypes import head_buffers, init_head, load_head_buffers
from lorabudget.training.setup import LossFn, PreparedData, make_optimizer, make_scheduler
from lorabudget.training.state import (
    BestKeeper,
    Checkpointer,
    DivergenceGuard,
    LossWindow,
    MetricsLog,
    TrainState,
    load_weights,
    rng_state,
    set_rng_state,
    trainable_weights,
)
from lorabudget.training.tracking import start_trackers


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
    prefix: Optional[PrefixRun] = None  # the frozen-prefix cache, when the loop runs the upper layers only
    prefix_info: PrefixInfo = field(default_factory=PrefixInfo)
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
        trackers = start_trackers(accelerator, cfg, RunDir(requested_run_dir(run_dir)).display_name)
        metrics = MetricsLog(RunDir(run_dir).metrics_path, accelerator.is_main_process, offset, trackers)
        run = cls(
            cfg=cfg,
            run_dir=run_dir,
            accelerator=accelerator,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            data=data,
            metrics=metrics,
            checkpoints=checkpoints,
            log=log,
            total_steps=total,
            loader=loader,
            sampler=sampler,
            num_epochs=math.ceil(total / steps_per_epoch),
            max_positions=position_cap(t.max_batch_positions, accelerator.device.type, bf16),
            best=BestKeeper(keep_last=cfg.data.train_on_validation),
        )
        if resumed:
            run.load_state_dict(resumed)
            state = run.state
            log(f"resuming {run_dir} at step {state.step} of {total} (epoch {state.epoch}, batch {state.micro})")
        run.prefix, run.prefix_info = start_prefix(cfg, accelerator, run.unwrapped, data, total, run.num_epochs, log)
        if not resumed:  # a resumed run reads its class vectors back from the checkpoint
            device = accelerator.device
            over = (lambda encoder: run.prefix.train_rows_forward(encoder, device)) if run.prefix else None
            run.state.head_init_s = init_head(cfg, run.unwrapped, data, accelerator, log, over) or 0.0
        return run

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs: the trainable weights (the frozen base is rebuilt from the model's
        own weights), the optimizer, the schedule, :class:`TrainState`, :class:`BestKeeper` (best weights
        included), the method's own training state (AdaLoRA's rank allocator), every process's RNG
        states and loss window, and the length of ``metrics.jsonl``. Every process must call it."""
        from accelerate.utils import gather_object

        per_process = gather_object([{"rng": rng_state(), "window": self.window.state_dict()}])
        return {
            "mixed_precision": self.accelerator.mixed_precision,  # a resume trains on in the same precision
            "threads": torch.get_num_threads(),  # and with as many threads (the same summation order)
            "trainable": trainable_weights(self.unwrapped),
            "head_buffers": head_buffers(self.unwrapped),  # prototype vectors: computed once, never again
            "method_state": registry.training_state(self.unwrapped, self.cfg.adapter.method),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "state": dataclasses.asdict(self.state),
            "best": self.best.state_dict(),
            "per_process": per_process,
            "metrics_offset": self.metrics.offset(),
        }

    def load_state_dict(self, payload: dict[str, Any]) -> None:
        load_weights(self.unwrapped, payload["trainable"])
        load_head_buffers(self.unwrapped, payload.get("head_buffers", {}))
        registry.restore_training_state(self.unwrapped, self.cfg.adapter.method, payload.get("method_state", {}))
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        for key, value in payload["state"].items():
            setattr(self.state, key, value)
        self.best.load_state_dict(payload["best"])
        mine = payload["per_process"][self.accelerator.process_index]
        self.window.load_state_dict(mine["window"])
        set_rng_state(mine["rng"])  # last: nothing above draws from it

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
            if self.prefix is not None:
                logits = self.prefix.train_logits(self.model, part)
            else:
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
        forward = self.prefix.validation_forward(self.model, self.accelerator.device) if self.prefix else None
        result = evaluate_during_training(self.model, self.data, self.cfg, self.accelerator, forward)
        improved = self.best.offer(step, result, self.unwrapped)
        multi = "micro_f1" in result
        self.metrics.write(
            type="eval",
            step=step,
            epoch=epoch_pos,
            accuracy=result["accuracy"],
            **({"micro_f1": result["micro_f1"]} if multi else {}),
            macro_f1=result["macro_f1"],
            loss=result["loss"],
            best=improved,
            elapsed_s=self.elapsed(),
        )
        head = f"micro F1 {result['micro_f1']:.4f}, subset accuracy" if multi else "accuracy"
        self.log(
            f"step {step}: validation {head} {result['accuracy']:.4f}, macro F1 "
            f"{result['macro_f1']:.4f}, loss {result['loss']:.4f}"
            + (" (rows it trains on)" if self.best.keep_last else " (best so far)" if improved else "")
        )
        if improved and self.accelerator.is_main_process:
            save_trained(self.unwrapped, RunDir(self.run_dir).adapter_dir)
            if multi:
                RunDir(self.run_dir).write_thresholds(thresholds_record(result))
        if self.best.patience_spent(t.early_stopping_patience):
            what = "micro F1" if multi else "accuracy"
            self.log(f"early stopping: no gain in validation {what} for {self.best.evals_without_gain} evaluations")
            self.state.done = True
        self.state.eval_seconds += time.perf_counter() - eval_start
        return result

    def checkpoint(self) -> None:
        self.check_finite()
        self.state.elapsed_s, self.start = self.elapsed(), time.perf_counter()
        payload = self.state_dict()
        if self.accelerator.is_main_process:
            self.checkpoints.save(payload)
        self.accelerator.wait_for_everyone()


def run_on_eval(on_eval, step: int, result: dict[str, Any]) -> Optional[TrainingStopped]:
    """Call the ``on_eval`` hook; a :class:`TrainingStopped` it raises is returned, not raised."""
    if on_eval is None:
        return None
    try:
        on_eval(step, result)
    except TrainingStopped as err:
        return err
    return None


def thresholds_record(result: dict[str, Any]) -> dict[str, Any]:
    """``thresholds.json`` of a multi-label validation result: each class's threshold, chosen on those rows."""
    return {"thresholds": thresholds_of(result), "chosen_on": "validation", "rows": result["n"]}


def evaluate_during_training(model, data: PreparedData, cfg: RunConfig, accelerator, forward=None) -> dict[str, Any]:
    """Validation metrics of the training-time model; ``forward(batch) -> logits``: the frozen-prefix
    cache's split forward, when the run uses it."""
    logits = predict_logits(
        model, data.validation_tokens, data.pad_id, cfg.training.eval_batch_size, accelerator, forward=forward
    )
    return classification_metrics(logits, data.validation.labels, cfg.class_names)
