"""fp32 vs bf16 training of a preset on real AG News rows: speed, memory and held-out accuracy side by side.

Data: ../shared/data/agnews/train_5k.csv. The last 1,000 rows are held out (no run trains or selects
on them); each run trains the preset unchanged on the first 4,000 (its own validation split comes
out of those), once per precision and seed, one after the other in fresh processes
(`lorabudget train ... --set training.mixed_precision=no|bf16`, peak RSS from `/usr/bin/time -v`).
Each trained run then labels the held-out rows with `--precision fp32` and with `--precision bf16`.

Reported per run: training samples/s, training time, peak RSS, held-out accuracy (Wilson 95%
interval) for both inference precisions; per seed, McNemar's exact p-value of bf16 training
against fp32 training on the same held-out rows (fp32 inference), and the agreement of bf16
inference with fp32 inference on the same model.

Usage: python benchmarks/bf16_training.py [--preset minilm-cpu] [--seeds 42 ...] [--work DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TRAIN_5K, emit, held_out_task, machine, predicted_labels, train_timed  # noqa: E402

PRECISIONS = {"fp32": "no", "bf16": "bf16"}


def train(preset: str, train_csv: Path, run: Path, precision: str, seed: int, extra: list[str]) -> dict:
    return train_timed(
        preset, train_csv, run, [f"training.mixed_precision={PRECISIONS[precision]}", f"training.seed={seed}", *extra]
    )


def main() -> int:
    from lorabudget.stats import format_interval, mcnemar, wilson_interval

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=TRAIN_5K)
    ap.add_argument("--preset", default="minilm-cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "lorabudget-bf16")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    task = held_out_task(args.data, args.work)
    if task is None:
        return 0
    train_csv, test_csv, truth = task

    results: dict[tuple[int, str], dict] = {}
    for seed in args.seeds:
        for precision in PRECISIONS:
            run = args.work / f"{precision}-seed{seed}"
            summary = train(args.preset, train_csv, run, precision, seed, args.overrides)
            preds = {p: predicted_labels(run, test_csv, p) for p in ("fp32", "bf16")}
            results[(seed, precision)] = {"summary": summary, "preds": preds}
            print(
                f"seed {seed} {precision}: {summary['samples_per_s']:.1f} samples/s, {summary['train_time_s']:.0f} s",
                flush=True,
            )

    n = len(truth)
    lines = [
        f"`{args.preset}` on the first 4,000 rows of train_5k.csv ({', '.join(args.overrides) or 'preset unchanged'}), "
        f"held-out: the last {n:,} rows. One run per precision and seed, one after the other.",
        "",
        "| seed | training precision | samples/s | training time (s) | peak RSS (MB) | held-out acc, fp32 predict (95% CI) "
        "| held-out acc, bf16 predict | bf16 predict = fp32 predict |",
        "|---:|---|---:|---:|---:|---|---:|---:|",
    ]
    for (seed, precision), r in results.items():
        s, preds = r["summary"], r["preds"]
        correct = [sum(p == t for p, t in zip(preds[k], truth)) for k in ("fp32", "bf16")]
        agree = sum(a == b for a, b in zip(preds["fp32"], preds["bf16"])) / n
        lines.append(
            f"| {seed} | {precision} | {s['samples_per_s']:.1f} | {s['train_time_s']:.0f} | {s['peak_rss_mb']:,.0f} | "
            f"{correct[0] / n:.4f} ({format_interval(wilson_interval(correct[0], n))}) | {correct[1] / n:.4f} | {agree:.1%} |"
        )
    lines += ["", "McNemar's exact test, bf16 training vs fp32 training (fp32 predict, same held-out rows):", ""]
    for seed in args.seeds:
        right = {p: [a == t for a, t in zip(results[(seed, p)]["preds"]["fp32"], truth)] for p in PRECISIONS}
        test = mcnemar(right["bf16"], right["fp32"])
        lines.append(f"- seed {seed}: {json.dumps(test)}")
    lines += ["", f"Machine: {machine()}."]
    emit("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
