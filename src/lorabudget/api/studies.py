"""``search`` (budget-first Optuna search) and ``compare`` (runs side by side, with paired tests)."""

from __future__ import annotations

import copy
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from lorabudget.api.html_parts import image
from lorabudget.api.resolve import resolve_config
from lorabudget.config import ConfigSource, Overrides, config_values, load_yaml, override_items
from lorabudget.errors import LorabudgetError
from lorabudget.runconfig import RunConfig


@dataclass
class Comparison:
    """Runs ranked side by side: ``table`` (a DataFrame of ``compare.csv``), ``figure`` (the accuracy vs
    trainable parameters PNG, ``None`` when nothing could be plotted), ``markdown`` (``compare.md``)."""

    path: Path
    table: Any
    figure: Optional[Path]
    markdown: str

    def __repr__(self) -> str:
        return f"Comparison({len(self.table)} runs in {self.path})"

    def _repr_html_(self) -> str:
        parts = [self.table.to_html(index=False, na_rep="")]
        if self.figure is not None:
            parts.append(image(self.figure))
        return "".join(parts)


def compare(
    runs: Sequence[Union[str, Path]],
    *,
    output: Union[str, Path] = "runs/compare",
    names: Sequence[str] = (),
    allow_different_classes: bool = False,
) -> Comparison:
    """Rank ``runs`` (run directories) by their most trustworthy shared figure with 95% intervals and
    paired tests; write ``compare.md``, ``compare.csv`` and the figure into ``output``. Runs of different
    class sets are refused unless ``allow_different_classes`` (then each set is ranked on its own)."""
    import pandas as pd

    from lorabudget.report.compare import write_comparison
    from lorabudget.rundir.lifecycle import check_can_create, check_not_run_file

    if isinstance(runs, (str, Path)):
        raise TypeError("runs must be a list of run directories, not one path")
    run_dirs = [Path(r) for r in runs]
    for run in run_dirs:
        if not run.is_dir():
            raise LorabudgetError(f"run directory not found: {run}")
    out = Path(output)
    check_not_run_file(out, "--output")
    check_can_create(out / "compare.md")
    figure = out / "accuracy_vs_params.png"
    figure.unlink(missing_ok=True)  # a figure an earlier comparison left is not this one's
    path = write_comparison(run_dirs, out, names=list(names), allow_different_classes=allow_different_classes)
    table = pd.read_csv(path.with_name("compare.csv"))
    return Comparison(path, table, figure if figure.is_file() else None, path.read_text(encoding="utf-8"))


@dataclass
class Search:
    """A finished (or stopped) search: ``best_config`` (``best.yaml``, ``None`` when no trial finished),
    ``trials`` (a DataFrame of ``trials.csv``), ``study`` (the Optuna study), ``summary`` and ``path``."""

    path: Path
    summary: dict[str, Any]
    settings: Any

    @property
    def best_config(self) -> Optional[RunConfig]:
        from lorabudget.config import from_dict

        best = self.path / "best.yaml"
        return from_dict(load_yaml(best)) if best.is_file() else None

    @property
    def trials(self):
        import pandas as pd

        path = self.path / "trials.csv"
        return pd.read_csv(path) if path.is_file() else pd.DataFrame()

    @property
    def study(self):
        from lorabudget.search.study import open_study

        return open_study(self.settings)

    def __repr__(self) -> str:
        return f"Search({self.path}: {self.summary.get('trained', 0)} trials trained)"

    def _repr_html_(self) -> str:
        report = self.path / "search.md"
        head = f"<p>{html.escape(self.summary.get('message', ''))}</p>"
        return (
            head
            + self.trials.head(20).to_html(index=False, na_rep="")
            + (f"<p>Report: <code>{html.escape(str(report))}</code></p>" if report.is_file() else "")
        )


def search_config(config: ConfigSource, overrides: Overrides, trial_overrides: Overrides, data_args: dict[str, Any]):
    """(trial base values, best.yaml base values, config name): both resolved once, the classes read
    from the data once, so every trial and ``best.yaml`` share them."""
    best = resolve_config(config, overrides, classes_from_data=True, **data_args)
    if best.model.label_format is None:
        best.model.label_format = "id"  # classes given as a count (model.num_labels): named by their ids
    # The trials start from the same values as best.yaml (not from its resolved copy, so a trial setting
    # that changes the method gets that method's defaults) and share its classes.
    classes = {"model.labels": best.model.labels, "model.label_format": best.model.label_format}
    trial_items = {**override_items(overrides), **override_items(trial_overrides), **classes}
    trial_cfg = resolve_config(config, trial_items, classes_from_data=False, **data_args)
    if trial_cfg.data.train_on_validation:
        raise LorabudgetError(
            "a search chooses by validation rows its trials do not train on: drop data.train_on_validation "
            "(set it when retraining best.yaml on every labelled row)"
        )
    return trial_cfg.to_dict(), best.to_dict(), best.name


