"""In-memory tables for the Python API: a DataFrame registered here is read by every data reader as if
it were a file with that header, through a ``memory:NAME`` source string.

The registry is per process: a source string names a frame only in the process that registered it
(a launched multi-process run, or a later command, cannot read it)."""

from __future__ import annotations

import hashlib
import threading
from typing import Optional

import pandas as pd

from lorabudget.errors import LorabudgetError

MEMORY_PREFIX = "memory:"

_frames: dict[str, pd.DataFrame] = {}
_lock = threading.Lock()


def is_memory_source(source: str) -> bool:
    return isinstance(source, str) and source.startswith(MEMORY_PREFIX)


def register_frame(frame: pd.DataFrame, name: Optional[str] = None) -> str:
    """Keep a copy of ``frame`` and return its source string, ``memory:NAME``.

    Without ``name`` the frame is named by its content: the first 12 hex digits of the sha256 of its
    CSV text (``frame.to_csv(index=False)``), so registering the same table twice gives the same source.
    A name registered again names the newer frame.
    """
    if not isinstance(frame, pd.DataFrame):
        raise LorabudgetError(f"register_frame needs a pandas DataFrame, got {type(frame).__name__}")
    if name is None:
        name = hashlib.sha256(frame.to_csv(index=False).encode("utf-8")).hexdigest()[:12]
    elif not isinstance(name, str) or not name.strip():
        raise LorabudgetError("register_frame: the name must be a non-empty string")
    with _lock:
        _frames[name] = frame.copy(deep=True)
    return MEMORY_PREFIX + name


def registered_frame(source: str) -> pd.DataFrame:
    """A copy of the frame behind ``memory:NAME`` (callers may rename its columns)."""
    name = source[len(MEMORY_PREFIX) :]
    with _lock:
        frame = _frames.get(name)
    if frame is None:
        raise LorabudgetError(
            f"{source}: no in-memory table of that name in this process; in-memory data lives only in the "
            "process that registered it (register_frame), so pass a data file to other processes"
        )
    return frame.copy(deep=False)


def registered_rows(source: str) -> Optional[int]:
    """The row count of the frame behind ``memory:NAME``, or None when this process has none."""
    with _lock:
        frame = _frames.get(source[len(MEMORY_PREFIX) :])
    return None if frame is None else len(frame)


def forget_frame(source: str) -> None:
    """Drop the frame behind ``memory:NAME`` (a no-op for other sources): a notebook that predicts on
    many DataFrames keeps no copy of each."""
    if is_memory_source(source):
        with _lock:
            _frames.pop(source[len(MEMORY_PREFIX) :], None)
