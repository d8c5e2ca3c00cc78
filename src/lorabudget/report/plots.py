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


def far_below(values: Sequence[float], min_gap: float = 10.0) -> list[bool]:
    """Which values lie far below the rest (a run that did not learn, e.g. at chance): more than
    ``min_gap`` (and six robust standard deviations) under the median. A plot's range fits the others."""
    if len(values) < 3:
        return [False] * len(values)
    ordered = sorted(values)
    median = ordered[len(ordered) // 2] if len(ordered) % 2 else sum(ordered[len(ordered) // 2 - 1 :][:2]) / 2
    deviations = sorted(abs(v - median) for v in values)
    mad = deviations[len(deviations) // 2]
    threshold = median - max(min_gap, 6 * 1.4826 * mad)
    return [v < threshold for v in values]


LABEL_KEY_GID = "label-key"  # the key of numbered labels (place_labels' fallback), told apart from labels


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def text_box(text, renderer):
    """A label's own box in pixels (an annotation's leader line left out)."""
    from matplotlib.text import Annotation, Text

    if isinstance(text, Annotation):
        text.update_positions(renderer)  # an annotation computes where its text goes only when asked
    return Text.get_window_extent(text, renderer)


def place_labels(
    ax,
    xs: Sequence[float],
    ys: Sequence[float],
    names: Sequence[str],
    fontsize: int = 8,
    avoid: Sequence = (),
    marks: Sequence[tuple[float, float]] = (),
) -> list:
    """Label each point where its text covers no other label, no point, no other mark (``marks``: data
    points without labels) and nothing in ``avoid`` (artists already drawn, e.g. budget notes), inside the
    axes: offsets on growing rings around the point, with a leader line once the label sits away from it.
    The axis limits must be final. A label that finds no free place becomes a number, listed with its name
    in a key right of the axes. Returns the labels."""
    from matplotlib.transforms import Bbox

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    scale = fig.dpi / 72.0
    marker = 7 * scale  # half the largest marker (a best-run star), in pixels: labels keep off every point
    points = [ax.transData.transform((x, y)) for x, y in [*zip(xs, ys), *marks]]
    taken = [Bbox.from_extents(px - marker, py - marker, px + marker, py + marker) for px, py in points]
    taken += [text_box(a, renderer) for a in avoid]
    directions = [(1, 0), (1, 1), (1, -1), (0, 1), (0, -1), (-1, 0), (-1, 1), (-1, -1)]
    candidates = [(r * dx, r * dy) for r in (5, 12, 20, 30, 42, 56, 72, 90) for dx, dy in directions]
    labels, keyed = [], []
    for k in sorted(range(len(names)), key=lambda k: (-ys[k], xs[k])):
        for text in (names[k], f"[{len(keyed) + 1}]"):
            label = ax.annotate(
                text,
                (xs[k], ys[k]),
                textcoords="offset points",
                xytext=(0, 0),
                fontsize=fontsize,
                annotation_clip=False,
                arrowprops={"arrowstyle": "-", "color": "0.55", "linewidth": 0.6, "shrinkA": 0, "shrinkB": 3},
            )
            for dx, dy in candidates:
                label.xyann = (dx, dy)
                label.set_ha("left" if dx > 0 else "right" if dx < 0 else "center")
                label.set_va("bottom" if dy > 0 else "top" if dy < 0 else "center")
                box = text_box(label, renderer)
                inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
                if inside and not any(_overlaps(box, t) for t in taken):
                    taken.append(box)
                    label.arrow_patch.set_visible(max(abs(dx), abs(dy)) > 12)
                    break
            else:
                label.remove()
                if text == names[k]:
                    continue  # try again as a number with a key
                # Nowhere free even for a number (not met in practice): keep the first place, overlapping.
                label = ax.annotate(text, (xs[k], ys[k]), textcoords="offset points", xytext=(5, 5), fontsize=fontsize)
                taken.append(text_box(label, renderer))
            if text != names[k]:
                keyed.append(names[k])
            labels.append(label)
            break
    if keyed:
        key = "\n".join(f"[{i + 1}] {name}" for i, name in enumerate(keyed))
        ax.text(1.02, 1.0, key, transform=ax.transAxes, va="top", ha="left", fontsize=fontsize, gid=LABEL_KEY_GID)
    return labels
