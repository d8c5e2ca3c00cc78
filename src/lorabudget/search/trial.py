"""One trial's training run: its folder and log, pruning from the evaluation hook, and its outcome told to the study.

The worker (worker.py) draws and plans a trial; what happens once it may train is here.
"""

from __future__ import annotations

import enum
import gc
import json
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from lorabudget.config import RunConfig
from lorabudget.errors import TrainingStopped, first_line
from lorabudget.search.study import HEARTBEAT_S, SearchSettings, trial_dir_name


class TrialPruned(TrainingStopped):
    """Raised from the training loop's evaluation hook when the pruner stops a trial."""


class Outcome(enum.Enum):
    TRAINED = "trained"  # complete or pruned: counts toward --trials
    REJECTED = "rejected"  # over the budget or invalid: not trained, drawn again
    FAILED = "failed"  # training raised
    SKIPPED = "skipped"  # N trials were already done or running when its turn came


@dataclass(frozen=True)
class TrialOutcome:
    outcome: Outcome
    detail: str = ""  # the reason of a rejection, the error of a failure


# The model fields that loading and tokenizing the data read: the tokenizer (model.name), the classes, the
# cut and how labels are read. Every field of the data section counts as well, present and future.
DATA_MODEL_FIELDS = ("name", "labels", "num_labels", "label_format", "max_length", "problem_type")


class DataCache:
    """Tokenized data per process, keyed on the settings tokenization depends on."""

    def __init__(self) -> None:
        self.entries: dict[str, Any] = {}

    @staticmethod
    def key(cfg: RunConfig) -> str:
        values = cfg.to_dict()
        model = {name: values["model"][name] for name in DATA_MODEL_FIELDS}
        return json.dumps({"data": values["data"], "model": model}, sort_keys=True, default=str)

    def get(self, cfg: RunConfig, log: Callable[[str], None]):
        from lorabudget.training.setup import prepare_data

        key = self.key(cfg)
        if key not in self.entries:
            self.entries[key] = prepare_data(cfg, log)
        return self.entries[key]


class Heartbeat:
    """Refreshes a running trial's ``alive_at`` so other workers can tell it from a dead one."""

    def __init__(self, trial) -> None:
        self.trial = trial
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop_event.wait(HEARTBEAT_S):
            try:
                self.trial.set_user_attr("alive_at", time.time())
            except Exception:  # the storage hiccuped or the trial finished: the next beat retries
                pass

    def __enter__(self) -> "Heartbeat":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_event.set()
        self.thread.join()


@dataclass
class _Ended:
    """How a trial's training ended: its Optuna state, objective value(s), error, pruned step."""

    state: Any
    values: Any = None
    error: str = ""
    pruned_at: Optional[int] = None


def _pruning_hook(trial, s: SearchSettings, pruned_at: list[int]) -> Callable[[int, dict[str, Any]], None]:
    def on_eval(step: int, result: dict[str, Any]) -> None:
        if s.multi_objective:  # Optuna does not prune multi-objective studies
            return
        trial.report(float(result[s.metric]), step)
        if trial.should_prune():
            pruned_at.append(step)
            raise TrialPruned(f"pruned at step {step}")

    return on_eval


