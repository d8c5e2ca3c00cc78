"""How close `plan --data`'s time estimate lands to the measured training time, on this machine.

For each preset (default: minilm-cpu, minilm-cpu-10k, mpnet-cpu-10k) on the first `--rows` rows of
../shared/data/agnews/train_5k.csv (default 800; the run splits its own validation rows off them),
`--epochs` epochs (default 1): the estimate `lorabudget.plan(PRESET, data=...)` gives (per epoch, in
all, peak memory), then a training run in a fresh process (`lorabudget train`, under
`/usr/bin/time -v` where it exists), and the measured training time (summary.json's `train_time_s`:
the loop's wall time, validation passes included), measured / estimated, the estimate the training
process itself printed at its start, and the peak RSS beside the estimated peak. Run it alone: the
estimate and the run both time this machine's cores.

The issue's check: measured / estimated within 0.65-1.35 for the MiniLM and MPNet presets.

Usage: python benchmarks/plan_estimate.py [--preset NAME]... [--rows 800] [--epochs 1] [--data PATH]
       [--set key=value]... [--work DIR] [--out FILE]
       python benchmarks/plan_estimate.py --smoke [--model DIR]   (a tiny random model: proves it runs)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TRAIN_5K, emit, lorabudget, machine, read_rows, write_rows  # noqa: E402

DEFAULT_PRESETS = ["minilm-cpu", "minilm-cpu-10k", "mpnet-cpu-10k"]


def first_rows(source: Path, rows: int, folder: Path) -> Path:
    """The first ``rows`` data rows of ``source`` (a header row kept) as ``folder/rows.csv``."""
    table = read_rows(source)
    header = table[:1] if table and not table[0][-1].strip().isdigit() else []
    return write_rows(folder / "rows.csv", header + table[len(header) : len(header) + rows])


def train(preset: str, data: Path, run: Path, sets: list[str]) -> dict:
    """``lorabudget train`` in a fresh process; its summary, with ``peak_rss_mb`` from ``time -v``
    where it exists (else summary.json's own ``peak_rss_bytes``)."""
    import re

    cmd = lorabudget("train", preset, "--data", str(data), "--output", str(run), "--overwrite")
    cmd += [a for s in sets for a in ("--set", s)]
    timed = shutil.which("time") == "/usr/bin/time" or os.path.exists("/usr/bin/time")
    done = subprocess.run((["/usr/bin/time", "-v"] if timed else []) + cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"training failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    summary = json.loads((run / "summary.json").read_text())
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr) if timed else None
    summary["peak_rss_mb"] = int(found.group(1)) / 1024 if found else (summary.get("peak_rss_bytes") or 0) / 2**20
    return summary


def measure(preset: str, data: Path, work: Path, sets: list[str]) -> dict:
    import lorabudget as lb

    plan = lb.plan(preset, data=str(data), overrides=sets)
    if plan.estimate is None:
        raise SystemExit(f"{preset}: no estimate:\n{plan}")
    summary = train(preset, data, work / preset, sets)
    start = summary.get("estimate") or {}
    fill = (summary.get("frozen_prefix") or {}).get("build_seconds") or 0.0
    measured = summary["train_time_s"] + fill + (summary.get("head_init_s") or 0.0)
    return {
        "preset": preset,
        "estimate_s": plan.estimate.seconds,
        "epoch_s": plan.estimate.epoch_seconds,
        "estimate_at_start_s": start.get("train_seconds"),
        # The prefix cache is filled and the head's class vectors computed before the loop; the estimate includes both.
        "measured_s": measured,
        "ratio": measured / plan.estimate.seconds,
        "peak_estimate_mb": plan.estimate.peak_bytes / 2**20,
        "peak_rss_mb": summary["peak_rss_mb"],
        "precision": summary["mixed_precision"],
        "rows": summary["train_rows"],
        "validation_rows": summary["validation_rows"],
        "basis": plan.estimate.basis,
    }


def table(results: list[dict], rows: int, epochs: str) -> str:
    lines = [
        f"Machine: {machine()}",
        f"{rows} rows of AG News, {epochs} epoch(s); measured = summary.json train_time_s + frozen_prefix.build_seconds + head_init_s (loop wall time, "
        "validation passes included)",
        "",
        "| preset | precision | train / validation rows | estimate (per epoch) | estimate at train start | measured "
        "| measured / estimate | peak estimate | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        at_start = f"{r['estimate_at_start_s']:.1f} s" if r["estimate_at_start_s"] else "—"
        lines.append(
            f"| {r['preset']} | {r['precision']} | {r['rows']:,} / {r['validation_rows']:,} | {r['estimate_s']:.1f} s "
            f"({r['epoch_s']:.1f} s) | {at_start} | {r['measured_s']:.1f} s | **{r['ratio']:.2f}** "
            f"| {r['peak_estimate_mb']:,.0f} MB | {r['peak_rss_mb']:,.0f} MB |"
        )
    lines += ["", *[f"- {r['preset']}: {r['basis']}" for r in results]]
    return "\n".join(lines)


def smoke_setup(work: Path, model: str | None) -> tuple[list[str], Path, list[str]]:
    """A tiny random model and synthetic rows (tests/conftest.py's), one short run."""
    os.environ.setdefault("LORABUDGET_AUTO_PRECISION", "fp32")  # no bf16 probe for a smoke run
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_model_dir, synthetic_rows, write_csv  # noqa: E402

    model_dir = model or str(make_model_dir(work / "tiny-model", "roberta"))
    data = write_csv(work / "synthetic.csv", synthetic_rows(120, seed=1))
    sets = [f"model.name={model_dir}", "model.max_length=64", "data.validation_size=20", "data.cache_dir=" + str(work)]
    return ["minilm-cpu-10k"], data, sets


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", action="append", help="a preset (repeatable; default: %s)" % ", ".join(DEFAULT_PRESETS))
    ap.add_argument("--rows", type=int, default=800)
    ap.add_argument("--epochs", default="1")
    ap.add_argument("--data", type=Path, default=TRAIN_5K)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="key=value for plan and train")
    ap.add_argument("--work", type=Path, help="run directories (default: a temporary folder)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--smoke", action="store_true", help="a tiny random model on synthetic rows: proves it runs")
    ap.add_argument("--model", help="--smoke: a local model directory to use instead of a fresh tiny one")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="plan-estimate-"))
    work.mkdir(parents=True, exist_ok=True)
    sets = [f"training.epochs={args.epochs}", *args.sets]
    if args.smoke:
        presets, source, extra = smoke_setup(work, args.model)
        sets += extra
    else:
        presets, source = args.preset or DEFAULT_PRESETS, args.data
        if not source.is_file():
            print(f"skipped: {source} not found (the benchmark needs the shared data rows)")
            return 0
    data = first_rows(source, args.rows, work)
    results = [measure(p, data, work, sets) for p in presets]
    emit(table(results, args.rows, args.epochs), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
