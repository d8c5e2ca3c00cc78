"""Search workers started at the same instant on an empty storage.

Several processes wait at one barrier, then each opens the storage and the study (``open_study``, which
creates Optuna's schema and the study on first use) and runs the search loop (``Worker.run``, with the
real slot logic) with a trivial objective instead of training. None may fail, and between them they
must complete exactly ``--trials`` trials, each trial number once.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
import traceback
import uuid
from pathlib import Path

import pytest

from lorabudget.search.study import SearchSettings, done_count, open_study, trial_kind
from lorabudget.search.trial import Outcome, TrialOutcome
from lorabudget.search.worker import Worker, WorkerResult

WORKERS = 4  # processes started together at a barrier
TRIALS = 6  # trials the study must end with, across all workers
ROUNDS = 3  # fresh empty storages per storage kind: each is one chance for the race


class _CheapWorker(Worker):
    """``Worker`` whose trial is a number instead of a training run; the loop and the slot logic are the real ones."""

    def __init__(self, s: SearchSettings) -> None:  # no model config, no data
        self.s = s
        self.say = lambda message: None
        self.on_trial = lambda study: None
        self.study = open_study(s)
        self.result = WorkerResult()

    def run_trial(self, trial) -> TrialOutcome:
        from optuna.trial import TrialState

        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr("alive_at", time.time())
        x = trial.suggest_float("x", 0.0, 1.0)
        if not self._wait_for_slot(trial):
            trial.set_user_attr("surplus", True)
            self.study.tell(trial, state=TrialState.FAIL)
            return TrialOutcome(Outcome.SKIPPED)
        time.sleep(0.05)  # a "training run", so trials of the workers overlap
        self.study.tell(trial, x)
        return TrialOutcome(Outcome.TRAINED)


def _settings(storage: str, output: Path) -> SearchSettings:
    return SearchSettings(
        name="shared",
        output=output,
        base={"model": {"name": "none"}},
        best_base={},
        space={"r": [1, 2]},
        trials=TRIALS,
        storage=storage,
        pruner="none",
        warm_start=False,
    )


def _worker(barrier, storage: str, output: str, index: int) -> None:
    try:
        barrier.wait(timeout=120)
        _CheapWorker(_settings(storage, Path(output))).run()
    except BaseException:  # noqa: BLE001 - the parent reads the error from the file
        Path(output, f"worker-{index}.err").write_text(traceback.format_exc())
        os._exit(1)


def _run_together(storage: str, output: Path) -> None:
    """Start WORKERS processes at one barrier on ``storage``; check every one succeeded and the trial count."""
    import optuna

    output.mkdir(parents=True, exist_ok=True)
    ctx = multiprocessing.get_context("fork")  # no re-import per process: they reach the barrier quickly
    barrier = ctx.Barrier(WORKERS)
    procs = [ctx.Process(target=_worker, args=(barrier, storage, str(output), i)) for i in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    for p in procs:
        if p.is_alive():
            p.kill()
    errors = [f.read_text().strip().splitlines()[-1] for f in sorted(output.glob("worker-*.err"))]
    assert [p.exitcode for p in procs] == [0] * WORKERS, f"workers failed: {errors}"

    from lorabudget.search.study import open_storage

    study = optuna.load_study(study_name="shared", storage=open_storage(storage))
    trials = study.get_trials(deepcopy=False)
    kinds = [trial_kind(t) for t in trials]
    numbers = [t.number for t in trials]
    assert done_count(trials) == TRIALS and kinds.count("complete") == TRIALS, kinds
    assert "running" not in kinds and "failed" not in kinds, kinds
    assert len(numbers) == len(set(numbers)) == len(trials), numbers
    assert study.user_attrs["lorabudget"]["space"] == {"r": [1, 2]}
    assert len(optuna.study.get_all_study_names(open_storage(storage))) == 1


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_workers_start_together_on_a_journal_file(tmp_path, round_):
    _run_together(f"journal:{tmp_path / 'study.log'}", tmp_path / "out")


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_workers_start_together_on_sqlite(tmp_path, round_):
    _run_together(f"sqlite:///{tmp_path / 'study.db'}", tmp_path / "out")


@pytest.fixture
def empty_postgres_db(postgres_server):
    """A new, empty database on the server: no Optuna schema yet, as on a user's first search."""
    import psycopg2

    name = f"lb_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(f"{postgres_server}/postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    conn.close()
    return f"{postgres_server}/{name}"


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_workers_start_together_on_an_empty_postgresql_database(tmp_path, empty_postgres_db, round_):
    _run_together(empty_postgres_db, tmp_path / "out")
