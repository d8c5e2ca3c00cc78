"""The training loop's state, as objects a checkpoint can save and a resume can restore: the step
counters, the loss window, the best weights so far, the divergence guard, RNG states, ``metrics.jsonl``
and the checkpoint itself (``RUN/checkpoint/``, paths from :mod:`lorabudget.rundir.layout`)."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from lorabudget.errors import LorabudgetError, TrainingDiverged
from lorabudget.io import atomic_dir
from lorabudget.rundir.layout import RunDir


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, appended and flushed as training goes.

    Strict JSON: a non-finite number is written as ``null``. ``trackers`` (a
    :class:`~lorabudget.training.tracking.TrackerSink`) receives every record too. ``resume_at`` (a byte offset from a
    checkpoint) cuts the file back to that point and appends from there.
    """

    def __init__(self, path: Path, enabled: bool, resume_at: Optional[int] = None, trackers=None):
        self.enabled = enabled
        if enabled and resume_at is not None:
            if not path.is_file() or path.stat().st_size < resume_at:
                raise LorabudgetError(
                    f"{path} is missing or shorter than at the checkpoint; start again with --overwrite"
                )
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
    head_init_s: float = 0.0  # computing the head's class vectors before the first step (not in elapsed_s)
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
        return {
            "loss_sum": self.loss_sum.item(),
            "token_sum": int(self.token_sum.item()),
            "count": self.count,
            "rows": self.rows,
        }

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


def primary_score(result: dict[str, Any]) -> float:
    """The figure a run is selected by: ``result[result["primary_metric"]]`` (accuracy by default)."""
    return float(result[result.get("primary_metric", "accuracy")])


class BestKeeper:
    """The best evaluation so far (by the metrics' ``primary_metric``: accuracy, or micro F1 for a
    multi-label run; ties go to the lower validation loss, common on small validation sets), its
    trainable weights, and the evaluations since the last gain. ``keep_last``: every evaluation is
    kept (a run that trains on its validation rows cannot choose by them). ``accuracy`` holds the best
    primary score (the key checkpoints store it under, so older checkpoints still load)."""

    def __init__(self, keep_last: bool = False) -> None:
        self.keep_last = keep_last
        self.accuracy = -1.0
        self.step = 0
        self.metrics: Optional[dict[str, Any]] = None
        self.weights: dict[str, torch.Tensor] = {}
        self.evals_without_gain = 0

    def offer(self, step: int, result: dict[str, Any], model: torch.nn.Module) -> bool:
        """Keep ``model``'s weights if ``result`` beats the best; return whether it did."""
        score = primary_score(result)
        improved = (
            self.keep_last
            or score > self.accuracy
            or (score == self.accuracy and result["loss"] < self.metrics["loss"])
        )
        if not improved:
            self.evals_without_gain += 1
            return False
        weights = trainable_weights(model)
        if not all(bool(torch.isfinite(w).all()) for w in weights.values()):
            raise TrainingDiverged(step, None, "no non-finite weights were saved")
        self.accuracy, self.step, self.metrics, self.weights = score, step, result, weights
        self.evals_without_gain = 0
        return True

    def restore_into(self, model: torch.nn.Module) -> None:
        load_weights(model, self.weights)

    def patience_spent(self, patience: int) -> bool:
        return bool(patience) and self.evals_without_gain >= patience

    def state_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "step": self.step,
            "weights": self.weights,
            "metrics_json": json.dumps(self.metrics),
            "evals_without_gain": self.evals_without_gain,
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
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        },
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


CHECKPOINT_FORMAT = 1


class Checkpointer:
    """``RUN/checkpoint/state.pt``: everything ``--resume`` needs, replaced atomically each time.

    It only writes and reads the file: what goes in is the training session's ``state_dict()``
    (training/session.py), and a resume hands what :meth:`load` returns to its ``load_state_dict()``.
    Loading uses ``torch.load(weights_only=True)``: a checkpoint cannot run code.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.files = RunDir(run_dir)
        self.path = self.files.checkpoint_dir

    def exists(self) -> bool:
        return any(p.is_file() for p in self.files.checkpoint_candidates)

    def save(self, payload: dict[str, Any]) -> None:
        """Replace the checkpoint with ``payload`` (tensors, numbers, text, lists and dicts of them)."""
        with atomic_dir(self.path) as tmp:
            torch.save({"format": CHECKPOINT_FORMAT, **payload}, tmp / self.files.checkpoint_candidates[0].name)

    def load(self) -> dict[str, Any]:
        path = next((p for p in self.files.checkpoint_candidates if p.is_file()), None)
        if path is None:
            raise LorabudgetError(
                f"{self.run_dir} has no checkpoint to resume from (none was written before it stopped); "
                "start it again with --overwrite"
            )
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - truncated or corrupt file
            raise LorabudgetError(
                f"{path}: unreadable checkpoint ({type(err).__name__}); start again with --overwrite"
            ) from None
        if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
            raise LorabudgetError(f"{path}: not a lorabudget checkpoint of this version; start again with --overwrite")
        return payload

    def remove(self) -> None:
        for folder in (self.path, self.files.parked_checkpoint_dir):
            shutil.rmtree(folder, ignore_errors=True)
