"""Is `auto` precision never slower than fp32 on this machine?

The README's first training command (`lorabudget train minilm-cpu --data train_5k.csv`) cut to its first
`--steps` optimizer steps (`--set training.max_steps=N`, 40 by default), run in fresh processes with
`training.mixed_precision` = `auto`, `no` (fp32) and `bf16` (forced), interleaved: auto, no, bf16,
auto, no, bf16, ... `--repeats` times each, so drift on a shared host hits all three. One untimed
1-step fp32 run first fills the tokenization cache. Printed: the CPU (model and the flags that
matter), each run's wall time and training-loop time, what `auto` chose and why (its log line),
and the median wall-time ratios auto/no (target: at most 1.05) and bf16/no.

`auto` runs with the project's cache as it is (`$LORABUDGET_CACHE` or ~/.cache/lorabudget), so its
bf16 probe runs in the first auto run only if this machine has not been probed before; `--fresh-probe`
removes the cached probes first (the first auto run then pays for the probe, as on a new machine).

Usage: python benchmarks/precision_auto.py [--data ../shared/data/agnews/train_5k.csv] [--steps 40]
       [--repeats 3] [--preset minilm-cpu] [--fresh-probe] [--out FILE]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TRAIN_5K, emit, lorabudget, machine

SIDES = ("auto", "no", "bf16")
TARGET = 1.05


def train_once(preset: str, data: Path, run: Path, steps: int, precision: str) -> dict:
    """One training run in a fresh process: wall seconds, the training loop's seconds and the precision line."""
    cmd = lorabudget(
        "train",
        preset,
        "--data",
        str(data),
        "--output",
        str(run),
        "--overwrite",
        "--no-report",
        "--set",
        f"training.max_steps={steps}",
        "--set",
        f"training.mixed_precision={precision}",
    )
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"training failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    output = done.stdout + done.stderr
    line = next((l.strip() for l in output.splitlines() if l.strip().startswith("training precision: ")), "?")
    trained = re.search(r"trained \d+ steps in ([0-9.]+)s", output)
    return {"wall_s": wall, "train_s": float(trained.group(1)) if trained else float("nan"), "line": line}


def main() -> int:
    from lorabudget.envinfo import cpu_summary
    from lorabudget.io import default_cache_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=TRAIN_5K)
    ap.add_argument("--preset", default="minilm-cpu")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each side (default 3)")
    ap.add_argument("--fresh-probe", action="store_true", help="remove the cached bf16 probes first")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "lorabudget-precision-auto")
    ap.add_argument("--out", type=Path, help="also write the result here")
    args = ap.parse_args()
    if not args.data.is_file():
        print(f"skipped: {args.data} not found (the benchmark needs the shared AG News rows)")
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    if args.fresh_probe:
        shutil.rmtree(default_cache_dir() / "precision", ignore_errors=True)
    print(f"CPU: {cpu_summary()}", flush=True)
    train_once(args.preset, args.data, args.work / "warm-up", 1, "no")  # tokenization cache, file cache

    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    for repeat in range(args.repeats):
        for side in SIDES:
            result = train_once(args.preset, args.data, args.work / side, args.steps, side)
            runs[side].append(result)
            print(
                f"round {repeat + 1} {side:>4}: {result['wall_s']:6.1f} s wall, {result['train_s']:6.1f} s "
                f"training; {result['line']}",
                flush=True,
            )

    wall = {side: statistics.median(r["wall_s"] for r in runs[side]) for side in SIDES}
    train = {side: statistics.median(r["train_s"] for r in runs[side]) for side in SIDES}
    auto_ratio, bf16_ratio = wall["auto"] / wall["no"], wall["bf16"] / wall["no"]
    chose = sorted({r["line"] for r in runs["auto"]})
    lines = [
        f"### `auto` precision against fp32: {args.preset}, {args.steps} steps, {args.repeats} interleaved run(s) each",
        "",
        f"CPU: {cpu_summary()}.",
        f"Machine: {machine()}.",
        "`auto` chose: " + "; ".join(f"`{c}`" for c in chose) + ".",
        "",
        "| precision | wall s per run | median wall s | median training-loop s | wall ratio to fp32 |",
        "|---|---|---:|---:|---:|",
    ]
    for side, label in (("auto", "auto"), ("no", "fp32 (`no`)"), ("bf16", "bf16 (forced)")):
        each = ", ".join(f"{r['wall_s']:.1f}" for r in runs[side])
        lines.append(f"| {label} | {each} | {wall[side]:.1f} | {train[side]:.1f} | {wall[side] / wall['no']:.2f}x |")
    lines += [
        "",
        (
            f"auto/no = {auto_ratio:.2f} (target at most {TARGET}: {'met' if auto_ratio <= TARGET else 'NOT met'}); "
            f"bf16/no = {bf16_ratio:.2f}."
        ),
    ]
    emit("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
