"""Long texts: ``data.long_text`` truncate against head_tail and chunks (mean pooling), held-out accuracy.

No long-text data set is in ../shared/data (AG News, SST-2, Banking77 and GoEmotions rows are short),
so this measures on proxies built from AG News (../shared/data/agnews/train_5k.csv: no header, rows
``text,label`` with labels 0-3), said in the output:

- ``--task short`` (default): AG News rows as they are, with a small ``model.max_length`` (32 tokens by
  default), so most rows are longer than ``max_length``: truncate keeps about the title, head_tail
  the title and the article's end, chunks reads it all.
- ``--task docs``: documents of 4-8 AG News articles of one class, joined with spaces (the class is the
  document's label), at the preset's ``max_length``; an article is in one document only, and training
  and held-out documents come from disjoint articles.

The held-out rows (``--test-rows``: default 1,000 rows; for docs at most 250 documents, made from a
fifth of the articles: about 165 from train_5k.csv) are split off by a fixed seed
(``--seed``) before anything trains; each mode trains the preset (default ``minilm-cpu``) on at most
``--train-rows`` rows for ``--epochs`` epochs in a fresh process (its own validation split comes out
of those), then ``predict`` labels the held-out rows. Reported per mode: rows longer than max_length
and windows, training and prediction seconds, held-out accuracy with its Wilson 95% interval, and the
difference to truncate with McNemar's exact p-value on the same rows; the CPU is named.

Usage: python benchmarks/long_text.py [--task short|docs] [--max-length 32] [--modes truncate head_tail chunks]
       [--train-rows 4000] [--epochs 2] [--preset minilm-cpu] [--set key=value ...] [--work DIR] [--out FILE]
       python benchmarks/long_text.py --smoke --model TINY_MODEL_DIR --data SMALL.csv   (checks it runs; times nothing)
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TRAIN_5K, emit, lorabudget, machine, read_rows, train_timed, write_rows  # noqa: E402

MODES = ("truncate", "head_tail", "chunks")


def labelled_rows(path: Path) -> list[tuple[str, int]]:
    """``(text, label)`` of a ``text,label`` CSV (a header row, if any, skipped)."""
    return [(r[0], int(r[-1])) for r in read_rows(path) if len(r) >= 2 and r[-1].strip().isdigit()]


def split(rows: list, test_rows: int, seed: int) -> tuple[list, list]:
    """(training rows, held-out rows): a seeded shuffle, the last ``test_rows`` held out."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return [rows[i] for i in order[:-test_rows]], [rows[i] for i in order[-test_rows:]]


def documents(articles: list[tuple[str, int]], seed: int, low: int = 4, high: int = 8) -> list[tuple[str, int]]:
    """Documents of ``low``-``high`` articles of one class each; every article used at most once."""
    rng = random.Random(seed)
    pools: dict[int, list[str]] = {}
    for text, label in articles:
        pools.setdefault(label, []).append(text)
    docs = []
    for label, pool in sorted(pools.items()):
        rng.shuffle(pool)
        while len(pool) >= low:
            k = min(rng.randint(low, high), len(pool))
            docs.append((" ".join(pool.pop() for _ in range(k)), label))
    rng.shuffle(docs)
    return docs


