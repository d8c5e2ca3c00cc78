"""Heads that fit the budget: each head type on the MiniLM presets, on Banking77's 77 intents.

Data: ../shared/data/banking77/train.csv (`text,label`, 9,003 banking queries, 77 intents as strings).
The script splits off its own held-out rows first (`--held-out`, 1,500 by default, drawn with a fixed
`--seed`): no run trains on them and nothing inside a run is chosen on them (each run splits its own
validation rows off the training rows). Every run trains through the command line as a user would
(`lorabudget train PRESET --data train.csv --set head.type=...`) in a fresh process.

For each preset (`--presets`, default minilm-cpu-10k, minilm-cpu-100k, minilm-cpu) and each head
(`--heads`, default auto, linear, low_rank, low_rank-prototypes, prototype, prototype-names; see HEADS):
the plan on the meta device first: a head that does not fit the budget is not trained (a line says so),
and a head that resolves to the same head as an earlier one of the preset (`auto` is often `low_rank`)
is not trained twice. Then held-out accuracy with its Wilson 95% interval, macro F1, trainable
parameters (head included), training seconds and peak RSS; paired McNemar tests between the heads of
each preset on the same held-out rows. Finished runs are kept in `--work` (`LABEL.json`) and not trained
again, so the script can be stopped and re-run.

`--agnews`: the 4-class case instead: minilm-cpu-10k on ../shared/data/agnews/train_5k.csv (the last
1,000 rows held out), comparing the linear head (what `auto` takes there) with `head.init: names` and
`prototypes`, and the prototype head from the training rows and from the class names.

Bounding a run: `--train-rows 3000` (data.max_train_rows), `--epochs 1`, `--max-steps N`.
`--smoke`: a tiny random BERT and synthetic rows in `--work`, two steps per run: it checks that the
script runs, and measures nothing.

Usage: python benchmarks/heads.py [--presets P,...] [--heads H,...] [--train-rows N] [--epochs E]
       [--max-steps S] [--held-out 1500] [--seed 43] [--work DIR] [--out FILE] [--agnews] [--smoke]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, TRAIN_5K, emit, held_out_task, machine, paired_table, seeded_held_out, train_timed  # noqa: E402

BANKING77 = SHARED_DATA / "banking77" / "train.csv"
PRESETS = ["minilm-cpu-10k", "minilm-cpu-100k", "minilm-cpu"]
# Head label -> overrides (`auto`: the preset's own head and start; the others name their start).
HEADS = {
    "auto": [],
    "linear": ["head.type=linear", "head.init=random"],
    "linear-prototypes": ["head.type=linear", "head.init=prototypes"],
    "linear-names": ["head.type=linear", "head.init=names"],
    "low_rank": ["head.type=low_rank", "head.init=random"],  # the largest rank that fits, as auto takes it
    "low_rank-prototypes": ["head.type=low_rank", "head.init=prototypes"],
    "prototype": ["head.type=prototype"],
    "prototype-names": ["head.type=prototype", "head.init=names"],
}
DEFAULT_HEADS = ["auto", "linear", "low_rank", "low_rank-prototypes", "prototype", "prototype-names"]
AGNEWS_HEADS = ["auto", "linear-names", "linear-prototypes", "prototype", "prototype-names"]
SMOKE_SETTINGS = ["training.max_steps=2", "data.validation_size=20", "training.eval_every=0"]


def split_seeded(source: Path, work: Path, held_out: int, seed: int) -> tuple[Path, Path]:
    """``work/train.csv`` and ``work/test.csv``: ``held_out`` rows drawn with ``seed`` are the test rows;
    the training rows keep the drawn order, so a row cap (data.max_train_rows) takes a random subset."""
    with open(source, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    # A header's label field is no row's label (Banking77's "label"); AG News has no header row, and its
    # first row must be drawn like the others, not copied into both files.
    header = rows[:1] if rows and rows[0][-1] not in {r[-1] for r in rows[1:]} else []
    rows = rows[len(header) :]
    work.mkdir(parents=True, exist_ok=True)
    paths = work / "train.csv", work / "test.csv"
    for path, part in zip(paths, seeded_held_out(len(rows), held_out, seed)):
        with open(path, "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows([*header, *(rows[i] for i in part)])
    return paths


def smoke_task(work: Path) -> tuple[Path, str]:
    """A tiny random BERT and 300 synthetic rows with string labels (the test suite's helpers)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import CLASS_WORDS, make_model_dir, synthetic_rows

    names = {0: "politics", 1: "sport", 2: "money", 3: "technology"}
    assert len(names) == len(CLASS_WORDS)
    model = make_model_dir(work / "tiny-bert", "bert")
    source = work / "smoke.csv"
    with open(source, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["text", "label"], *((t, names[y]) for t, y in synthetic_rows(300, seed=5))])
    return source, str(model)


