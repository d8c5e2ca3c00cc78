"""Redraw a comparison's accuracy-vs-parameters figure from its ``compare.csv`` when the run directories
are gone (docs/methods/ keeps only the table): the same ``plot_comparison`` that ``lorabudget compare`` uses.

    python benchmarks/replot_compare.py docs/methods/compare.csv [--output docs/methods/accuracy_vs_params.png]

The CSV holds each run's ranking score with its interval, its validation accuracy, trainable count and
budget: everything the figure shows.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from lorabudget.report.compare import plot_comparison


def _float(value: str):
    return float(value) if value not in ("", None) else None


def rows_and_basis(csv_path: Path) -> tuple[list[dict], dict]:
    with open(csv_path, newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    rows, scores = [], []
    for r in table:
        validation = _float(r["validation_accuracy"])
        rows.append(
            {
                "display": r["name"],
                "trainable_params": int(r["trainable_params"]) if r["trainable_params"] else None,
                "budget": int(r["budget"]) if r["budget"] else None,
                "validation": {"accuracy": validation} if validation is not None else None,
            }
        )
        score = _float(r["score"])
        ci = [_float(r["score_ci_low"]), _float(r["score_ci_high"])]
        scores.append(None if score is None else {"accuracy": score, "ci95": ci if None not in ci else None})
    label = table[0]["ranked_by"] if table else ""
    return rows, {"kind": "test" if label.startswith("test") else "validation", "label": label, "scores": scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path)
    parser.add_argument("--output", type=Path, help="default: accuracy_vs_params.png beside the CSV")
    args = parser.parse_args()
    output = args.output or args.csv.with_name("accuracy_vs_params.png")
    rows, basis = rows_and_basis(args.csv)
    plot_comparison(rows, basis, output)
    print(f"wrote {output} ({len(rows)} runs, {basis['label']})")


if __name__ == "__main__":
    main()
