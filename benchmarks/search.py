"""`lorabudget search` against the hand-made preset at a 100k budget, real MiniLM-L6 on a CPU.

Data: ../shared/data/agnews/train_5k.csv. The last 1,000 rows are a held-out test set nothing trains
or selects on; the first 4,000 are the training pool (each run splits the same validation rows off it).

1. Search: `lorabudget search minilm-cpu --budget 100000` for a fixed wall time (default 60 min) with
   shortened trials (1 epoch, evaluation every 40 steps for the pruner), the built-in space.
2. Hand-made baseline at the same budget: the `minilm-cpu` preset scaled down to LoRA r=2 (alpha 4)
   on all six modules of all layers (84,484 trainable parameters), trained in full.
3. The search's best.yaml retrained in full (the preset's 3 epochs). best.yaml trains on the
   validation rows too (`data.train_on_validation`), so the hand-made baseline is also trained that
   way, beside its run on the split: the difference the search makes is between the two that trained
   on the same rows.
All are evaluated on the held-out rows: accuracy with a Wilson 95% interval, macro F1, and the search's
run against each hand-made one with McNemar's exact test on the same rows.

`--quick` is a smoke mode (a few rows, 2 trials of 2 steps, 2-step retrains): it checks that the script
runs end to end and measures nothing worth reporting.

Usage: python benchmarks/search.py [--data PATH] [--minutes 60] [--out docs/search.md] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TRAIN_5K, emit, machine, read_rows, split_held_out, write_rows  # noqa: E402

from lorabudget.stats import accuracy_interval, mcnemar  # noqa: E402

BUDGET = 100_000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=TRAIN_5K)
    ap.add_argument("--preset", default="minilm-cpu")
    ap.add_argument("--minutes", type=float, default=60.0, help="wall time of the search")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, help="keep runs here (default: a temporary folder)")
    ap.add_argument("--quick", action="store_true", help="smoke mode: tiny data and trials, measures nothing")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if not args.data.is_file():
        print(f"skipped: {args.data} not found (the benchmark needs the shared AG News rows)")
        return 0

    from lorabudget.cli import main as cli
    from lorabudget.inference.runs import evaluate_run, load_run

    tmp = args.workdir or Path(tempfile.mkdtemp())
    tmp.mkdir(parents=True, exist_ok=True)
    train_csv, test_csv = split_held_out(args.data, tmp)
    common = ["--set", f"data.cache_dir={tmp / 'cache'}"]
    trial_settings = ["training.epochs=1", "training.eval_every=40"]
    full_settings: list[str] = []
    minutes = args.minutes
    if args.quick:
        write_rows(train_csv, read_rows(train_csv)[:160])
        write_rows(test_csv, read_rows(test_csv)[:64])
        common += ["--set", "data.validation_size=32"]
        trial_settings = ["training.max_steps=2", "training.eval_every=1"]
        full_settings = ["training.max_steps=2"]
        minutes = min(minutes, 5.0)
    search_dir = tmp / "search"

    start = time.perf_counter()
    cpu_start = time.process_time()
    rc = cli(
        [
            "search",
            args.preset,
            "--budget",
            str(BUDGET),
            "--data",
            str(train_csv),
            "--output",
            str(search_dir),
            "--trials",
            "2" if args.quick else "1000",
            "--timeout",
            str(minutes * 60),
            "--seed",
            str(args.seed),
            *common,
            *[a for s in trial_settings for a in ("--trial-set", s)],
        ]
    )
    search_s = time.perf_counter() - start
    search_cpu_s = time.process_time() - cpu_start
    if rc != 0:
        print(f"search failed with exit code {rc}")
        return rc
    with open(search_dir / "trials.csv", newline="") as fh:
        trials = list(csv.DictReader(fh))
    counts = {k: sum(t["state"] == k for t in trials) for k in ("complete", "pruned", "rejected", "failed")}

    results = []
    hand_made = [args.preset, "--set", "adapter.r=2", "--set", "adapter.alpha=4"]
    sides = [  # (label, run directory, config and overrides)
        ("hand-made: `" + args.preset + "` scaled to LoRA r=2, alpha 4, all modules and layers", "baseline", hand_made),
        (
            "hand-made, trained on its validation rows too",
            "baseline-all-rows",
            hand_made + ["--set", "data.train_on_validation=true"],
        ),
        ("search: best.yaml retrained in full", "best", [str(search_dir / "best.yaml")]),
    ]
    for label, run_name, config_args in sides:
        run_dir = tmp / run_name
        extra = [a for s in full_settings for a in ("--set", s)]
        rc = cli(
            [
                "train",
                *config_args,
                "--data",
                str(train_csv),
                "--output",
                str(run_dir),
                "--overwrite",
                "--no-report",
                *common,
                *extra,
            ]
        )
        if rc != 0:
            print(f"training {label} failed with exit code {rc}")
            return rc
        summary = json.loads((run_dir / "summary.json").read_text())
        metrics = evaluate_run(load_run(run_dir), str(test_csv))
        n = int(metrics.get("rows", len(read_rows(test_csv))))
        low, high = accuracy_interval(metrics["accuracy"], n)
        val = None if summary.get("validation_trained_on") else summary["validation_accuracy"]
        results.append(
            {
                "side": label,
                "params": summary["trainable_params"],
                "val": val,
                "acc": metrics["accuracy"],
                "low": low,
                "high": high,
                "f1": metrics["macro_f1"],
                "train_s": summary["train_time_s"],
                "n": n,
                "correct": metrics["correct"],
            }
        )
        print({k: v for k, v in results[-1].items() if k != "correct"}, flush=True)

    best_line = (search_dir / "best.yaml").read_text().splitlines()[0].lstrip("# ")
    lines = [
        "# Search vs hand-made configuration at a 100,000-parameter budget"
        + (" (QUICK SMOKE RUN: not a measurement)" if args.quick else ""),
        "",
        "<!-- written by benchmarks/search.py" + (" --quick" if args.quick else "") + " -->",
        "",
        f"Model `all-MiniLM-L6-v2`, data `{args.data.name}`: the last {n:,} rows held out (never trained or "
        f"selected on), the rest the training pool with the preset's validation split. Budget {BUDGET:,} trainable "
        "parameters, head included.",
        "",
        f"Search: built-in space, TPE (seed {args.seed}), median pruner, trials shortened with "
        + ", ".join(f"`{s}`" for s in trial_settings)
        + f"; time limit {minutes:g} minutes of wall time "
        f"(it used {search_s / 60:.1f} min wall, {search_cpu_s / 60:.1f} min CPU of this process). "
        f"Trials: {counts['complete']} complete, {counts['pruned']} pruned, {counts['rejected']} rejected before "
        f"training (over budget or invalid), {counts['failed']} failed. {best_line.rstrip('.')}.",
        "",
        "| configuration | trainable params | validation acc | held-out accuracy [95% CI] | held-out macro F1 | training time (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        val = "trained on" if r["val"] is None else f"{r['val']:.4f}"
        lines.append(
            f"| {r['side']} | {r['params']:,} | {val} | {r['acc']:.4f} [{r['low']:.4f}, {r['high']:.4f}] | "
            f"{r['f1']:.4f} | {r['train_s']:.0f} |"
        )
    best = results[2]
    # best.yaml trains on the validation rows unless a setting forbids it: pair it first with the
    # hand-made run that trained on the same rows, then with the other one.
    if best["val"] is None:
        pairs = (
            (results[1], "trained on the same rows"),
            (results[0], "trained without its validation rows, as the preset trains"),
        )
    else:
        pairs = ((results[0], "trained on the same rows"), (results[1], "trained on its validation rows too"))
    lines += [""]
    for other, which in pairs:
        test = mcnemar(best["correct"], other["correct"])
        lines.append(
            f"- search − hand-made ({which}): {best['acc'] - other['acc']:+.4f} on the held-out rows; "
            f"{test['only_a']} rows only the search's run got right, {test['only_b']} only the hand-made "
            f"one, McNemar exact p = {test['p_value']:.3f}."
        )
    lines += ["", f"Machine: {machine()}.", ""]
    emit("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
