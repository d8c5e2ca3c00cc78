"""Multi-label, measured: the `minilm-cpu` presets on GoEmotions (Ekman's 7 emotions, `|`-joined) against an
all-majority baseline and a one-vs-rest logistic regression on TF-IDF.

Data: ../shared/data/goemotions-ekman/train_8k.csv (8,000 real Reddit comments, header `text,labels`,
names joined by `|`). A seeded random 1,000 rows are held out; each preset trains on the other rows
through the command line exactly as a user would:

    lorabudget train PRESET --data train.csv --label-column labels --multi-label

(splitting its own validation rows off them, where the per-class thresholds are chosen), then
`lorabudget predict RUN --input test.csv` writes `ID,Label` with `|`-joined names, which this script
scores against the held-out labels: micro and macro F1 (scikit-learn), subset accuracy, Hamming loss.
Baselines on the same rows: every row labelled with the most frequent training class ("all-majority"),
and scikit-learn's one-vs-rest logistic regression on word 1-2-gram TF-IDF (threshold 0.5).

`--quick` is a smoke run (3 steps on 300 rows, 100 held out): it proves the script works and measures
nothing worth quoting. `--config PATH` (repeatable) trains a YAML config instead of the presets.

Usage: python benchmarks/multilabel.py [--data PATH] [--presets minilm-cpu-10k,...] [--quick] [--out docs/multilabel.md]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, emit, lorabudget, machine, read_rows, write_rows  # noqa: E402

GOEMOTIONS = SHARED_DATA / "goemotions-ekman" / "train_8k.csv"
PRESETS = ("minilm-cpu-10k", "minilm-cpu-100k", "minilm-cpu")
HELD_OUT = 1000
SEED = 40


def split(source: Path, folder: Path, held_out: int, max_train: int | None) -> tuple[Path, Path, Path]:
    """``train.csv``, the held-out ``test.csv`` (labelled) and ``test_texts.csv`` (text only), by a seeded draw."""
    header, *rows = read_rows(source)
    order = np.random.default_rng(SEED).permutation(len(rows))
    test = [rows[i] for i in sorted(order[:held_out])]
    train = [rows[i] for i in sorted(order[held_out:])][: max_train or None]
    text_at = header.index("text")
    return (
        write_rows(folder / "train.csv", [header, *train]),
        write_rows(folder / "test.csv", [header, *test]),
        write_rows(folder / "test_texts.csv", [["text"], *[[r[text_at]] for r in test]]),
    )


def label_sets(path: Path, column: str = "labels") -> tuple[list[str], list[list[str]]]:
    header, *rows = read_rows(path)
    at = header.index(column)
    return [r[header.index("text")] for r in rows], [[n for n in r[at].split("|") if n] for r in rows]


def scores(truth: list[list[str]], predicted: list[list[str]], classes: list[str]) -> dict:
    from sklearn.metrics import accuracy_score, f1_score, hamming_loss
    from sklearn.preprocessing import MultiLabelBinarizer

    binarize = MultiLabelBinarizer(classes=classes)
    y, p = binarize.fit_transform(truth), binarize.transform(predicted)
    return {
        "micro_f1": f1_score(y, p, average="micro", zero_division=0),
        "macro_f1": f1_score(y, p, average="macro", zero_division=0),
        "subset_accuracy": accuracy_score(y, p),
        "hamming_loss": hamming_loss(y, p),
    }


def baselines(train_csv: Path, test_csv: Path, classes: list[str]) -> dict[str, dict]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import MultiLabelBinarizer

    train_texts, train_sets = label_sets(train_csv)
    test_texts, test_sets = label_sets(test_csv)
    counts = {c: sum(c in s for s in train_sets) for c in classes}
    majority = max(classes, key=lambda c: counts[c])
    out = {f"all-majority ({majority})": scores(test_sets, [[majority]] * len(test_sets), classes)}
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    binarize = MultiLabelBinarizer(classes=classes)
    model = OneVsRestClassifier(LogisticRegression(max_iter=2000))
    model.fit(vectorizer.fit_transform(train_texts), binarize.fit_transform(train_sets))
    decided = model.predict(vectorizer.transform(test_texts))
    out["TF-IDF + one-vs-rest logistic regression"] = scores(
        test_sets, [[c for c, on in zip(classes, row) if on] for row in decided], classes
    )
    return out


def run_cli(*args: str) -> None:
    done = subprocess.run(lorabudget(*args), capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"failed: lorabudget {' '.join(args)}\n{done.stderr[-3000:]}")


def train_and_score(name: str, work: Path, train_csv: Path, texts_csv: Path, truth, classes, sets) -> tuple:
    run = work / Path(name).stem
    start = time.perf_counter()
    argv = ["train", name, "--data", str(train_csv), "--label-column", "labels", "--multi-label"]
    run_cli(*argv, "--output", str(run), "--overwrite", "--no-report", *[a for s in sets for a in ("--set", s)])
    wall = time.perf_counter() - start
    run_cli("predict", str(run), "--input", str(texts_csv), "--output", str(work / "pred.csv"), "--no-report")
    header, *rows = read_rows(work / "pred.csv")
    assert header[:2] == ["ID", "Label"], header
    predicted = [[n for n in r[1].split("|") if n] for r in rows]
    summary = json.loads((run / "summary.json").read_text())
    return scores(truth, predicted, classes), summary, wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=GOEMOTIONS)
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--config", action="append", default=[], help="a YAML config to train instead of the presets")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra --set for every run")
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 steps on 300 rows, 100 held out")
    ap.add_argument("--work", type=Path, help="folder for the split and the runs (default: a temporary one)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if not args.data.is_file():
        print(f"skipped: {args.data} not found (the benchmark needs the shared GoEmotions rows)")
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="multilabel-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    held_out = 100 if args.quick else HELD_OUT
    train_csv, test_csv, texts_csv = split(args.data, work, held_out, 300 if args.quick else None)
    _, truth = label_sets(test_csv)
    classes = sorted({n for s in label_sets(train_csv)[1] for n in s})
    sets = ["model.labels=null", *args.overrides]
    if args.quick:
        sets += ["training.max_steps=3", "data.validation_size=50", "training.eval_batch_size=64"]

    rows = [(name, result, None, None) for name, result in baselines(train_csv, test_csv, classes).items()]
    for name in args.config or args.presets.split(","):
        result, summary, wall = train_and_score(name, work, train_csv, texts_csv, truth, classes, sets)
        rows.append((Path(name).stem, result, summary, wall))
        print(f"{name}: micro F1 {result['micro_f1']:.4f}, macro F1 {result['macro_f1']:.4f}, {wall:.0f} s", flush=True)

    lines = [
        "<!-- multilabel" + (":quick" if args.quick else "") + " -->",
        f"GoEmotions, Ekman's {len(classes)} emotions ({args.data.name}): trained on "
        f"{len(read_rows(train_csv)) - 1:,} rows (each run splits its own validation rows off them and chooses "
        f"its thresholds there), scored on {held_out:,} held-out rows (seed {SEED}) from `predict`'s `ID,Label` "
        "file. "
        + ("**Quick smoke run: 3 steps, not a measurement.** " if args.quick else "")
        + f"Machine: {machine()}. {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "| model | trainable params | micro F1 | macro F1 | subset accuracy | Hamming loss | training s | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r, summary, wall in rows:
        params = f"{summary['trainable_params']:,}" if summary else "–"
        took = f"{summary['train_time_s']:.0f}" if summary else "–"
        lines.append(
            f"| {name} | {params} | {r['micro_f1']:.4f} | {r['macro_f1']:.4f} | {r['subset_accuracy']:.4f} "
            f"| {r['hamming_loss']:.4f} | {took} | {f'{wall:.0f}' if wall else '–'} |"
        )
    emit("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
