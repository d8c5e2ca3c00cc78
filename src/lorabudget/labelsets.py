"""Multi-label rows as data: class-name sets, multi-hot matrices, sigmoid scores and per-class thresholds.

Pure numpy, no torch: the data, training, inference, serving and report layers all read label sets
the same way. A multi-label run's targets are a float32 ``[rows, classes]`` matrix of 0/1; its scores
are sigmoid probabilities; a class is predicted where its probability reaches the class's threshold.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np

from lorabudget.errors import LorabudgetError

SEPARATORS = ("|", ",", ";")
"""Separators allowed between class names in one label cell (``data.label_separator``)."""
DEFAULT_THRESHOLD = 0.5


def check_label_settings(separator: str, label_columns: Optional[Sequence[str]], problem_type: str) -> None:
    """``data.label_separator`` and ``data.label_columns`` as ``config.validate`` checks them."""
    names = [str(c).strip() for c in label_columns or ()]
    if separator not in SEPARATORS:
        raise LorabudgetError(f"config key 'data.label_separator': must be one of |, ',' or ';', got {separator!r}")
    if names and problem_type != "multi_label":
        raise LorabudgetError(
            "config key 'data.label_columns' gives multi-label data; set model.problem_type=multi_label"
        )
    if names and (len(names) < 2 or len({n.lower() for n in names}) != len(names) or not all(names)):
        raise LorabudgetError(f"config key 'data.label_columns': name two or more distinct columns, got {names}")


def split_cell(cell: object, separator: str = "|") -> list[str]:
    """Class names in one label cell: ``"joy|anger"`` → ``["joy", "anger"]``; an empty or missing cell
    (or an empty list) → ``[]``; a list/tuple (JSON data) is taken as it is. Names are stripped."""
    if cell is None or (isinstance(cell, float) and np.isnan(cell)):
        return []
    if isinstance(cell, (list, tuple, np.ndarray)):
        return [str(c).strip() for c in cell if str(c).strip()]
    text = str(cell).strip()
    if not text:
        return []
    return [part.strip() for part in text.split(separator) if part.strip()]


def multi_hot(label_sets: Iterable[Sequence[str]], class_names: Sequence[str]) -> np.ndarray:
    """``[rows, classes]`` float32 0/1 targets; a name not in ``class_names`` raises KeyError."""
    index = {name: i for i, name in enumerate(class_names)}
    sets = list(label_sets)
    out = np.zeros((len(sets), len(class_names)), dtype=np.float32)
    for row, names in enumerate(sets):
        for name in names:
            out[row, index[name]] = 1.0
    return out


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Elementwise logistic function, stable for large magnitudes."""
    x = np.asarray(logits, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def decide(probabilities: np.ndarray, thresholds: np.ndarray | float) -> np.ndarray:
    """Boolean ``[rows, classes]``: a class is predicted where its probability reaches its threshold."""
    return np.asarray(probabilities) >= np.asarray(thresholds, dtype=np.float64)


def names_of(decisions: np.ndarray, class_names: Sequence[str]) -> list[list[str]]:
    """The predicted class names of each row, in class order."""
    return [[class_names[j] for j in np.flatnonzero(row)] for row in np.asarray(decisions)]


def join_names(names: Sequence[str], separator: str = "|") -> str:
    """One output cell: names joined by ``separator``; empty for none."""
    return separator.join(str(n) for n in names)


def best_thresholds(probabilities: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class thresholds that maximise each class's F1 on these rows (validation rows).

    Candidates are the midpoints between consecutive distinct scores; ties keep the higher
    threshold. A class with no positive row keeps :data:`DEFAULT_THRESHOLD` (nothing to fit on).
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    truth = np.asarray(targets) > 0.5
    out = np.full(probs.shape[1], DEFAULT_THRESHOLD)
    for j in range(probs.shape[1]):
        positives = int(truth[:, j].sum())
        if positives == 0:
            continue
        order = np.argsort(-probs[:, j], kind="stable")
        scores, hits = probs[order, j], truth[order, j]
        tp = np.cumsum(hits)
        predicted = np.arange(1, len(scores) + 1)
        f1 = 2 * tp / (predicted + positives)
        # A cut after position i is valid only where the next score differs (or at the end).
        valid = np.append(scores[1:] < scores[:-1], True)
        f1 = np.where(valid, f1, -1.0)
        best = int(np.argmax(f1))
        nxt = scores[best + 1] if best + 1 < len(scores) else 0.0
        out[j] = (scores[best] + nxt) / 2 if best + 1 < len(scores) else scores[best] / 2
    return out
