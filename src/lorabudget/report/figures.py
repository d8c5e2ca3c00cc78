"""The figures of a run's report, each drawn from the run's own records: training loss, validation
curves, confusion matrix, reliability diagram and predicted class distribution."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from lorabudget.report.plots import FIGSIZE, class_colors, pyplot, save_figure


def ema(values: Sequence[float], weight: float = 0.8) -> np.ndarray:
    out, acc = [], None
    for v in values:
        acc = v if acc is None else weight * acc + (1 - weight) * v
        out.append(acc)
    return np.array(out)


def plot_training_loss(train: list[dict], path: Path, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    steps = [r["step"] for r in train]
    loss = [r["loss"] for r in train]
    ax.plot(steps, loss, color="tab:blue", alpha=0.3, linewidth=1, label="logged mean loss")
    ax.plot(steps, ema(loss), color="tab:blue", linewidth=2, label="smoothed (EMA 0.8)")
    ax.set(title=f"Training loss: {title}", xlabel="optimizer step", ylabel="loss (cross-entropy, nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def plot_validation(evals: list[dict], path: Path, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    steps = [r["step"] for r in evals]
    ax.plot(steps, [r["accuracy"] for r in evals], marker="o", color="tab:green", label="accuracy")
    ax.plot(steps, [r["macro_f1"] for r in evals], marker="s", color="tab:purple", label="macro F1")
    kept = [r for r in evals if r.get("best")]  # the last improvement is the checkpoint training kept
    best = kept[-1] if kept else max(evals, key=lambda r: r["accuracy"])
    ax.axvline(best["step"], color="gray", linestyle="--", linewidth=1)
    ax.annotate(
        f"kept: step {best['step']}, acc {best['accuracy']:.4f}",
        (best["step"], best["accuracy"]),
        textcoords="offset points",
        xytext=(6, -14),
        fontsize=9,
    )
    ax.set(title=f"Validation: {title}", xlabel="optimizer step", ylabel="accuracy / macro F1 (fraction)")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(steps, [r["loss"] for r in evals], marker="^", color="tab:red", alpha=0.7, label="loss")
    ax2.set_ylabel("validation loss (nats)")
    scores = [r["accuracy"] for r in evals] + [r["macro_f1"] for r in evals]
    ax.set_ylim(max(0.0, min(scores) - 0.03), min(1.0, max(scores) + 0.03))
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    # Below the axes, so the legend never covers a curve.
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)
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
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set(
        xlabel="predicted class",
        ylabel="true class",
        title=f"Confusion matrix ({ev.get('rows', int(cm.sum())):,} rows, acc {ev['accuracy']:.4f})",
    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    save_figure(fig, path)


def plot_prediction_distribution(pred: dict, names: list[str], expected: Optional[list[float]], path: Path) -> None:
    plt = pyplot()
    counts = np.array([pred["counts"].get(n, 0) for n in names])
    total = max(int(counts.sum()), 1)
    fig, ax = plt.subplots(figsize=FIGSIZE)
    bars = ax.bar(range(len(names)), counts, color=class_colors(len(names)))
    for bar, c in zip(bars, counts):
        ax.annotate(
            f"{c:,}\n{c / total:.1%}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=9,
            xytext=(0, 2),
            textcoords="offset points",
        )
    if expected is not None:
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
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14))  # below the axes: never over a bar
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, max(counts.max(), max(expected or [0]) * total) * 1.2 + 1)
    source = Path(str(pred.get("input", ""))).name
    ax.set(title=f"Predicted classes on {source} ({total:,} rows)", xlabel="predicted class", ylabel="rows")
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
        label="accuracy in bin",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    for c, a, n in zip(centers[has], acc[has], count[has]):
        ax.annotate(f"{n}", (c, a), ha="center", va="bottom", fontsize=7, xytext=(0, 1), textcoords="offset points")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.05),
        xlabel="confidence (max class probability)",
        ylabel="accuracy (fraction)",
        title=f"Reliability: ECE {ece:.4f} ({len(confidence):,} rows)",
    )
    ax.legend(loc="upper left")
    save_figure(fig, path)
    return ece
