"""``train`` and ``distill``: a resolved config trained into a guarded run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from lorabudget.api.files import write_run_report
from lorabudget.api.resolve import resolve_config
from lorabudget.api.runs import Run
from lorabudget.config import ConfigSource, Overrides, override_items
from lorabudget.console import say
from lorabudget.errors import LorabudgetError
from lorabudget.runconfig import RunConfig
from lorabudget.signals import Terminated


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_resumable(cfg: RunConfig, run_dir: Path) -> None:
    """Refuse to resume a folder that is no run, a finished run, or a run started with another config."""
    from lorabudget.rundir.layout import RunDir

    files = RunDir(run_dir)
    if not files.is_run():
        raise LorabudgetError(f"nothing to resume: {run_dir} is not a lorabudget run directory")
    if files.finished():
        raise LorabudgetError(f"{run_dir} has finished training; nothing to resume")
    saved, given = _flatten(files.saved_config_values()), _flatten(cfg.to_dict())
    changed = [k for k in sorted(set(saved) | set(given)) if saved.get(k) != given.get(k) and k != "training.threads"]
    if changed:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {given.get(k)!r}" for k in changed[:3])
        raise LorabudgetError(
            f"the config differs from the one {run_dir} was started with ({shown}); resume with the same "
            "config and --set values"
        )


def check_run_target(cfg: RunConfig, run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Check the run directory a new run (or a resumed one) will use, before any work."""
    from lorabudget.rundir.layout import RunDir
    from lorabudget.rundir.lifecycle import check_can_create

    if resume and overwrite:
        raise LorabudgetError("--resume continues a run and --overwrite replaces it: pass only one")
    if resume:
        check_resumable(cfg, run_dir)
        check_can_create(RunDir(run_dir).checkpoint_dir)
    elif run_dir.exists() and not overwrite:
        raise LorabudgetError(
            f"run directory {run_dir} exists; pass --overwrite to replace it or --resume to continue it"
        )
    elif run_dir.exists() and not RunDir(run_dir).is_run():
        raise LorabudgetError(f"{run_dir} exists and is not a lorabudget run directory; choose another --output")
    else:
        check_can_create(run_dir)


def prepare_run(
    config: ConfigSource,
    data: Any,
    validation: Any,
    output: Union[str, Path, None],
    overrides: Overrides,
    resume: bool,
    overwrite: bool,
    columns: dict[str, Optional[str]],
    trust_pickle: bool = False,
) -> tuple[RunConfig, Path]:
    """The resolved config and checked run directory of a train or distill call."""
    from lorabudget.rundir.lifecycle import is_main_launch_process

    if resume and overwrite:
        raise LorabudgetError("--resume continues a run and --overwrite replaces it: pass only one")
    # Every process of a launch reads the classes from the data the same way; the main one checks the folder.
    cfg = resolve_config(
        config,
        overrides,
        data=data,
        validation=validation,
        trust_pickle=trust_pickle,
        classes_from_data=True,
        **columns,
    )
    run_dir = Path(output) if output is not None else Path("runs") / cfg.name
    if is_main_launch_process():
        check_run_target(cfg, run_dir, resume, overwrite)
    return cfg, run_dir


def train_into(run_dir: Path, fit: Callable[[Path], Any], overwrite: bool, resume: bool) -> None:
    """Run ``fit(folder)`` in the locked run directory (a sibling folder while ``overwrite`` replaces a
    finished run). A stopped run says whether it can be resumed (``Terminated.resumable``)."""
    from lorabudget.errors import TrainingDiverged
    from lorabudget.rundir.lifecycle import run_directory

    with run_directory(run_dir, overwrite=overwrite, resume=resume) as folder:
        try:
            fit(folder)
        except TrainingDiverged as err:
            if folder != run_dir:
                err.kept = f"the new run was discarded and {run_dir} is left as it was"
            raise
        except Terminated as err:  # SIGTERM/SIGHUP: the lock is released on the way out
            if folder != run_dir:
                err.detail = f"the new run was discarded and {run_dir} is left as it was"
            else:
                err.resumable, err.run_dir = bool(err.detail), run_dir  # resumable when a checkpoint was saved
            raise