def planned(preset: str, train_csv: Path, overrides: list[str]):
    import lorabudget as lb
    from lorabudget.config import parse_set

    return lb.plan(preset, data=str(train_csv), overrides=parse_set(overrides))


def score(run_dir: Path, test_csv: Path) -> dict:
    from lorabudget.data.load import load_labelled
    from lorabudget.inference.runs import load_run
    from lorabudget.metrics import classification_metrics

    run = load_run(run_dir, precision="fp32")
    data = load_labelled(str(test_csv), run.cfg.class_names, columns=run.columns())
    metrics = classification_metrics(run.logits(data.texts), data.labels, run.cfg.class_names)
    return {
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "correct": list(map(bool, metrics["correct"])),
    }


def run_one(preset: str, head: str, overrides: list[str], train_csv: Path, test_csv: Path, work: Path, seen: dict):
    """Plan, train and score one (preset, head); a result dict, or a skip line."""
    label = f"{preset}/{head}"
    saved = work / f"{label.replace('/', '__')}.json"
    if saved.is_file():
        return json.loads(saved.read_text())
    plan = planned(preset, train_csv, overrides)
    h = plan.config.head
    chosen = (h.type, h.rank, h.init)
    rank = f" r={h.rank}" if h.rank else ""
    if not plan.fits:
        return {"label": label, "skipped": f"over budget: {plan.trainable:,} > {plan.budget:,} ({h.type}{rank})"}
    if chosen in seen:
        return {"label": label, "skipped": f"the same head as {seen[chosen]} ({h.type}{rank})"}
    seen[chosen] = label
    summary = train_timed(preset, train_csv, work / label.replace("/", "__"), overrides)
    result = {
        "label": label,
        "preset": preset,
        "head": f"{h.type}{rank}" + (f", init {h.init}" if h.init != "random" else ""),
        "overrides": overrides,
        "trainable": summary["trainable_params"],
        "head_params": summary["head_params"],
        "train_rows": summary["train_rows"],
        "steps": summary["steps"],
        "train_s": summary["train_time_s"],
        "peak_rss_mb": summary["peak_rss_mb"],
        **score(work / label.replace("/", "__"), test_csv),
    }
    saved.write_text(json.dumps(result))
    return result


