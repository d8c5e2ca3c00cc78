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
    micro = summary.get("validation_micro_f1")  # a multi-label run: kept by micro F1
    accuracy = summary.get("validation_accuracy")
    rows = summary.get("validation_rows")
    on_rows = f" on {rows:,} rows" if rows else ""
    if isinstance(micro, (int, float)):
        parts.append(f"validation micro F1 <b>{micro:.4f}</b>{on_rows}")
    elif isinstance(accuracy, (int, float)):
        parts.append(f"validation accuracy <b>{accuracy:.2%}</b>{on_rows}")
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
