"""Quantized base (QLoRA) against the unquantized base: peak memory, speed and held-out accuracy side by side.

Data: ../shared/data/agnews/train_5k.csv. The last 1,000 rows are held out (no run trains or selects
on them); each run trains the preset on the first 4,000 (its own validation split comes out of
those) with ``model.quantization`` none, nf4 and int8 (bitsandbytes), one after the other in fresh
processes (peak RSS from ``/usr/bin/time -v``), everything else unchanged. Each run then labels the
held-out rows (``predict``, unmerged adapters on the quantized base).

Reported per run: trainable parameters (the same for all: quantization touches frozen weights only),
training samples/s and time, peak RSS, held-out accuracy with its Wilson 95% interval and the
difference to the unquantized run with McNemar's exact p-value on the same rows.

Usage: python benchmarks/quantized.py [--preset minilm-cpu] [--kinds none nf4 int8] [--set key=value ...]
       [--work DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TRAIN_5K, emit, held_out_task, machine, predicted_labels, train_timed  # noqa: E402


def main() -> int:
    from lorabudget.stats import format_interval, mcnemar, wilson_interval

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=TRAIN_5K)
    ap.add_argument("--preset", default="minilm-cpu")
    ap.add_argument("--kinds", nargs="+", default=["none", "nf4", "int8"], choices=["none", "nf4", "int8"])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "lorabudget-quantized")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    task = held_out_task(args.data, args.work)
    if task is None:
        return 0
    train_csv, test_csv, truth = task

    results: dict[str, dict] = {}
    for kind in args.kinds:
        run = args.work / kind
        summary = train_timed(args.preset, train_csv, run, [f"model.quantization={kind}", *args.overrides])
        right = [p == t for p, t in zip(predicted_labels(run, test_csv), truth)]
        results[kind] = {"summary": summary, "right": right}
        print(
            f"{kind}: {summary['samples_per_s']:.1f} samples/s, {summary['train_time_s']:.0f} s, "
            f"{summary['peak_rss_mb']:,.0f} MB, held-out {sum(right) / len(right):.4f}",
            flush=True,
        )

    n = len(truth)
    reference = results.get("none")
    lines = [
        f"`{args.preset}` on the first 4,000 rows of train_5k.csv ({', '.join(args.overrides) or 'preset unchanged'}), "
        f"held-out: the last {n:,} rows. One run per base, one after the other; training precision as the preset "
        "resolves it on this machine.",
        "",
        "| base | trainable params | samples/s | training time (s) | peak RSS (MB) | held-out acc (95% CI) "
        "| vs none (only this right / only none right, McNemar p) |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for kind, r in results.items():
        s, right = r["summary"], r["right"]
        versus = "—"
        if reference is not None and kind != "none":
            test = mcnemar(right, reference["right"])
            versus = f"{(sum(right) - sum(reference['right'])) / n * 100:+.1f} pt ({test['only_a']} / {test['only_b']}, p = {test['p_value']:.2g})"
        lines.append(
            f"| {kind} | {s['trainable_params']:,} | {s['samples_per_s']:.1f} | {s['train_time_s']:.0f} | "
            f"{s['peak_rss_mb']:,.0f} | {sum(right) / n:.4f} ({format_interval(wilson_interval(sum(right), n))}) | {versus} |"
        )
    lines += ["", f"Machine: {machine()}."]
    emit("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
