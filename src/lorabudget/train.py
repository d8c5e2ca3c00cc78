"""The training loop, on Hugging Face Accelerate: read it top to bottom.

1. Plan the model on the meta device and refuse to start over budget.
2. Load data, split validation off, tokenize (cached).
3. Build the real model and check the live trainable count equals the plan.
4. AdamW + warm-up/decay; length-grouped batches; evaluate every N steps and at each epoch end;
   keep the best adapter by validation accuracy; optional early stopping.
5. Restore the best weights, write the adapter, eval.json and summary.json into the run directory.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import budget as budget_mod
from .batching import TokenizedTexts, default_cache_dir, position_cap, split_rows, tokenize, train_loader
from .config import RunConfig, save_config
from .data import TextData, load_labelled, split_validation
from .errors import LorabudgetError
from .flops import FlopCounter, training_summary as training_flops
from .inference import predict_logits
from .io import atomic_dir, atomic_write_json
from .metrics import classification_metrics, format_metrics
from .modeling import build_model, load_tokenizer

# A loss on one batch: (student logits [B, C], batch dict) -> scalar. Distillation plugs in here.
LossFn = Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]


def cross_entropy_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(logits.float(), batch["labels"])


def make_accelerator(cfg: RunConfig, log: Callable[[str], None] = print):
    """The Accelerator, with the precision chosen for this hardware (one log line says which and why).

    bf16 is Accelerate's autocast (on CPUs too): weights, gradients and optimizer state stay fp32."""
    from accelerate import Accelerator

    from .precision import resolve as resolve_precision

    precision = resolve_precision(cfg.training.mixed_precision)
    kwargs: dict[str, Any] = {}
    if cfg.training.compile:
        from accelerate.utils import TorchDynamoPlugin

        # The whole model, wrapped once: unwrap_model() then saves adapters under their plain names
        # (Accelerate's regional compilation wraps inner modules and leaked "_orig_mod" into them).
        kwargs["dynamo_plugin"] = TorchDynamoPlugin(backend="inductor")
    # cpu=True on machines without a GPU: it is what makes Accelerate pick gloo for multi-process CPU runs.
    accelerator = Accelerator(mixed_precision=precision.accelerate_name, cpu=not torch.cuda.is_available(), **kwargs)
    if accelerator.is_main_process:
        log(precision.line("training"))
    return accelerator


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
    full = load_labelled(cfg.data.train, names)
    if cfg.data.validation:
        train, validation = full, load_labelled(cfg.data.validation, names)
    else:
        train, validation = split_validation(full, cfg.data.validation_size, cfg.data.split_seed)
    if cfg.data.max_train_rows is not None and cfg.data.max_train_rows < len(train):
        train = train.subset(range(cfg.data.max_train_rows))
    cache = default_cache_dir(cfg.data.cache_dir)
    train_tokens = tokenize(tokenizer, train.texts, cfg.model.max_length, cache)
    validation_tokens = tokenize(tokenizer, validation.texts, cfg.model.max_length, cache)
    lengths = train_tokens.lengths
    log(
        f"data: {len(train):,} training rows, {len(validation):,} validation rows; tokens per row mean "
        f"{lengths.mean():.1f}, p99 {np.percentile(lengths, 99):.0f}, max {lengths.max()} "
        f"(max_length {cfg.model.max_length})"
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return PreparedData(train, validation, train_tokens, validation_tokens, pad_id, tokenizer)


def plan_or_refuse(cfg: RunConfig, log: Callable[[str], None] = print) -> budget_mod.Breakdown:
    """Count trainable parameters from the config alone; raise before any weights load if over budget."""
    planned = budget_mod.breakdown(build_model(cfg, weights=False).model)
    if planned.total > cfg.budget.max_trainable_params:
        log(budget_mod.format_breakdown(planned, cfg.budget.max_trainable_params, f"plan for {cfg.name}:"))
    budget_mod.check_budget(planned, cfg.budget.max_trainable_params)
    return planned


def param_groups(model: torch.nn.Module, cfg: RunConfig) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms and DoRA magnitudes; the head may have its own LR."""
    t = cfg.training
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim < 2 or "magnitude" in name
        is_head = ".modules_to_save." in name
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
    """``metrics.jsonl``: one JSON object per line, appended and flushed as training goes."""

    def __init__(self, path: Path, enabled: bool):
        self.enabled = enabled
        self.fh = open(path, "w", encoding="utf-8") if enabled else None

    def write(self, **record: Any) -> None:
        if self.fh is not None:
            self.fh.write(json.dumps(record) + "\n")
            self.fh.flush()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


def save_adapter(model: torch.nn.Module, path: Path) -> None:
    with atomic_dir(path) as tmp:
        model.save_pretrained(str(tmp))


def train(
    cfg: RunConfig,
    run_dir: Path,
    loss_fn: LossFn = cross_entropy_loss,
    data: Optional[PreparedData] = None,
    log: Callable[[str], None] = print,
    extra_summary: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir`` and return the run summary (also written to summary.json)."""
    accelerator = make_accelerator(cfg, log)
    main = accelerator.is_main_process
    if not main:
        log = lambda *_: None  # noqa: E731 - only the main process talks and writes
    if cfg.training.threads:
        torch.set_num_threads(cfg.training.threads)

    planned = plan_or_refuse(cfg, log)
    log(budget_mod.format_breakdown(planned, cfg.budget.max_trainable_params, f"plan for {cfg.name}:"))
    if data is None:
        data = prepare_data(cfg, log)

    seed_everything(cfg.training.seed)
    model = build_model(cfg, weights=True).model
    live = budget_mod.breakdown(model)
    if live.total != planned.total:  # would be a bug in planning: never train on an unchecked count
        raise RuntimeError(f"live trainable count {live.total:,} differs from the plan {planned.total:,}")

    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        atomic_write_json(run_dir / "budget.json", budget_json(live, cfg))
        data.tokenizer.save_pretrained(str(run_dir / "tokenizer"))
    accelerator.wait_for_everyone()

    t = cfg.training
    loader = train_loader(
        data.train_tokens, data.train.labels, data.pad_id, t.batch_size, t.seed, t.length_grouping, t.num_workers
    )
    optimizer = make_optimizer(model, cfg)
    sampler = loader.batch_sampler  # kept: prepare() wraps it, and it needs set_epoch each epoch
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps_per_epoch = math.ceil(len(loader) / t.gradient_accumulation)
    total_steps = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
    scheduler = make_scheduler(optimizer, t.scheduler, int(t.warmup_ratio * total_steps), total_steps)
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    trainable = [p for p in model.parameters() if p.requires_grad]
    max_positions = position_cap(t.max_batch_positions, accelerator.device.type)
    flop_sums = FlopCounter()

    metrics = MetricsLog(run_dir / "metrics.jsonl", main)
    best: dict[str, Any] = {"accuracy": -1.0, "step": 0}
    best_state: dict[str, torch.Tensor] = {}
    evals_without_gain = 0
    step = 0
    rows_seen = tokens_seen = 0
    # Running sums stay on the device: reading them forces a host sync, so that happens at log steps only.
    loss_sum = torch.zeros((), device=accelerator.device)
    token_sum = torch.zeros((), device=accelerator.device, dtype=torch.long)
    loss_count = window_rows = 0
    eval_seconds = 0.0
    positions_seen = 0  # padded token positions fed to the model (numel is known on the host: no sync)
    window_start = start = time.perf_counter()
    progress = tqdm(total=total_steps, desc=f"train {cfg.name}", disable=not main, unit="step", dynamic_ncols=True)
    stop = False
    model.train()
    for epoch in range(num_epochs):
        sampler.set_epoch(epoch)
        for micro, batch in enumerate(loader):
            for part, share in split_rows(batch, max_positions):  # row chunks: activation memory cap
                logits = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
                loss = loss_fn(logits, part) * share
                accelerator.backward(loss / t.gradient_accumulation)
                loss_sum += loss.detach()
            flop_sums.add(batch["input_ids"].shape[0], batch["input_ids"].shape[1])
            token_sum += batch["attention_mask"].sum()
            loss_count += 1
            window_rows += batch["input_ids"].shape[0]
            positions_seen += batch["input_ids"].numel()
            epoch_end = micro + 1 == len(loader)
            if (micro + 1) % t.gradient_accumulation and not epoch_end:
                continue
            if t.max_grad_norm > 0:
                accelerator.clip_grad_norm_(trainable, t.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            progress.update(1)
            epoch_pos = round(epoch + (micro + 1) / len(loader), 4)

            if step % t.log_every == 0 or step == total_steps:
                now = time.perf_counter()
                mean_loss = accelerator.reduce(loss_sum, "mean").item() / max(loss_count, 1)
                window_tokens = int(accelerator.reduce(token_sum, "sum").item())
                window_rows *= accelerator.num_processes
                rate = window_rows / max(now - window_start, 1e-9)
                metrics.write(
                    type="train", step=step, epoch=epoch_pos, loss=mean_loss, lr=scheduler.get_last_lr()[0],
                    samples_per_s=rate, tokens_per_s=window_tokens / max(now - window_start, 1e-9),
                    elapsed_s=now - start,
                )
                progress.set_postfix(loss=f"{mean_loss:.4f}", samples_s=f"{rate:.1f}")
                rows_seen += window_rows
                tokens_seen += window_tokens
                loss_sum.zero_()
                token_sum.zero_()
                loss_count = window_rows = 0
                window_start = now

            due = step % t.eval_every == 0 if t.eval_every else epoch_end
            if due or step == total_steps:
                eval_start = time.perf_counter()
                result = evaluate_during_training(model, data, cfg, accelerator)
                # Ties in accuracy (common on small validation sets) go to the lower validation loss.
                improved = result["accuracy"] > best["accuracy"] or (
                    result["accuracy"] == best["accuracy"] and result["loss"] < best["metrics"]["loss"]
                )
                metrics.write(
                    type="eval", step=step, epoch=epoch_pos, accuracy=result["accuracy"],
                    macro_f1=result["macro_f1"], loss=result["loss"], best=improved,
                    elapsed_s=time.perf_counter() - start,
                )
                log(
                    f"step {step}: validation accuracy {result['accuracy']:.4f}, macro F1 "
                    f"{result['macro_f1']:.4f}, loss {result['loss']:.4f}" + (" (best so far)" if improved else "")
                )
                if improved:
                    best = {"accuracy": result["accuracy"], "step": step, "metrics": result}
                    best_state = {
                        n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad
                    }
                    evals_without_gain = 0
                    if main:
                        save_adapter(accelerator.unwrap_model(model), run_dir / "adapter")
                else:
                    evals_without_gain += 1
                    if t.early_stopping_patience and evals_without_gain >= t.early_stopping_patience:
                        log(f"early stopping: no gain in validation accuracy for {evals_without_gain} evaluations")
                        stop = True
                eval_duration = time.perf_counter() - eval_start
                eval_seconds += eval_duration
                window_start += eval_duration  # logged throughput counts training time only
            if step >= total_steps:
                stop = True
            if stop:
                break
        if stop:
            break
    progress.close()
    metrics.close()
    train_time = time.perf_counter() - start

    # Restore the best weights so what the caller gets matches the saved adapter.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in best_state:
                param.copy_(best_state[name].to(param.device))
    summary = {
        "name": cfg.name,
        "method": "lora",
        "trainable_params": live.total,
        "head_params": live.head,
        "lora_params": live.lora_total,
        "budget": cfg.budget.max_trainable_params,
        "best_step": best["step"],
        "steps": step,
        "train_rows": len(data.train),
        "validation_rows": len(data.validation),
        "validation_accuracy": best["accuracy"],
        "validation_macro_f1": best["metrics"]["macro_f1"],
        "train_time_s": train_time,  # wall time of the loop, evaluations and checkpoint saves included
        "eval_time_s": eval_seconds,
        # Throughput of the training steps alone (evaluation time taken out).
        "samples_per_s": rows_seen / (train_time - eval_seconds) if train_time > eval_seconds else None,
        "tokens_per_s": tokens_seen / (train_time - eval_seconds) if tokens_seen and train_time > eval_seconds else None,
        "padded_fraction": 1 - tokens_seen / (positions_seen * accelerator.num_processes) if positions_seen else None,
        "processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
        **training_flops(
            accelerator.unwrap_model(model), flop_sums, tokens_seen, data.train_tokens.lengths,
            train_time - eval_seconds, accelerator.mixed_precision, accelerator.device, accelerator.num_processes,
        ),
        "class_names": list(cfg.model.labels),
        "train_label_distribution": label_distribution(data.train.labels, cfg.num_labels),
        **(extra_summary or {}),
    }
    if main:
        write_eval(run_dir, best["metrics"], f"validation ({cfg.data.validation or 'split of ' + cfg.data.train})", "validation")
        atomic_write_json(run_dir / "summary.json", summary)
        log(format_metrics(best["metrics"]))
        log(
            f"best validation accuracy {best['accuracy']:.4f} at step {best['step']}; trained {step} steps in "
            f"{train_time:.1f}s; run directory: {run_dir}"
        )
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
        "trainable_params": b.total,
        "lora_params": b.lora_total,
        "head_params": b.head,
        "other_params": b.other,
        "budget": cfg.budget.max_trainable_params,
        "within_budget": b.total <= cfg.budget.max_trainable_params,
        "lora_by_site": [{"layer": layer, "module": module, "params": n} for (layer, module), n in b.lora.items()],
    }


def write_eval(run_dir: Path, metrics: dict[str, Any], data_name: str, kind: str) -> None:
    """``eval.json`` holds the latest evaluation; ``evals/`` keeps one file per evaluated data set.

    ``kind`` is ``validation`` (written by training) or ``evaluate`` (a labelled set the user evaluated).
    """
    record = dict(metrics, data=data_name, kind=kind, time=time.strftime("%Y-%m-%dT%H:%M:%S"))
    atomic_write_json(run_dir / "eval.json", record)
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in data_name)[:80]
    atomic_write_json(run_dir / "evals" / f"{slug}.json", record)


def clear_run_dir(run_dir: Path) -> None:
    """Remove a previous run's outputs before training into the same folder."""
    if run_dir.exists():
        if not (run_dir / "config.yaml").is_file():
            raise LorabudgetError(f"{run_dir} exists and is not a lorabudget run directory; choose another --output")
        shutil.rmtree(run_dir)
