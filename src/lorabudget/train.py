"""The training loop, on Hugging Face Accelerate: read it top to bottom.

1. Plan the model on the meta device and refuse to start over budget.
2. Load data, split validation off, tokenize (cached).
3. Build the real model and check the live trainable count equals the plan.
4. AdamW + warm-up/decay; length-grouped batches; evaluate every N steps and at each epoch end;
   keep the best adapter by validation accuracy; optional early stopping.
5. Restore the best weights, write the adapter, eval.json and summary.json into the run directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import adapters
from . import budget as budget_mod
from .batching import (
    BUCKET_MULTIPLE, INFERENCE_BUCKET_MULTIPLE, TokenizedTexts, default_cache_dir, position_cap, split_rows, tokenize,
    train_loader,
)
from .config import RunConfig, save_config
from .data import TextData, load_labelled, split_validation
from .errors import LorabudgetError, TrainingDiverged, TrainingStopped
from .dropout import fast_attention_dropout, use_fast_dropout
from .flops import FlopCounter, training_summary as training_flops
from .inference import predict_logits
from .io import atomic_dir, atomic_write_json
from .metrics import classification_metrics, format_metrics
from .modeling import build_model, keep_4bit_layout_for_training, load_tokenizer, save_trained
from .precision import frozen_base_in
from .rundir import requested_run_dir
from .tracking import accelerator_kwargs, start_trackers

# A loss on one batch: (student logits [B, C], batch dict) -> scalar. Distillation plugs in here.
LossFn = Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]


def cross_entropy_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(logits.float(), batch["labels"])


def make_accelerator(cfg: RunConfig, run_dir: Optional[Path] = None, log: Callable[[str], None] = print):
    """The Accelerator, with the precision chosen for this hardware (one log line says which and why)
    and the run's experiment trackers.

    bf16 is Accelerate's autocast (on CPUs too): trained weights, gradients and optimizer state stay
    fp32 (the frozen base is held in bf16 during the loop: ``precision.frozen_base_in``)."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import broadcast_object_list

    from .precision import resolve as resolve_precision

    # The processes (and their CPU threads) are set up first; the main process decides, and every
    # process trains in its choice (on a CPU, `auto` measures: precision.resolve).
    state = PartialState(cpu=not torch.cuda.is_available())
    precision = resolve_precision(
        cfg.training.mixed_precision, workload=lambda: training_workload(cfg),
        threads=cfg.training.threads or torch.get_num_threads(), cache_dir=default_cache_dir(cfg.data.cache_dir),
    ) if state.is_main_process else None
    if state.num_processes > 1:
        precision = broadcast_object_list([precision])[0]
    kwargs: dict[str, Any] = {}
    if cfg.training.compile:
        from accelerate.utils import TorchDynamoPlugin

        # The whole model, wrapped once: unwrap_model() then saves adapters under their plain names
        # (Accelerate's regional compilation wraps inner modules and leaked "_orig_mod" into them).
        kwargs["dynamo_plugin"] = TorchDynamoPlugin(backend="inductor")
    # cpu=True on machines without a GPU: it is what makes Accelerate pick gloo for multi-process CPU runs.
    accelerator = Accelerator(mixed_precision=precision.accelerate_name, cpu=not torch.cuda.is_available(), **kwargs, **accelerator_kwargs(cfg, run_dir))
    if accelerator.is_main_process:
        log(precision.line("training"))
    return accelerator


def training_workload(cfg: RunConfig):
    """What the precision probe times for this config: the model's layer shapes on the row chunks a
    CPU run trains on (batch rows × max_length, within the bf16 position cap)."""
    from .modeling import load_model_config
    from .precision import workload_from_config

    cap = position_cap(cfg.training.max_batch_positions, "cpu", bf16=True)
    rows = cfg.training.batch_size * cfg.model.max_length
    return workload_from_config(load_model_config(cfg, allow_builtin=True)[0], min(rows, cap or rows), training=True)


