"""The figures of a run's report, each drawn from the run's own records: training loss, validation
curves, confusion matrix, reliability diagram and predicted class distribution. No figure zooms an
axis closer than the noise allows, and no label covers another label or a reference line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from lorabudget.report.plots import (
    FIGSIZE,
    accuracy_min_span,
    centred_mean,
    class_colors,
    fit_tick_labels,
    legend_below,
    loss_min_span,
    pyplot,
    room_above,
    save_figure,
    smoothing_half_width,
    steady_limits,
    text_box,
)
from lorabudget.stats import accuracy_interval


def plot_training_loss(train: list[dict], path: Path, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    steps = [r["step"] for r in train]
    loss = [r["loss"] for r in train]
    h = smoothing_half_width(len(loss))
    ax.plot(steps, loss, color="tab:blue", alpha=0.3 if h else 1.0, linewidth=1, label="logged mean loss")
    if h:
        label = f"smoothed (centred mean of {2 * h + 1} logged points)"
        ax.plot(steps, centred_mean(loss, h), color="tab:blue", linewidth=2, label=label)
    ax.set_ylim(*steady_limits(loss, loss_min_span(loss), floor=0.0))
    ax.set(
        title=f"Training loss: {title}",
        xlabel="optimizer step",
        ylabel="loss (nats; binary cross-entropy when multi-label)",
    )
    ax.grid(alpha=0.3)
    legend_below(ax)
    save_figure(fig, path)


def _selection_metric(evals: list[dict]) -> str:
    """What training kept its checkpoint by: micro F1 for a multi-label run, else accuracy."""
    return "micro_f1" if "micro_f1" in evals[-1] else "accuracy"


def _kept(evals: list[dict]) -> dict:
    kept = [r for r in evals if r.get("best")]  # the last improvement is the checkpoint training kept
    return kept[-1] if kept else max(evals, key=lambda r: r[_selection_metric(evals)])


def plot_validation(evals: list[dict], path: Path, title: str, rows: Optional[int] = None) -> None:
    """Validation accuracy and macro F1 (left axis) and loss (right axis) per evaluation, the kept
    checkpoint dashed. ``rows``: the validation set's size (else read from the records), which draws
    accuracy's 95% interval and keeps the axis from zooming inside it."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    steps = [r["step"] for r in evals]
    acc, f1, loss = ([r[k] for r in evals] for k in ("accuracy", "macro_f1", "loss"))
    rows = rows or evals[-1].get("rows")
    dots = {"markersize": 6 if len(evals) <= 40 else 2}
    metric = _selection_metric(evals)
    acc_name = "subset accuracy" if metric == "micro_f1" else "accuracy"  # multi-label: the whole set right
    ax.plot(steps, acc, marker="o", color="tab:green", label=acc_name, **dots)
    scores = acc + f1
    if metric == "micro_f1":
        micro = [r["micro_f1"] for r in evals]
        ax.plot(steps, micro, marker="^", color="tab:blue", label="micro F1", **dots)
        scores += micro
    if rows:
        band = np.array([accuracy_interval(a, rows) for a in acc])
        label = f"{acc_name} 95% interval ({rows:,} rows)"
        ax.fill_between(steps, band[:, 0], band[:, 1], color="tab:green", alpha=0.15, linewidth=0, label=label)
        scores += list(band.ravel())
    ax.plot(steps, f1, marker="s", color="tab:purple", label="macro F1", **dots)
    best = _kept(evals)
    label = f"kept checkpoint: step {best['step']}, {metric.replace('_', ' ')} {best[metric]:.4f}"
    ax.axvline(best["step"], color="gray", linestyle="--", linewidth=1, label=label)
    ax.set(title=f"Validation: {title}", xlabel="optimizer step", ylabel="accuracy / macro F1 (fraction)")
    ax.set_ylim(*steady_limits(scores, accuracy_min_span(acc, rows), floor=0.0, ceiling=1.0))
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(steps, loss, marker="^", color="tab:red", alpha=0.7, label="loss", **dots)
    ax2.set_ylabel("validation loss (nats)")
    ax2.set_ylim(*steady_limits(loss, loss_min_span(loss), floor=0.0))
    handles, labels = (a + b for a, b in zip(ax.get_legend_handles_labels(), ax2.get_legend_handles_labels()))
    legend_below(ax, handles, labels, ncol=3)
    save_figure(fig, path)