def task_files(args, work: Path) -> tuple[Path, Path, list[int], str]:
    """Training and held-out CSVs, the held-out labels and one sentence saying what they are."""
    rows = labelled_rows(args.data)
    if args.task == "short":
        train, test = split(rows, args.test_rows, args.seed)
        said = (
            f"AG News rows ({args.data.name}) at model.max_length={args.max_length}; {len(test):,} held-out rows "
            f"split off by seed {args.seed}"
        )
    else:
        articles_train, articles_test = split(rows, max(len(rows) // 5, 1), args.seed)
        train, test = documents(articles_train, args.seed), documents(articles_test, args.seed + 1)
        test = test[: args.test_rows]
        said = (
            f"documents of 4-8 same-class AG News articles ({args.data.name}; training and held-out documents "
            f"from disjoint articles, split by seed {args.seed}), {len(test):,} held-out documents"
        )
    train = train[: args.train_rows]
    work.mkdir(parents=True, exist_ok=True)
    write_rows(work / "train.csv", [("text", "label"), *train])
    write_rows(work / "test.csv", [("text", "label"), *test])
    write_rows(work / "test_texts.csv", [("text",), *[(t,) for t, _ in test]])
    return work / "train.csv", work / "test_texts.csv", [y for _, y in test], f"{said}; {len(train):,} training rows"


def predicted(run: Path, test_csv: Path) -> tuple[list[int], float]:
    """``predict`` of ``run`` on the held-out texts: class indices and seconds."""
    out = run / "held-out.csv"
    start = time.perf_counter()
    cmd = lorabudget("predict", str(run), "--input", str(test_csv), "--output", str(out), "--label-format", "id")
    subprocess.run([*cmd, "--no-report"], check=True, capture_output=True)
    seconds = time.perf_counter() - start
    return [int(r[1]) for r in read_rows(out)[1:]], seconds


def smoke_preset(model: Path, work: Path) -> Path:
    """A tiny config on a local test model: the benchmark's code paths in seconds."""
    cfg = {
        "name": "smoke",
        "model": {"name": str(model), "max_length": 16},
        "adapter": {"r": 2, "alpha": 4, "dropout": 0.0, "modules": ["query", "value"]},
        "data": {"validation_size": 20, "cache_dir": str(work / "cache")},
        "training": {"batch_size": 16, "learning_rate": 5e-3, "log_every": 5, "mixed_precision": "no"},
    }
    path = work / "smoke.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def main() -> int:
    from lorabudget.stats import format_interval, mcnemar, wilson_interval

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=TRAIN_5K)
    ap.add_argument("--task", choices=["short", "docs"], default="short")
    ap.add_argument("--max-length", type=int, default=32, help="model.max_length for --task short")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--preset", default="minilm-cpu")
    ap.add_argument("--train-rows", type=int, default=4000, help="cap on training rows (documents)")
    ap.add_argument("--test-rows", type=int, default=None, help="held-out rows (default 1,000; docs: 250)")
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "lorabudget-long-text")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--smoke", action="store_true", help="tiny rows and --model: checks the script runs")
    ap.add_argument("--model", type=Path, help="with --smoke: a local (tiny) model folder")
    args = ap.parse_args()
    if args.test_rows is None:
        args.test_rows = 1000 if args.task == "short" else 250
    if not args.data.is_file():
        print(f"skipped: {args.data} not found (the benchmark needs the shared AG News rows)")
        return 0
    work = args.work / args.task
    if args.smoke:
        if args.model is None:
            ap.error("--smoke needs --model (a local model folder, e.g. the tests' tiny RoBERTa)")
        work.mkdir(parents=True, exist_ok=True)
        args.preset = str(smoke_preset(args.model, work))
        args.train_rows, args.test_rows, args.epochs = 100, min(args.test_rows, 30), 1
    train_csv, test_csv, truth, said = task_files(args, work)
    sets = [f"training.epochs={args.epochs:g}", *args.overrides]
    if args.task == "short":
        sets.append(f"model.max_length={args.max_length}")
    results: dict[str, dict] = {}
    for mode in args.modes:
        run = work / mode
        summary = train_timed(args.preset, train_csv, run, [f"data.long_text={mode}", *sets])
        labels, seconds = predicted(run, test_csv)
        right = [p == t for p, t in zip(labels, truth)]
        results[mode] = {"summary": summary, "right": right, "predict_s": seconds}
        print(f"{mode}: held-out {sum(right) / len(right):.4f}, {summary['train_time_s']:.0f} s", flush=True)
    emit(report(args, said, sets, truth, results, format_interval, mcnemar, wilson_interval), args.out)
    return 0


def report(args, said, sets, truth, results, format_interval, mcnemar, wilson_interval) -> str:
    n = len(truth)
    reference = results.get("truncate")
    lines = [
        f"`{Path(args.preset).name}` ({', '.join(sets)}) on {said}."
        + (" SMOKE (tiny model): no measurement." if args.smoke else ""),
        "One run per mode, one after the other; training precision as the preset resolves it on this machine.",
        "",
        "| data.long_text | training rows longer than max_length | training windows | training time (s) "
        "| predict time (s) | held-out acc (95% CI) | vs truncate (only this right / only truncate right, McNemar p) |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for mode, r in results.items():
        s, right = r["summary"], r["right"]
        record = (s.get("long_text") or {}).get("train") or {}
        versus = "—"
        if reference is not None and mode != "truncate":
            test = mcnemar(right, reference["right"])
            gain = (sum(right) - sum(reference["right"])) / n * 100
            versus = f"{gain:+.1f} pt ({test['only_a']} / {test['only_b']}, p = {test['p_value']:.2g})"
        lines.append(
            f"| {mode}{' (mean)' if mode == 'chunks' else ''} | {record.get('longer_than_max_length', 0):,} of "
            f"{record.get('rows', 0):,} | {record.get('windows', 0):,} | {s['train_time_s']:.0f} | {r['predict_s']:.1f} | "
            f"{sum(right) / n:.4f} ({format_interval(wilson_interval(sum(right), n))}) | {versus} |"
        )
    lines += ["", f"Machine: {machine()}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
