"""Small HTML pieces for the result objects' ``_repr_html_`` (how Jupyter shows them)."""

from __future__ import annotations

import base64
import html
from pathlib import Path


def image(path: Path, width: int = 480) -> str:
    """An inline PNG (embedded, so the notebook keeps it when the file is gone)."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    alt = html.escape(Path(path).stem.replace("_", " "))
    return f"<img src='data:image/png;base64,{data}' alt='{alt}' width='{width}'/>"


def _headline(summary: dict) -> str:
    parts = []
    accuracy = summary.get("validation_accuracy")
    if isinstance(accuracy, (int, float)):
        rows = summary.get("validation_rows")
        parts.append(f"validation accuracy <b>{accuracy:.2%}</b>" + (f" on {rows:,} rows" if rows else ""))
    trainable = summary.get("trainable_params")
    if isinstance(trainable, int):
        budget = summary.get("budget")
        parts.append(f"{trainable:,} trainable parameters" + (f" of {budget:,}" if isinstance(budget, int) else ""))
    seconds = summary.get("train_time_s")
    if isinstance(seconds, (int, float)):
        parts.append(f"trained in {seconds:.0f} s")
    return ", ".join(parts) or "not finished"


def run_html(run) -> str:
    """A run's headline (accuracy, parameters, time) and its report's figures."""
    files = run.files
    summary = files.read_summary() if files.finished() else {}
    head = f"<p><b>{html.escape(run.name)}</b>: {_headline(summary)}</p>"
    figures = "".join(image(path, 360) for path in run.figures())
    return head + (f"<div>{figures}</div>" if figures else "")