def plot_confusion(ev: dict, path: Path) -> None:
    plt = pyplot()
    cm = np.array(ev["confusion_matrix"], dtype=float)
    names = ev["class_names"]
    rates = cm / np.clip(cm.sum(1, keepdims=True), 1, None)
    size = max(4.5, 1.1 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(
                j,
                i,
                f"{int(cm[i, j]):,}\n{rates[i, j]:.1%}",
                ha="center",
                va="center",
                fontsize=9,
                color="white" if rates[i, j] > 0.6 else "black",
            )
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set(
        xlabel="predicted class",
        ylabel="true class",
        title=f"Confusion matrix ({ev.get('rows', int(cm.sum())):,} rows, acc {ev['accuracy']:.4f})",
    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fit_tick_labels(ax, "x")
    save_figure(fig, path)


def _bar_labels(ax, xs, tops, texts: list[str], fontsize: int = 9) -> list:
    """A label above each bar (``tops``: the bar or a reference line above it, whichever is higher);
    when neighbours would overlap, every label turns upright on one line."""
    labels = [
        ax.annotate(t, (x, top), ha="center", va="bottom", fontsize=fontsize, xytext=(0, 3), textcoords="offset points")
        for x, top, t in zip(xs, tops, texts)
    ]
    renderer = ax.figure.canvas.get_renderer()
    boxes = [text_box(label, renderer) for label in labels]
    if any(a.overlaps(b) for a, b in zip(boxes, boxes[1:])):
        for label in labels:
            label.set(text=label.get_text().replace("\n", " "), rotation=90)
    room_above(ax, labels)
    return labels


def plot_prediction_distribution(pred: dict, names: list[str], expected: Optional[list[float]], path: Path) -> None:
    plt = pyplot()
    counts = np.array([pred["counts"].get(n, 0) for n in names])
    total = max(int(counts.sum()), 1)
    fig, ax = plt.subplots(figsize=FIGSIZE)
    ax.bar(range(len(names)), counts, color=class_colors(len(names)))
    tops = counts.astype(float)
    if expected is not None:
        tops = np.maximum(tops, np.array(expected, dtype=float) * total)
        for i, share in enumerate(expected):
            ax.hlines(
                share * total,
                i - 0.4,
                i + 0.4,
                colors="black",
                linestyles="--",
                linewidth=1.5,
                label="expected (training distribution)" if i == 0 else None,
            )
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, max(tops.max(), 1) * 1.15)
    source = Path(str(pred.get("input", ""))).name
    ax.set(title=f"Predicted classes on {source} ({total:,} rows)", xlabel="predicted class", ylabel="rows")
    fit_tick_labels(ax, "x")
    # Each label sits above its bar and its dashed expected line: a line through a number hides it.
    _bar_labels(ax, range(len(names)), tops, [f"{c:,}\n{c / total:.1%}" for c in counts])
    if expected is not None:
        legend_below(ax, ncol=1)
    save_figure(fig, path)


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = 10):
    """Per-bin (mean confidence, accuracy, count) and the expected calibration error."""
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    conf, acc, count = np.zeros(bins), np.zeros(bins), np.zeros(bins, dtype=int)
    for b in range(bins):
        m = idx == b
        count[b] = m.sum()
        if count[b]:
            conf[b], acc[b] = confidence[m].mean(), correct[m].mean()
    ece = float((count / max(len(confidence), 1) * np.abs(acc - conf)).sum())
    return edges, conf, acc, count, ece


def _count_labels(ax, centers, heights, counts, diagonal) -> None:
    """Each bin's row count on its bar, above the bar, inside its top or at its foot: the first place
    the dashed diagonal does not run through and no other count covers."""
    renderer = ax.figure.canvas.get_renderer()
    ax.figure.draw_without_rendering()
    line = diagonal.get_transform().transform_path(diagonal.get_path())
    frame = ax.get_window_extent(renderer)
    taken = []
    for c, a, n in zip(centers, heights, counts):
        places = [(a, 1, "bottom"), (a, -2, "top"), (0, 2, "bottom")]
        for y, dy, va in places:
            label = ax.annotate(
                f"{n}", (c, y), ha="center", va=va, fontsize=7, xytext=(0, dy), textcoords="offset points"
            )
            box = text_box(label, renderer)
            inside = frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not line.intersects_bbox(box, filled=False) and not any(box.overlaps(t) for t in taken):
                break
            if (y, dy, va) != places[-1]:
                label.remove()
        taken.append(box)


def plot_reliability(ev: dict, path: Path) -> float:
    plt = pyplot()
    confidence = np.array(ev["confidence"], dtype=float)
    correct = np.array(ev["correct"], dtype=float)
    edges, conf, acc, count, ece = reliability(confidence, correct)
    fig, ax = plt.subplots(figsize=(5.5, 5.0))
    centers = (edges[:-1] + edges[1:]) / 2
    has = count > 0
    ax.bar(
        centers[has],
        acc[has],
        width=edges[1] - edges[0],
        edgecolor="black",
        color="tab:blue",
        alpha=0.7,
        label="accuracy in bin (rows in the bin on the bar)",
    )
    (diagonal,) = ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.08),
        xlabel="confidence (max class probability)",
        ylabel="accuracy (fraction)",
        title=f"Reliability: ECE {ece:.4f} ({len(confidence):,} rows)",
    )
    _count_labels(ax, centers[has], acc[has], count[has], diagonal)
    legend_below(ax, ncol=1)
    save_figure(fig, path)
    return ece
