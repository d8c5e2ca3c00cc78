"""CSV and TSV text into a table, and the layouts told apart: a header row naming the columns, the
original AG News corpus (class 1..4, title, description), two columns text and label (either order),
or one text column.

A first row is a header when it names a known or given column, or when its cell in the label column
is not a label of that column: the rest of the column repeats a few classes (each seen more than once)
and the first row's value is not among them. A class seen only once, in row 0, is a header, never a
class. When neither reading is safe the file is refused with one line asking for a header."""

from __future__ import annotations

import csv
import io
from collections import Counter
from typing import Optional, Sequence

import pandas as pd

from lorabudget.data.columns import KNOWN_NAMES, NO_COLUMNS, Columns, check_unique_columns, find_column
from lorabudget.data.labelkeys import is_int_key, label_key
from lorabudget.errors import LorabudgetError


def parse_csv(data: bytes, source: str, sep: str) -> pd.DataFrame:
    """Every cell as text, no header assumed (the layout decides); read from bytes already in memory,
    so that a pipe is read once and a parse error can be explained from the same text."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise LorabudgetError(f"{source}: not a readable CSV file ({str(err).splitlines()[0]})") from None
    if not text.strip():
        raise LorabudgetError(f"{source}: the file is empty")
    try:
        return pd.read_csv(io.StringIO(text), header=None, dtype=str, keep_default_na=False, sep=sep)
    except pd.errors.EmptyDataError:
        raise LorabudgetError(f"{source}: the file is empty") from None
    except pd.errors.ParserError as err:
        why = field_count_problem(text, sep) or str(err).splitlines()[0]
        raise LorabudgetError(f"{source}: not a readable CSV file ({why})") from None


def field_count_problem(text: str, sep: str) -> Optional[str]:
    """Name the line whose field count differs from most lines (pandas blames the line after a short
    first row, since it takes the first row's count as the expected one)."""
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
        counts = [(reader.line_num, len(record)) for record in reader]
    except csv.Error:
        return None
    if not counts:
        return None
    usual = Counter(n for _, n in counts).most_common(1)[0][0]
    odd = next(((line, n) for line, n in counts if n != usual), None)
    if odd is None:
        return None
    return f"line {odd[0]} has {odd[1]} fields, most lines have {usual}"


def csv_layout(
    raw: pd.DataFrame, source: str, columns: Columns = NO_COLUMNS, class_names: Optional[Sequence[str]] = None
) -> tuple[pd.DataFrame, int]:
    """Named columns from a header-less read, and the label base (0, or 1 in AG News's layouts).

    ``class_names`` (when known) tell a first row whose label cell is a class apart from a header.
    """
    raw = raw.copy(deep=False)
    first = [str(v).strip().lower() for v in raw.iloc[0]]
    given = {c.strip().lower() for c in columns.names()}
    if any(cell in KNOWN_NAMES or cell in given for cell in first):
        return _with_header(raw, source, columns)
    if columns.names():
        raise LorabudgetError(
            f"{source}: the first row names no column given by data.text_column, data.text_pair_column or "
            "data.label_column; add a header row naming them"
        )
    ncols = raw.shape[1]
    if ncols == 1:
        raw.columns = ["text"]
        return raw, 0
    if ncols not in (2, 3):
        raise LorabudgetError(
            f"{source}: cannot tell the layout of a {ncols}-column CSV without a header; add a header row "
            "naming the 'text' (or 'title' and 'description') and 'label' columns"
        )
    label_at = 0 if ncols == 3 else _label_position(raw)
    header = first_row_is_header(raw.iloc[:, label_at].tolist(), class_names)
    if header is None:
        shown = ", ".join(str(v).strip()[:30] for v in raw.iloc[0])
        raise LorabudgetError(
            f"{source}: cannot tell whether the first row ({shown}) is a header or data; add a header row "
            "naming the columns (e.g. text,label), or name them with --text-column and --label-column"
        )
    roles = ["label", "title", "description"] if ncols == 3 else ["label", "text"][:: 1 if label_at == 0 else -1]
    base = 1 if ncols == 3 else 0  # the original corpus numbers its classes 1..4
    if not header:
        raw.columns = roles
        return raw, base
    frame = _drop_first_row(raw)
    frame.attrs["roles"] = dict(zip(roles, frame.columns))
    return frame, base


def _drop_first_row(raw: pd.DataFrame) -> pd.DataFrame:
    frame = raw.iloc[1:].reset_index(drop=True)
    frame.columns = [str(v).strip() for v in raw.iloc[0]]
    return frame


def _with_header(raw: pd.DataFrame, source: str, columns: Columns) -> tuple[pd.DataFrame, int]:
    frame = _drop_first_row(raw)
    check_unique_columns(frame.columns, source)
    return frame, header_base(frame, columns, source)


def header_base(frame: pd.DataFrame, columns: Columns, source: str) -> int:
    """1 when the label column is Kaggle's ``Class Index`` (AG News numbered from 1), else 0."""
    label = columns.label.strip().lower() if columns.label else None
    found = find_column(frame.columns, (label,) if label else ("class index",), source)
    return 1 if found is not None and str(found).strip().lower() == "class index" else 0


def _label_position(raw: pd.DataFrame) -> int:
    """Which of two columns holds the labels: the one all integers, else the one with fewer distinct
    values (texts rarely repeat; classes do). Row 0 is left out: it may be a header."""
    rows = raw.iloc[1:] if len(raw) > 1 else raw
    keys = [[k for k in map(label_key, rows[c].tolist()) if k is not None] for c in raw.columns]
    ints = [bool(k) and all(is_int_key(v) for v in k) for k in keys]
    if ints[0] != ints[1]:
        return 0 if ints[0] else 1
    return 0 if len(set(keys[0])) < len(set(keys[1])) else 1


def first_row_is_header(values: list, class_names: Optional[Sequence[str]] = None) -> Optional[bool]:
    """Whether the first of a label column's ``values`` is its header: True, False (data), or None
    when that cannot be told safely."""
    first = label_key(values[0])
    rest = [k for k in map(label_key, values[1:]) if k is not None]
    if first is None or not rest:
        return False  # an empty label cell is a data row missing its label; one row is data
    if class_names and first.lower() in {str(n).strip().lower() for n in class_names}:
        return False
    if is_int_key(first) or first.lower() in {k.lower() for k in rest}:
        return False
    # The rest of the column repeats a few classes: a value seen once, only at the top, names the column.
    if len(rest) >= 2 and len({k.lower() for k in rest}) <= max(1, len(rest) // 2):
        return True
    return None