def search_space(config: ConfigSource, space: Union[None, str, Path, dict]) -> dict[str, Any]:
    """The raw search space: ``space`` (a file holding a ``search:`` section or the space itself, or a
    mapping), else the config file's own ``search:`` section, else the built-in default."""
    from lorabudget.search.space import default_space_raw

    if isinstance(space, dict):
        return copy.deepcopy(space)
    if space is not None:
        raw = load_yaml(space)
        return raw.get("search", raw) if isinstance(raw, dict) else raw
    if isinstance(config, (str, Path)):
        from lorabudget.config import resolve_config_path

        own = load_yaml(resolve_config_path(str(config))).get("search")
        if own is not None:
            return own
    elif isinstance(config, dict) and config.get("search") is not None:
        return copy.deepcopy(config["search"])
    return default_space_raw()


def search(
    config: ConfigSource,
    data: Any = None,
    *,
    trials: int,
    budget: Optional[int] = None,
    storage: Optional[str] = None,
    space: Union[None, str, Path, dict] = None,
    overrides: Overrides = None,
    trial_overrides: Overrides = None,
    output: Union[str, Path, None] = None,
    study_name: Optional[str] = None,
    text_column: Optional[str] = None,
    text_pair_column: Optional[str] = None,
    label_column: Optional[str] = None,
    progress: bool = True,
    **settings: Any,
) -> Search:
    """Search method, placement, ranks and learning rates under the budget with Optuna.

    ``trials``: trained trials in total. ``budget``: trainable-parameter budget (default the config's).
    ``storage``: ``postgresql://...``, ``sqlite:///FILE`` or ``journal:FILE`` (default SQLite in the
    search directory ``output``, ``runs/<study name>``). ``trial_overrides``: settings for the trials
    only (shorter training), left out of ``best.yaml``. Other keywords are :class:`SearchSettings`
    fields: ``timeout``, ``workers``, ``metric``, ``multi_objective``, ``pruner``, ``seed``,
    ``max_rejections``, ``warm_start``. ``metric``: ``accuracy``, ``macro_f1`` or ``micro_f1``; default
    ``micro_f1`` for a multi-label config (``model.problem_type: multi_label``), else ``accuracy``.
    """
    import importlib.util

    if importlib.util.find_spec("optuna") is None:
        raise LorabudgetError("lorabudget search needs optuna: pip install 'lorabudget[search]'")
    from lorabudget.search.study import SearchSettings
    from lorabudget.search.worker import run_search

    items = override_items(overrides)
    if budget is not None:
        items["budget.max_trainable_params"] = budget
    columns = {"text_column": text_column, "text_pair_column": text_pair_column, "label_column": label_column}
    config_values(config)  # a missing preset or file: one line before anything else
    raw_space = search_space(config, space)
    base, best_base, name = search_config(config, items, trial_overrides, {"data": data, **columns})
    if settings.get("workers", 1) > 1 and str(base["data"]["train"]).startswith("memory:"):
        raise LorabudgetError(
            "in-memory data lives only in this process, and workers > 1 start others: save the data to a "
            "file (df.to_csv) and pass its path, or use one worker"
        )
    name = study_name or f"{name}-search"
    if storage and storage.startswith("journal:"):
        storage = "journal:" + str(Path(storage[len("journal:") :]).expanduser().resolve())
    output = Path(output) if output is not None else Path("runs") / name
    from lorabudget.rundir.lifecycle import check_not_run_file

    check_not_run_file(output, "--output")
    shown = (
        list(trial_overrides)
        if isinstance(trial_overrides, (list, tuple))
        else [f"{k}={v}" for k, v in override_items(trial_overrides).items()]
    )
    s = SearchSettings(
        name=name,
        output=output,
        base=base,
        best_base=best_base,
        space=raw_space,
        trials=trials,
        storage=storage,
        trial_overrides=shown,
        **settings,
    )
    summary = run_search(s, progress=progress)
    return Search(Path(s.output), summary, s)
