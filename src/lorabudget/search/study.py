"""The Optuna side of a search: settings every worker shares, the storage (SQLite, journal file or a
database server), the study, its sampler and pruner, and how trials are counted and cleaned up."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from lorabudget.errors import LorabudgetError, first_line
from lorabudget.rundir.lifecycle import pid_alive

HEARTBEAT_S = 30.0  # a running trial refreshes its `alive_at` attribute this often


STALE_AFTER_S = 300.0  # a RUNNING trial silent this long belongs to a dead worker


POLL_S = 1.0


METRICS = ("accuracy", "macro_f1", "micro_f1")


def resolve_metric(metric: Optional[str], base: dict[str, Any]) -> str:
    """The validation metric a search maximises: ``metric`` when given, else micro F1 for a multi-label
    base config and accuracy otherwise (a multi-label run's accuracy is its subset accuracy)."""
    multi = (base.get("model") or {}).get("problem_type") == "multi_label"
    if metric is None:
        return "micro_f1" if multi else "accuracy"
    if metric not in METRICS:
        raise LorabudgetError(f"unknown metric {metric!r}; metrics: " + ", ".join(METRICS))
    if metric == "micro_f1" and not multi:
        raise LorabudgetError(
            "--metric micro_f1 is a multi-label metric; pass --multi-label for a multi-label search, "
            "or use --metric accuracy or macro_f1"
        )
    return metric


PRUNERS = ("median", "hyperband", "none")


def worker_id() -> str:
    """This process as a trial's ``worker`` attribute records it (a worker process has its own pid)."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class SearchSettings:
    """Everything a search (and each of its worker processes) needs; picklable."""

    name: str
    output: Path
    base: dict[str, Any]  # resolved base config values every trial starts from (--set and --trial-set applied)
    best_base: dict[str, Any]  # the same without --trial-set: what best.yaml is built on
    space: dict[str, Any]  # the raw search space
    trials: int
    timeout: Optional[float] = None
    storage: Optional[str] = None  # URL, journal:PATH, or None for SQLite in the search directory
    workers: int = 1
    metric: Optional[str] = None  # None: micro_f1 for a multi-label base config, else accuracy (resolve_metric)
    multi_objective: bool = False
    pruner: Any = "median"  # a name in PRUNERS or an optuna pruner object
    seed: int = 0
    max_rejections: int = 100  # consecutive over-budget samples before a worker gives up
    trial_overrides: list[str] = field(default_factory=list)
    warm_start: bool = True  # a new study starts with the base config (scaled to the budget) and the model's presets

    @property
    def budget(self) -> int:
        return int(self.base.get("budget", {}).get("max_trainable_params", 1_000_000))

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(Path(self.output) / 'study.db').resolve()}"


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def sqlite_in_memory(url: str) -> bool:
    """Whether an SQLite URL names an in-memory database (``sqlite://``, ``sqlite:///:memory:``, ``mode=memory``)."""
    if not url.startswith("sqlite:"):
        return False
    database = url[len("sqlite:") :].lstrip("/").split("?")[0]
    return database in ("", ":memory:") or "mode=memory" in url


def open_storage(url: str):
    """Optuna storage for ``url``: ``journal:PATH`` (a journal file) or an RDB URL (sqlite://, postgresql://).

    Safe when several workers open a new storage at the same instant: Optuna creates its tables (and, on
    PostgreSQL, enum types) when it first sees a database, and two processes doing that at once collide.
    On PostgreSQL the creation is serialised with an advisory lock; on any RDB a collision
    that still happens (SQLite: "table ... already exists") is retried, and the retry finds the schema
    made. The journal file is appended to under its own file lock and needs neither.
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if sqlite_in_memory(url):
        # Each open of an in-memory database is a new, empty one: the workers would train into one and
        # the outputs (trials.csv, best.yaml) read another.
        raise LorabudgetError(
            f"--storage {url}: an in-memory SQLite database is not shared between the search's workers and "
            "its outputs; give a file (sqlite:///search.db) or journal:FILE"
        )
    try:
        if url.startswith("journal:"):
            path = Path(url[len("journal:") :]).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        if url.startswith("sqlite:"):
            # Several local processes share one SQLite file: wait for the write lock instead of failing.
            return _retry_creation_race(
                lambda: optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})
            )
        if "://" in url:
            with _creation_lock(url):
                return _retry_creation_race(
                    lambda: optuna.storages.RDBStorage(_with_pg_driver(url), engine_kwargs={"pool_pre_ping": True})
                )
    except Exception as err:  # driver missing, server unreachable, bad URL: one line for the user
        raise LorabudgetError(f"cannot open the study storage {url!r}: {first_line(err)}") from err
    raise LorabudgetError(f"unknown storage {url!r}: give postgresql://..., sqlite:///FILE or journal:FILE")


# pg_advisory_lock key (any fixed 64-bit number) under which lorabudget workers create Optuna's schema
# and studies; advisory locks are per database, so searches on other databases do not wait for it.
_CREATION_LOCK_KEY = 0x6C6F_7261_6275_6467  # "lorabudg"
_CREATION_LOCK_WAIT_S = 120.0  # then go on without it: the retry still covers a collision
_CREATION_RETRIES = 6


@contextlib.contextmanager
def _creation_lock(url: str):
    """Hold a PostgreSQL session advisory lock on its own connection while the body runs; other URLs:
    nothing. The lock goes with the connection, so a worker killed while it holds it frees it."""
    url = _with_pg_driver(url)
    if not url.startswith("postgresql"):
        yield
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            deadline = time.monotonic() + _CREATION_LOCK_WAIT_S
            try_lock = sqlalchemy.text("SELECT pg_try_advisory_lock(:key)")
            while not conn.execute(try_lock, {"key": _CREATION_LOCK_KEY}).scalar():
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            yield  # the connection closes after the body: that releases the lock if it was taken
    finally:
        engine.dispose()


def _is_creation_race(err: BaseException) -> bool:
    """An error of two processes creating the same table, type, version row or study at once."""
    import optuna

    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, optuna.exceptions.DuplicatedStudyError):
            return True
        from_db = type(err).__module__.startswith(("sqlalchemy", "psycopg", "sqlite3")) or isinstance(
            err, optuna.exceptions.StorageInternalError
        )
        name, text = type(err).__name__.lower(), str(err).lower()
        if from_db and (
            "integrityerror" in name or "uniqueviolation" in name or "already exists" in text or "duplicate key" in text
        ):
            return True
        err = err.__cause__ or err.__context__
    return False


def _retry_creation_race(create: Callable[[], Any]) -> Any:
    """``create()``, again after a short random backoff when it lost a creation race to another process."""
    import random

    for attempt in range(_CREATION_RETRIES):
        try:
            return create()
        except Exception as err:
            if attempt == _CREATION_RETRIES - 1 or not _is_creation_race(err):
                raise
        time.sleep(random.uniform(0.05, 0.2) * 2**attempt)


def _with_pg_driver(url: str) -> str:
    """``postgresql://`` with the driver that is installed: SQLAlchemy 2.1 defaults to psycopg 3, and
    psycopg2(-binary) is what lorabudget's ``postgres`` extra installs."""
    import importlib.util

    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
                return "postgresql+psycopg2://" + url[len(prefix) :]
            return "postgresql://" + url[len(prefix) :]
    return url


def study_settings(s: SearchSettings) -> dict[str, Any]:
    """What every worker of a study must agree on (stored with the study, checked on joining)."""
    return {
        "space": s.space,
        "budget": s.budget,
        "metric": s.metric,
        "multi_objective": s.multi_objective,
        "model": s.base.get("model", {}).get("name"),
    }


def make_pruner(pruner: Any):
    import optuna

    if not isinstance(pruner, str):
        return pruner
    if pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)
    if pruner == "none":
        return optuna.pruners.NopPruner()
    raise LorabudgetError(f"unknown pruner {pruner!r}; pruners: " + ", ".join(PRUNERS))


def trial_seed(seed: int, trial_number: int) -> int:
    """The sampler's random seed for one trial: distinct for every trial number of a study."""
    import numpy as np

    return int(np.random.SeedSequence([seed, trial_number]).generate_state(1)[0])


def reseed_for_trial(sampler, seed: int, trial_number: int) -> None:
    """Seed every random state a sampler (and the samplers inside it) draws from for this trial.

    Seeding once per process would make every process draw the same samples: two workers started with
    the same command (two shells, two machines) would train the same startup configurations twice, and
    a resumed search would redraw the ones it had already tried. Seeding from (seed, trial number)
    gives every trial of the study its own draws, and a sequential run with one seed the same trials.
    """
    from optuna.samplers import BaseSampler
    from optuna.samplers._lazy_random_state import LazyRandomState  # optuna keeps no public handle on it

    value = trial_seed(seed, trial_number)
    for attribute in vars(sampler).values():
        if isinstance(attribute, LazyRandomState):
            attribute.rng.seed(value)
        elif isinstance(attribute, BaseSampler):
            reseed_for_trial(attribute, seed, trial_number)


def make_sampler(s: SearchSettings):
    import optuna

    if s.multi_objective:
        base, options = optuna.samplers.NSGAIISampler, {"population_size": max(4, min(50, s.trials // 2))}
    else:
        base = optuna.samplers.TPESampler
        options = {"n_startup_trials": max(3, min(10, s.trials // 3)), "multivariate": True, "group": True}

    class Sampler(base):
        """Re-seeded from (seed, trial number) before each trial (see :func:`reseed_for_trial`)."""

        def before_trial(self, study, trial):
            reseed_for_trial(self, s.seed, trial.number)
            super().before_trial(study, trial)

    return Sampler(seed=s.seed, **options)


def open_study(s: SearchSettings):
    """Create the study or join the existing one of the same name (it must have the same space and budget)."""
    import optuna

    _quiet_optuna()
    storage = open_storage(s.storage_url)
    directions = ["maximize", "minimize"] if s.multi_objective else ["maximize"]
    wanted = json.loads(json.dumps(study_settings(s)))
    # Workers started together create the study at once: on PostgreSQL one at a time (under the lock,
    # which also makes the first one's settings the ones the others are checked against), elsewhere
    # load_if_exists takes the study a racing worker made, and a collision it does not catch is retried.
    try:
        with _creation_lock(s.storage_url):
            study = _retry_creation_race(
                lambda: optuna.create_study(
                    storage=storage,
                    study_name=s.name,
                    sampler=make_sampler(s),
                    pruner=make_pruner(s.pruner) if not s.multi_objective else optuna.pruners.NopPruner(),
                    directions=directions,
                    load_if_exists=True,
                )
            )
            stored = study.user_attrs.get("lorabudget")
            if stored is None:
                study.set_user_attr("lorabudget", wanted)
                stored = study.user_attrs.get("lorabudget")  # a racing worker's settings, if it wrote last
    except ValueError as err:  # e.g. an existing study with other directions
        raise LorabudgetError(f"study '{s.name}' in {s.storage_url}: {err}") from err
    except Exception as err:  # a race that retrying did not settle: one line, like open_storage's errors
        if not _is_creation_race(err):
            raise
        raise LorabudgetError(f"cannot open study '{s.name}' in {s.storage_url}: {first_line(err)}") from err
    if stored != wanted:
        diff = [k for k in wanted if stored.get(k) != wanted[k]]
        raise LorabudgetError(
            f"study '{s.name}' in {s.storage_url} was started with a different {', '.join(diff)}; "
            "use the same settings to resume it, or choose another --study / --output"
        )
    return study


def trial_kind(t) -> str:
    """complete | pruned | rejected | failed | running | skipped."""
    from optuna.trial import TrialState

    if t.state == TrialState.COMPLETE:
        return "complete"
    if t.state == TrialState.PRUNED:
        return "rejected" if t.user_attrs.get("rejected") else "pruned"
    if t.state == TrialState.RUNNING:
        return "running"
    if t.state == TrialState.FAIL and t.user_attrs.get("surplus"):
        return "skipped"
    return "failed"


def done_count(trials) -> int:
    """Trained trials (complete or pruned by the pruner): what --trials counts."""
    return sum(trial_kind(t) in ("complete", "pruned") for t in trials)


def fail_dead_trials(study, output: Optional[Path] = None, say: Callable[[str], None] = print) -> int:
    """Mark RUNNING trials of dead workers as FAIL; return how many."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    now = time.time()
    failed = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(t.user_attrs.get("worker", ""))
        if worker == worker_id():
            continue
        w_host, _, w_pid = worker.rpartition(":")
        alive_at = t.user_attrs.get("alive_at") or (t.datetime_start.timestamp() if t.datetime_start else now)
        gone = w_host == host and w_pid.isdigit() and not pid_alive(int(w_pid))
        if not gone and now - float(alive_at) < STALE_AFTER_S:
            continue
        reason = f"worker {worker or '?'} died while it ran" + ("" if gone else f" (silent for {now - alive_at:.0f}s)")
        try:
            study._storage.set_trial_user_attr(t._trial_id, "error", reason)
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        except Exception:  # another worker finished it first
            continue
        failed += 1
        say(f"trial {t.number}: marked failed ({reason})")
        if output is not None and w_host == host:
            shutil.rmtree(Path(output) / "trials" / trial_dir_name(t.number), ignore_errors=True)
    return failed


def trial_dir_name(number: int) -> str:
    return f"t{number:04d}"
