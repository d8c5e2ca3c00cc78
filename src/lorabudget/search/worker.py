"""``lorabudget search``: Optuna over method, placement, ranks and training settings, budget first.

Each trial draws a configuration from the search space (space.py), plans it on the meta device
and, when it is over the budget, records it as a *rejected* sample (an Optuna trial pruned at no
training cost, with an infeasible constraint so the sampler learns to avoid that region) and draws
again; rejected samples do not count toward ``--trials``. A configuration within the budget trains with
the same ``train()`` as ``lorabudget train``; every validation evaluation is reported to the trial and
the pruner may stop it. ``--trials N`` is the number of trained trials (complete or pruned) in the
study, across all workers and restarts: a trial only starts training when fewer than N trials are done
or ahead of it, so N is never exceeded. A trial whose process died (found on the same host with its
process gone, or silent for ``STALE_AFTER_S``) is marked failed; a trial that raised is marked failed
with its error and the search goes on. A new study's first trials are the base config and the measured
presets for its model (``Worker.enqueue_start_trials``), so the search starts from what is known.
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from lorabudget import console
from lorabudget.config import RunConfig, from_dict
from lorabudget.errors import BudgetExceededError, LorabudgetError
from lorabudget.search.space import SearchSpace, apply_sample, base_points, describe, parse_space, sample
from lorabudget.search.study import (
    POLL_S,
    SearchSettings,
    done_count,
    fail_dead_trials,
    make_pruner,
    open_study,
    resolve_metric,
    trial_dir_name,
    trial_kind,
    worker_id,
)
from lorabudget.search.trial import DataCache, Outcome, TrialOutcome, train_trial


@dataclass
class WorkerResult:
    trained: int = 0
    rejected: int = 0
    failed: int = 0
    stop_reason: str = ""


class Worker:
    """Runs trials of one study until N are done, the timeout passes, or too many samples in a row fail."""

    def __init__(
        self, s: SearchSettings, say: Callable[[str], None] = print, on_trial: Optional[Callable[[Any], None]] = None
    ):
        self.s = s
        self.say = say
        self.on_trial = on_trial or (lambda study: None)
        self.study = open_study(s)
        self.space: SearchSpace = parse_space(s.space)
        base_cfg = from_dict(copy.deepcopy(s.base))
        self.base_cfg = base_cfg
        self.layer_counts: dict[str, int] = {}
        self.num_layers = self.layers_of(None)
        self.base_method = str(s.base.get("adapter", {}).get("method", "lora"))
        # Typed values (a "--set training.learning_rate=3e-3" is a string in the raw mapping); a rate
        # the base config leaves null is the method's default here, which is what lr_scale uses anyway.
        self.base_rates = (base_cfg.training.learning_rate, base_cfg.training.head_learning_rate)
        self.data = DataCache()
        self.result = WorkerResult()

    # -- the loop

    def run(self) -> WorkerResult:
        fail_dead_trials(self.study, self.s.output, self.say)
        if self.s.warm_start and not self.study.get_trials(deepcopy=False):
            self.enqueue_start_trials()
        start = time.time()
        rejections_in_row = failures_in_row = 0
        while True:
            if self.s.timeout is not None and time.time() - start >= self.s.timeout:
                self.result.stop_reason = "timeout"
                break
            if done_count(self.study.get_trials(deepcopy=False)) >= self.s.trials:
                self.result.stop_reason = "done"
                break
            trial = self.study.ask()
            ended = self.run_trial(trial)
            self.on_trial(self.study)
            if ended.outcome == Outcome.REJECTED:
                self.result.rejected += 1
                rejections_in_row += 1
                if rejections_in_row >= self.s.max_rejections:
                    self.result.stop_reason = "rejections"
                    break
                continue
            rejections_in_row = 0
            if ended.outcome == Outcome.FAILED:
                self.result.failed += 1
                failures_in_row += 1
                if failures_in_row >= 3:
                    raise LorabudgetError(f"3 trials in a row failed; the last with: {ended.detail}")
                continue
            failures_in_row = 0
            if ended.outcome == Outcome.SKIPPED:
                self.result.stop_reason = "done"
                break
            self.result.trained += 1
        return self.result

    def start_configs(self) -> list[tuple[str, RunConfig, bool]]:
        """(label, typed config, scale down to the budget) of the trials a new study starts with: the
        base config, then the presets measured for the same model at a budget within this search's,
        largest budget first (distillation presets excluded: their settings were tuned for soft labels)."""
        from lorabudget.config import load_yaml, preset_files

        base = from_dict(copy.deepcopy(self.s.base))
        found: list[tuple[int, str, RunConfig]] = []
        for path in preset_files().values():
            try:
                raw = load_yaml(path)
                budget = (raw.get("budget") or {}).get("max_trainable_params")
                if (
                    path.stem == base.name
                    or "distill" in raw
                    or not isinstance(budget, int)
                    or budget > self.s.budget
                    or (raw.get("model") or {}).get("name") != base.model.name
                ):
                    continue
                raw.pop("search", None)  # as load_config does, without reading the file again
                found.append((budget, path.stem, from_dict({"name": path.stem, **raw})))
            except (LorabudgetError, OSError, AttributeError):
                continue  # a preset that does not load is no starting point
        found.sort(key=lambda item: (-item[0], item[1]))
        return [("the base config", base, True)] + [(f"preset {name}", cfg, False) for _, name, cfg in found]

    def enqueue_start_trials(self) -> None:
        """Start a new study with the base config (at the highest rank the space draws that fits the
        budget) and the measured presets for its model: at most a third of ``--trials``.

        The sampler knows from the start how good the user's own choice and the measured ones are, and
        the search cannot end with a best that one of them, trained as it is, would have beaten on
        validation. One that is not a point of the space is left out, and the log says why.
        """
        import optuna

        room = max(1, self.s.trials // 3)
        for label, cfg, scale_down in self.start_configs():
            if room == 0:
                break
            try:
                points = base_points(self.space, cfg, self.num_layers, self.base_method, self.base_rates, scale_down)
            except LorabudgetError as err:
                self.say(f"search: {label} is not a starting trial, not a point of the search space: {err}")
                continue
            for params in points:
                try:
                    overrides, _, planned, _ = self.plan(optuna.trial.FixedTrial(params))
                except (LorabudgetError, ValueError) as err:
                    self.say(f"search: {label} is not a starting trial: {err}")
                    break
                if planned <= self.s.budget:
                    before = len(self.study.get_trials(deepcopy=False))
                    # skip_if_exists: a preset equal to the base, or workers starting together, enqueue it once.
                    self.study.enqueue_trial(params, user_attrs={"origin": label}, skip_if_exists=True)
                    if len(self.study.get_trials(deepcopy=False)) > before:
                        room -= 1
                        self.say(
                            f"search: starting trial, {label}: {describe(overrides, self.base_method)}; "
                            f"{planned:,} trainable parameters"
                        )
                    break
            else:
                self.say(f"search: {label} is not a starting trial, over the budget at every rank the space draws")

    # -- one trial

    def _reject(self, trial, reason: str, constraint: float) -> TrialOutcome:
        from optuna.trial import TrialState

        trial.set_user_attr("rejected", reason)
        # Optuna constraint (<= 0 feasible), read by TPE and NSGA-II: the sampler moves away from rejections.
        trial.set_constraint("over_budget", float(constraint))
        self.study.tell(trial, state=TrialState.PRUNED)
        self.say(f"trial {trial.number}: rejected, {reason}")
        return TrialOutcome(Outcome.REJECTED, reason)

    def layers_of(self, model_name: Optional[str]) -> int:
        """Encoder layers of a base model the space may draw (None: the config's own), read once."""
        from lorabudget.model.hub import load_model_config

        name = model_name or self.base_cfg.model.name
        if name not in self.layer_counts:
            cfg = copy.deepcopy(self.base_cfg)
            cfg.model.name = name
            self.layer_counts[name] = int(load_model_config(cfg, allow_builtin=True)[0].num_hidden_layers)
        return self.layer_counts[name]

    def plan(self, trial, name: Optional[str] = None) -> tuple[dict[str, Any], RunConfig, int, int]:
        """Draw ``trial``'s configuration (a live trial or a FixedTrial) and count its parameters on the
        meta device: (config overrides, typed config, trainable count, frozen count)."""
        from lorabudget.model.budget import breakdown
        from lorabudget.model.build import build_model

        overrides = sample(trial, self.space, self.layers_of, self.base_method, self.base_rates)
        values = apply_sample(self.s.base, overrides)
        if name:
            values["name"] = name
        cfg = from_dict(values)
        model = build_model(cfg, weights=False).model
        trainable = breakdown(model).total
        return overrides, cfg, trainable, sum(p.numel() for p in model.parameters()) - trainable

    def run_trial(self, trial) -> TrialOutcome:
        """Plan ``trial``; reject it over the budget, else train it when a slot is free."""
        from optuna.trial import TrialState

        s = self.s
        trial.set_user_attr("worker", worker_id())
        trial.set_user_attr("alive_at", time.time())
        try:
            overrides, cfg, planned, frozen = self.plan(trial, f"{s.name}-{trial_dir_name(trial.number)}")
        except LorabudgetError as err:
            return self._reject(trial, f"invalid: {err}", 1.0)
        trial.set_user_attr("sample", json.loads(json.dumps(overrides)))
        trial.set_user_attr("description", describe(overrides, self.base_method))
        trial.set_user_attr("trainable_params", planned)
        # The budget counts trainable parameters only: a larger frozen base costs time and memory instead.
        trial.set_user_attr("base_model", cfg.model.name)
        trial.set_user_attr("frozen_params", frozen)
        if planned > s.budget:
            return self._reject(
                trial, f"over budget: {planned:,} > {s.budget:,} trainable parameters", planned - s.budget
            )
        trial.set_constraint("over_budget", float(planned - s.budget))
        if not self._wait_for_slot(trial):
            trial.set_user_attr("surplus", True)
            self.study.tell(trial, state=TrialState.FAIL)
            return TrialOutcome(Outcome.SKIPPED)
        self.say(f"trial {trial.number}: {describe(overrides, self.base_method)}; {planned:,} trainable parameters")
        return train_trial(self.study, trial, s, cfg, planned, self.data, self.say)

    def _wait_for_slot(self, trial) -> bool:
        """True when this trial may train: fewer than N trials are done or running ahead of it.

        Trials ahead (lower numbers) were created before this one, so every worker sees them: two
        workers never both take the last slot. A trial ahead that ends rejected or failed frees its slot.
        """
        from optuna.trial import TrialState

        while True:
            trials = self.study.get_trials(deepcopy=False)
            done = done_count(trials)
            if done >= self.s.trials:
                return False
            ahead = sum(1 for t in trials if t.number < trial.number and t.state == TrialState.RUNNING)
            if done + ahead < self.s.trials:
                return True
            fail_dead_trials(self.study, self.s.output, self.say)
            trial.set_user_attr("alive_at", time.time())
            time.sleep(POLL_S)


# --------------------------------------------------------------------------------------------
# The whole search


class Progress:
    """Trials done of N, best so far, rejected and pruned counts, time left (tqdm's estimate or the timeout)."""

    def __init__(self, s: SearchSettings, study):
        from tqdm.auto import tqdm

        self.s = s
        self.start = time.time()
        self.bar = tqdm(total=s.trials, desc=f"search {s.name}", unit="trial", dynamic_ncols=True)
        self.update(study)

    def update(self, study) -> None:
        trials = study.get_trials(deepcopy=False)
        done = min(done_count(trials), self.s.trials)
        self.bar.n = done
        kinds = [trial_kind(t) for t in trials]
        best = [t.values[0] for t in trials if trial_kind(t) == "complete" and t.values]
        post = {
            "best": f"{max(best):.4f}" if best else "-",
            "rejected": kinds.count("rejected"),
            "pruned": kinds.count("pruned"),
            "failed": kinds.count("failed"),
        }
        if self.s.timeout is not None:
            post["timeout_in"] = f"{max(0.0, self.s.timeout - (time.time() - self.start)) / 60:.1f}min"
        self.bar.set_postfix(post, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def run_search(s: SearchSettings, say: Callable[[str], None] = console.say, progress: bool = True) -> dict[str, Any]:
    """Run (or resume, or join) the search; write its outputs; return a summary."""
    from lorabudget.search.outputs import write_outputs

    s.output = Path(s.output)
    s.output.mkdir(parents=True, exist_ok=True)
    parse_space(s.space)  # bad space: one clear error before anything starts
    s.metric = resolve_metric(s.metric, s.base)
    make_pruner(s.pruner)
    if s.trials < 1 or s.workers < 1:
        raise LorabudgetError("--trials and --workers must be at least 1")
    study = open_study(s)
    bar = Progress(s, study) if progress else None
    results: list[WorkerResult] = []
    try:
        if s.workers == 1:
            worker = Worker(s, say=say, on_trial=bar.update if bar else None)
            results.append(worker.run())
        else:
            results = _run_worker_processes(s, study, bar, say)
    except (KeyboardInterrupt, LorabudgetError):
        if bar:
            bar.close()
            bar = None
        write_outputs(study, s)  # what finished so far; running the same command again resumes
        raise
    finally:
        if bar:
            bar.update(study)
            bar.close()
    summary = write_outputs(study, s)
    summary["stop_reasons"] = [r.stop_reason for r in results]
    say(summary["message"])
    if summary["trained"] == 0 and any(r.stop_reason == "rejections" for r in results):
        over, invalid = summary["over_budget"], summary["rejected"] - summary["over_budget"]
        found = []
        if over:
            found.append(
                f"{over} over the budget of {s.budget:,} trainable parameters "
                f"(smallest planned {summary['smallest_planned']:,})"
            )
        if invalid:
            found.append(f"{invalid} invalid (see the reasons in trials.csv)")
        advice = (
            "Raise --budget or narrow the space (lower ranks, fewer modules or layers, a linear head)"
            if over
            else "Check the search space"
        )
        raise BudgetExceededError(
            f"every sampled configuration was rejected before training: {', '.join(found)}; nothing was trained. {advice}"
        )
    return summary


def _run_worker_processes(s: SearchSettings, study, bar: Optional[Progress], say) -> list[WorkerResult]:
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no torch or Accelerate state forked
    logs = [s.output / "workers" / f"worker-{i}.log" for i in range(s.workers)]
    procs = []
    for i, log_path in enumerate(logs):
        log_path.parent.mkdir(parents=True, exist_ok=True)
        p = ctx.Process(target=_worker_main, args=(s, str(log_path)), name=f"lorabudget-search-{i}")
        p.start()
        procs.append(p)
    say(f"started {s.workers} worker processes; their logs: {logs[0].parent}")
    try:
        while any(p.is_alive() for p in procs):
            for p in procs:
                p.join(timeout=POLL_S / len(procs))
            if bar:
                bar.update(study)
    except KeyboardInterrupt:
        for p in procs:  # the workers got the same Ctrl-C; give them time to mark their trials
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
        raise
    results = []
    for i, p in enumerate(procs):
        result_file = logs[i].with_suffix(".json")
        data = json.loads(result_file.read_text()) if result_file.is_file() else None
        if p.exitcode != 0 or data is None:
            tail = (
                logs[i].read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
                if logs[i].is_file()
                else []
            )
            say(f"worker {i} exited with code {p.exitcode}" + (f": {tail[0]}" if tail else ""))
            continue
        results.append(WorkerResult(**data))
    if not results:
        raise LorabudgetError(f"every worker process failed; their logs are in {logs[0].parent}")
    return results


def _worker_main(s: SearchSettings, log_path: str) -> None:
    """Entry point of a worker process: output to its log file, a share of the CPU threads."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", closefd=False)
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", closefd=False)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not s.base.get("training", {}).get("threads"):
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // s.workers))
    try:
        result = Worker(s, say=lambda m: print(m, flush=True)).run()
    except LorabudgetError as err:
        print(f"lorabudget search: error: {err}", flush=True)
        sys.exit(2)
    Path(log_path).with_suffix(".json").write_text(json.dumps(result.__dict__))


# --------------------------------------------------------------------------------------------
# Settings from the command line