def make_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups`, with the kernel chosen by ``training.adamw_impl``."""
    impl = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[cfg.training.adamw_impl]
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.training.learning_rate, **impl)


def seed_everything(seed: int) -> None:
    from accelerate.utils import set_seed

    set_seed(seed)


@dataclass
class PreparedData:
    train: TextData
    validation: TextData
    train_tokens: TokenizedTexts
    validation_tokens: TokenizedTexts
    pad_id: int
    tokenizer: Any = field(repr=False)


def prepare_data(cfg: RunConfig, log: Callable[[str], None] = print) -> PreparedData:
    """Load, split and tokenize the configured training and validation data."""
    tokenizer = load_tokenizer(cfg.model.name)
    names = cfg.model.labels
    trust = cfg.data.trust_pickle
    full = load_labelled(cfg.data.train, names, trust_pickle=trust)
    if cfg.data.validation:
        train, validation = full, load_labelled(cfg.data.validation, names, trust_pickle=trust)
    else:
        train, validation = split_validation(full, cfg.data.validation_size, cfg.data.split_seed)
        if cfg.data.train_on_validation:
            train = full  # the split-off rows still show progress, but they are trained on too
    if cfg.data.max_train_rows is not None and cfg.data.max_train_rows < len(train):
        train = train.subset(range(cfg.data.max_train_rows))
    cache = default_cache_dir(cfg.data.cache_dir)
    train_tokens = tokenize(tokenizer, train.texts, cfg.model.max_length, cache)
    validation_tokens = tokenize(tokenizer, validation.texts, cfg.model.max_length, cache)
    lengths = train_tokens.lengths
    log(
        f"data: {len(train):,} training rows, {len(validation):,} validation rows"
        + (" (trained on too: data.train_on_validation)" if cfg.data.train_on_validation else "")
        + f"; tokens per row mean "
        f"{lengths.mean():.1f}, p99 {np.percentile(lengths, 99):.0f}, max {lengths.max()} "
        f"(max_length {cfg.model.max_length})"
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return PreparedData(train, validation, train_tokens, validation_tokens, pad_id, tokenizer)


def plan_or_refuse(cfg: RunConfig, log: Callable[[str], None] = print) -> budget_mod.Breakdown:
    """Count trainable parameters from the config alone; raise before any weights load if over budget."""
    planned = budget_mod.breakdown(build_model(cfg, weights=False).model)
    if not budget_mod.within_budget(planned, cfg.budget.max_trainable_params):
        log(budget_mod.format_breakdown(planned, cfg.budget.max_trainable_params, f"plan for {cfg.name}:",
                                        cfg.adapter.method))
    budget_mod.check_budget(planned, cfg.budget.max_trainable_params)
    return planned


def param_groups(model: torch.nn.Module, cfg: RunConfig) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on 1-D tensors and the method's scale-like kinds (DoRA
    magnitudes, IA3 scales); the head may have its own LR."""
    from .modeling import head_module_names

    t = cfg.training
    # A fully fine-tuned model has no PEFT wrapper: its head is found by module name.
    head_prefixes = () if hasattr(model, "peft_config") else tuple(n + "." for n in head_module_names(model))
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = adapters.no_weight_decay(cfg.adapter.method, name, param)
        is_head = ".modules_to_save." in name or bool(head_prefixes and name.startswith(head_prefixes))
        groups.setdefault((is_head, no_decay), []).append(param)
    return [
        {
            "params": params,
            "lr": (t.head_learning_rate or t.learning_rate) if is_head else t.learning_rate,
            "weight_decay": 0.0 if no_decay else t.weight_decay,
        }
        for (is_head, no_decay), params in groups.items()
    ]


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, appended and flushed as training goes.

    Strict JSON: a non-finite number is written as ``null``. ``trackers`` (a
    :class:`~lorabudget.tracking.TrackerSink`) receives every record too. ``resume_at`` (a byte offset from a
    checkpoint) cuts the file back to that point and appends from there.
    """

    def __init__(self, path: Path, enabled: bool, resume_at: Optional[int] = None, trackers=None):
        self.enabled = enabled
        if enabled and resume_at is not None:
            if not path.is_file() or path.stat().st_size < resume_at:
                raise LorabudgetError(f"{path} is missing or shorter than at the checkpoint; start again with --overwrite")
            os.truncate(path, resume_at)
        self.fh = open(path, "w" if resume_at is None else "a", encoding="utf-8") if enabled else None
        self.trackers = trackers if enabled else None

    def write(self, **record: Any) -> None:
        if self.fh is not None:
            self.fh.write(json.dumps(finite_or_none(record), allow_nan=False) + "\n")
            self.fh.flush()
        if self.trackers is not None:
            self.trackers(record)

    def offset(self) -> int:
        """Bytes written so far: what a checkpoint records, so a resume can cut the file back."""
        return os.fstat(self.fh.fileno()).st_size if self.fh is not None else 0

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
        if self.trackers is not None:
            self.trackers.close()
            self.trackers = None


def finite_or_none(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def save_adapter(model: torch.nn.Module, path: Path) -> None:
    save_trained(model, path)


def weight_files(adapter_dir: Path) -> list[Path]:
    return sorted(p for p in Path(adapter_dir).glob("*") if p.suffix in (".safetensors", ".bin"))


def adapter_checksums(adapter_dir: Path) -> dict[str, str]:
    """sha256 of each weight file of an adapter folder, recorded in summary.json and checked on load."""
    return {p.name: file_sha256(p) for p in weight_files(adapter_dir)}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# The loop's state, as objects a checkpoint can save and a resume can restore


@dataclass
class TrainState:
    """Where training is. Saved in every checkpoint; ``--resume`` continues from it."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch the next batch comes from
    micro: int = 0  # micro-batches of that epoch this process has already consumed
    rows_seen: int = 0
    tokens_seen: int = 0
    positions_seen: int = 0  # padded token positions fed to the model (numel is known on the host: no sync)
    eval_seconds: float = 0.0
    elapsed_s: float = 0.0  # wall time of the sessions before this one (a resumed run adds them up)
    done: bool = False  # early stopping decided: a resume has nothing left to train


class LossWindow:
    """Running sums between two logging steps. They stay on the device: reading them forces a host
    sync, so that happens at log steps and checkpoints only."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)
        self.token_sum = torch.zeros((), device=device, dtype=torch.long)
        self.count = self.rows = 0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        self.loss_sum += loss.detach()
        self.token_sum += batch["attention_mask"].sum()
        self.count += 1
        self.rows += batch["input_ids"].shape[0]

    def close(self, accelerator) -> tuple[float, int, int, float]:
        """Mean loss, tokens, rows (all processes) and seconds of this window; then start a new one."""
        now = time.perf_counter()
        mean_loss = accelerator.reduce(self.loss_sum, "mean").item() / max(self.count, 1)
        tokens = int(accelerator.reduce(self.token_sum, "sum").item())
        rows, seconds = self.rows * accelerator.num_processes, max(now - self.start, 1e-9)
        self.loss_sum.zero_()
        self.token_sum.zero_()
        self.count = self.rows = 0
        self.start = now
        return mean_loss, tokens, rows, seconds

    def state_dict(self) -> dict[str, Any]:
        return {"loss_sum": self.loss_sum.item(), "token_sum": int(self.token_sum.item()), "count": self.count, "rows": self.rows}

    def load_state_dict(self, values: dict[str, Any]) -> None:
        self.loss_sum.fill_(values["loss_sum"])
        self.token_sum.fill_(values["token_sum"])
        self.count, self.rows = values["count"], values["rows"]


def trainable_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the trainable parameters (adapters and head): all a checkpoint needs of the model."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device))


class BestKeeper:
    """The best evaluation so far (accuracy; ties go to the lower validation loss, common on small
    validation sets), its trainable weights, and the evaluations since the last gain. ``keep_last``:
    every evaluation is kept (a run that trains on its validation rows cannot choose by them)."""

    def __init__(self, keep_last: bool = False) -> None:
        self.keep_last = keep_last
        self.accuracy = -1.0
        self.step = 0
        self.metrics: Optional[dict[str, Any]] = None
        self.weights: dict[str, torch.Tensor] = {}
        self.evals_without_gain = 0

    def offer(self, step: int, result: dict[str, Any], model: torch.nn.Module) -> bool:
        """Keep ``model``'s weights if ``result`` beats the best; return whether it did."""
        improved = self.keep_last or result["accuracy"] > self.accuracy or (
            result["accuracy"] == self.accuracy and result["loss"] < self.metrics["loss"]
        )
        if not improved:
            self.evals_without_gain += 1
            return False
        weights = trainable_weights(model)
        if not all(bool(torch.isfinite(w).all()) for w in weights.values()):
            raise TrainingDiverged(step, None, "no non-finite weights were saved")
        self.accuracy, self.step, self.metrics, self.weights = result["accuracy"], step, result, weights
        self.evals_without_gain = 0
        return True

    def restore_into(self, model: torch.nn.Module) -> None:
        load_weights(model, self.weights)

    def patience_spent(self, patience: int) -> bool:
        return bool(patience) and self.evals_without_gain >= patience

    def state_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy, "step": self.step, "weights": self.weights,
            "metrics_json": json.dumps(self.metrics), "evals_without_gain": self.evals_without_gain,
        }

    def load_state_dict(self, values: dict[str, Any]) -> None:
        self.accuracy, self.step, self.weights = values["accuracy"], values["step"], values["weights"]
        self.metrics = json.loads(values["metrics_json"])
        self.evals_without_gain = values["evals_without_gain"]


class DivergenceGuard:
    """Watches every step's loss and gradient norm for NaN/inf without a host sync per step: the
    first bad step and the last finite loss are tracked on the device and read by :meth:`check`
    (at logging steps, before evaluations and checkpoints, at the end)."""

    def __init__(self, device: torch.device):
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.last_finite = torch.full((), float("nan"), device=device)
        self.step_ok = torch.ones((), dtype=torch.bool, device=device)
        self.step_loss = torch.zeros((), device=device)

    def add_loss(self, loss: torch.Tensor) -> None:
        self.step_ok &= torch.isfinite(loss.detach())
        self.step_loss = loss.detach().float()

    def end_step(self, step: int, grad_norm: Optional[torch.Tensor]) -> None:
        ok = self.step_ok if grad_norm is None else self.step_ok & torch.isfinite(torch.as_tensor(grad_norm))
        fresh = self.first_bad < 0
        self.last_finite = torch.where(ok & fresh, self.step_loss, self.last_finite)
        self.first_bad = torch.where(fresh & ~ok, torch.full_like(self.first_bad, step), self.first_bad)
        self.step_ok = torch.ones_like(self.step_ok)

    def check(self, accelerator, kept: str) -> None:
        """Raise :class:`TrainingDiverged` if any process saw a non-finite value."""
        firsts = accelerator.gather(self.first_bad.reshape(1)).tolist()
        bad = [s for s in firsts if s >= 0]
        if bad:
            last = self.last_finite.item()
            raise TrainingDiverged(min(bad), last if math.isfinite(last) else None, kept)


def rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "cached": cached},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


CHECKPOINT = "checkpoint"
CHECKPOINT_FORMAT = 1


class Checkpointer:
    """``RUN/checkpoint/state.pt``: everything ``--resume`` needs, replaced atomically each time.

    Only trainable parameters are saved (the frozen base is rebuilt from the model's own weights),
    with the optimizer, scheduler, :class:`TrainState`, the loss window, :class:`BestKeeper` (best
    weights included), the method's own training state (AdaLoRA's rank allocator), every process's
    RNG states and the length of ``metrics.jsonl``. Loading uses ``torch.load(weights_only=True)``:
    a checkpoint cannot run code.
    """

    def __init__(self, run_dir: Path, accelerator=None, method: str = "lora"):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / CHECKPOINT
        self.accelerator = accelerator
        self.method = method  # its training state outside the parameters is saved too (AdaLoRA's allocator)

    def candidates(self) -> list[Path]:
        # atomic_dir parks the previous checkpoint as .checkpoint.old while swapping: a kill between
        # its two renames leaves only that one.
        return [self.path / "state.pt", self.run_dir / f".{CHECKPOINT}.old" / "state.pt"]

    def exists(self) -> bool:
        return any(p.is_file() for p in self.candidates())

    def save(self, model, optimizer, scheduler, state: TrainState, window: LossWindow, best: BestKeeper,
             metrics_offset: int) -> None:
        from accelerate.utils import gather_object

        accelerator = self.accelerator
        per_process = gather_object([{"rng": rng_state(), "window": window.state_dict()}])
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            payload = {
                "format": CHECKPOINT_FORMAT,
                "trainable": trainable_weights(unwrapped),
                "method_state": adapters.training_state(unwrapped, self.method),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "state": dataclasses.asdict(state),
                "best": best.state_dict(),
                "per_process": per_process,
                "metrics_offset": metrics_offset,
            }
            with atomic_dir(self.path) as tmp:
                torch.save(payload, tmp / "state.pt")
        accelerator.wait_for_everyone()

    def load(self) -> dict[str, Any]:
        path = next((p for p in self.candidates() if p.is_file()), None)
        if path is None:
            raise LorabudgetError(
                f"{self.run_dir} has no checkpoint to resume from (none was written before it stopped); "
                "start it again with --overwrite"
            )
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - truncated or corrupt file
            raise LorabudgetError(f"{path}: unreadable checkpoint ({type(err).__name__}); start again with --overwrite") from None
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise LorabudgetError(f"{path}: not a lorabudget checkpoint of this version; start again with --overwrite")
        return payload

    def restore(self, payload: dict[str, Any], model, optimizer, scheduler, state: TrainState, window: LossWindow,
                best: BestKeeper) -> None:
        unwrapped = self.accelerator.unwrap_model(model)
        load_weights(unwrapped, payload["trainable"])
        adapters.restore_training_state(unwrapped, self.method, payload.get("method_state", {}))
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        for key, value in payload["state"].items():
            setattr(state, key, value)
        best.load_state_dict(payload["best"])
        mine = payload["per_process"][self.accelerator.process_index]
        window.load_state_dict(mine["window"])

    def remove(self) -> None:
        for folder in (self.path, self.run_dir / f".{CHECKPOINT}.old"):
            shutil.rmtree(folder, ignore_errors=True)


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
    state: TrainState = field(default_factory=TrainState)
    best: BestKeeper = field(default_factory=BestKeeper)
    window: LossWindow = None  # type: ignore[assignment] - set in __post_init__ (needs the device)
    guard: DivergenceGuard = None  # type: ignore[assignment]
    start: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.window = LossWindow(self.accelerator.device)
        self.guard = DivergenceGuard(self.accelerator.device)
        self.unwrapped = self.accelerator.unwrap_model(self.model)

    def elapsed(self) -> float:
        """Wall time of all sessions of this run (a resumed run adds its earlier ones)."""
        return self.state.elapsed_s + time.perf_counter() - self.start

    def check_finite(self) -> None:
        kept = (
            f"the {'last evaluated' if self.best.keep_last else 'best'} finite adapter (step {self.best.step}) and the "
            f"last checkpoint are kept in {self.run_dir}"
            if self.best.metrics else "no evaluation had finished, so no adapter was saved"
        )
        self.guard.check(self.accelerator, kept)

    def log_train(self, epoch_pos: float, progress) -> None:
        self.check_finite()
        mean_loss, tokens, rows, seconds = self.window.close(self.accelerator)
        self.metrics.write(
            type="train", step=self.state.step, epoch=epoch_pos, loss=mean_loss, lr=self.scheduler.get_last_lr()[0],
            samples_per_s=rows / seconds, tokens_per_s=tokens / seconds, elapsed_s=self.elapsed(),
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
            type="eval", step=step, epoch=epoch_pos, accuracy=result["accuracy"],
            macro_f1=result["macro_f1"], loss=result["loss"], best=improved, elapsed_s=self.elapsed(),
        )
        self.log(
            f"step {step}: validation accuracy {result['accuracy']:.4f}, macro F1 "
            f"{result['macro_f1']:.4f}, loss {result['loss']:.4f}"
            + (" (rows it trains on)" if self.best.keep_last else " (best so far)" if improved else "")
        )
        if improved and self.accelerator.is_main_process:
            save_adapter(self.unwrapped, self.run_dir / "adapter")
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
    log(budget_mod.format_breakdown(planned, cfg.budget.max_trainable_params, f"plan for {cfg.name}:",
                                    cfg.adapter.method))
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
        save_config(cfg, run_dir / "config.yaml")
        atomic_write_json(run_dir / "budget.json", budget_json(live, cfg))
        data.tokenizer.save_pretrained(str(run_dir / "tokenizer"))
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
    accelerator = make_accelerator(cfg, run_dir, log)
    main = accelerator.is_main_process
    if not main:
        log = lambda *_: None  # noqa: E731 - only the main process talks and writes
    if cfg.training.threads:
        torch.set_num_threads(cfg.training.threads)
    checkpoints = Checkpointer(run_dir, accelerator, cfg.adapter.method)
    resumed = checkpoints.load() if resume else None  # before any weights load: a bad checkpoint fails fast
    model, data, live = start_run(cfg, run_dir, data, log, accelerator, resumed is not None)

    t = cfg.training
    bf16 = accelerator.mixed_precision == "bf16"
    if t.fast_dropout:
        use_fast_dropout(model)
    if cfg.model.quantization == "nf4":
        keep_4bit_layout_for_training(model)  # bitsandbytes' CPU eval layout cannot train
    # Bucket widths: bf16 matrix products (oneDNN) build a kernel per shape, so bf16 gets the coarse
    # ladder (multiples of 16); fp32 pays per padded position instead (multiples of 16 cost it 16% of
    # its speed; exact widths fragment the heap to 1.9 GB over the main job), so it gets steps of 8.
    loader = train_loader(
        data.train_tokens, data.train.labels, data.pad_id, t.batch_size, t.seed, t.length_grouping, t.num_workers,
        bucket_multiple=BUCKET_MULTIPLE if bf16 else INFERENCE_BUCKET_MULTIPLE,
    )
    optimizer = make_optimizer(model, cfg)
    sampler = loader.batch_sampler  # kept: prepare() wraps it, and it needs set_epoch each epoch
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    # The loader's own generator: its per-epoch seed draw then leaves the global RNG (which a resume restores) alone.
    loader.generator = torch.Generator().manual_seed(t.seed)
    steps_per_epoch = math.ceil(len(loader) / t.gradient_accumulation)
    total_steps = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
    scheduler = make_scheduler(optimizer, t.scheduler, int(t.warmup_ratio * total_steps), total_steps)
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    trainable = [p for p in model.parameters() if p.requires_grad]
    max_positions = position_cap(t.max_batch_positions, accelerator.device.type, bf16)
    flop_sums = FlopCounter()

    metrics = MetricsLog(run_dir / "metrics.jsonl", main, resume_at=resumed["metrics_offset"] if resumed else None,
                         trackers=start_trackers(accelerator, cfg))
    run = Session(cfg, run_dir, accelerator, model, optimizer, scheduler, data, metrics, checkpoints, log, total_steps,
                  best=BestKeeper(keep_last=cfg.data.train_on_validation))
    state, guard = run.state, run.guard
    if resumed:
        checkpoints.restore(resumed, model, optimizer, scheduler, state, run.window, run.best)
        log(f"resuming {run_dir} at step {state.step} of {total_steps} (epoch {state.epoch}, batch {state.micro})")
        set_rng_state(resumed["per_process"][accelerator.process_index]["rng"])  # last: nothing above draws from it
    progress = tqdm(total=total_steps, initial=state.step, desc=f"train {cfg.name}", disable=not main, unit="step", dynamic_ncols=True)
    run.start = time.perf_counter()
    stopped: Optional[TrainingStopped] = None
    model.train()
    cleanup = contextlib.ExitStack()  # bf16: the frozen base is cast once, not on every forward
    cleanup.enter_context(frozen_base_in(run.unwrapped, torch.bfloat16 if bf16 else None))
    if t.fast_dropout and accelerator.device.type == "cpu":  # attention probabilities' masks too
        cleanup.enter_context(fast_attention_dropout(run.unwrapped))
    try:
        for epoch in range(state.epoch, num_epochs):
            if state.done or state.step >= total_steps:
                break
            for micro, batch in epoch_batches(loader, sampler, epoch, state.micro, accelerator):
                loss = torch.zeros((), device=accelerator.device)
                for part, share in split_rows(batch, max_positions):  # row chunks: activation memory cap
                    logits = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
                    part_loss = loss_fn(logits, part) * share
                    accelerator.backward(part_loss / t.gradient_accumulation)
                    loss += part_loss.detach()
                flop_sums.add(batch["input_ids"].shape[0], batch["input_ids"].shape[1])
                run.window.add(loss, batch)
                guard.add_loss(loss)
                state.positions_seen += batch["input_ids"].numel()
                epoch_end = micro + 1 == len(loader)
                if (micro + 1) % t.gradient_accumulation and not epoch_end:
                    continue
                grad_norm = accelerator.clip_grad_norm_(trainable, t.max_grad_norm) if t.max_grad_norm > 0 else None
                optimizer.step()
                adapters.after_backward(run.unwrapped, cfg.adapter.method, state.step)  # AdaLoRA: before zero_grad
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                guard.end_step(state.step, grad_norm)
                state.epoch, state.micro = (epoch, micro + 1) if not epoch_end else (epoch + 1, 0)
                progress.update(1)
                epoch_pos = round(epoch + (micro + 1) / len(loader), 4)

                if state.step % t.log_every == 0 or state.step == total_steps:
                    run.log_train(epoch_pos, progress)
                pause_start = time.perf_counter()
                evaluated = (state.step % t.eval_every == 0 if t.eval_every else epoch_end) or state.step == total_steps
                result = run.evaluate(epoch_pos) if evaluated else None
                every = bool(t.checkpoint_every) and state.step % t.checkpoint_every == 0
                if (evaluated or every) and state.step < total_steps and not state.done:
                    run.checkpoint()
                if evaluated:
                    stopped = agree(accelerator, run_on_eval(on_eval, state.step, result) if main else None)
                    state.done = state.done or stopped is not None
                run.window.start += time.perf_counter() - pause_start  # logged throughput counts training time only
                if state.done or state.step >= total_steps:
                    break
    finally:
        cleanup.close()
        progress.close()
        metrics.close()
    run.check_finite()
    run.best.restore_into(run.unwrapped)  # what the caller gets matches the saved adapter
    summary = finish(cfg, run_dir, data, live, state, run.best, run.elapsed(), accelerator, extra_summary, stopped, log,
                     flops=(run.unwrapped, flop_sums))
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


def finish(cfg, run_dir, data, live, state, best, train_time, accelerator, extra_summary, stopped, log,
           flops=None) -> dict[str, Any]:
    """Write eval.json and summary.json of a run whose best weights are in place; drop its checkpoint."""
    main = accelerator.is_main_process
    eval_seconds, rows_seen, tokens_seen, positions_seen = state.eval_seconds, state.rows_seen, state.tokens_seen, state.positions_seen
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
        "tokens_per_s": tokens_seen / (train_time - eval_seconds) if tokens_seen and train_time > eval_seconds else None,
        "padded_fraction": 1 - tokens_seen / (positions_seen * accelerator.num_processes) if positions_seen else None,
        "processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
        # FLOPs of the steps this process ran (after a resume: the resumed part only).
        **(training_flops(
            flops[0], flops[1], tokens_seen, data.train_tokens.lengths, train_time - eval_seconds,
            accelerator.mixed_precision, accelerator.device, accelerator.num_processes,
        ) if flops else {}),
        "class_names": list(cfg.model.labels),
        "train_label_distribution": label_distribution(data.train.labels, cfg.num_labels),
        **(extra_summary or {}),
    }
    if stopped is not None:
        summary["stopped_early"] = str(stopped) or type(stopped).__name__
    if main:
        summary["adapter_sha256"] = adapter_checksums(run_dir / "adapter")
        trained_on = ", trained on" if cfg.data.train_on_validation else ""
        write_eval(run_dir, best.metrics, f"validation ({cfg.data.validation or 'split of ' + cfg.data.train}{trained_on})",
                   "validation")
        atomic_write_json(run_dir / "summary.json", finite_or_none(summary))
        Checkpointer(run_dir).remove()  # a finished run has nothing to resume
        log(format_metrics(best.metrics))
        kept = (
            f"last weights kept (validation accuracy {best.accuracy:.4f} on {best.metrics['n']:,} rows it trained on: "
            f"no estimate)" if cfg.data.train_on_validation else
            f"best validation accuracy {best.accuracy:.4f} (95% CI {best.metrics['accuracy_ci95'][0]:.4f}–"
            f"{best.metrics['accuracy_ci95'][1]:.4f} on {best.metrics['n']:,} rows)"
        )
        log(f"{kept} at step {best.step}; trained {state.step} steps in {train_time:.1f}s; "
            f"run directory: {requested_run_dir(run_dir)}")  # not the --overwrite sibling it trained in
    accelerator.wait_for_everyone()
    return summary


def label_distribution(labels: np.ndarray, num_labels: int) -> list[float]:
    """Share of each class among the labelled rows (rows labelled -1 have no gold label)."""
    gold = labels[labels >= 0]
    return (np.bincount(gold, minlength=num_labels) / max(len(gold), 1)).tolist()


def make_scheduler(optimizer, name: str, warmup: int, total: int):
    from transformers import get_scheduler

    kind = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[name]
    return get_scheduler(kind, optimizer, num_warmup_steps=warmup, num_training_steps=total)


def evaluate_during_training(model, data: PreparedData, cfg: RunConfig, accelerator) -> dict[str, Any]:
    logits = predict_logits(
        model, data.validation_tokens, data.pad_id, cfg.training.eval_batch_size, accelerator
    )
    return classification_metrics(logits, data.validation.labels, cfg.model.labels)


def budget_json(b: budget_mod.Breakdown, cfg: RunConfig) -> dict[str, Any]:
    return {
        "method": cfg.adapter.method,
        "trainable_params": b.total,
        "adapter_params": b.adapter_total,
        "head_params": b.head,
        "other_params": b.other,
        "budget": cfg.budget.max_trainable_params,  # null: unlimited (a teacher)
        "within_budget": budget_mod.within_budget(b, cfg.budget.max_trainable_params),
        "by_site": [
            {"layer": layer, "module": module, "kind": kind, "params": n} for (layer, module, kind), n in b.sites.items()
        ],
        "shared": [
            {"kind": kind, "params": s.params, "modules": s.sites, "unshared_equivalent": s.unshared_equivalent}
            for kind, s in b.shared.items()
        ],
        "frozen_shared": [
            {"kind": kind, "values": s.params, "modules": s.sites} for kind, s in b.frozen_shared.items()
        ],
    }


def write_eval(run_dir: Path, metrics: dict[str, Any], data_name: str, kind: str) -> None:
    """``eval.json`` holds the latest evaluation; ``evals/`` keeps one file per evaluated data set.

    ``kind`` is ``validation`` (written by training) or ``evaluate`` (a labelled set the user evaluated).
    """
    record = dict(metrics, data=data_name, kind=kind, time=time.strftime("%Y-%m-%dT%H:%M:%S"))
    atomic_write_json(run_dir / "eval.json", record)
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in data_name)[:80]
    atomic_write_json(run_dir / "evals" / f"{slug}.json", record)
