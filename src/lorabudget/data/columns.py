"""Which column holds what: the names the readers look for, the columns a user names
(:class:`Columns`), and the checks that a name picks exactly one column."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional, Sequence

import pandas as pd

from lorabudget.config import RunConfig
from lorabudget.errors import LorabudgetError

TEXT_NAMES = ("text", "content", "sentence")
LABEL_NAMES = ("label", "labels", "class index", "class", "category")
TITLE_NAMES = ("title",)
DESCRIPTION_NAMES = ("description", "desc")
KNOWN_NAMES = frozenset(TEXT_NAMES + LABEL_NAMES + TITLE_NAMES + DESCRIPTION_NAMES + ("id",))


@dataclass(frozen=True)
class Columns:
    """Column names given by the user (``data.text_column`` ...); ``None`` finds the column by name."""

    text: Optional[str] = None
    text_pair: Optional[str] = None
    label: Optional[str] = None
    # Multi-label data: labels are sets (several names in one cell, a JSON list, or 0/1 class columns).
    multi_label: bool = False
    separator: str = "|"
    label_columns: Optional[tuple[str, ...]] = None

    @classmethod
    def of(cls, cfg: RunConfig) -> "Columns":
        d = cfg.data
        multi = cfg.model.problem_type == "multi_label"
        class_columns = tuple(str(c) for c in d.label_columns) if d.label_columns else None
        return cls(d.text_column, d.text_pair_column, d.label_column, multi, d.label_separator, class_columns)

    def names(self) -> list[str]:
        return [c for c in (self.text, self.text_pair, self.label, *(self.label_columns or ())) if c]


def _norm(name: object) -> str:
    return str(name).strip().lower()


def check_unique_columns(columns: Sequence[object], source: str) -> None:
    """Refuse a table with two columns of the same name: a lookup by that name would read both as one
    (pandas then yields a table where a column was expected, and rows go missing)."""
    counts = Counter(str(c).strip() for c in columns)
    repeated = [name for name, n in counts.items() if n > 1]
    if repeated:
        where = "; ".join(
            f"'{name}' is columns " + ", ".join(str(i + 1) for i, c in enumerate(columns) if str(c).strip() == name)
            for name in repeated
        )
        raise LorabudgetError(f"{source}: duplicate column names ({where}); give each column its own name")


def find_column(columns: Sequence[object], names: Sequence[str], source: str = "data") -> Optional[object]:
    """The column named by the first of ``names`` present (ignoring case and surrounding spaces)."""
    for name in names:
        hits = [c for c in columns if _norm(c) == name]
        if len(hits) > 1:
            raise LorabudgetError(
                f"{source}: columns " + " and ".join(f"'{c}'" for c in hits) + f" both read as '{name}'; "
                "rename one, or name the column to use with --text-column/--label-column"
            )
        if hits:
            return hits[0]
    return None


def named_column(frame: pd.DataFrame, name: str, key: str, source: str) -> object:
    """The column the user named (exactly, else ignoring case and surrounding spaces)."""
    if name in frame.columns:
        return name
    found = find_column(frame.columns, (_norm(name),), source)
    if found is None:
        raise LorabudgetError(
            f"{source}: no column '{name}' ({key}); found: " + ", ".join(str(c) for c in frame.columns)
        )
    return found


def role(frame: pd.DataFrame, name: str) -> Optional[object]:
    """The column a header-less layout (or a header told apart from data by its label cell) gave the
    role ``name`` (text, label, title, description)."""
    return frame.attrs.get("roles", {}).get(name)


NO_COLUMNS = Columns()  # every column found by name
