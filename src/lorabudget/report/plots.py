"""The plotting helpers every figure of lorabudget uses: matplotlib set up headless with one style,
fixed class colours, reproducible PNG output, non-overlapping point labels and the Pareto front."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from lorabudget.io import atomic_path
from lorabudget.stats import standard_error

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


def centred_mean(values: Sequence[float], half_width: Optional[int] = None) -> np.ndarray:
    """A centred moving mean: point i averages the raw values i-h..i+h, the window narrowing evenly near
    either end so it stays centred (the first and last points keep their raw values). A centred window
    does not lag a steady trend, and each smoothed value lies between the smallest and largest raw value
    of its own window, so it never trails the raw curve by more than h points (an exponential average
    seeded with the first loss still carried that start many points later)."""
    raw = np.asarray(values, dtype=float)
    h = smoothing_half_width(len(raw)) if half_width is None else half_width
    sums = np.concatenate([[0.0], np.cumsum(raw)])
    i = np.arange(len(raw))
    k = np.minimum(np.minimum(i, len(raw) - 1 - i), h)
    return (sums[i + k + 1] - sums[i - k]) / (2 * k + 1)


def smoothing_half_width(n: int) -> int:
    """Half the smoothing window for ``n`` logged points: none for a short run (each logged loss is
    already a mean over its logging interval), growing to 25 points either side for a long one."""
    return min(n // 15, 25)


LOSS_MIN_SPAN = 0.3  # a loss axis spans at least this fraction of the typical loss
ACCURACY_MIN_SPAN = 0.06  # an accuracy axis spans at least 6 points, whatever the row count


def loss_min_span(values: Sequence[float]) -> float:
    """The smallest honest span of a loss axis: changes of a few percent of the loss are within the noise
    of a mean cross-entropy over a validation set of ordinary size, so they must not fill the axis."""
    finite = [abs(v) for v in values if math.isfinite(v)]
    return LOSS_MIN_SPAN * (float(np.median(finite)) if finite else 1.0)


def accuracy_min_span(values: Sequence[float], rows: Optional[int] = None) -> float:
    """The smallest honest span of an accuracy axis (fractions): eight binomial standard errors on
    ``rows`` rows (a change inside the 95% interval covers at most half of it), never under 6 points."""
    if not rows:
        return ACCURACY_MIN_SPAN
    p = float(np.median(values)) if len(values) else 0.5
    return max(ACCURACY_MIN_SPAN, 8 * standard_error(min(max(p, 0.01), 0.99), rows))


def steady_limits(
    values: Sequence[float],
    min_span: float,
    floor: Optional[float] = None,
    ceiling: Optional[float] = None,
    margin: float = 0.06,
) -> tuple[float, float]:
    """Axis limits that show ``values`` with a margin but never zoom closer than ``min_span``: a range
    narrower than that is widened around its middle (shifted, not cut, to stay inside floor..ceiling),
    so noise is drawn as small as it is instead of as a spike."""
    finite = [v for v in values if math.isfinite(v)] or [0.0]
    lo, hi = min(finite), max(finite)
    if hi - lo < min_span:
        lo, hi = (lo + hi - min_span) / 2, (lo + hi + min_span) / 2
    lo, hi = lo - margin * (hi - lo), hi + margin * (hi - lo)
    if floor is not None and lo < floor:
        lo, hi = floor, hi + (floor - lo)
    if ceiling is not None and hi > ceiling:
        lo, hi = max(lo - (hi - ceiling), floor if floor is not None else -math.inf), ceiling
    return lo, hi


def fit_tick_labels(ax, axis: str = "x") -> None:
    """Turn an axis's tick labels upright (vertical) when any two of them side by side would overlap."""
    renderer = ax.figure.canvas.get_renderer()
    ax.figure.draw_without_rendering()
    ticks = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    boxes = [t.get_window_extent(renderer) for t in ticks if t.get_text()]
    if any(_overlaps(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :]):
        for t in ticks:
            t.set(rotation=90, ha="center", rotation_mode="default")


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
    lines: Sequence = (),
) -> list:
    """Label each point where its text covers no other label, no point, no other mark (``marks``: data
    points without labels), nothing in ``avoid`` (artists already drawn, e.g. budget notes) and no line
    in ``lines`` (reference lines, e.g. budgets), inside the axes: offsets on growing rings around the
    point, with a leader line once the label sits away from it. The axis limits must be final. A label
    that finds no free place becomes a number, listed with its name in a key right of the axes. Returns
    the labels."""
    from matplotlib.transforms import Bbox

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    scale = fig.dpi / 72.0
    marker = 7 * scale  # half the largest marker (a best-run star), in pixels: labels keep off every point
    points = [ax.transData.transform((x, y)) for x, y in [*zip(xs, ys), *marks]]
    taken = [Bbox.from_extents(px - marker, py - marker, px + marker, py + marker) for px, py in points]
    taken += [text_box(a, renderer) for a in avoid]
    paths = [line.get_transform().transform_path(line.get_path()) for line in lines]
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
                crossed = any(path.intersects_bbox(box, filled=False) for path in paths)
                if inside and not crossed and not any(_overlaps(box, t) for t in taken):
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


