"""Comparing runs: a results table across runs (Markdown and CSV) ranked by the most trustworthy accuracy
they share, with Wilson intervals and McNemar paired tests (:mod:`lorabudget.report.ranking`), and an
accuracy-vs-parameters plot with error bars, the budget line and the Pareto front. Anything a run lacks is
said, never invented."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from lorabudget.io import atomic_write_text
from lorabudget.report.plots import far_below, pareto_front, place_labels, pyplot, save_figure
from lorabudget.report.ranking import (
    choose_basis,
    class_groups,
    display_names,
    plot_basis,
    ranking_section,
    run_row,
    write_csv,
)

__all__ = ["display_names", "plot_comparison", "run_row", "write_comparison"]


def write_comparison(
    run_dirs: Sequence[Path], out_dir: Path, names: Sequence[str] = (), allow_different_classes: bool = False
) -> Path:
    """Write ``compare.md``, ``compare.csv`` and ``accuracy_vs_params.png`` into ``out_dir``.

    Runs are ranked by the most trustworthy figure they all share (see :func:`choose_basis`), and
    "A beats B" is written only when McNemar's exact test on the same rows gives p < 0.05. Runs of
    different class sets are refused unless ``allow_different_classes``, which ranks each set in its
    own table (:func:`class_groups`). Returns the Markdown table's path.
    """
    run_dirs = [Path(r) for r in run_dirs]
    rows = [run_row(r) for r in run_dirs]
    for r, name in zip(rows, display_names(run_dirs, names)):
        r["display"] = name
    groups = class_groups(rows, allow_different_classes)
    text, csv_rows, bases = ["# Run comparison", ""], [], []
    if len(groups) > 1:
        text += [f"The runs are of {len(groups)} different class sets (tasks): each set is ranked on its own.", ""]
    for idx in groups:
        part = [rows[i] for i in idx]
        basis = choose_basis(part)
        section, group_csv = ranking_section(part, basis)
        if len(groups) > 1:
            classes = next((r["classes"] for r in part if r.get("classes")), None) or ("unknown",)
            section = [f"## Classes: {', '.join(classes)}", "", *section, ""]
        text += section
        csv_rows += group_csv
        bases.append((idx, basis))
    text += ["", "Run directories:", "", *(f"- {r['display']}: `{r['run']}`" for r in rows)]

    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "compare.csv", csv_rows)
    basis = plot_basis(bases, len(rows))
    if plot_comparison(rows, basis, out_dir / "accuracy_vs_params.png"):
        text += ["", f"![{basis['label']} vs trainable parameters](accuracy_vs_params.png)"]
    else:
        text += ["", f"No run has both a parameter count and a {basis['label']}: no scatter plot."]
    text += ["", "The same table as CSV: [compare.csv](compare.csv)."]
    path = out_dir / "compare.md"
    atomic_write_text(path, "\n".join(text) + "\n")
    return path


def _param_formatter(value: float, _pos=None) -> str:
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    if value >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def plot_comparison(rows: list[dict], basis: dict, path: Path) -> bool:
    """Accuracy (the ranking figure, with 95% intervals) against trainable parameters; False if nothing to draw.

    The x axis is logarithmic when the parameter counts (and budget lines) span more than 10x. The y range
    fits the runs that learned: a run far below them (e.g. at chance) is drawn at the bottom edge with its
    value in its label. The Pareto front runs across all runs, each within its own budget; each budget
    line's best run (the most accurate within that budget) is starred. Labels never overlap.
    """
    idx = [i for i, r in enumerate(rows) if r["trainable_params"] and basis["scores"][i] is not None]
    if not idx:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    xs = [rows[i]["trainable_params"] for i in idx]
    scores = [basis["scores"][i] for i in idx]
    ys = [100 * s["accuracy"] for s in scores]
    low = [y - 100 * s["ci95"][0] if s.get("ci95") else 0 for y, s in zip(ys, scores)]
    high = [100 * s["ci95"][1] - y if s.get("ci95") else 0 for y, s in zip(ys, scores)]
    below = far_below(ys)
    shown = [k for k in range(len(idx)) if not below[k]]
    validation = {}
    if basis["kind"] == "test":
        validation = {k: 100 * rows[i]["validation"]["accuracy"] for k, i in enumerate(idx) if rows[i]["validation"]}

    # The y range: the shown runs' intervals and validation marks, with room above for the budget notes.
    bottom = min([ys[k] - low[k] for k in shown] + [validation[k] for k in shown if k in validation])
    top = max([ys[k] + high[k] for k in shown] + [validation[k] for k in shown if k in validation])
    pad = max(1.0, 0.08 * (top - bottom))
    ylim = (bottom - pad * (2.5 if any(below) else 1), top + 2 * pad)
    ax.set_ylim(*ylim)
    edge = ylim[0] + 0.6 * pad  # where runs far below the range are drawn

    ax.errorbar(
        [xs[k] for k in shown],
        [ys[k] for k in shown],
        yerr=[[low[k] for k in shown], [high[k] for k in shown]],
        fmt="o",
        color="tab:blue",
        ecolor="tab:blue",
        elinewidth=1,
        capsize=3,
        markersize=6,
        zorder=3,
        label=f"{basis['label']}, 95% interval",
    )
    if any(below):
        ax.scatter(
            [xs[k] for k in range(len(idx)) if below[k]],
            [edge] * sum(below),
            marker="v",
            s=45,
            color="tab:red",
            zorder=3,
            label="far below the range (value in its label)",
        )
    if validation:
        vals = [(xs[k], v) for k, v in validation.items() if not below[k]]
        if vals:
            ax.scatter(
                *zip(*vals),
                s=22,
                marker="s",
                facecolors="none",
                edgecolors="gray",
                zorder=2,
                label="validation accuracy (not ranked)",
            )
    budgets = sorted({int(rows[i]["budget"]) for i in idx if rows[i]["budget"]})
    # Runs planned under different budgets (a 10k, a 100k and a 1M preset) each count within their own.
    within = [k for k, i in enumerate(idx) if not rows[i]["budget"] or xs[k] <= int(rows[i]["budget"])]
    if within:
        front = sorted((within[k] for k in pareto_front([(xs[k], ys[k]) for k in within])), key=lambda k: xs[k])
        scope = (
            f" (within the {budgets[0]:,} budget)"
            if len(budgets) == 1
            else " (each run within its own budget)"
            if budgets
            else ""
        )
        ax.plot(
            [xs[k] for k in front],
            [ys[k] if not below[k] else edge for k in front],
            color="tab:green",
            linewidth=1.5,
            zorder=2,
            marker="o",
            markersize=11,
            markerfacecolor="none",
            label="Pareto front" + scope,
        )
        best = sorted(
            {max((k for k in within if xs[k] <= b), key=lambda k: ys[k], default=None) for b in budgets} - {None}
        )
        if best:
            ax.scatter(
                [xs[k] for k in best],
                [ys[k] if not below[k] else edge for k in best],
                marker="*",
                s=200,
                color="gold",
                edgecolors="black",
                linewidths=0.6,
                zorder=4,
                label="best run within each budget",
            )
    span = [*xs, *budgets]
    log_x = max(span) / max(min(span), 1) > 10
    if log_x:
        ax.set_xscale("log")
    notes = []
    for b in budgets:
        ax.axvline(b, color="red", linestyle="--", linewidth=1, zorder=1, label=f"budget {b:,} trainable parameters")
        notes.append(
            ax.annotate(
                f"budget {_param_formatter(b)}",
                (b, 1),
                xycoords=("data", "axes fraction"),
                xytext=(-4, -12),
                textcoords="offset points",
                ha="right",
                fontsize=8,
                color="red",
            )
        )
    lo, hi = min(span), max(span)
    ax.set_xlim(lo / 1.6, hi * 1.6) if log_x else ax.set_xlim(
        max(0, lo - 0.1 * (hi - lo + 1)), hi + 0.1 * (hi - lo + 1)
    )
    ax.set(
        xlabel="trainable parameters" + (" (log scale)" if log_x else ""),
        ylabel="accuracy (%)",
        title=f"{basis['label'][0].upper() + basis['label'][1:]} vs trainable parameters ({len(idx)} runs)",
    )
    ax.xaxis.set_major_formatter(plt.FuncFormatter(_param_formatter))
    ax.grid(alpha=0.3, which="both" if log_x else "major")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8)
    names = [rows[i]["display"] + (f" ({ys[k]:.1f}%)" if below[k] else "") for k, i in enumerate(idx)]
    marks = [(xs[k], v) for k, v in validation.items() if not below[k]]
    place_labels(ax, xs, [ys[k] if not below[k] else edge for k in range(len(idx))], names, avoid=notes, marks=marks)
    save_figure(fig, path)
    return True
