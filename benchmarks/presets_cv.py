"""Configurations compared as a new user runs them, over five folds: 5,000 paired held-out rows.

One held-out slice of 1,000 rows has a standard error of about 1 point, and every configuration
measured at about 100k trainable parameters on MiniLM landed within noise of the others on it. Here
``../shared/data/agnews/train_5k.csv`` is cut into five folds of 1,000 rows; for each fold every
configuration trains on the other 4,000 rows exactly as a user would (``lorabudget train PRESET
--data train.csv [--set ...]``: the preset's own 1,000-row validation split, schedule and best
checkpoint) and ``lorabudget predict`` labels the fold. Together the folds give every configuration
5,000 held-out rows, the same rows for all of them, so McNemar's exact test pairs them (one
standard error about 0.5 point at 87%).

``--search NAME=PRESET`` adds the whole search pipeline as one configuration: on each fold,
``lorabudget search PRESET --budget B --trials T --data train.csv`` chooses on that fold's training
rows alone (its trials split their own validation rows off), then the search's ``best.yaml`` is
trained and labels the fold as any other configuration. The held-out fold never takes part in the
choice, so this measures what a user of ``search`` gets, not one search's pick carried to other folds.

Each fold's predictions are kept in ``--work`` (``preds/<fold>-<name>.csv``,
run directories in ``runs/``, searches in ``searches/``); a prediction file that exists is reused, so
an interrupted benchmark continues where it stopped, and ``--folds``/``--only`` run a subset.

Usage: python benchmarks/presets_cv.py [--work DIR] [--folds 0 1 2 3 4] [--only NAME ...] [--config NAME=FILE ...]
       [--search NAME=PRESET ...] [--search-budget N] [--search-trials N] [--search-set KEY=VALUE ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TRAIN_5K, emit, lorabudget, machine, predicted_labels, read_rows, train_timed, write_rows  # noqa: E402

from lorabudget.stats import mcnemar, wilson_interval  # noqa: E402

FOLDS = 5
FOLD_ROWS = 1000
ALL6 = "[query, key, value, attention_output, intermediate, output]"
BUDGET_100K = "budget.max_trainable_params=100000"
# name -> (preset, --set overrides). The first is the reference the others are tested against: LoRA r=2
# on all six modules of MiniLM (84,484 parameters) as `minilm-cpu` trains it, which the
# 100k preset to beat. IA3 and VB-LoRA are written on `minilm-cpu-10k` (IA3, lr 1e-2, adapter dropout
# 0.1), which with these overrides resolves to the config they were measured with.
CONFIGS: dict[str, tuple[str, list[str]]] = {
    "lora-r2": ("minilm-cpu", ["adapter.r=2", "adapter.alpha=4"]),
    "lora-r2-lr3e-3": ("minilm-cpu", ["adapter.r=2", "adapter.alpha=4", "training.learning_rate=3e-3"]),
    "vblora-r4": ("minilm-cpu-10k", [f"adapter.modules={ALL6}", BUDGET_100K, "adapter.method=vblora", "adapter.r=4"]),
    "ia3-all": ("minilm-cpu-10k", [f"adapter.modules={ALL6}", BUDGET_100K]),
}
# name -> base preset of a search run on each fold (--search); its best.yaml is then trained.
SEARCHES: dict[str, str] = {}


@dataclass(frozen=True)
class SearchSettings:
    """How ``--search`` configurations search: the README's new-user command by default."""

    budget: int = 100_000
    trials: int = 12
    sets: tuple[str, ...] = ()  # the search's --set: its trials and best.yaml (a smoke run's short training)

    def describe(self, preset: str) -> str:
        extra = "".join(f" --set {s}" for s in self.sets)
        return f"`lorabudget search {preset} --budget {self.budget} --trials {self.trials}{extra}` on the fold, then its `best.yaml`"


def fold_files(rows: list[list[str]], work: Path, fold: int) -> tuple[Path, Path]:
    """``fold<k>/train.csv`` (every row outside fold k, in file order) and ``fold<k>/test.csv``."""
    folder = work / f"fold{fold}"
    folder.mkdir(parents=True, exist_ok=True)
    lo, hi = fold * FOLD_ROWS, (fold + 1) * FOLD_ROWS
    return write_rows(folder / "train.csv", rows[:lo] + rows[hi:]), write_rows(folder / "test.csv", rows[lo:hi])