def _drawn_texts(fig, renderer) -> list[tuple[str, object]]:
    """(description, pixel box) of every text the figure draws: titles, axis and tick labels, texts and
    annotations in the axes, and each legend as one box."""
    found = []
    for ax in fig.axes:
        frame = ax.get_window_extent(renderer)
        for title in (ax.title, ax._left_title, ax._right_title):
            found.append(("title", title))
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            found.append((f"{name} axis label", axis.label))
            lo, hi = (frame.x0, frame.x1) if name == "x" else (frame.y0, frame.y1)
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                px = ax.transData.transform((tick.get_loc(), 0) if name == "x" else (0, tick.get_loc()))
                at = px[0] if name == "x" else px[1]
                if not (tick.get_visible() and lo - 0.5 <= at <= hi + 0.5):
                    continue  # a tick outside the view is not drawn
                found += [(f"{name} tick label", label) for label in (tick.label1, tick.label2)]
        found += [("text", t) for t in ax.texts]
        legend = ax.get_legend()
        if legend is not None and legend.get_visible():
            found.append(("legend", legend))
    found += [("text", t) for t in fig.texts]
    found += [("legend", legend) for legend in fig.legends]
    boxes = []
    for kind, artist in found:
        if not artist.get_visible() or (kind != "legend" and not artist.get_text().strip()):
            continue
        box = artist.get_window_extent(renderer) if kind == "legend" else text_box(artist, renderer)
        name = kind if kind == "legend" else f"{kind} {artist.get_text()!r}"
        boxes.append((name, box))
    return boxes


def _dashed_paths(fig) -> list[tuple[str, object]]:
    """(description, pixel path) of every dashed line in the axes: reference lines labels must keep off."""
    from matplotlib.collections import LineCollection

    paths = []
    for ax in fig.axes:
        for line in ax.get_lines():
            if line.get_visible() and line.get_linestyle() in ("--", "-.", ":"):
                paths.append(
                    (f"dashed line {line.get_label()!r}", line.get_transform().transform_path(line.get_path()))
                )
        for coll in ax.collections:
            dashed = any(offset is not None and dashes for offset, dashes in coll.get_linestyles())
            if isinstance(coll, LineCollection) and coll.get_visible() and dashed:
                transform = coll.get_transform()
                paths += [(f"dashed line {coll.get_label()!r}", transform.transform_path(p)) for p in coll.get_paths()]
    return paths


def collisions(fig) -> list[str]:
    """Every pair of drawn texts whose boxes overlap, and every text a dashed reference line runs through,
    measured in pixels with the Agg renderer at the figure's own size and dpi. Empty for a readable figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()  # tick labels and legend positions are settled only by drawing
    renderer = canvas.get_renderer()
    boxes = _drawn_texts(fig, renderer)
    found = [
        f"{a} overlaps {b}"
        for i, (a, box_a) in enumerate(boxes)
        for b, box_b in boxes[i + 1 :]
        if _overlaps(box_a, box_b)
    ]
    for line, path in _dashed_paths(fig):
        found += [
            f"{line} crosses {name}"
            for name, box in boxes
            if name != "legend" and path.intersects_bbox(box, filled=False)
        ]
    return found


def legend_below(ax, handles=None, labels=None, ncol: int = 2, fontsize=None):
    """A legend centred under the axes, below everything drawn beneath them (tick labels, the axis
    label, a twin's), so it covers no curve and no label. The axes' limits and ticks must be final."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()
    frame = ax.get_window_extent(renderer)
    lowest = min(other.get_tightbbox(renderer).y0 for other in fig.axes if other.bbox.overlaps(ax.bbox))
    y = (lowest - 4 - frame.y0) / frame.height
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    return ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, y), ncol=ncol, fontsize=fontsize)


def room_above(ax, texts: Sequence, pad: float = 3.0) -> None:
    """Raise the top of a y axis that starts at zero until every text (labels above bars) fits inside."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    for _ in range(20):
        fig.draw_without_rendering()
        frame = ax.get_window_extent(renderer)
        top = max((text_box(t, renderer).y1 for t in texts), default=frame.y1)
        if top <= frame.y1 - pad:
            return
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi * (1 + (top - frame.y1 + 2 * pad) / frame.height))
