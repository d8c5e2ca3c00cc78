"""The presets table of ``lorabudget presets``: name, model, method, trainable count, budget, purpose."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lorabudget.config import load_config, preset_files, resolve_config_path
from lorabudget.errors import LorabudgetError

PURPOSE_PREFIX = "# purpose:"


@dataclass
class PresetRow:
    name: str
    model: str
    method: str
    trainable: Optional[int]  # None: the model's config is not available offline
    budget: Optional[int]  # None: unlimited (teachers)
    purpose: str
    path: Path


def preset_text(name_or_path: str | Path) -> str:
    """A preset's or config file's YAML text (``presets show``); one error line when it is not UTF-8."""
    path = resolve_config_path(str(name_or_path))
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise LorabudgetError(
            f"config file {path} is not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}); save it as UTF-8"
        ) from None


def preset_purpose(path: Path) -> str:
    """The preset's one-line purpose: its ``# purpose:`` comment, else its first comment line."""
    comments = [line for line in preset_text(path).splitlines() if line.startswith("#")]
    for line in comments:
        if line.lower().startswith(PURPOSE_PREFIX):
            return line[len(PURPOSE_PREFIX) :].strip()
    return comments[0].lstrip("# ").strip() if comments else ""


def trainable_count(cfg) -> Optional[int]:
    """Trainable parameters planned on the meta device (no weights read), or None when the model's
    config is neither built in nor available offline."""
    from lorabudget.model.budget import breakdown
    from lorabudget.model.build import build_model

    try:
        return breakdown(build_model(cfg, weights=False).model).total
    except (LorabudgetError, OSError):
        return None


def preset_rows(count: bool = True) -> list[PresetRow]:
    rows = []
    for name, path in preset_files().items():
        purpose = preset_purpose(path)  # first: a file that is not UTF-8 is one line naming it
        cfg = load_config(str(path))
        rows.append(
            PresetRow(
                name=name,
                model=cfg.model.name,
                method=cfg.adapter.method,
                trainable=trainable_count(cfg) if count else None,
                budget=cfg.budget.max_trainable_params,
                purpose=purpose,
                path=path,
            )
        )
    return rows


def format_preset_table(rows: list[PresetRow]) -> str:
    """A fixed-width table, one preset a line; "—" for a count that needs a model config not available offline."""
    table = [("preset", "model", "method", "trainable", "budget", "purpose")]
    for r in rows:
        trainable = f"{r.trainable:,}" if r.trainable is not None else "—"
        budget = f"{r.budget:,}" if r.budget is not None else "unlimited"
        table.append((r.name, r.model, r.method, trainable, budget, r.purpose))
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    right = {3, 4}
    lines = []
    for row in table:
        cells = [row[i].rjust(widths[i]) if i in right else row[i].ljust(widths[i]) for i in range(5)]
        lines.append("  ".join(cells + [row[5]]).rstrip())
    return "\n".join(lines)
