"""Loading labelled and unlabelled text data from the hub, local files or in-memory tables.

Supported inputs (see docs/guide/data.md):

* ``ag_news`` (or ``ag_news:test``): the Hugging Face dataset, train split by default.
* ``hub:REPO``, ``hub:REPO:SPLIT`` or ``hub:REPO:CONFIG:SPLIT``: any dataset ``datasets.load_dataset``
  reads, e.g. ``hub:nyu-mll/glue:sst2:train`` or ``hub:SetFit/sst5:test`` (train split by default).
* A folder written by ``datasets.Dataset.save_to_disk`` (a ``DatasetDict``: its ``train`` split).
* CSV/TSV: the original AG News corpus layout (no header; class 1..4, title, description), Kaggle's
  (header ``Class Index,Title,Description``, class 1..4), two columns text and label (either order,
  with or without a header of any names), or any file with a header naming ``text`` (or ``title``
  and ``description``) and optionally ``label`` (:mod:`lorabudget.data.csv_layout` tells them apart).
* JSON Lines (``.jsonl``/``.json``) and Parquet with the same column names.
* Pickle (``.pkl``/``.pickle``): a pickled ``datasets.Dataset`` or pandas DataFrame with a ``text``
  column, as the competition's unlabelled test file. Unpickling runs code from the file, so it is
  refused unless the caller passes ``trust_pickle=True`` (``--trust-pickle``, ``data.trust_pickle``).
* ``memory:NAME``: a pandas DataFrame given to :func:`register_frame` in this process.

Title and description are joined with one space. Labels may also be given as class names.
``data.text_column``, ``data.text_pair_column`` and ``data.label_column`` name the columns instead of
the automatic finding (:class:`Columns`); with a pair column the two texts are kept apart
(``TextData.pairs``) and tokenized as a pair. Class names of a run whose ``model.labels`` is null come
from :func:`infer_labels`. Duplicate column names, and rows without a label, are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from lorabudget.console import warn
from lorabudget.data.columns import (
    DESCRIPTION_NAMES,
    LABEL_NAMES,
    NO_COLUMNS,
    TEXT_NAMES,
    TITLE_NAMES,
    Columns,
    find_column,
    named_column,
    role,
)
from lorabudget.data.formats import (
    HUB_DATASETS,
    HUB_PREFIX,
    describe_source,
    forget_tables,
    is_hub_source,
    message_name,
    parse_hub_name,
    read_table,
)
from lorabudget.data.labels import infer_labels, labels_from, resolve_labels
from lorabudget.data.memory import register_frame
from lorabudget.errors import LorabudgetError

__all__ = [
    "DESCRIPTION_NAMES",
    "HUB_DATASETS",
    "HUB_PREFIX",
    "LABEL_NAMES",
    "TEXT_NAMES",
    "TITLE_NAMES",
    "Columns",
    "TextData",
    "default_validation_rows",
    "describe_source",
    "forget_tables",
    "infer_labels",
    "is_hub_source",
    "load_labelled",
    "load_unlabelled",
    "parse_hub_name",
    "read_table",
    "register_frame",
    "resolve_labels",
    "split_validation",
]

VALIDATION_FRACTION = 0.2  # the default validation split: this share of the rows ...
VALIDATION_CAP = 1000  # ... but no more rows than this (one standard error of accuracy is ~1 point at 90%)


@dataclass
class TextData:
    """Texts with optional integer labels, in the input's row order.

    ``rows`` holds each text's 0-based row number in the source (data rows, header excluded), so
    messages can point at the user's file even after empty rows were dropped.
    """

    texts: list[str]
    # int64 [n] in 0..num_labels-1; multi-label: float32 [n, num_labels] 0/1; None when unlabelled
    labels: Optional[np.ndarray]
    rows: np.ndarray  # int64 [n]
    source: str
    pairs: Optional[list[str]] = None  # the second text of each row for a sentence-pair task

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> "TextData":
        idx = np.asarray(indices, dtype=np.int64)
        return TextData(
            texts=[self.texts[i] for i in idx],
            labels=None if self.labels is None else self.labels[idx],
            rows=self.rows[idx],
            source=self.source,
            pairs=None if self.pairs is None else [self.pairs[i] for i in idx],
        )


def _texts_from(frame: pd.DataFrame, source: str, columns: Columns = NO_COLUMNS) -> pd.Series:
    if columns.text:
        return frame[named_column(frame, columns.text, "data.text_column", source)]
    text_col = find_column(frame.columns, TEXT_NAMES, source)
    if text_col is None:
        text_col = role(frame, "text")
    if text_col is not None:
        return frame[text_col]
    title_col = find_column(frame.columns, TITLE_NAMES, source) or role(frame, "title")
    desc_col = find_column(frame.columns, DESCRIPTION_NAMES, source) or role(frame, "description")
    if title_col is not None and desc_col is not None:

        def join(title: object, desc: object) -> object:
            parts = [p.strip() for p in (title, desc) if isinstance(p, str) and p.strip()]
            return " ".join(parts) if parts else None

        return pd.Series([join(t, d) for t, d in zip(frame[title_col], frame[desc_col])], index=frame.index)
    raise LorabudgetError(
        f"{source}: no text column; expected 'text' (or 'title' and 'description'; or name it with "
        "--text-column), found: " + ", ".join(str(c) for c in frame.columns)
    )


def _pairs_from(frame: pd.DataFrame, source: str, columns: Columns) -> Optional[pd.Series]:
    if not columns.text_pair:
        return None
    return frame[named_column(frame, columns.text_pair, "data.text_pair_column", source)]


def _empty_mask(texts: pd.Series) -> np.ndarray:
    return np.array([not (isinstance(t, str) and t.strip()) for t in texts], dtype=bool)


def _row_list(rows: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def load_labelled(
    source: str, class_names: Sequence[str], trust_pickle: bool = False, columns: Columns = NO_COLUMNS
) -> TextData:
    """Texts and labels for training or evaluation. Empty or non-text rows are dropped, with a warning
    (for pairs: rows where either text is empty); a row without a label is an error."""
    frame, base = read_table(source, trust_pickle, columns, class_names=class_names)
    where = message_name(source)
    texts = _texts_from(frame, where, columns)
    pairs = _pairs_from(frame, where, columns)
    labels = labels_from(frame, where, base, class_names, columns)
    empty = _empty_mask(texts) | (_empty_mask(pairs) if pairs is not None else False)
    rows = np.arange(len(frame), dtype=np.int64)
    if empty.any():
        warn(f"{where}: dropped {int(empty.sum())} empty or non-text rows (rows {_row_list(rows[empty])})")
    keep = ~empty
    if not keep.any():
        raise LorabudgetError(f"{where}: no rows with text")
    return TextData(
        texts=[t.strip() for t in texts[keep]],
        labels=labels[keep],
        rows=rows[keep],
        source=source,
        pairs=None if pairs is None else [t.strip() for t in pairs[keep]],
    )


def load_unlabelled(source: str, trust_pickle: bool = False, columns: Columns = NO_COLUMNS) -> TextData:
    """Texts for prediction, every row kept so output IDs match input rows.

    Empty or non-text rows are predicted from an empty string and reported in a warning.
    """
    frame, _ = read_table(source, trust_pickle, columns)
    where = message_name(source)
    texts = _texts_from(frame, where, columns)
    pairs = _pairs_from(frame, where, columns)
    empty = _empty_mask(texts) | (_empty_mask(pairs) if pairs is not None else False)
    rows = np.arange(len(frame), dtype=np.int64)
    if len(frame) == 0:
        raise LorabudgetError(f"{where}: no rows")
    if empty.any():
        warn(
            f"{where}: {int(empty.sum())} empty or non-text rows (rows {_row_list(rows[empty])}) are "
            "predicted from an empty text so that every input row keeps its ID"
        )
    cleaned = ["" if e else t.strip() for t, e in zip(texts, empty)]
    cleaned_pairs = None if pairs is None else ["" if e else t.strip() for t, e in zip(pairs, empty)]
    return TextData(texts=cleaned, labels=None, rows=rows, source=source, pairs=cleaned_pairs)


def default_validation_rows(n: int) -> int:
    """The validation split when none is configured: 20% of the rows, at most 1,000, at least one."""
    return max(1, min(VALIDATION_CAP, round(n * VALIDATION_FRACTION)))


def _validation_rows(n: int, size: float | int | None, where: str) -> int:
    if n < 2:
        raise LorabudgetError(
            f"{where}: {n} row{'s' if n != 1 else ''} with text: too few to split off validation rows; "
            "add rows or give a separate validation file (data.validation)"
        )
    if size is None:
        return default_validation_rows(n)
    n_val = int(size) if isinstance(size, int) else int(round(n * size))
    if 0 < n_val < n:
        return n_val
    most, least = n - 1, 1 / n
    suggestion = f"use a fraction such as 0.2, or a row count of at most {most:,}"
    if n_val <= 0:
        suggestion = f"use a fraction of at least {least:.2g}, or a row count such as {default_validation_rows(n):,}"
    raise LorabudgetError(
        f"data.validation_size={size} leaves no {'validation' if n_val <= 0 else 'training'} rows out of the "
        f"{n:,} rows of {where}; {suggestion}"
    )


def split_validation(
    data: TextData,
    size: float | int | None,
    seed: int,
    class_names: Optional[Sequence[str]] = None,
    log: Callable[[str], None] = warn,
) -> tuple[TextData, TextData]:
    """A deterministic split: ``size`` rows (int) or fraction (float) go to validation; ``None`` takes
    :func:`default_validation_rows`. A class left without training or validation rows is named in one
    line through ``log``."""
    n = len(data)
    n_val = _validation_rows(n, size, describe_source(data.source))
    order = np.random.default_rng(seed).permutation(n)
    train, validation = data.subset(np.sort(order[n_val:])), data.subset(np.sort(order[:n_val]))
    if data.labels is not None:
        _report_thin_classes(train, validation, class_names, log)
    return train, validation


def _report_thin_classes(
    train: TextData, validation: TextData, class_names: Optional[Sequence[str]], log: Callable[[str], None]
) -> None:
    if train.labels.ndim == 2:  # multi-label: positive rows per class
        size = train.labels.shape[1]
        in_train, in_val = train.labels.sum(axis=0).astype(int), validation.labels.sum(axis=0).astype(int)
    else:
        size = int(max(train.labels.max(initial=-1), validation.labels.max(initial=-1))) + 1
        size = max(size, len(class_names or ()))
        in_train = np.bincount(train.labels[train.labels >= 0], minlength=size)
        in_val = np.bincount(validation.labels[validation.labels >= 0], minlength=size)
    names = list(class_names) if class_names else [str(i) for i in range(size)]
    notes = []
    for c in range(size):
        total = int(in_train[c] + in_val[c])
        if total and not in_train[c]:
            notes.append(f"'{names[c]}' ({total} row{'s' if total > 1 else ''}) has no training rows")
        elif total and not in_val[c]:
            notes.append(f"'{names[c]}' ({total} row{'s' if total > 1 else ''}) has no validation rows")
    if notes:
        log(
            "validation split: class "
            + "; class ".join(notes)
            + ": add rows of these classes or give a separate validation file (data.validation)"
        )
