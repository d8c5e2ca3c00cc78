"""The 77-class check as a user runs it: ``lorabudget train PRESET --data FILE`` with no flags.

Banking77's rows (``../shared/data/banking77/train.csv``, or ``--data``) are split by ``--seed`` into a
held-out file and a training file, both written as tab-separated ``text<TAB>label`` with that header;
each preset trains on the training file through the CLI with nothing but ``--data`` and ``--output``,
``lorabudget predict`` labels the held-out texts, and the script prints each run's head, trainable count
(against its budget), held-out accuracy with its Wilson 95% interval, seconds, and McNemar's exact
test between the presets on the same rows. ``--exclude FILE`` drops the rows of an earlier held-out
file first, so the rows scored here were never used for a choice.

Usage: python benchmarks/heads_check.py [--presets minilm-cpu-10k,minilm-cpu-100k] [--held-out 1500]
       [--seed 44] [--exclude heads-bench/test.csv] [--work DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, emit, machine  # noqa: E402

from lorabudget.stats import mcnemar, wilson_interval  # noqa: E402


def split(data: Path, exclude: Path | None, held_out: int, seed: int, work: Path) -> tuple[Path, Path]:
    rows = pd.read_csv(data)
    if exclude is not None:
        rows = rows[~rows["text"].isin(set(pd.read_csv(exclude)["text"]))]
    test = rows.sample(n=held_out, random_state=seed)
    train = rows.drop(test.index)
    work.mkdir(parents=True, exist_ok=True)
    train_path, test_path = work / "train.tsv", work / "test.tsv"
    train[["text", "label"]].to_csv(train_path, sep="\t", index=False)
    test[["text", "label"]].to_csv(test_path, sep="\t", index=False)
    return train_path, test_path


def run(*args: str) -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lorabudget.cli", *args], check=True)
    return time.perf_counter() - began


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED_DATA / "banking77" / "train.csv")
    ap.add_argument("--exclude", type=Path)
    ap.add_argument("--presets", default="minilm-cpu-10k,minilm-cpu-100k")
    ap.add_argument("--held-out", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=44)
    ap.add_argument("--work", type=Path, default=Path("heads-check"))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if not args.data.is_file():
        print(f"skipped: {args.data} not found (the check needs the shared data rows)")
        return 0
    train_path, test_path = split(args.data, args.exclude, args.held_out, args.seed, args.work)
    truth = pd.read_csv(test_path, sep="\t")["label"].astype(str).tolist()
    texts = args.work / "texts.tsv"
    pd.read_csv(test_path, sep="\t")[["text"]].to_csv(texts, sep="\t", index=False)
    lines = [
        f"Machine: {machine()}. Training file {train_path.name}: {sum(1 for _ in open(train_path)) - 1:,} rows "
        f"(text<TAB>label header); held-out {len(truth):,} rows (seed {args.seed}"
        + (f", rows of {args.exclude} removed first" if args.exclude else "")
        + ").",
        "",
        "| preset | head (config.yaml) | trainable / budget | held-out accuracy (95% CI) | train s |",
        "|---|---|---:|---|---:|",
    ]
    correct = {}
    for preset in [p for p in args.presets.split(",") if p]:
        out = args.work / preset
        seconds = run("train", preset, "--data", str(train_path), "--output", str(out))
        run("predict", str(out), "--input", str(texts), "--output", str(args.work / f"{preset}.csv"))
        predicted = pd.read_csv(args.work / f"{preset}.csv")["Label"].astype(str).tolist()
        correct[preset] = [p == t for p, t in zip(predicted, truth)]
        summary = json.loads((out / "summary.json").read_text())
        head = yaml.safe_load((out / "config.yaml").read_text())["head"]
        k = sum(correct[preset])
        low, high = wilson_interval(k, len(truth))
        name = head["type"] + (f" r={head['rank']}" if head.get("rank") else "")
        lines.append(
            f"| {preset} | {name} | {summary['trainable_params']:,} / {summary['budget']:,} | "
            f"{k / len(truth):.2%} ({low:.2%}–{high:.2%}) | {seconds:.0f} |"
        )
    names = list(correct)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            test = mcnemar(correct[a], correct[b])
            lines.append(
                f"\n{a} vs {b}: only {a} right {test['only_a']}, only {b} right {test['only_b']}, "
                f"McNemar p = {test['p_value']:.3f}"
            )
    emit("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