def labels_of(path: Path) -> list[int]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [int(row["Label"]) for row in csv.DictReader(fh)]


def search_fold(work: Path, fold: int, name: str, train_csv: Path, search: SearchSettings) -> Path:
    """Run ``lorabudget search`` on one fold's training rows; return its ``best.yaml``. A search killed
    part-way resumes from its study (the search's own resume), so the benchmark can be restarted."""
    folder = work / "searches" / f"{fold}-{name}"
    cmd = lorabudget(
        "search",
        SEARCHES[name],
        "--budget",
        str(search.budget),
        "--trials",
        str(search.trials),
        "--data",
        str(train_csv),
        "--output",
        str(folder),
        *[a for s in search.sets for a in ("--set", s)],
    )
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"search failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    print(
        f"fold {fold} {name}: {done.stdout.strip().splitlines()[-1] if done.stdout.strip() else 'search done'}",
        flush=True,
    )
    return folder / "best.yaml"


def run_fold(
    work: Path, fold: int, name: str, train_csv: Path, test_csv: Path, search: SearchSettings = SearchSettings()
) -> Path:
    """Train and predict one configuration on one fold (skipped when its predictions exist)."""
    preds = work / "preds" / f"{fold}-{name}.csv"
    if preds.is_file():
        return preds
    if name in SEARCHES:
        preset, sets = str(search_fold(work, fold, name, train_csv, search)), []
    else:
        preset, sets = CONFIGS[name]
    run = work / "runs" / f"{fold}-{name}"
    summary = train_timed(preset, train_csv, run, sets)
    labels = predicted_labels(run, test_csv)
    preds.parent.mkdir(parents=True, exist_ok=True)
    write_rows(preds, [["ID", "Label"], *([i, label] for i, label in enumerate(labels))])  # as `predict` writes
    print(
        f"fold {fold} {name}: {summary['train_time_s']:.0f} s of training, peak RSS {summary['peak_rss_mb']:,.0f} MB",
        flush=True,
    )
    return preds


def summary_of(run: Path) -> dict:
    path = run / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def report(
    work: Path, folds: list[int], names: list[str], rows: list[list[str]], search: SearchSettings = SearchSettings()
) -> str:
    correct: dict[str, list[bool]] = {n: [] for n in names}
    per_fold: dict[str, list[str]] = {n: [] for n in names}
    params: dict[str, int] = {}
    for fold in folds:
        truth = [int(r[-1]) for r in rows[fold * FOLD_ROWS : (fold + 1) * FOLD_ROWS]]
        for name in names:
            hits = [p == t for p, t in zip(labels_of(work / "preds" / f"{fold}-{name}.csv"), truth)]
            correct[name] += hits
            per_fold[name].append(f"{100 * sum(hits) / len(hits):.1f}")
            params.setdefault(name, summary_of(work / "runs" / f"{fold}-{name}").get("trainable_params", 0))
    ref = names[0]
    lines = [
        "# Configurations compared over folds of train_5k.csv (written by benchmarks/presets_cv.py)",
        "",
        f"Folds {', '.join(map(str, folds))} of `train_5k.csv` ({FOLD_ROWS:,} rows each): every configuration trained on "
        f"the other {len(rows) - FOLD_ROWS:,} rows as a user would and labelled the held-out fold; "
        f"{len(folds) * FOLD_ROWS:,} held-out rows per configuration, the same for all. Intervals: Wilson 95%. "
        f"McNemar's exact test against `{ref}` on those rows.",
        "",
        "| configuration | preset and overrides | trainable params | held-out accuracy per fold (%) | all folds (95% CI) | "
        f"only this right / only `{ref}` right, p |",
        "|---|---|---:|---|---|---|",
    ]
    for name in names:
        hits = correct[name]
        lo, hi = wilson_interval(sum(hits), len(hits))
        if name in SEARCHES:
            how = search.describe(SEARCHES[name])
        else:
            preset, sets = CONFIGS[name]
            how = f"`{preset}` {' '.join(f'`{s}`' for s in sets)}"
        test = "—"
        if name != ref:
            m = mcnemar(hits, correct[ref])
            test = f"{m['only_a']} / {m['only_b']}, p = {m['p_value']:.3f}"
        lines.append(
            f"| {name} | {how} | {params.get(name, 0):,} | "
            f"{', '.join(per_fold[name])} | {100 * sum(hits) / len(hits):.2f}% ({100 * lo:.1f}–{100 * hi:.1f}%) | "
            f"{test} |"
        )
    for name in (n for n in names if n in SEARCHES):
        lines += ["", f"What `{name}` chose on each fold (the trainable count above is fold {folds[0]}'s):", ""]
        lines += [f"- fold {fold}: {search_pick(work / 'searches' / f'{fold}-{name}')}" for fold in folds]
    lines += ["", f"Machine: {machine()}.", ""]
    return "\n".join(lines)


