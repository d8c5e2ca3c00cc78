"""The plotting helpers every figure of lorabudget uses: matplotlib set up headless with one style,
fixed class colours, reproducible PNG output, non-overlapping point labels and the Pareto front."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from lorabudget.io import atomic_path

FIGSIZE = (7.0, 4.2)


DPI = 110


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 12, "axes.labelsize": 10, "figure.dpi": DPI})
    return plt


def class_colors(n: int) -> list:
    """One fixed colour per class id, the same in every figure."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def save_figure(fig, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        # No software/date metadata: the same inputs give byte-identical files.
        fig.savefig(tmp, format="png", metadata={"Software": None}, bbox_inches="tight")
    pyplot().close(fig)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not beaten by another with fewer-or-equal parameters and higher-or-equal accuracy."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def place_labels(ax, xs: Sequence[float], ys: Sequence[float], names: Sequence[str], fontsize: int = 8) -> None:
    """Annotate points, trying a few offsets per label so labels do not cover each other (greedy)."""
    ax.autoscale_view()
    fig = ax.figure
    to_px = ax.transData.transform
    scale = fig.dpi / 72.0  # offsets are in points; overlap is checked in pixels
    char_w, line_h = 0.62 * fontsize * scale, 1.3 * fontsize * scale
    candidates = [(4, 5), (4, -13), (-4, 5), (-4, -13), (4, 16), (4, -24), (-4, 16), (-4, -24)]
    placed: list[tuple[float, float, float, float]] = []
    for x, y, name in sorted(zip(xs, ys, names), key=lambda p: (-p[1], p[0])):
        px, py = to_px((x, y))
        width = char_w * len(name)
        choice = candidates[0]
        for dx, dy in candidates:
            left = px + dx * scale - (width if dx < 0 else 0)
            box = (left, py + dy * scale, left + width, py + dy * scale + line_h)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                choice = (dx, dy)
                placed.append(box)
                break
        else:
            left = px + 4 * scale
            placed.append((left, py + 5 * scale, left + width, py + 5 * scale + line_h))
        ax.annotate(
            name,
            (x, y),
            textcoords="offset points",
            xytext=choice,
            fontsize=fontsize,
            ha="right" if choice[0] < 0 else "left",
        )
