"""The frozen-prefix cache (``training.cache_frozen_layers``): time, memory, disk and accuracy without it,
with a cold cache and with a warm one.

Data: ../shared/data/agnews/train_5k.csv (or ``--data``). Rows are shuffled with a fixed seed; the first
``--held-out`` (1,000) are held out (no run trains on them or picks anything on them), the next ``--rows``
(800) are the training file, from which each run splits its own validation rows as usual.

For each configuration (``--config``, repeatable: ``mpnet-cpu-10k`` by default, ``mpnet-cpu-100k``,
``minilm-top2`` = minilm-cpu-10k adapted on its top two layers only) three runs, each in a fresh
process under ``/usr/bin/time -v`` through the command line as a user runs it, ``--epochs`` (1) epochs:

1. ``none``: ``training.cache_frozen_layers=false``;
2. ``cold``: ``true`` with no prefix cache on disk (the folder is removed first; the token cache is warm
   from run 1, so only the prefix cache differs);
3. ``warm``: ``true`` with another learning rate (half the configuration's): the states are reused;
4. ``none-half-lr``: ``false`` at the warm run's learning rate, the control that separates what the
   cache changes from what the learning rate changes.

Printed: seconds (the loop's ``train_time_s``, the cache's build or check ``frozen_prefix.build_seconds``,
the head's class vectors ``head_init_s`` where the head starts from them, their total, the wall time of the process), the ratios of totals warm/none and cold/none (the
targets: warm at most 0.65x, cold at most 1.05x), peak RSS, the prefix cache's
bytes on disk, validation accuracy of each, held-out accuracy of each with McNemar's exact test of
cold and warm against none on the same held-out rows, and the machine's CPU.

Usage: python benchmarks/prefix_cache.py [--config NAME]... [--rows 800] [--epochs 1] [--held-out 1000]
       [--data PATH] [--work DIR] [--out FILE] [--smoke]
``--smoke`` checks the script in seconds on a tiny random model and synthetic rows (no real data, no
real model; the figures mean nothing).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TRAIN_5K, emit, machine, predicted_labels, read_rows, train_timed, write_rows  # noqa: E402

CONFIGS = {
    "mpnet-cpu-10k": ("mpnet-cpu-10k", []),
    "mpnet-cpu-100k": ("mpnet-cpu-100k", []),
    # MiniLM-L6 with (IA)3 on the top two of its six layers: the cache skips four layers.
    "minilm-top2": ("minilm-cpu-10k", ["adapter.layers=[4, 5]"]),
    # mpnet-cpu-10k with a random head, as it shipped before it started from the class means.
    "mpnet-cpu-10k-random": ("mpnet-cpu-10k", ["head.init=random"]),
}
SPLIT_SEED = 20261206


def split(data: Path, work: Path, rows: int, held_out: int) -> tuple[Path, Path, list[int]]:
    """``work/train.csv`` (``rows`` rows) and ``work/test.csv`` (``held_out`` rows), drawn with a fixed seed."""
    body = [r for r in read_rows(data) if r and r[-1].strip().isdigit()]
    random.Random(SPLIT_SEED).shuffle(body)
    if len(body) < rows + held_out:
        raise SystemExit(f"{data} holds {len(body)} rows; --rows {rows} and --held-out {held_out} need more")
    work.mkdir(parents=True, exist_ok=True)
    test = body[:held_out]
    return (
        write_rows(work / "train.csv", body[held_out : held_out + rows]),
        write_rows(work / "test.csv", test),
        [int(r[-1]) for r in test],
    )


def learning_rate(config: str, overrides: list[str]) -> float:
    from lorabudget.config import load_config

    return load_config(config, overrides).training.learning_rate


def three_runs(label: str, config: str, overrides: list[str], train_csv: Path, work: Path, epochs: float) -> dict:
    """The none, cold and warm runs of one configuration: their summaries, wall seconds and cache bytes."""
    from lorabudget.data.cache import folder_size
    from lorabudget.data.prefix_store import PREFIX_FOLDER

    cache = work / f"cache-{label}"
    common = [*overrides, f"training.epochs={epochs}", f"data.cache_dir={cache}"]
    lr = learning_rate(config, overrides)
    plan = {
        "none": ["training.cache_frozen_layers=false"],
        "cold": ["training.cache_frozen_layers=true"],
        "warm": ["training.cache_frozen_layers=true", f"training.learning_rate={lr / 2:g}"],
        # The warm run's learning rate without the cache: what the cache itself changes at that rate.
        "none-half-lr": ["training.cache_frozen_layers=false", f"training.learning_rate={lr / 2:g}"],
    }
    runs = {}
    for kind, sets in plan.items():
        if kind == "cold":
            shutil.rmtree(cache / PREFIX_FOLDER, ignore_errors=True)
        started = time.perf_counter()
        summary = train_timed(config, train_csv, work / f"{label}-{kind}", [*common, *sets])
        summary["wall_s"] = time.perf_counter() - started
        summary["cache_bytes"] = folder_size(cache / PREFIX_FOLDER)
        runs[kind] = summary
    return runs


def held_out_lines(runs: dict, work: Path, label: str, test_csv: Path, gold: list[int]) -> list[str]:
    from lorabudget.stats import mcnemar

    correct = {}
    for kind in runs:
        predicted = predicted_labels(work / f"{label}-{kind}", test_csv)
        correct[kind] = [p == g for p, g in zip(predicted, gold)]
    lines = [
        f"  held-out accuracy ({len(gold):,} rows): "
        + ", ".join(f"{kind} {sum(c) / len(c):.4f}" for kind, c in correct.items())
    ]
    for base, kind in (("none", "cold"), ("none", "warm"), ("none-half-lr", "warm")):
        test = mcnemar(correct[base], correct[kind])
        lines.append(
            f"  McNemar {base} vs {kind}: only {base} right {test['only_a']}, only {kind} right "
            f"{test['only_b']}, p = {test['p_value']:.3f}"
        )
    return lines


def cost(summary: dict) -> float:
    """Training seconds with the cache's build (or read and check) and the head's class vectors counted:
    ``train_time_s`` is the loop's."""
    prefix = summary.get("frozen_prefix", {}).get("build_seconds", 0.0)
    return summary["train_time_s"] + prefix + summary.get("head_init_s", 0.0)


