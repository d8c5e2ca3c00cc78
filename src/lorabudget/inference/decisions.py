"""A multi-label run's decisions outside ``predict``: the per-class thresholds of a run directory or an
export folder, the ``--threshold`` override, and sigmoid scores turned into label sets.

The thresholds live in the run's ``thresholds.json`` (chosen on the validation rows when training
ended, :class:`~lorabudget.rundir.layout.RunDir`); every export folder carries a copy of that file and
the same numbers in ``lorabudget_export.json`` under ``thresholds``, so an exported model decides as
its run does.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from lorabudget.errors import LorabudgetError
from lorabudget.labelsets import DEFAULT_THRESHOLD, decide, sigmoid
from lorabudget.rundir.layout import RunDir, read_export_meta

THRESHOLDS_FILE = "thresholds.json"


def is_multi_label(cfg: Any) -> bool:
    """Whether a run config (or its ``model`` section's values) is a multi-label run."""
    model = getattr(cfg, "model", None)
    if model is not None:
        return getattr(model, "problem_type", "single_label") == "multi_label"
    return ((cfg or {}).get("model") or {}).get("problem_type") == "multi_label"


def check_threshold(value: Optional[float]) -> Optional[float]:
    """``--threshold T`` (or a request's ``threshold``): None, or a number strictly between 0 and 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) < 1:
        raise LorabudgetError(f"threshold must be strictly between 0 and 1, not {value!r}")
    if math.isnan(float(value)):
        raise LorabudgetError("threshold must be strictly between 0 and 1, not nan")
    return float(value)


def _thresholds_record(folder: Path) -> Optional[dict]:
    """``thresholds.json`` of a run directory or export folder; then an export's metadata; else None."""
    reader = getattr(RunDir(folder), "read_thresholds", None)
    record = reader() if reader is not None and RunDir(folder).is_run() else None
    if record is None and (folder / THRESHOLDS_FILE).is_file():
        try:
            record = json.loads((folder / THRESHOLDS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise LorabudgetError(f"{folder / THRESHOLDS_FILE}: unreadable ({err})") from None
    if record is None:
        meta = read_export_meta(folder) or {}
        if meta.get("thresholds"):
            record = {"thresholds": meta["thresholds"]}
    return record


def run_thresholds(folder: Path, class_names: Sequence[str], override: Optional[float] = None) -> np.ndarray:
    """One threshold per class, in class order: ``override`` for every class when given, else the
    folder's recorded thresholds; a class they do not name (or a folder with none) gets 0.5."""
    names = list(class_names)
    if check_threshold(override) is not None:
        return np.full(len(names), float(override))
    record = _thresholds_record(Path(folder)) or {}
    recorded = record.get("thresholds") or {}
    return np.array([float(recorded.get(name, DEFAULT_THRESHOLD)) for name in names], dtype=np.float64)


def thresholds_record(folder: Path, class_names: Sequence[str]) -> dict[str, Any]:
    """What an export copies: the run's record as written, or the defaults said to be defaults."""
    record = _thresholds_record(Path(folder))
    if record is not None:
        return record
    return {"thresholds": {name: DEFAULT_THRESHOLD for name in class_names}, "chosen_on": "default", "rows": 0}


def label_sets(logits: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities [n, C], decisions [n, C] bool)`` of multi-label logits."""
    probs = sigmoid(np.asarray(logits))
    return probs, decide(probs, thresholds)
