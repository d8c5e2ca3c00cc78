"""Multi-label rows: each row's class-name set, read from one label cell (names joined by
``data.label_separator``, or a JSON list) or from one 0/1 column per class (``data.label_columns``);
the classes a source holds; and the check that tells a single-label run it was given multi-label data.

Rows are numbered as the other data errors number them (:mod:`lorabudget.data.labels`)."""

from __future__ import annotations

from collections import Counter
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from lorabudget.data.columns import Columns, named_column
from lorabudget.data.labelkeys import is_int_key, label_key
from lorabudget.errors import LorabudgetError
from lorabudget.labelsets import SEPARATORS, multi_hot, split_cell


def _is_list(cell: object) -> bool:
    return isinstance(cell, (list, tuple, np.ndarray))


def _cell_names(cell: object, separator: str, row: int, source: str, col: object) -> list[str]:
    """One label cell's class names; a JSON list's name containing the separator is an error."""
    if _is_list(cell):
        names = [label_key(c) for c in cell]
        names = [n for n in names if n is not None]
        bad = next((n for n in names if separator in n), None)
        if bad is not None:
            raise LorabudgetError(
                f"{source}: row {row}: class name {bad!r} in column '{col}' contains the label separator "
                f"{separator!r}; rename the class or set data.label_separator to another of |, ',' or ';'"
            )
        return list(dict.fromkeys(names))
    key = label_key(cell)
    if key is None:
        return []
    return list(dict.fromkeys(label_key(n) or n for n in split_cell(key, separator)))


def _class_column_sets(frame: pd.DataFrame, source: str, columns: Columns) -> list[list[str]]:
    """Label sets from one 0/1 column per class: the column names are the classes."""
    found = [named_column(frame, name, "data.label_columns", source) for name in columns.label_columns or ()]
    for col in found:
        if columns.separator in str(col):
            raise LorabudgetError(
                f"{source}: row 0: class column '{col}' (data.label_columns) contains the label separator "
                f"{columns.separator!r}; rename the column or set data.label_separator to another of |, ',' or ';'"
            )
    names = [str(c).strip() for c in columns.label_columns or ()]
    sets: list[list[str]] = [[] for _ in range(len(frame))]
    for name, col in zip(names, found):
        for row, value in enumerate(frame[col].tolist()):
            key = label_key(value)
            if key in ("1", "True", "true"):
                sets[row].append(name)
            elif key not in ("0", "False", "false"):
                raise LorabudgetError(
                    f"{source}: row {row}: column '{col}' holds {value!r}; a class column (data.label_columns) "
                    "holds 0 or 1"
                )
    return sets


def label_sets(frame: pd.DataFrame, source: str, columns: Columns, label_col: Optional[object]) -> list[list[str]]:
    """Each row's class names (possibly none), in the spelling of the data."""
    if columns.separator not in SEPARATORS:  # before any cell is split by it
        raise LorabudgetError(
            f"config key 'data.label_separator': must be one of |, ',' or ';', got {columns.separator!r}"
        )
    if columns.label_columns:
        return _class_column_sets(frame, source, columns)
    return [
        _cell_names(cell, columns.separator, row, source, label_col)
        for row, cell in enumerate(frame[label_col].tolist())
    ]


def classes_of(sets: Sequence[Sequence[str]], columns: Columns, source: str) -> list[str]:
    """The sorted distinct class names of ``sets`` (names differing only in case are one class,
    spelled as most rows do); the class columns' own order when the data gives class columns."""
    if columns.label_columns:
        return [str(c).strip() for c in columns.label_columns]
    spellings: dict[str, Counter] = {}
    for names in sets:
        for name in names:
            spellings.setdefault(name.lower(), Counter())[name] += 1
    # Integer ids (a hub dataset's list of class ids) sort as numbers: "2" before "10".
    names = sorted((c.most_common(1)[0][0] for c in spellings.values()), key=lambda n: (not is_int_key(n), _num(n), n))
    if len(names) < 2:
        raise LorabudgetError(
            f"{source}: the labels hold fewer than two classes ({', '.join(names) or 'none'}); "
            "a multi-label run needs two or more"
        )
    return names


def _num(name: str) -> int:
    return int(name) if is_int_key(name) else 0


def targets_of(sets: Sequence[Sequence[str]], class_names: Sequence[str], source: str) -> np.ndarray:
    """float32 ``[rows, classes]`` 0/1 targets; a name outside ``class_names`` is an error naming its row."""
    by_name = {str(n).strip().lower(): str(n) for n in class_names}
    canonical = []
    for row, names in enumerate(sets):
        unknown = [n for n in names if n.lower() not in by_name]
        if unknown:
            raise LorabudgetError(
                f"{source}: row {row}: label {unknown[0]!r} is outside the class set ({', '.join(class_names)})"
            )
        canonical.append([by_name[n.lower()] for n in names])
    return multi_hot(canonical, list(class_names))


def warn_empty_classes(targets: np.ndarray, class_names: Sequence[str], where: str) -> Optional[str]:
    """The warning line for classes without a positive row among ``targets`` (None: every class has one)."""
    empty = [str(class_names[j]) for j in np.flatnonzero(targets.sum(axis=0) == 0)]
    if not empty:
        return None
    return (
        f"{where}: class{'es' if len(empty) > 1 else ''} {', '.join(empty)} "
        f"{'have' if len(empty) > 1 else 'has'} no positive row; the model cannot learn "
        f"{'them' if len(empty) > 1 else 'it'} from these rows"
    )


def several_labels_row(keys: Sequence[Optional[str]], separator: str) -> Optional[int]:
    """The first row of a single-label column that looks multi-label, or None.

    A column looks multi-label when some cells contain ``separator`` and the names they split into are
    also labels of other rows on their own, or are few compared with the distinct joined cells
    (a handful of classes combined in many ways). A class name that merely contains the separator,
    such as ``"Arts|Crafts"`` with no ``"Arts"`` or ``"Crafts"`` row, passes.
    """
    joined = [(row, k) for row, k in enumerate(keys) if k is not None and separator in k]
    if not joined:
        return None
    singles = {k.lower() for k in keys if k is not None and separator not in k}
    cells = {k.lower() for _, k in joined}
    parts = {p.lower() for _, k in joined for p in split_cell(k, separator)}
    if parts & singles or (len(cells) >= 2 and len(parts) <= len(cells)):
        return joined[0][0]
    return None
