"""Labels: the label column, each row's class, the classes a data source holds (:func:`infer_labels`)
and a run's class set (:func:`resolve_labels`).

Every label value goes through :func:`~lorabudget.data.labelkeys.label_key`, so ``1``, ``"1"`` and
``1.0`` are one class, names match whatever their case, and a missing label (an empty cell, JSON
``null``, NaN) is refused with its row rather than becoming a class."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from lorabudget.config import AG_NEWS_SOURCES, RunConfig
from lorabudget.console import warn
from lorabudget.data.columns import LABEL_NAMES, NO_COLUMNS, Columns, find_column, named_column, role
from lorabudget.data.formats import describe_source, is_hub_source, message_name, read_table
from lorabudget.data.labelkeys import is_int_key, label_key
from lorabudget.data.multilabel import classes_of, label_sets, several_labels_row, targets_of
from lorabudget.errors import LorabudgetError


def label_column(frame: pd.DataFrame, source: str, columns: Columns) -> object:
    if columns.label_columns and not columns.multi_label:
        raise LorabudgetError(
            "config key 'data.label_columns' gives multi-label data (one 0/1 column per class); "
            "set model.problem_type=multi_label (--multi-label)"
        )
    if columns.label:
        return named_column(frame, columns.label, "data.label_column", source)
    label_col = find_column(frame.columns, LABEL_NAMES, source)
    if label_col is None:
        label_col = role(frame, "label")
    if label_col is None:
        raise LorabudgetError(
            f"{source}: no label column; expected one of {', '.join(LABEL_NAMES)} (or name it with "
            "--label-column), found: " + ", ".join(str(c) for c in frame.columns)
        )
    return label_col


def label_keys(frame: pd.DataFrame, col: object, source: str, separator: str = "|") -> list[str]:
    """Each row's label in its one spelling; a row without a label is an error naming it, and so is
    a column that holds several labels per row (:func:`several_labels_row`)."""
    values = frame[col].tolist()
    listed = next((row for row, v in enumerate(values) if isinstance(v, (list, tuple, np.ndarray))), None)
    keys = [None if isinstance(v, (list, tuple, np.ndarray)) else label_key(v) for v in values]
    several = several_labels_row(keys, separator) if listed is None else listed
    if several is not None:
        what = "holds a list of labels" if several == listed and len(values[several]) < 2 else "has several labels"
        shown = list(values[several]) if several == listed else values[several]
        raise LorabudgetError(f"{source}: row {several} {what} ({shown!r} in column '{col}'); pass --multi-label")
    missing = [row for row, key in enumerate(keys) if key is None]
    header = str(col).strip().lower()
    repeated = next((row for row, key in enumerate(keys) if key is not None and key.lower() == header), None)
    if repeated is not None:
        raise LorabudgetError(
            f"{source}: row {repeated} repeats the header (label '{keys[repeated]}' in column '{col}'); remove that row"
        )
    if missing:
        more = f" (and {len(missing) - 1} more rows)" if len(missing) > 1 else ""
        raise LorabudgetError(
            f"{source}: row {missing[0]}{more} has no label (an empty cell or null in column '{col}'); "
            "label every row or remove the unlabelled ones"
        )
    return keys  # type: ignore[return-value]


def labels_from(
    frame: pd.DataFrame, source: str, base: int, class_names: Sequence[str], columns: Columns = NO_COLUMNS
) -> np.ndarray:
    """Each row's class index in ``class_names``: integers are ids (counted from ``base``), other
    labels are names (any case). Names that are themselves numbers match as names first, unless the
    classes are the plain ids "0".."C-1". Multi-label data (``columns.multi_label``) gives float32
    ``[rows, classes]`` 0/1 targets instead."""
    if columns.multi_label:
        col = None if columns.label_columns else label_column(frame, source, columns)
        return targets_of(label_sets(frame, source, columns, col), class_names, source)
    col = label_column(frame, source, columns)
    keys = label_keys(frame, col, source, columns.separator)
    by_name = {str(name).strip().lower(): i for i, name in enumerate(class_names)}
    ids_only = all(str(name) == str(i) for i, name in enumerate(class_names))
    num = len(class_names)
    labels = np.empty(len(keys), dtype=np.int64)
    for row, key in enumerate(keys):
        name = key.lower()
        if is_int_key(key) and (ids_only or name not in by_name):
            label = int(key) - base
        else:
            label = by_name.get(name, -1)
        if not 0 <= label < num:
            value = frame[col].iloc[row]
            raise LorabudgetError(
                f"{source}: row {row}: label {value!r} is outside the class set "
                f"(this layout uses {base}..{base + num - 1}, or the class names {', '.join(class_names)})"
            )
        labels[row] = label
    return labels


@dataclass
class _Classes:
    """What a source's label column holds."""

    names: list[str]
    fmt: str  # "id" or "name"
    keys: set[str]  # the distinct labels, lower-cased
    base: int
    class_labels: Optional[list[str]]  # ClassLabel names, when the source declares them
    frame: pd.DataFrame
    column: object


