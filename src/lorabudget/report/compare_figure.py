"""The comparison figure: each run's accuracy (the ranking figure, with its 95% interval) against its
trainable parameters, one budget line per distinct budget and one Pareto front per budget, drawn in
named steps by :func:`draw_comparison`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from lorabudget.report.plots import far_below, legend_below, pareto_front, place_labels, pyplot, text_box

# Markers telling class sets apart ("s", "v" and "*" mark validation scores, runs far below and best runs).
CLASS_MARKERS = ["o", "D", "^", "P", "X", "h", "<", ">"]
FRONT_GID = "pareto-front"  # every front line carries it; only the first is named in the legend


@dataclass
class Points:
    """The plotted runs (those with a parameter count and a score), in ``rows`` order."""

    rows: list  # the runs' rows, one per point
    xs: list
    ys: list  # percent
    low: list  # the 95% interval below and above each point, in points of percent
    high: list
    below: list  # far below the others: drawn at the bottom edge
    validation: dict = field(default_factory=dict)  # point -> validation accuracy (%), when ranked on test
    classes: list = field(default_factory=list)  # point -> its class set (a tuple) or None
    edge: float = 0.0  # where runs far below the range are drawn

    def y(self, k: int) -> float:
        return self.edge if self.below[k] else self.ys[k]

    def budget(self, k: int) -> Optional[int]:
        return int(self.rows[k]["budget"]) if self.rows[k].get("budget") else None


def param_formatter(value: float, _pos=None) -> str:
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    if value >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def _class_key(row: dict):
    classes = row.get("classes")
    if classes is None or isinstance(classes, str):
        return classes if classes is None else (classes,)
    return tuple(str(c) for c in classes)


def _metric_name(basis: dict) -> str:
    """What the y axis shows: accuracy, or micro F1 for multi-label runs (as a percentage either way)."""
    return "micro F1" if basis.get("metric") == "micro_f1" else "accuracy"


def collect_points(rows: list[dict], basis: dict) -> Optional[Points]:
    idx = [i for i, r in enumerate(rows) if r["trainable_params"] and basis["scores"][i] is not None]
    if not idx:
        return None
    scores = [basis["scores"][i] for i in idx]
    ys = [100 * s["accuracy"] for s in scores]
    validation = {}
    if basis["kind"] == "test":
        validation = {k: 100 * rows[i]["validation"]["accuracy"] for k, i in enumerate(idx) if rows[i]["validation"]}
    return Points(
        rows=[rows[i] for i in idx],
        xs=[rows[i]["trainable_params"] for i in idx],
        ys=ys,
        low=[interval_arms(y, s.get("ci95"))[0] for y, s in zip(ys, scores)],
        high=[interval_arms(y, s.get("ci95"))[1] for y, s in zip(ys, scores)],
        below=far_below(ys),
        validation=validation,
        classes=[_class_key(rows[i]) for i in idx],
    )


def set_y_range(ax, pts: Points) -> None:
    """Fit the runs that learned (intervals and validation marks), with room above for the budget notes;
    runs far below go to an edge under them."""
    shown = [k for k in range(len(pts.xs)) if not pts.below[k]]
    marks = [pts.validation[k] for k in shown if k in pts.validation]
    bottom = min([pts.ys[k] - pts.low[k] for k in shown] + marks)
    top = max([pts.ys[k] + pts.high[k] for k in shown] + marks)
    pad = max(1.0, 0.08 * (top - bottom))
    ylim = (bottom - pad * (2.5 if any(pts.below) else 1), top + 2 * pad)
    ax.set_ylim(*ylim)
    pts.edge = ylim[0] + 0.6 * pad


def interval_arms(y: float, ci95) -> tuple[float, float]:
    """The error bar below and above a point at ``y`` (percent) for its 95% interval (fractions); never
    negative: a Wilson bound computed as 0.9999999999999998 for an accuracy of 1.0 is the point itself."""
    if not ci95:
        return 0.0, 0.0
    return max(0.0, y - 100 * ci95[0]), max(0.0, 100 * ci95[1] - y)


def draw_points(ax, pts: Points, basis: dict) -> None:
    """Each class set's runs with their intervals (one marker per class set when there are several), the
    runs far below at the edge, and the validation accuracy beside a test score."""
    sets = list(dict.fromkeys(pts.classes))
    for n, classes in enumerate(sets):
        group = [k for k in range(len(pts.xs)) if pts.classes[k] == classes and not pts.below[k]]
        if not group:
            continue
        named = "" if len(sets) == 1 else f" (classes: {_classes_text(classes)})"
        ax.errorbar(
            [pts.xs[k] for k in group],
            [pts.ys[k] for k in group],
            yerr=[[pts.low[k] for k in group], [pts.high[k] for k in group]],
            fmt=CLASS_MARKERS[n % len(CLASS_MARKERS)],
            color="tab:blue",
            ecolor="tab:blue",
            elinewidth=1,
            capsize=3,
            markersize=6,
            zorder=3,
            label=f"{basis['label']}, 95% interval{named}",
        )
    if any(pts.below):
        far = [k for k in range(len(pts.xs)) if pts.below[k]]
        ax.scatter(
            [pts.xs[k] for k in far],
            [pts.edge] * len(far),
            marker="v",
            s=45,
            color="tab:red",
            zorder=3,
            label="far below the range (value in its label)",
        )
    vals = [(pts.xs[k], v) for k, v in pts.validation.items() if not pts.below[k]]
    if vals:
        ax.scatter(
            *zip(*vals),
            s=22,
            marker="s",
            facecolors="none",
            edgecolors="gray",
            zorder=2,
            label=f"validation {_metric_name(basis)} (not ranked)",
        )


def _classes_text(classes) -> str:
    text = "unknown" if classes is None else ", ".join(classes)
    return text if len(text) <= 40 else text[:39] + "…"


def front_groups(pts: Points) -> dict:
    """The runs each Pareto front joins: those planned under one budget (and trained on one class set),
    within that budget. Runs under different budgets are different plans, never one front."""
    groups: dict = {}
    for k in range(len(pts.xs)):
        budget = pts.budget(k)
        if budget is None or pts.xs[k] <= budget:
            groups.setdefault((budget, pts.classes[k]), []).append(k)
    return groups


def draw_fronts(ax, pts: Points) -> None:
    """One Pareto front per budget (only its first line named in the legend), and each budget's most
    accurate run within it starred."""
    groups = front_groups(pts)
    budgets = sorted({b for b, _ in groups if b is not None})
    scope = ""
    if len(groups) == 1 and budgets:
        scope = f" (within the {budgets[0]:,} budget)"
    elif len(groups) > 1:
        scope = " (one per budget and class set)" if len({c for _, c in groups}) > 1 else " (one per budget)"
    best = []
    for n, ((budget, _), members) in enumerate(sorted(groups.items(), key=lambda g: (g[0][0] or 0, str(g[0][1])))):
        front = sorted(
            (members[j] for j in pareto_front([(pts.xs[k], pts.ys[k]) for k in members])), key=pts.xs.__getitem__
        )
        ax.plot(
            [pts.xs[k] for k in front],
            [pts.y(k) for k in front],
            color="tab:green",
            linewidth=1.5,
            zorder=2,
            marker="o",
            markersize=11,
            markerfacecolor="none",
            label="Pareto front" + scope if n == 0 else "_front",
            gid=FRONT_GID,
        )
        if budget is not None:
            best.append(max(members, key=pts.ys.__getitem__))
    if best:
        ax.scatter(
            [pts.xs[k] for k in sorted(best)],
            [pts.y(k) for k in sorted(best)],
            marker="*",
            s=200,
            color="gold",
            edgecolors="black",
            linewidths=0.6,
            zorder=4,
            label="best run within each budget" + (" and class set" if "class set" in scope else ""),
        )


def _budget_note(ax, budget: int, row: int, dx: int, ha: str):
    return ax.annotate(
        f"budget {param_formatter(budget)}",
        (budget, 1),
        xycoords=("data", "axes fraction"),
        xytext=(dx, -12 - 11 * row),
        textcoords="offset points",
        ha=ha,
        fontsize=8,
        color="red",
    )


def draw_budgets(ax, budgets: list[int]) -> tuple[list, list]:
    """A dashed line per distinct budget, named once in the legend and once by a note at its top: left
    of the line, else right of it, moved down a line at a time where it would cover another note.
    Returns the lines and the notes."""
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    places = [(row, dx, ha) for row in range(len(budgets) + 1) for dx, ha in ((-4, "right"), (4, "left"))]
    lines, notes, boxes = [], [], []
    for n, b in enumerate(budgets):
        line = ax.axvline(
            b, color="red", linestyle="--", linewidth=1, zorder=1, label="budget line" if n == 0 else "_budget"
        )
        for place in places:
            note = _budget_note(ax, b, *place)
            box = text_box(note, renderer)
            if frame.x0 <= box.x0 and box.x1 <= frame.x1 and not any(box.overlaps(o) for o in boxes):
                break
            note.remove()
        else:  # nowhere free (not met in practice): the first place, overlapping
            note = _budget_note(ax, b, *places[0])
            box = text_box(note, renderer)
        lines.append(line)
        notes.append(note)
        boxes.append(box)
    return lines, notes


def set_x_axis(ax, pts: Points, budgets: list[int]) -> None:
    """A logarithmic axis when the counts (and budget lines) span more than 10x, with room either side."""
    plt = pyplot()
    span = [*pts.xs, *budgets]
    lo, hi = min(span), max(span)
    log_x = hi / max(lo, 1) > 10
    if log_x:
        ax.set_xscale("log")
        ax.set_xlim(lo / 1.6, hi * 1.6)
    else:
        ax.set_xlim(max(0, lo - 0.1 * (hi - lo + 1)), hi + 0.1 * (hi - lo + 1))
    ax.set_xlabel("trainable parameters" + (" (log scale)" if log_x else ""))
    ax.xaxis.set_major_formatter(plt.FuncFormatter(param_formatter))
    ax.grid(alpha=0.3, which="both" if log_x else "major")


def draw_comparison(rows: list[dict], basis: dict):
    """The figure, or None when no run has both a parameter count and a score.

    The y range fits the runs that learned: a run far below them (e.g. at chance) is drawn at the bottom
    edge with its value in its label. Each budget's runs within it make one Pareto front; each budget's
    best run is starred. Runs of different class sets get different markers. Labels never overlap."""
    pts = collect_points(rows, basis)
    if pts is None:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    budgets = sorted({b for b in map(pts.budget, range(len(pts.xs))) if b is not None})
    set_y_range(ax, pts)
    set_x_axis(ax, pts, budgets)
    draw_points(ax, pts, basis)
    draw_fronts(ax, pts)
    ax.set(
        ylabel=f"{_metric_name(basis)} (%)",
        title=f"{basis['label'][0].upper() + basis['label'][1:]} vs trainable parameters ({len(pts.xs)} runs)",
    )
    lines, notes = draw_budgets(ax, budgets)
    names = [r["display"] + (f" ({y:.1f}%)" if far else "") for r, y, far in zip(pts.rows, pts.ys, pts.below)]
    marks = [(pts.xs[k], v) for k, v in pts.validation.items() if not pts.below[k]]
    place_labels(ax, pts.xs, [pts.y(k) for k in range(len(pts.xs))], names, avoid=notes, marks=marks, lines=lines)
    legend_below(ax, ncol=2, fontsize=8)
    return fig