def report(label: str, runs: dict) -> list[str]:
    none, none_acc = cost(runs["none"]), runs["none"]["validation_accuracy"]
    lines = [
        f"{label}:",
        "  run           loop s  cache s   head s  total s   wall s   peak RSS MB   prefix cache MB   val acc   cache",
    ]
    for kind, s in runs.items():
        prefix = s.get("frozen_prefix", {})
        state = "off" if not prefix.get("used") else "reused" if prefix.get("cache_hit") else "built"
        lines.append(
            f"  {kind:<13}{s['train_time_s']:>7.1f}{prefix.get('build_seconds', 0.0):>9.1f}"
            f"{s.get('head_init_s', 0.0):>9.1f}{cost(s):>9.1f}"
            f"{s['wall_s']:>9.1f}{s['peak_rss_mb']:>14.0f}{s['cache_bytes'] / 2**20:>18.1f}"
            f"{s['validation_accuracy']:>10.4f}   {state}"
            + (f" (layers 0-{prefix['layers'] - 1})" if prefix.get("used") else "")
        )
    lines.append(
        f"  total seconds warm/none {cost(runs['warm']) / none:.3f} (bar <= 0.65), "
        f"cold/none {cost(runs['cold']) / none:.3f} (bar <= 1.05); validation accuracy against none: "
        f"warm {(runs['warm']['validation_accuracy'] - none_acc) * 100:+.1f}, "
        f"cold {(runs['cold']['validation_accuracy'] - none_acc) * 100:+.1f} points (bar: within 3); "
        f"warm against none at its own learning rate "
        f"{(runs['warm']['validation_accuracy'] - runs['none-half-lr']['validation_accuracy']) * 100:+.1f}"
    )
    return lines


def smoke_setup(work: Path) -> tuple[Path, Path, list[int], dict]:
    """A tiny random RoBERTa adapted on its top layer, and synthetic rows (the test suite's fixtures)."""
    import yaml

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_model_dir, synthetic_rows

    work.mkdir(parents=True, exist_ok=True)
    model = make_model_dir(work / "tiny-roberta", "roberta")
    rows = synthetic_rows(200, seed=1)
    train_csv = write_rows(work / "train.csv", rows[:160])
    test_csv = write_rows(work / "test.csv", rows[160:])
    config = {
        "name": "smoke",
        "model": {"name": str(model), "max_length": 64, "labels": ["World", "Sports", "Business", "Sci/Tech"]},
        "head": {"type": "linear", "pooling": "mean"},
        "adapter": {"method": "lora", "r": 2, "alpha": 4, "modules": ["query", "value"], "layers": [2]},
        "data": {"train": str(train_csv), "validation_size": 40},
        "training": {"batch_size": 16, "learning_rate": 1e-2, "max_steps": 4, "threads": 1},
    }
    path = work / "smoke.yaml"
    path.write_text(yaml.safe_dump(config))
    return train_csv, test_csv, [r[1] for r in rows[160:]], {"smoke": (str(path), [])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", action="append", choices=sorted(CONFIGS), help="default: mpnet-cpu-10k")
    ap.add_argument("--rows", type=int, default=800, help="training rows (each run splits validation off them)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--held-out", type=int, default=1000)
    ap.add_argument("--data", type=Path, default=TRAIN_5K)
    ap.add_argument("--work", type=Path, default=Path("bench-prefix-cache"))
    ap.add_argument("--out", type=Path, help="also write the result here")
    ap.add_argument("--smoke", action="store_true", help="a tiny random model on synthetic rows: checks the script")
    args = ap.parse_args()
    if args.smoke:
        train_csv, test_csv, gold, configs = smoke_setup(args.work)
    else:
        if not args.data.is_file():
            print(f"skipped: {args.data} not found (the benchmark needs the shared data rows)")
            return 0
        train_csv, test_csv, gold = split(args.data, args.work, args.rows, args.held_out)
        configs = {name: CONFIGS[name] for name in args.config or ["mpnet-cpu-10k"]}
    lines = [
        f"frozen-prefix cache: {args.rows if not args.smoke else 160} training rows of {train_csv}, "
        f"{args.epochs:g} epoch(s); {len(gold):,} held-out rows (seed {SPLIT_SEED})",
        f"machine: {machine()}",
    ]
    for label, (config, overrides) in configs.items():
        runs = three_runs(label, config, overrides, train_csv, args.work, args.epochs)
        lines += report(label, runs)
        lines += held_out_lines(runs, args.work, label, test_csv, gold)
    emit("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
