"""Helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import csv
import json
import os
import platform
import re
import subprocess
import sys
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


def split_held_out(source: Path, folder: Path, held_out: int = 1000, max_train: int | None = None) -> tuple[Path, Path]:
    """Write ``train.csv`` (all but the last ``held_out`` rows; only the first ``max_train`` of them when
    given) and ``test.csv`` (the last ones). A header (a first row whose last field is not a class index,
    as SST-2's ``sentence,label``) heads both files."""
    rows = read_rows(source)
    header = rows[:1] if rows and not rows[0][-1].strip().isdigit() else []
    body = rows[len(header) :]
    if len(body) <= held_out:
        raise SystemExit(f"{source} has {len(body)} rows: too few for a {held_out}-row held-out slice")
    return (
        write_rows(folder / "train.csv", header + body[:-held_out][: max_train or None]),
        write_rows(folder / "test.csv", header + body[-held_out:]),
    )


def seeded_held_out(rows: int, held_out: int, seed: int):
    """(training row indices, held-out row indices) of ``rows`` rows: numpy's ``default_rng(seed)``
    permutation, its first ``held_out`` held out; the training rows keep the drawn order, so a cap on
    them takes a random subset."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(rows)
    return order[held_out:], order[:held_out]


def held_out_task(data: Path, work: Path) -> tuple[Path, Path, list[int]] | None:
    """Split ``data`` into ``work/train.csv`` and the held-out ``work/test.csv`` (the last 1,000 rows);
    return both paths and the held-out labels (class indices). ``None``, after one line saying so,
    when ``data`` is missing (the shared AG News rows are not on every machine)."""
    if not data.is_file():
        print(f"skipped: {data} not found (the benchmark needs the shared data rows)")
        return None
    work.mkdir(parents=True, exist_ok=True)
    train_csv, test_csv = split_held_out(data, work)
    # the last field holds the class index (AG News 0-3, SST-2 0/1); a header row is skipped
    return train_csv, test_csv, [int(r[-1]) for r in read_rows(test_csv) if r[-1].strip().isdigit()]


def paired_table(pairs: list[tuple[str, dict, dict]], rows: str = "the same rows") -> list[str]:
    """A markdown table of paired comparisons: each ``(name, a, b)`` with ``accuracy`` and per-row ``correct``
    lists on the same rows; McNemar's exact test on the rows only one of them got right."""
    from lorabudget.stats import mcnemar

    lines = [
        f"| paired on {rows} | accuracy A | accuracy B | B − A | only A right | only B right | McNemar p |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, a, b in pairs:
        test = mcnemar(a["correct"], b["correct"])
        lines.append(
            f"| {name} | {a['accuracy']:.2%} | {b['accuracy']:.2%} | {b['accuracy'] - a['accuracy']:+.2%} "
            f"| {test['only_a']} | {test['only_b']} | {test['p_value']:.3f} |"
        )
    return lines


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
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}"
    )


def emit(text: str, out: Path | None) -> None:
    """Print the result and, when asked, write it to ``out``."""
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)


def lorabudget(*args: str) -> list[str]:
    """The command line that runs the CLI with this interpreter."""
    return [sys.executable, "-m", "lorabudget.cli", *args]


def train_timed(preset: str, train_csv: Path, run: Path, sets: list[str]) -> dict:
    """Train ``preset`` with ``--set`` overrides in a fresh process under ``/usr/bin/time -v``;
    return the run's summary plus its peak RSS (``peak_rss_mb``)."""
    cmd = [
        "/usr/bin/time",
        "-v",
        *lorabudget(
            "train",
            preset,
            "--data",
            str(train_csv),
            "--output",
            str(run),
            "--overwrite",
            *[a for s in sets for a in ("--set", s)],
        ),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"training failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    summary = json.loads((run / "summary.json").read_text())
    summary["peak_rss_mb"] = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1)) / 1024
    return summary


def predicted_labels(run: Path, test_csv: Path, precision: str = "auto") -> list[int]:
    """``lorabudget predict`` of ``run`` on ``test_csv``: the class index of each row."""
    out = run / f"held-out-{precision}.csv"
    subprocess.run(
        lorabudget(
            "predict", str(run), "--input", str(test_csv), "--output", str(out), "--precision", precision, "--no-report"
        ),
        check=True,
        capture_output=True,
    )
    with open(out, newline="", encoding="utf-8") as fh:
        return [int(row["Label"]) for row in csv.DictReader(fh)]  # ID,Label: class indices


class ShapeRecorder:
    """Records the shape and real lengths of every batch a model is called on (a forward pre-hook),
    so the FLOPs it executed (padded positions) and the useful ones (real tokens) can be counted
    with :mod:`lorabudget.model.flops` whatever loop drives the model."""

    def __init__(self, model):
        self.rows = self.positions = self.positions_sq = 0
        self.real = self.real_sq = 0
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        rows, width = ids.shape
        self.rows += rows
        self.positions += rows * width
        self.positions_sq += rows * width * width
        lengths = mask.sum(1).double() if mask is not None else ids.new_full((rows,), width).double()
        self.real += int(lengths.sum())
        self.real_sq += float((lengths**2).sum())

    def flops(self, coefficients) -> tuple[float, float]:
        """(executed FLOPs on padded positions, FLOPs on real tokens only)."""
        return (
            coefficients.total(self.positions, self.positions_sq, self.rows),
            coefficients.total(self.real, self.real_sq, self.rows),
        )


def matmul_peaks(seconds: float = 1.0) -> dict[str, float]:
    """This machine's measured matmul FLOP/s in fp32 and bf16 (bf16 left out where the device lacks it)."""
    import torch

    from lorabudget.model.flops import matmul_peak, native_precision

    device = "cuda" if torch.cuda.is_available() else "cpu"
    peaks = {"fp32": matmul_peak("fp32", device, seconds=seconds)}
    if not native_precision("bf16", device):  # emulated: minutes per matmul, and no peak to speak of
        return peaks
    try:
        peaks["bf16"] = matmul_peak("bf16", device, seconds=seconds)
    except RuntimeError:  # a device without bf16 matmuls
        pass
    return peaks
