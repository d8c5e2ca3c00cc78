"""What the Python API accepts as data, turned into the source strings the data layer reads.

A path stays a path. A pandas DataFrame, a ``datasets.Dataset`` or a list of ``(text, label)`` /
``(text, text_pair, label)`` tuples is registered as an in-memory table for this process
(:func:`lorabudget.data.load.register_frame`): the run's ``config.yaml`` then names it
``memory:<digest of its rows>``, so a resume with the same rows matches and another table does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from lorabudget.errors import LorabudgetError


@dataclass(frozen=True)
class Source:
    """A data source string and the column names its shape implies (``None``: found by name)."""

    source: str
    text_column: Optional[str] = None
    text_pair_column: Optional[str] = None
    label_column: Optional[str] = None


def _frame_of_tuples(rows: list) -> tuple[Any, dict[str, str]]:
    import pandas as pd

    widths = {len(row) if isinstance(row, (tuple, list)) else -1 for row in rows}
    if widths == {2}:
        frame = pd.DataFrame([tuple(r) for r in rows], columns=["text", "label"])
        return frame, {"text_column": "text", "label_column": "label"}
    if widths == {3}:
        frame = pd.DataFrame([tuple(r) for r in rows], columns=["text", "text_pair", "label"])
        return frame, {"text_column": "text", "text_pair_column": "text_pair", "label_column": "label"}
    raise LorabudgetError("a list of rows must hold (text, label) or (text, text_pair, label) tuples, all of one width")


def _frame_of_texts(rows: list) -> tuple[Any, dict[str, str]]:
    import pandas as pd

    return pd.DataFrame({"text": rows}), {"text_column": "text"}


def as_source(data: Any, what: str = "data", labelled: bool = True) -> Source:
    """``data`` (a path, DataFrame, ``datasets.Dataset``, or list of tuples; unlabelled: also a list of
    strings) as a :class:`Source`; anything else is a ``TypeError`` naming what was given."""
    import pandas as pd

    if isinstance(data, (str, Path)):
        return Source(str(data))
    hints: dict[str, str] = {}
    if isinstance(data, pd.DataFrame):
        frame = data
    elif hasattr(data, "to_pandas") and hasattr(data, "features"):  # datasets.Dataset
        frame = data.to_pandas()
        frame.attrs["class_labels"] = {
            col: list(feature.names) for col, feature in data.features.items() if hasattr(feature, "names")
        }
    elif isinstance(data, (list, tuple)) and data and all(isinstance(r, str) for r in data) and not labelled:
        frame, hints = _frame_of_texts(list(data))
    elif isinstance(data, (list, tuple)) and data:
        frame, hints = _frame_of_tuples(list(data))
    elif isinstance(data, (list, tuple)):
        raise LorabudgetError(f"{what} is empty")
    else:
        raise TypeError(
            f"{what} must be a file path, a pandas DataFrame, a datasets.Dataset or a list of (text, label) "
            f"tuples, not {type(data).__name__}"
        )
    from lorabudget.data.load import register_frame

    return Source(register_frame(frame), **hints)
