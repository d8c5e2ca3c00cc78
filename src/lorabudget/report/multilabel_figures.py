"""The figures of a multi-label evaluation (instead of the confusion matrix and reliability diagram):
per-class F1 bars, the number of labels per row predicted against true, and one precision-recall
curve per class with the point its decision threshold picks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lorabudget.report.figures import _bar_labels
from lorabudget.report.plots import FIGSIZE, class_colors, fit_tick_labels, legend_below, pyplot, save_figure


def plot_per_class_f1(ev: dict, path: Path) -> None:
    plt = pyplot()
    names = ev["class_names"]
    f1 = np.array([ev["per_class"][n]["f1"] for n in names], dtype=float)
    support = [ev["per_class"][n]["support"] for n in names]
    fig, ax = plt.subplots(figsize=FIGSIZE)
    ax.bar(range(len(names)), f1, color=class_colors(len(names)))
    ax.axhline(ev["micro_f1"], color="black", linestyle="--", linewidth=1.2, label=f"micro F1 {ev['micro_f1']:.3f}")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1.15)
    ax.set(title=f"F1 per class ({ev.get('rows', 0):,} rows)", xlabel="class", ylabel="F1")
    fit_tick_labels(ax, "x")
    _bar_labels(
        ax, range(len(names)), np.maximum(f1, ev["micro_f1"]), [f"{v:.3f}\n{s:,} pos." for v, s in zip(f1, support)]
    )
    legend_below(ax, ncol=1)
    save_figure(fig, path)


def plot_label_counts(ev: dict, path: Path) -> None:
    """Rows by number of labels: predicted next to true (0, 1, 2, ... classes per row)."""
    plt = pyplot()
    predicted, true = np.asarray(ev["predicted_count"], dtype=int), np.asarray(ev["true_count"], dtype=int)
    top = int(max(predicted.max(initial=0), true.max(initial=0)))
    ks = np.arange(top + 1)
    p_rows, t_rows = np.bincount(predicted, minlength=top + 1), np.bincount(true, minlength=top + 1)
    fig, ax = plt.subplots(figsize=FIGSIZE)
    colors = class_colors(2)
    ax.bar(ks - 0.2, t_rows, width=0.4, color=colors[0], label="true")
    ax.bar(ks + 0.2, p_rows, width=0.4, color=colors[1], label="predicted")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_ylim(0, max(int(max(p_rows.max(initial=0), t_rows.max(initial=0))), 1) * 1.15)
    ax.set(title=f"Labels per row ({len(true):,} rows)", xlabel="classes in the row", ylabel="rows")
    legend_below(ax, ncol=2)
    save_figure(fig, path)


def precision_recall(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at every cut of ``scores`` (highest first); empty when no row is positive."""
    positives = int(truth.sum())
    if positives == 0:
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(truth[order])
    predicted = np.arange(1, len(scores) + 1)
    return tp / predicted, tp / positives


def plot_pr_curves(ev: dict, path: Path) -> None:
    plt = pyplot()
    names = ev["class_names"]
    probs = np.asarray(ev["probabilities"], dtype=float).reshape(-1, len(names))
    truth = np.zeros_like(probs, dtype=bool)
    for row, ids in enumerate(ev["labels"]):
        truth[row, ids] = True
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for j, (name, color) in enumerate(zip(names, class_colors(len(names)))):
        precision, recall = precision_recall(probs[:, j], truth[:, j])
        if not len(precision):
            continue
        ax.plot(recall, precision, color=color, linewidth=1.5, label=name)
        row = ev["per_class"][name]
        ax.plot([row["recall"]], [row["precision"]], "o", color=color, markersize=5)
    ax.set(
        xlim=(0, 1.02),
        ylim=(0, 1.05),
        xlabel="recall",
        ylabel="precision",
        title=f"Precision-recall per class (dots: thresholds; {ev.get('rows', 0):,} rows)",
    )
    legend_below(ax, ncol=min(4, max(1, len(names))))
    save_figure(fig, path)
