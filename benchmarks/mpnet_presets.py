"""A stronger frozen base: all-mpnet-base-v2 presets beside the MiniLM-L6 ones, held-out accuracy and costs.

Data: ../shared/data/agnews/train_5k.csv (or `--data`, e.g. SST-2's, with `--set model.labels=null`, as
the presets name AG News' classes). The last 1,000 rows are held out (no run trains on them or
picks anything on them inside a run); every run trains on the first 4,000 through the command line as
a user would (`lorabudget train PRESET --data train.csv`), splitting its own validation rows off them.

Each run is a label and a preset with optional overrides, `LABEL=PRESET[;key=value;...]`; candidates
for a preset's settings are the preset with overrides. For each run: trainable parameters, held-out
accuracy with its Wilson 95% interval, macro F1, training seconds per epoch and in all, peak RSS of
the training process (`/usr/bin/time -v`), and inference rows/s on the held-out rows (in this process,
the run's own precision, model already loaded). `--pair A:B` adds McNemar's exact test of two runs on
the same held-out rows. Finished runs are kept in `--work` (`LABEL.json`) and not trained again, so the
script can be stopped and re-run with more runs.

Usage: python benchmarks/mpnet_presets.py [--run LABEL=PRESET[;k=v...]]... [--pair A:B]... [--work DIR]
       [--data PATH] [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TRAIN_5K, emit, held_out_task, machine, paired_table, train_timed  # noqa: E402

DEFAULT_RUNS = [
    "minilm-10k=minilm-cpu-10k",
    "mpnet-10k=mpnet-cpu-10k",
    "minilm-100k=minilm-cpu-100k",
    "mpnet-100k=mpnet-cpu-100k",
    "minilm-1M=minilm-cpu",
    "mpnet-1M=mpnet-cpu",
]
DEFAULT_PAIRS = ["minilm-10k:mpnet-10k", "minilm-100k:mpnet-100k", "minilm-1M:mpnet-1M"]
QUICK_SETTINGS = ["training.max_steps=2", "data.validation_size=20", "data.max_train_rows=64"]


def parse_run(spec: str) -> tuple[str, str, list[str]]:
    """``LABEL=PRESET;key=value;...`` -> (label, preset, overrides)."""
    label, _, rest = spec.partition("=")
    preset, *overrides = [part.strip() for part in rest.split(";") if part.strip()]
    return label.strip(), preset, overrides


def measure(label: str, preset: str, overrides: list[str], train_csv: Path, test_csv: Path, work: Path) -> dict:
    summary = train_timed(preset, train_csv, work / label, overrides)
    return score(label, preset, overrides, summary, work / label, test_csv)


def score(label: str, preset: str, overrides: list[str], summary: dict, run_dir: Path, test_csv: Path) -> dict:
    """Held-out accuracy and inference speed of a trained run; ``summary``: its training summary."""
    from lorabudget.data.load import load_labelled
    from lorabudget.inference.runs import load_run
    from lorabudget.metrics import classification_metrics

    run = load_run(run_dir, precision="auto")  # as `lorabudget predict` by default
    data = load_labelled(str(test_csv), run.cfg.class_names, columns=run.columns())
    run.logits(data.texts[:32], pairs=data.pairs[:32] if data.pairs else None)  # warm-up
    start = time.perf_counter()
    logits = run.logits(data.texts, pairs=data.pairs)
    seconds = time.perf_counter() - start
    metrics = classification_metrics(logits, data.labels, run.cfg.class_names)
    return {
        "label": label,
        "preset": preset,
        "overrides": overrides,
        "model": run.cfg.model.name,
        "method": run.cfg.adapter.method,
        "trainable": summary["trainable_params"],
        "train_rows": summary["train_rows"],
        "epochs": run.cfg.training.epochs,
        "steps": summary["steps"],
        "train_s": summary["train_time_s"],
        "eval_s": summary["eval_time_s"],
        "peak_rss_mb": summary["peak_rss_mb"],
        "precision": summary["mixed_precision"],
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "correct": metrics["correct"],
        "infer_rows_per_s": len(data.texts) / seconds,
    }


def table(results: list[dict], pairs: list[str], held_out: int, quick: bool, data: Path) -> str:
    from lorabudget.stats import format_interval, wilson_interval

    lines = [
        "<!-- mpnet_presets" + (":quick" if quick else "") + " -->",
        f"Trained on the first rows of {data.parent.name}/{data.name} (each run splits its own validation rows off them), scored on "
        f"the last {held_out:,} rows, which no run saw. "
        + ("**Quick smoke run: a few steps, not a measurement.** " if quick else "")
        + f"Machine: {machine()}. {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "| run | preset and overrides | trainable | held-out accuracy (95% CI) | macro F1 | s/epoch¹ | training s "
        "| peak RSS GB | inference rows/s |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        n = len(r["correct"])
        ci = format_interval(wilson_interval(sum(r["correct"]), n))
        setting = "`" + ";".join([r["preset"], *r["overrides"]]) + "`"
        lines.append(
            f"| {r['label']} | {setting} | {r['trainable']:,} | {r['accuracy']:.2%} ({ci}) | {r['macro_f1']:.4f} "
            f"| {(r['train_s'] - r['eval_s']) / float(r['epochs']):.0f} | {r['train_s']:.0f} | {r['peak_rss_mb'] / 1024:.2f} "
            f"| {r['infer_rows_per_s']:.0f} |"
        )
    lines += [
        "",
        "¹ training seconds without the validation passes, divided by the epochs; the precision is the run's own "
        "(`training.mixed_precision: auto` measures bf16 against fp32 on the machine and picks the faster).",
    ]
    by_label = {r["label"]: r for r in results}
    tests = [p.split(":") for p in pairs if all(side in by_label for side in p.split(":"))]
    if tests:
        lines += ["", *paired_table([(f"{a} vs {b}", by_label[a], by_label[b]) for a, b in tests])]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", dest="runs", action="append", help="LABEL=PRESET[;key=value;...] (repeatable)")
    ap.add_argument("--pair", dest="pairs", action="append", help="A:B, McNemar's test of two runs (repeatable)")
    ap.add_argument("--data", type=Path, default=TRAIN_5K, help="a CSV whose last field is the class index")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="key=value for every run")
    ap.add_argument("--work", type=Path, default=Path("mpnet-bench"), help="split, runs and results (kept)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 steps on 64 rows; measures nothing")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    task = held_out_task(args.data, args.work)
    if task is None:
        return 0
    train_csv, test_csv, _ = task
    results = []
    for spec in args.runs or DEFAULT_RUNS:
        label, preset, overrides = parse_run(spec)
        overrides = [*overrides, *args.overrides]
        if args.quick:
            label, overrides = f"quick-{label}", [*overrides, *QUICK_SETTINGS]
        saved = args.work / f"{label}.json"
        if saved.is_file():
            result = json.loads(saved.read_text())
        else:
            result = measure(label, preset, overrides, train_csv, test_csv, args.work)
            saved.write_text(json.dumps(result))
        print(
            f"{label}: {result['trainable']:,} trainable, held-out {result['accuracy']:.2%}, "
            f"{result['train_s']:.0f} s training",
            flush=True,
        )
        results.append(result)
    emit(table(results, args.pairs or DEFAULT_PAIRS, len(results[0]["correct"]), args.quick, args.data), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
