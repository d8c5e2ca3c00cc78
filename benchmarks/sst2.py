"""Your own data, measured: the `minilm-cpu` presets at about 10k, 100k and 1M trainable parameters on SST-2.

Data: ../shared/data/sst2/train_5k.csv (real SST-2 training phrases, header `sentence,label`, labels
0/1). The last 1,000 rows are held out (the file's rows were drawn with a fixed seed, so the split is
fixed); each preset trains on the other 4,000 through the command line exactly as a user would:

    lorabudget train PRESET --data train.csv --set model.labels=null

(the presets name AG News' four classes; `model.labels=null` reads the two classes from the data),
splitting its own validation rows off them (`data.validation_size` of the preset). Each run is then
evaluated on the held-out rows (`lorabudget evaluate`): accuracy with its Wilson 95% interval, macro
F1, training time and wall time.

`--quick` is a smoke run (a few steps, a few hundred rows): it proves the script works and measures
nothing worth quoting.

Usage: python benchmarks/sst2.py [--data PATH] [--presets minilm-cpu-10k,...] [--quick] [--out docs/sst2.md]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, emit, lorabudget, machine, read_rows, split_held_out  # noqa: E402

SST2 = SHARED_DATA / "sst2" / "train_5k.csv"
PRESETS = ("minilm-cpu-10k", "minilm-cpu-100k", "minilm-cpu")
HELD_OUT = 1000


def run_cli(*args: str) -> None:
    done = subprocess.run(lorabudget(*args), capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"failed: lorabudget {' '.join(args)}\n{done.stderr[-3000:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SST2)
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra --set for every preset")
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 steps on 200 rows, 100 held out")
    ap.add_argument("--work", type=Path, help="folder for the split and the runs (default: a temporary one)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if not args.data.is_file():
        print(f"skipped: {args.data} not found (the benchmark needs the shared SST-2 rows)")
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="sst2-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    held_out = 100 if args.quick else HELD_OUT
    train_csv, test_csv = split_held_out(args.data, work, held_out, 200 if args.quick else None)
    sets = ["model.labels=null", *args.overrides]
    if args.quick:
        sets += ["training.max_steps=3", "data.validation_size=50", "training.eval_batch_size=64"]

    rows = []
    for preset in args.presets.split(","):
        run = work / preset
        start = time.perf_counter()
        run_cli(
            "train",
            preset,
            "--data",
            str(train_csv),
            "--output",
            str(run),
            "--overwrite",
            "--no-report",
            *[a for s in sets for a in ("--set", s)],
        )
        wall = time.perf_counter() - start
        run_cli("evaluate", str(run), "--data", str(test_csv), "--no-report")
        summary = json.loads((run / "summary.json").read_text())
        ev = json.loads((run / "eval.json").read_text())
        config = yaml.safe_load((run / "config.yaml").read_text())
        rows.append((preset, summary, ev, wall, config["model"]["labels"]))
        print(f"{preset}: held-out accuracy {ev['accuracy']:.4f} {ev['accuracy_ci95']}, {wall:.0f} s", flush=True)

    lines = [
        "<!-- sst2" + (":quick" if args.quick else "") + " -->",
        f"SST-2 ({args.data.name}): trained on {len(read_rows(train_csv)) - 1:,} rows (each preset splits its own "
        f"validation rows off them), scored on the last {held_out:,} rows, which no run trained on. "
        + ("**Quick smoke run: 3 steps, not a measurement.** " if args.quick else "")
        + f"Machine: {machine()}. {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "| preset | trainable params | classes (inferred) | held-out accuracy | 95% interval | macro F1 "
        "| validation accuracy | training s | wall s |",
        "|---|---:|---|---:|---|---:|---:|---:|---:|",
    ]
    for preset, summary, ev, wall, labels in rows:
        ci = ev["accuracy_ci95"]
        lines.append(
            f"| {preset} | {summary['trainable_params']:,} | {', '.join(labels)} | {ev['accuracy']:.4f} "
            f"| {ci[0]:.4f}–{ci[1]:.4f} | {ev['macro_f1']:.4f} | {summary['validation_accuracy']:.4f} "
            f"| {summary['train_time_s']:.1f} | {wall:.0f} |"
        )
    emit("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
