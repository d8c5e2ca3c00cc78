"""One spelling per label value: ``1``, ``"1"``, ``" 1 "`` and ``1.0`` are the same class, and a
missing value (``null``, NaN, an empty cell) is no label at all. Every reader (CSV layout detection,
class inference, label parsing) compares labels through :func:`label_key`, so they agree."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Optional


def label_key(value: object) -> Optional[str]:
    """The canonical text of a label value, or ``None`` when the value is missing.

    Integral numbers, whatever their type or spelling, become their decimal integer ("1.0" -> "1");
    other values are their stripped text. Booleans stay names ("True"), not 1 and 0.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        number = float(value)
        if math.isnan(number):
            return None
        return str(int(number)) if number.is_integer() else str(value)
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return None
    except ImportError:  # pragma: no cover - pandas is a dependency
        pass
    text = str(value).strip()
    if not text:
        return None
    return _integral_text(text) or text


def _integral_text(text: str) -> Optional[str]:
    """``"1"``, ``"+1"``, ``"01"``, ``"1.0"`` -> ``"1"``; anything not an integral number -> None."""
    try:
        return str(int(text))
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return None
    if math.isfinite(number) and number.is_integer():
        return str(int(number))
    return None


def is_int_key(key: Optional[str]) -> bool:
    """Whether a :func:`label_key` result is an integer id."""
    if key is None:
        return False
    try:
        int(key)
        return True
    except ValueError:
        return False
