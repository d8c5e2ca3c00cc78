"""Accuracy of distillation on a CPU with the real MiniLM-L6: teacher, plain student, distilled student.

Data: ../shared/data/agnews/train_5k.csv. The last 1,000 rows are a held-out test set nobody trains
on; the first 4,000 are the training pool, of which each run holds out the same validation rows
(same split seed; 300 with the presets). Teacher: `minilm-cpu-teacher` (r=64 everywhere, not budgeted). Students: `minilm-cpu`
(plain) and `minilm-cpu-distill` (same architecture, 665,092 trainable parameters, KD from the teacher).

Usage: python benchmarks/distill_accuracy.py [--data PATH] [--out docs/distill-accuracy.md]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TRAIN_5K, emit, machine, split_held_out  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=TRAIN_5K)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if not args.data.is_file():
        print(f"skipped: {args.data} not found")
        return 0
    from lorabudget.config import load_config
    from lorabudget.distill import distill
    from lorabudget.runs import evaluate_run, load_run
    from lorabudget.train import train

    tmp = Path(tempfile.mkdtemp())
    split_held_out(args.data, tmp)
    common = [f"data.train={tmp / 'train.csv'}", f"data.cache_dir={tmp / 'cache'}", *args.overrides]
    runs = tmp / "runs"
    results = []

    def held_out(run_dir):
        return evaluate_run(load_run(run_dir), str(tmp / "test.csv"))["accuracy"]

    student = load_config("minilm-cpu-distill", common)
    # The teacher is trained first, by `distill` itself, on the student's data settings.
    d = distill(student, runs / "distilled", teacher="minilm-cpu-teacher")
    teacher_dir = runs / "minilm-cpu-teacher"
    t = json.loads((teacher_dir / "summary.json").read_text())
    results.append(("teacher `minilm-cpu-teacher`", t, held_out(teacher_dir)))
    plain = train(load_config("minilm-cpu", common), runs / "plain")
    results.append(("plain student `minilm-cpu`", plain, held_out(runs / "plain")))
    results.append((f"distilled student `minilm-cpu-distill`, {d['method']}", d, held_out(runs / "distilled")))

    lines = [f"| model | trainable params | validation acc ({results[0][1]['validation_rows']:,} rows) | held-out acc (1,000 rows) | training time (s) |",
             "|---|---:|---:|---:|---:|"]
    for name, s, acc in results:
        lines.append(f"| {name} | {s['trainable_params']:,} | {s['validation_accuracy']:.4f} | {acc:.4f} | {s['train_time_s']:.0f} |")
    lines += ["", f"Machine: {machine()}."]
    emit("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
