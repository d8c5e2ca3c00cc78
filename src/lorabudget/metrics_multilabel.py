"""Multi-label metrics in one JSON-ready dict: micro and macro F1 with 95% intervals, subset accuracy
with its interval, Hamming loss, and a per-class table with each class's decision threshold.

Intervals: subset accuracy is a binomial proportion of rows, so it gets the Wilson interval
(closed form, as single-label accuracy). Micro and macro F1 are not proportions of rows; their 95%
intervals are percentile bootstraps over rows (:data:`BOOTSTRAP_RESAMPLES` resamples drawn with the
fixed seed :data:`BOOTSTRAP_SEED`, so the same inputs always give the same interval).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from lorabudget.labelsets import best_thresholds, decide, sigmoid
from lorabudget.stats import format_interval, rows_fingerprint, wilson_interval

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 20261206


def binary_cross_entropy(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean binary cross-entropy over every (row, class), from logits (stable for large magnitudes)."""
    x = np.asarray(logits, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    return float((np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))).mean()) if x.size else 0.0


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """F1 = 2tp / (2tp + fp + fn), 0 where nothing was true or predicted (scikit-learn's zero_division=0)."""
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros(np.broadcast(tp, denom).shape), where=denom > 0)


def _f1_intervals(pred: np.ndarray, truth: np.ndarray) -> tuple[list[float], list[float]]:
    """Percentile-bootstrap 95% intervals over rows of micro and macro F1."""
    n = len(truth)
    if n == 0:
        return [0.0, 1.0], [0.0, 1.0]
    tp, fp, fn = (pred & truth).astype(float), (pred & ~truth).astype(float), (~pred & truth).astype(float)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=BOOTSTRAP_RESAMPLES).astype(float)  # [B, n]
    TP, FP, FN = weights @ tp, weights @ fp, weights @ fn  # [B, C]
    micro = _f1(TP.sum(axis=1), FP.sum(axis=1), FN.sum(axis=1))
    macro = _f1(TP, FP, FN).mean(axis=1)
    return [float(v) for v in np.percentile(micro, [2.5, 97.5])], [float(v) for v in np.percentile(macro, [2.5, 97.5])]


def multilabel_metrics(
    logits: np.ndarray,
    targets: np.ndarray,
    class_names: Sequence[str],
    texts: Optional[Sequence[str]] = None,
    thresholds: Optional[Sequence[float]] = None,
) -> dict[str, Any]:
    """Metrics of sigmoid scores ``logits`` [n, C] against 0/1 ``targets`` [n, C].

    ``thresholds`` (one per class) decide the predicted classes; ``None`` chooses them on these rows
    (each class's F1-maximising threshold, :func:`~lorabudget.labelsets.best_thresholds`), which is
    how validation picks them: the figures are then optimistic for these rows, and the dict says so
    (``thresholds_chosen_on_these_rows``). Per row: ``predictions`` and gold ``labels`` (class ids),
    ``correct`` (the predicted set is exactly the gold set) and ``probabilities``, so two runs on the
    same rows (same ``rows_fingerprint``) can be paired and the report can draw precision-recall curves.
    """
    probs = sigmoid(np.asarray(logits))
    truth = np.asarray(targets) > 0.5
    chosen = thresholds is None
    cuts = best_thresholds(probs, truth) if chosen else np.asarray(thresholds, dtype=np.float64)
    pred = decide(probs, cuts)
    n = int(len(truth))
    tp, fp, fn = (pred & truth).sum(axis=0), (pred & ~truth).sum(axis=0), (~pred & truth).sum(axis=0)
    per_f1 = _f1(tp, fp, fn)
    precision = np.divide(tp, tp + fp, out=np.zeros(len(tp)), where=(tp + fp) > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros(len(tp)), where=(tp + fn) > 0)
    correct = (pred == truth).all(axis=1)
    micro_ci, macro_ci = _f1_intervals(pred, truth)
    subset = float(correct.mean()) if n else 0.0
    return {
        "problem_type": "multi_label",
        "primary_metric": "micro_f1",
        "rows": n,
        "n": n,
        "micro_f1": float(_f1(tp.sum(), fp.sum(), fn.sum())),
        "micro_f1_ci95": micro_ci,
        "macro_f1": float(per_f1.mean()) if len(per_f1) else 0.0,
        "macro_f1_ci95": macro_ci,
        "subset_accuracy": subset,
        "subset_accuracy_ci95": list(wilson_interval(int(correct.sum()), n)),
        "accuracy": subset,  # readers of single-label runs find a number here
        "accuracy_ci95": list(wilson_interval(int(correct.sum()), n)),
        "hamming_loss": float((pred != truth).mean()) if truth.size else 0.0,
        "loss": binary_cross_entropy(logits, truth),
        "thresholds_chosen_on_these_rows": chosen,
        "per_class": {
            str(name): {
                "precision": float(precision[j]),
                "recall": float(recall[j]),
                "f1": float(per_f1[j]),
                "support": int(truth[:, j].sum()),
                "threshold": float(cuts[j]),
            }
            for j, name in enumerate(class_names)
        },
        "class_names": list(class_names),
        "predicted_count": [int(k) for k in pred.sum(axis=1)],
        "true_count": [int(k) for k in truth.sum(axis=1)],
        "correct": [bool(c) for c in correct],
        "predictions": [[int(j) for j in np.flatnonzero(row)] for row in pred],
        "labels": [[int(j) for j in np.flatnonzero(row)] for row in truth],
        "probabilities": np.round(probs, 5).tolist(),
        "rows_fingerprint": rows_fingerprint(truth.astype(np.int64), texts),
    }


def format_multilabel_metrics(m: dict[str, Any]) -> str:
    """The metrics line and the per-class table of :func:`multilabel_metrics`."""
    names = m["class_names"]
    width = max(10, *(len(n) + 2 for n in names))
    note = " (thresholds chosen on these rows)" if m.get("thresholds_chosen_on_these_rows") else ""
    lines = [
        f"rows {m['rows']:,}   micro F1 {m['micro_f1']:.4f} (95% CI "
        f"{format_interval(m['micro_f1_ci95'], percent=False)})   macro F1 {m['macro_f1']:.4f} (95% CI "
        f"{format_interval(m['macro_f1_ci95'], percent=False)})   subset accuracy {m['subset_accuracy']:.4f}   "
        f"Hamming loss {m['hamming_loss']:.4f}   loss {m['loss']:.4f}{note}",
        "",
        f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}{'threshold':>11}",
    ]
    for name in names:
        row = m["per_class"][name]
        lines.append(
            f"{name:<{width}}{row['precision']:>10.4f}{row['recall']:>10.4f}{row['f1']:>10.4f}"
            f"{row['support']:>10,}{row['threshold']:>11.3f}"
        )
    return "\n".join(lines)


def thresholds_of(m: dict[str, Any]) -> dict[str, float]:
    """Each class's threshold from a metrics dict (for ``thresholds.json``)."""
    return {name: float(m["per_class"][name]["threshold"]) for name in m["class_names"]}