def table(results: list[dict], data: Path, held_out: int, note: str) -> str:
    from lorabudget.stats import format_interval, wilson_interval

    lines = [
        f"<!-- heads{':smoke' if 'SMOKE' in note else ''} -->",
        f"Trained on {data.parent.name}/{data.name} less {held_out:,} held-out rows (drawn with a fixed seed; no run saw "
        f"them). {note}Machine: {machine()}. {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "| preset | head | trainable (head) | held-out accuracy (95% CI) | macro F1 | train rows | steps | training s | peak RSS GB |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    done = [r for r in results if "skipped" not in r]
    for r in results:
        preset, head = r["label"].split("/")
        if "skipped" in r:
            lines.append(f"| {preset} | {head}: not trained, {r['skipped']} | | | | | | | |")
            continue
        n = len(r["correct"])
        ci = format_interval(wilson_interval(sum(r["correct"]), n))
        lines.append(
            f"| {preset} | {head}: {r['head']} | {r['trainable']:,} ({r['head_params']:,}) | {r['accuracy']:.2%} ({ci}) "
            f"| {r['macro_f1']:.4f} | {r['train_rows']:,} | {r['steps']:,} | {r['train_s']:.0f} | {r['peak_rss_mb'] / 1024:.2f} |"
        )
    pairs = [(a, b) for a, b in itertools.combinations(done, 2) if a["preset"] == b["preset"]]
    if pairs:
        named = [(f"{a['label']} vs {b['label'].split('/')[1]}", a, b) for a, b in pairs]
        lines += ["", *paired_table(named, "the same held-out rows")]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default=",".join(PRESETS), help="comma-separated presets")
    ap.add_argument("--heads", help="comma-separated heads: " + ", ".join(HEADS))
    ap.add_argument("--data", type=Path, help="default: Banking77 (--agnews: AG News train_5k.csv)")
    ap.add_argument("--held-out", type=int, default=1500, help="held-out rows drawn with --seed (Banking77)")
    ap.add_argument("--seed", type=int, default=43)
    ap.add_argument("--train-rows", type=int, help="cap the training rows (data.max_train_rows)")
    ap.add_argument("--epochs", type=float, help="training.epochs")
    ap.add_argument("--max-steps", type=int, help="training.max_steps")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="key=value for every run")
    ap.add_argument("--agnews", action="store_true", help="the 4-class comparison on AG News at 10k")
    ap.add_argument("--smoke", action="store_true", help="tiny random model, two steps per run: measures nothing")
    ap.add_argument("--work", type=Path, default=Path("heads-bench"))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    sets = list(args.sets)
    sets += [f"data.max_train_rows={args.train_rows}"] if args.train_rows else []
    sets += [f"training.epochs={args.epochs}"] if args.epochs else []
    sets += [f"training.max_steps={args.max_steps}"] if args.max_steps else []
    presets = [p for p in args.presets.split(",") if p]
    heads = args.heads.split(",") if args.heads else (AGNEWS_HEADS if args.agnews else DEFAULT_HEADS)
    unknown = [h for h in heads if h not in HEADS]
    if unknown:
        ap.error(f"unknown head {unknown[0]}; heads: {', '.join(HEADS)}")
    note = ""
    if args.smoke:
        data, model = smoke_task(args.work)
        sets += [f"model.name={model}", "model.max_length=32", *SMOKE_SETTINGS]
        train_csv, test_csv = split_seeded(data, args.work, 60, args.seed)
        held_out, note = 60, "**SMOKE run: a tiny random model, two steps per run; measures nothing.** "
    elif args.agnews:
        presets = ["minilm-cpu-10k"] if args.presets == ",".join(PRESETS) else presets
        data = args.data or TRAIN_5K
        task = held_out_task(data, args.work)
        if task is None:
            return 0
        train_csv, test_csv, labels = task
        held_out = len(labels)
    else:
        data = args.data or BANKING77
        if not data.is_file():
            print(f"skipped: {data} not found (the benchmark needs the shared data rows)")
            return 0
        train_csv, test_csv = split_seeded(data, args.work, args.held_out, args.seed)
        held_out = args.held_out
    if sets:
        note += "Settings for every run: `" + "; ".join(sets) + "`. "
    results = []
    for preset in presets:
        seen: dict = {}
        for head in heads:
            result = run_one(preset, head, [*HEADS[head], *sets], train_csv, test_csv, args.work, seen)
            line = result.get("skipped") or (
                f"{result['trainable']:,} trainable, held-out {result['accuracy']:.2%}, {result['train_s']:.0f} s"
            )
            print(f"{result['label']}: {line}", flush=True)
            results.append(result)
    emit(table(results, data, held_out, note), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