def _classes_in(source: str, columns: Columns, trust_pickle: bool, hint: Optional[Sequence[str]] = None) -> _Classes:
    frame, base = read_table(source, trust_pickle, columns, class_names=hint)
    where = message_name(source)
    if columns.multi_label:
        col = None if columns.label_columns else label_column(frame, where, columns)
        names = classes_of(label_sets(frame, where, columns, col), columns, where)
        return _Classes(names, "name", {n.lower() for n in names}, 0, None, frame, col)
    col = label_column(frame, where, columns)
    keys = label_keys(frame, col, where, columns.separator)
    lowered = {k.lower() for k in keys}
    named = frame.attrs.get("class_labels", {}).get(col)
    if named:
        return _Classes(list(named), "id", lowered, 0, list(named), frame, col)
    if keys and all(is_int_key(k) for k in keys):
        ids = [int(k) - base for k in keys]
        if min(ids) < 0:
            raise LorabudgetError(f"{where}: integer labels must be {base} or more to number the classes")
        names, fmt = [str(i) for i in range(max(ids) + 1)], "id"
    else:
        # Names that differ only in case are one class (rows are matched ignoring case), spelled as most rows do.
        spellings: dict[str, Counter] = {}
        for key in keys:
            spellings.setdefault(key.lower(), Counter())[key] += 1
        names, fmt = sorted(c.most_common(1)[0][0] for c in spellings.values()), "name"
    if len(names) < 2:
        raise LorabudgetError(f"{where}: the label column '{col}' holds fewer than two classes ({', '.join(names)})")
    return _Classes(names, fmt, lowered, base, None, frame, col)


def infer_labels(
    source: str,
    columns: Columns = NO_COLUMNS,
    trust_pickle: bool = False,
    class_names: Optional[Sequence[str]] = None,
) -> tuple[list[str], str]:
    """``(class names, label format)`` read from a labelled source's label column.

    A ``ClassLabel`` column gives its names (format ``id``); integer labels 0..C-1 (1..C in the layouts
    numbered from 1) give C classes named "0".."C-1" (``id``); any other labels give their distinct
    values, sorted (``name``). ``class_names`` (when known) only help tell a CSV header from data.
    """
    found = _classes_in(source, columns, trust_pickle, class_names)
    return found.names, found.fmt


def _same_classes(found: _Classes, preset: Sequence[str]) -> bool:
    """Whether the data's labels are exactly a preset's classes: its ids 0..C-1 (from the layout's
    base), its ClassLabel names, or its names in any case."""
    wanted = [str(p).strip().lower() for p in preset]
    if found.class_labels is not None:
        return [n.lower() for n in found.class_labels] == wanted
    if found.fmt == "id":
        return {int(k) - found.base for k in found.keys} == set(range(len(preset)))
    return found.keys == set(wanted)


def _record_found_columns(cfg: RunConfig, frame: pd.DataFrame) -> None:
    """A header told from data by its label cell names columns no reader looks for: the run records
    them, so evaluation and prediction read the same columns (and a one-column file for prediction
    with that header is not mistaken for a text)."""
    roles = frame.attrs.get("roles", {})
    d = cfg.data
    if "text" in roles and "label" in roles and not (d.text_column or d.label_column or d.text_pair_column):
        d.text_column, d.label_column = str(roles["text"]), str(roles["label"])


def resolve_labels(cfg: RunConfig, log: Callable[[str], None] = warn, preset_labels: bool = False) -> RunConfig:
    """Fill ``model.labels`` (when null) and ``model.label_format`` from the training data, in place,
    and check that every training row has a label of the class set (a data error is raised here).

    ``preset_labels``: ``model.labels`` came from a shipped preset, not from the user. The preset's
    names are kept when the data's labels are exactly its classes; otherwise the classes found in the
    data replace them (one line through ``log`` says so). Labels the user gave force the class set.
    A run records both in its ``config.yaml``, so evaluation, prediction and exports use the same classes.
    """
    m, source = cfg.model, cfg.data.train
    if m.labels is not None and is_hub_source(source):
        # A hub dataset declares its classes (ClassLabel): reading it again only repeats them.
        if preset_labels and source.split(":")[0] in AG_NEWS_SOURCES:
            m.label_format = m.label_format or "id"
            return cfg
        if m.label_format is not None and not preset_labels:
            return cfg
    found = _classes_in(source, Columns.of(cfg), cfg.data.trust_pickle, m.labels)
    _record_found_columns(cfg, found.frame)
    if m.labels is not None and preset_labels:
        if _same_classes(found, m.labels):
            m.label_format = found.fmt
            return cfg
        log(
            f"{describe_source(source)}: its labels are not the preset's classes ({', '.join(m.labels)}); "
            f"using the {len(found.names)} classes found in the data ({', '.join(found.names)})"
        )
        m.labels = None
    if m.labels is None:
        names = found.names
        if m.num_labels is not None and found.fmt == "id" and len(names) <= m.num_labels:
            names = [str(i) for i in range(m.num_labels)]
        if m.num_labels is not None and len(names) != m.num_labels:
            raise LorabudgetError(
                f"model.num_labels is {m.num_labels} but {source} has {len(names)} classes ({', '.join(names)})"
            )
        m.labels, m.label_format = names, found.fmt
        return cfg
    wanted = {str(n).strip().lower() for n in m.labels}
    unknown = sorted(k for k in found.keys if not is_int_key(k) and k not in wanted)
    if unknown and found.fmt == "name":
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise LorabudgetError(
            f"{message_name(source)}: labels {shown} are not among model.labels ({', '.join(m.labels)}); "
            "to train on the data's own classes, set model.labels to null (--set model.labels=null)"
        )
    labels_from(found.frame, message_name(source), found.base, m.labels, Columns.of(cfg))
    if found.fmt == "id" and found.class_labels is None and len(found.names) < len(m.labels):
        log(
            f"{source}: the integer labels use classes 0..{len(found.names) - 1} of the {len(m.labels)} in "
            f"model.labels ({', '.join(m.labels)}); if this data has its own classes, pass --set model.labels=null"
        )
    m.label_format = found.fmt
    return cfg