def train(
    config: ConfigSource,
    data: Any = None,
    *,
    validation: Any = None,
    output: Union[str, Path, None] = None,
    overrides: Overrides = None,
    resume: bool = False,
    overwrite: bool = False,
    text_column: Optional[str] = None,
    text_pair_column: Optional[str] = None,
    label_column: Optional[str] = None,
    trust_pickle: bool = False,
    report: bool = True,
    problem_type: Optional[str] = None,
) -> Run:
    """Train ``config`` on ``data`` into a run directory and return the :class:`Run`.

    ``config``: a preset name, a YAML path, a dict or a :class:`~lorabudget.runconfig.RunConfig`.
    ``data``/``validation``: a path, a pandas DataFrame, a ``datasets.Dataset`` or a list of
    ``(text, label)`` / ``(text, text_pair, label)`` tuples (``None``: the config's ``data.train``).
    ``output``: the run directory (default ``runs/<config name>``); an existing one is refused unless
    ``resume`` (continue it from its checkpoint) or ``overwrite`` (replace it once the new run finishes).
    ``overrides``: dotted config keys, e.g. ``{"training.max_steps": 3}``. Over budget raises
    :class:`~lorabudget.errors.BudgetExceededError` before anything is written. ``problem_type``:
    ``"multi_label"`` for rows with any number of classes (a shortcut for ``model.problem_type``; a
    DataFrame's label cells may then be lists of class names).
    """
    from lorabudget.training.loop import train as train_loop

    if problem_type is not None:
        overrides = {**override_items(overrides), "model.problem_type": problem_type}
    columns = {"text_column": text_column, "text_pair_column": text_pair_column, "label_column": label_column}
    cfg, run_dir = prepare_run(config, data, validation, output, overrides, resume, overwrite, columns, trust_pickle)
    train_into(run_dir, lambda folder: train_loop(cfg, folder, log=say, resume=resume), overwrite, resume)
    write_run_report(run_dir, report)
    return Run(run_dir)


def distill(
    config: ConfigSource,
    data: Any = None,
    *,
    teacher: Union[None, str, Path, Sequence[Union[str, Path]]] = None,
    unlabelled: Sequence[Union[str, Path]] = (),
    transfer_fraction: Optional[float] = None,
    validation: Any = None,
    output: Union[str, Path, None] = None,
    overrides: Overrides = None,
    resume: bool = False,
    overwrite: bool = False,
    text_column: Optional[str] = None,
    text_pair_column: Optional[str] = None,
    label_column: Optional[str] = None,
    trust_pickle: bool = False,
    report: bool = True,
) -> Run:
    """Train the budgeted student ``config`` with knowledge distillation and return its :class:`Run`.

    ``teacher``: a finished run directory or a config/preset trained first (several: an ensemble whose
    probabilities are averaged; default ``distill.teacher``). ``unlabelled``: extra text files taught by
    the teacher alone. ``transfer_fraction``: share of the labelled rows used without their labels.
    The other arguments are :func:`train`'s.
    """
    from lorabudget.training.distill import distill as distill_loop

    columns = {"text_column": text_column, "text_pair_column": text_pair_column, "label_column": label_column}
    cfg, run_dir = prepare_run(config, data, validation, output, overrides, resume, overwrite, columns, trust_pickle)
    teachers = [str(teacher)] if isinstance(teacher, (str, Path)) else [str(t) for t in teacher or ()]

    def fit(folder: Path) -> None:
        distill_loop(
            cfg,
            folder,
            teacher=teachers or None,
            unlabelled=[str(u) for u in unlabelled],
            log=say,
            resume=resume,
            transfer_fraction=transfer_fraction,
        )

    train_into(run_dir, fit, overwrite, resume)
    write_run_report(run_dir, report)
    return Run(run_dir)