def search_pick(search_dir: Path) -> str:
    """The pick as the search states it: ``best.yaml``'s first header line (trial, validation figure,
    trainable count) and that trial's description from ``trials.csv``, as the search logged it."""
    best = search_dir / "best.yaml"
    if not best.is_file():
        return "(no best.yaml)"
    header = best.read_text().splitlines()[0].lstrip("# ")
    number = re.search(r"#(\d+)", header)
    with open(search_dir / "trials.csv", newline="", encoding="utf-8") as fh:
        described = {row["number"]: row["description"] for row in csv.DictReader(fh)}
    return f"{header} {described.get(number.group(1), '') if number else ''}".strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=TRAIN_5K)
    ap.add_argument("--work", type=Path, default=Path("runs/presets-cv"), help="folds, runs, predictions")
    ap.add_argument("--folds", type=int, nargs="+", default=list(range(FOLDS)))
    ap.add_argument(
        "--only", nargs="+", choices=list(CONFIGS), help="these configurations (the reference is always run)"
    )
    ap.add_argument("--out", type=Path, help="write the Markdown table here")
    ap.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="also a configuration from a YAML file, e.g. a search's best.yaml (repeatable)",
    )
    ap.add_argument(
        "--search",
        action="append",
        default=[],
        metavar="NAME=PRESET",
        help="also a configuration chosen on each fold by `lorabudget search PRESET` (repeatable)",
    )
    ap.add_argument("--search-budget", type=int, default=SearchSettings.budget, help="--budget of those searches")
    ap.add_argument("--search-trials", type=int, default=SearchSettings.trials, help="--trials of those searches")
    ap.add_argument(
        "--search-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="--set of those searches, so of their trials and best.yaml (repeatable; e.g. training.max_steps=4 for a smoke run)",
    )
    args = ap.parse_args()
    search = SearchSettings(args.search_budget, args.search_trials, tuple(args.search_set))
    added = set()
    for spec in args.config:
        name, sep, path = spec.partition("=")
        if not sep or not name or not Path(path).is_file():
            raise SystemExit(f"--config {spec!r}: give NAME=FILE with an existing YAML file")
        CONFIGS[name] = (str(Path(path).resolve()), [])
        added.add(name)
    for spec in args.search:
        name, sep, preset = spec.partition("=")
        if not sep or not name or not preset or name in CONFIGS:
            raise SystemExit(f"--search {spec!r}: give NAME=PRESET with a new name")
        SEARCHES[name] = preset
        added.add(name)
    if not args.data.is_file():
        print(f"skipped: {args.data} not found (the benchmark needs the shared AG News rows)")
        return 0
    rows = read_rows(args.data)
    if len(rows) < FOLDS * FOLD_ROWS or any(f not in range(FOLDS) for f in args.folds):
        raise SystemExit(f"needs {FOLDS * FOLD_ROWS:,} rows and folds in 0-{FOLDS - 1}")
    rows = rows[: FOLDS * FOLD_ROWS]
    names = [n for n in CONFIGS if not args.only or n in args.only or n in added or n == next(iter(CONFIGS))]
    names += list(SEARCHES)
    for fold in args.folds:  # fold by fold, so a cut-short benchmark still has complete pairs
        train_csv, test_csv = fold_files(rows, args.work, fold)
        for name in names:
            run_fold(args.work, fold, name, train_csv, test_csv, search)
    emit(report(args.work, args.folds, names, rows, search), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
