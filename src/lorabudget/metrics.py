"""Classification metrics (scikit-learn) in one JSON-ready dict."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from lorabudget.metrics_multilabel import format_multilabel_metrics, multilabel_metrics
from lorabudget.stats import format_interval, rows_fingerprint, wilson_interval


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``logits`` [n, classes] in float64."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of ``labels`` under class probabilities ``probs`` [n, classes]."""
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())


def classification_metrics(
    logits: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    texts: Optional[Sequence[str]] = None,
    thresholds: Optional[Sequence[float]] = None,
) -> dict[str, Any]:
    """Accuracy with its Wilson 95% interval (``accuracy_ci95``) over ``n`` rows, macro P/R/F1, loss,
    per-class table, confusion matrix (rows: true, columns: predicted), and per row: ``confidence``
    (max class probability) and ``correct`` for calibration plots, ``predictions`` and gold
    ``labels`` so two runs evaluated on the same rows (same ``rows_fingerprint``, made from the labels
    and, when given, the ``texts``) can be compared with a paired test.

    Multi-label targets (0/1 ``[n, classes]``) give :func:`multilabel_metrics` instead (with
    ``thresholds`` per class, or chosen on these rows when None)."""
    if np.asarray(labels).ndim == 2:
        return multilabel_metrics(logits, labels, class_names, texts, thresholds)
    probs = softmax(logits)
    preds = probs.argmax(axis=1)
    n = int(len(labels))
    correct = preds == labels
    classes = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(labels, preds, labels=classes, zero_division=0)
    macro = precision_recall_fscore_support(labels, preds, labels=classes, average="macro", zero_division=0)
    return {
        "rows": n,
        "n": n,
        "accuracy": float(accuracy_score(labels, preds)),
        "accuracy_ci95": list(wilson_interval(int(correct.sum()), n)),
        "macro_precision": float(macro[0]),
        "macro_recall": float(macro[1]),
        "macro_f1": float(macro[2]),
        "loss": cross_entropy(probs, labels),
        "per_class": [
            {
                "class": name,
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        ],
        "confusion_matrix": confusion_matrix(labels, preds, labels=classes).tolist(),
        "class_names": list(class_names),
        "confidence": [round(float(c), 5) for c in probs.max(axis=1)],
        "correct": [bool(c) for c in correct],
        "predictions": [int(p) for p in preds],
        "labels": [int(y) for y in labels],
        "rows_fingerprint": rows_fingerprint(labels, texts),
    }


def _ci_text(m: dict[str, Any]) -> str:
    ci = m.get("accuracy_ci95")
    return f" (95% CI {format_interval(ci, percent=False)})" if ci else ""


def format_metrics(m: dict[str, Any]) -> str:
    if m.get("problem_type") == "multi_label":
        return format_multilabel_metrics(m)
    names = m["class_names"]
    width = max(10, *(len(n) + 2 for n in names))
    lines = [
        f"rows {m['rows']:,}   accuracy {m['accuracy']:.4f}{_ci_text(m)}   macro P {m['macro_precision']:.4f}   "
        f"macro R {m['macro_recall']:.4f}   macro F1 {m['macro_f1']:.4f}   loss {m['loss']:.4f}",
        "",
        f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}",
    ]
    for row in m["per_class"]:
        lines.append(
            f"{row['class']:<{width}}{row['precision']:>10.4f}{row['recall']:>10.4f}{row['f1']:>10.4f}{row['support']:>10,}"
        )
    lines += ["", "confusion matrix (rows: true class, columns: predicted)"]
    lines.append(" " * width + "".join(f"{n[: width - 1]:>{width}}" for n in names))
    for name, row in zip(names, m["confusion_matrix"]):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>{width},}" for v in row))
    return "\n".join(lines)
