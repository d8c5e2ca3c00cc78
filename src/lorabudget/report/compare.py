"""Comparing runs: a results table across runs (Markdown and CSV) ranked by the most trustworthy accuracy
they share (micro F1 for multi-label runs, never mixed with single-label ones), with 95% intervals and
McNemar paired tests (:mod:`lorabudget.report.ranking`), and an accuracy-vs-parameters plot with error
bars, the budget line and the Pareto front. Anything a run lacks is said, never invented."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from lorabudget.io import atomic_write_text
from lorabudget.report.compare_figure import draw_comparison
from lorabudget.report.plots import save_figure
from lorabudget.report.ranking import (
    check_one_problem_type,
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
    check_one_problem_type(rows)
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


def plot_comparison(rows: list[dict], basis: dict, path: Path) -> bool:
    """Accuracy (the ranking figure, with 95% intervals) against trainable parameters, drawn by
    :func:`~lorabudget.report.compare_figure.draw_comparison`; False if there is nothing to draw."""
    fig = draw_comparison(rows, basis)
    if fig is None:
        return False
    save_figure(fig, path)
    return True
