"""A multi-label run's decisions: logits per row -> sigmoid probabilities -> the classes whose
probability reaches their threshold (``thresholds.json``, chosen on the validation rows; 0.5 for a
class it does not name; ``--threshold T`` for every class)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from lorabudget.errors import LorabudgetError
from lorabudget.inference.predictions import Predictions
from lorabudget.labelsets import DEFAULT_THRESHOLD, decide, join_names, sigmoid
from lorabudget.rundir.layout import THRESHOLDS, RunDir


def check_threshold(threshold: Optional[float]) -> None:
    """``--threshold`` must lie strictly between 0 and 1 (0 would predict every class, 1 none)."""
    if threshold is not None and not (isinstance(threshold, (int, float)) and math.isfinite(threshold)):
        raise LorabudgetError(f"--threshold must be a number between 0 and 1 (exclusive), got {threshold}")
    if threshold is not None and not 0 < threshold < 1:
        raise LorabudgetError(f"--threshold must be between 0 and 1 (exclusive), got {threshold}")


def run_thresholds(run_dir: Path, class_names: Sequence[str], override: Optional[float] = None) -> np.ndarray:
    """Each class's decision threshold: ``override`` for all, else the run's ``thresholds.json``."""
    check_threshold(override)
    if override is not None:
        return np.full(len(class_names), float(override))
    record = RunDir(run_dir).read_thresholds()
    if record is None and (Path(run_dir) / THRESHOLDS).exists():  # never a silent 0.5 for a damaged file
        raise LorabudgetError(
            f"{Path(run_dir) / THRESHOLDS}: not readable JSON; train the run again or pass --threshold"
        )
    chosen = (record or {}).get("thresholds", {})
    return np.array([float(chosen.get(str(name), DEFAULT_THRESHOLD)) for name in class_names])


def multilabel_predictions(logits: np.ndarray, class_names: Sequence[str], thresholds: np.ndarray) -> Predictions:
    """:class:`Predictions` whose ``labels`` are lists of class names (possibly empty)."""
    probs = sigmoid(logits)
    decided = decide(probs, thresholds)
    ids = [[int(j) for j in np.flatnonzero(row)] for row in decided]
    names = list(class_names)
    return Predictions([[names[j] for j in row] for row in ids], ids, probs, names)


def label_cell(ids: Sequence[int], class_names: Sequence[str], label_format: str) -> str:
    """One ``Label`` cell of a multi-label prediction: names (or ids) joined by ``|``; empty for none."""
    return join_names([class_names[j] if label_format == "name" else j for j in ids])
