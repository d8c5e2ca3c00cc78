"""A multi-label run's decisions outside ``predict``: the per-class thresholds of a run directory or an
export folder, the ``--threshold`` override, and sigmoid scores turned into label sets.

The thresholds live in the run's ``thresholds.json`` (chosen on the validation rows when training
ended, :class:`~lorabudget.rundir.layout.RunDir`); every export folder carries a copy of that file and
the same numbers in ``lorabudget_export.json`` under ``thresholds``, so an exported model decides as
its run does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from lorabudget.inference.multilabel import check_threshold, run_thresholds
from lorabudget.labelsets import DEFAULT_THRESHOLD, decide, sigmoid
from lorabudget.rundir.layout import THRESHOLDS as THRESHOLDS_FILE
from lorabudget.rundir.layout import RunDir, read_export_meta

__all__ = ["THRESHOLDS_FILE", "check_threshold", "is_multi_label", "label_sets", "run_thresholds", "thresholds_record"]


def is_multi_label(cfg: Any) -> bool:
    """Whether a run config (or its ``model`` section's values) is a multi-label run."""
    model = getattr(cfg, "model", None)
    if model is not None:
        return getattr(model, "problem_type", "single_label") == "multi_label"
    return ((cfg or {}).get("model") or {}).get("problem_type") == "multi_label"


def _thresholds_record(folder: Path) -> Optional[dict]:
    """``thresholds.json`` of a run directory or export folder; then an export's metadata; else None."""
    record = RunDir(folder).read_thresholds()
    if record is None:
        meta = read_export_meta(folder) or {}
        if meta.get("thresholds"):
            record = {"thresholds": meta["thresholds"]}
    return record


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
