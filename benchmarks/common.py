"""Helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import csv
import os
import platform
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TRAIN_5K = SHARED_DATA / "agnews" / "train_5k.csv"


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def write_rows(path: Path, rows) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    return path


def split_held_out(source: Path, folder: Path, held_out: int = 1000) -> tuple[Path, Path]:
    """Write ``train.csv`` (all but the last ``held_out`` rows) and ``test.csv`` (the last ones)."""
    rows = read_rows(source)
    return write_rows(folder / "train.csv", rows[:-held_out]), write_rows(folder / "test.csv", rows[-held_out:])


def machine() -> str:
    """CPU model, cores, torch version and threads, Python version."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}")


def emit(text: str, out: Path | None) -> None:
    """Print the result and, when asked, write it to ``out``."""
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