def _train(trial, s: SearchSettings, cfg: RunConfig, planned: int, run_dir: Path, data: DataCache, log) -> _Ended:
    """Train the trial's run folder; every exception but an interrupt ends as a state, not a raise."""
    from optuna.trial import TrialState

    pruned_at: list[int] = []
    try:
        from lorabudget.training.loop import train

        with Heartbeat(trial):
            summary = train(cfg, run_dir, data=data.get(cfg, log), log=log, on_eval=_pruning_hook(trial, s, pruned_at))
        if pruned_at:  # a training loop that ends gracefully on the stop signal
            ended = TrialPruned(f"pruned at step {pruned_at[0]}")
            ended.summary = summary  # its cache record still goes into trials.csv
            raise ended
        keys = ("validation_accuracy", "validation_macro_f1", "validation_micro_f1", "steps", "best_step")
        for key in (*keys, "train_time_s"):
            trial.set_user_attr(key, summary.get(key))
        _record_prefix(trial, summary)
        value = float(summary[f"validation_{s.metric}"])
        return _Ended(TrialState.COMPLETE, [value, float(planned)] if s.multi_objective else value)
    except TrialPruned as stopped:
        _record_prefix(trial, getattr(stopped, "summary", None))
        trial.set_user_attr("pruned_at_step", pruned_at[0] if pruned_at else None)
        return _Ended(TrialState.PRUNED, pruned_at=pruned_at[0] if pruned_at else None)
    except KeyboardInterrupt:
        trial.set_user_attr("error", "interrupted")
        raise
    except Exception as err:  # a crashed trial must not stop the others
        error = f"{type(err).__name__}: {first_line(err)}" if str(err).strip() else type(err).__name__
        trial.set_user_attr("error", error)
        log(f"failed: {error}")
        return _Ended(TrialState.FAIL, error=error)
    finally:
        gc.collect()  # the model, optimizer and Accelerator of this trial go now, not trials later
        _empty_device_cache()


def _record_prefix(trial, summary: Optional[dict[str, Any]]) -> None:
    """trials.csv's ``prefix_cache`` (reused, built or off) and ``prefix_cache_seconds``: trials on the
    same base, data and lowest adapted layer share one frozen-prefix cache."""
    prefix = (summary or {}).get("frozen_prefix")
    if not prefix:
        return
    used = "off" if not prefix.get("used") else "reused" if prefix.get("cache_hit") else "built"
    trial.set_user_attr("prefix_cache", used)
    trial.set_user_attr("prefix_cache_seconds", prefix.get("build_seconds") if prefix.get("used") else None)


def train_trial(study, trial, s: SearchSettings, cfg: RunConfig, planned: int, data: DataCache, say) -> TrialOutcome:
    """Train a planned trial within the budget, tell the study how it ended, and say so."""
    from optuna.trial import TrialState

    run_dir = Path(s.output) / "trials" / trial_dir_name(trial.number)
    log_path = Path(s.output) / "trials" / f"{trial_dir_name(trial.number)}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(run_dir, ignore_errors=True)  # a leftover of a worker that died on this number

    def log(message: str) -> None:
        with open(log_path, "a", encoding="utf-8") as fh:
            fh.write(message + "\n")

    trial.set_user_attr("run_dir", str(run_dir))
    started = time.perf_counter()
    try:
        ended = _train(trial, s, cfg, planned, run_dir, data, log)
    except KeyboardInterrupt:
        study.tell(trial, state=TrialState.FAIL)
        raise
    seconds = time.perf_counter() - started
    trial.set_user_attr("seconds", seconds)
    if ended.state == TrialState.COMPLETE:
        study.tell(trial, ended.values)
        value = ended.values[0] if isinstance(ended.values, list) else ended.values
        say(f"trial {trial.number}: {s.metric} {value:.4f} ({seconds:.1f}s)")
        return TrialOutcome(Outcome.TRAINED)
    # Only finished trials keep their run directory; a pruned or crashed one holds half a run.
    shutil.rmtree(run_dir, ignore_errors=True)
    if ended.state == TrialState.PRUNED:
        study.tell(trial, state=TrialState.PRUNED)
        say(
            f"trial {trial.number}: pruned at step {'?' if ended.pruned_at is None else ended.pruned_at} ({seconds:.1f}s)"
        )
        return TrialOutcome(Outcome.TRAINED)
    study.tell(trial, state=TrialState.FAIL)
    say(f"trial {trial.number}: failed: {ended.error} (log: {log_path})")
    return TrialOutcome(Outcome.FAILED, ended.error)


def _empty_device_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
