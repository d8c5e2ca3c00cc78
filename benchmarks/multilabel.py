"""Multi-label held-out F1: the MiniLM presets trained with `--multi-label` against two baselines.

Data: ../shared/data/goemotions-ekman/train_8k.csv (8,000 real Reddit comments, header `text,labels`, the 7
Ekman classes anger, disgust, fear, joy, neutral, sadness, surprise joined by `|`; 708 rows have several).
A fixed-seed permutation holds out `--held-out` rows (default 2,000) that nothing trains on; the rest are the
training file (lorabudget splits its own validation rows off it and chooses each class's threshold there).

Each preset is trained through the real command line, as a user runs it:

    lorabudget train PRESET --data train.csv --label-column labels --multi-label --output RUN

then `lorabudget predict RUN --input held_out_texts.csv --label-format name` writes `ID,Label` with `|`-joined
names, which this script scores. Baselines on the same rows:
- all-majority: every held-out row gets the most frequent label set of the training rows (on GoEmotions-Ekman
  that is {joy}); predicting each class's majority value would give the empty set everywhere (no class is on
  half the rows), F1 0.
- TF-IDF (words and bigrams, sublinear tf, min_df 2) with one-vs-rest logistic regression (scikit-learn,
  C=4, class_weight balanced), a class predicted where its probability is at least 0.5.

Micro and macro F1 with percentile-bootstrap 95% intervals over the held-out rows (1,000 resamples, fixed
seed), subset accuracy, training and prediction seconds per run (wall clock of each command), the CPU.

Bounding the time: `--max-train-rows N` keeps the first N training rows, `--epochs E` sets training.epochs,
`--set KEY=VALUE` passes any other override to every preset, `--presets` picks the presets.
`--smoke --model DIR` runs one preset on `--data` with the model in DIR for a couple of steps (the test
suite's check that the script works; it measures nothing).

Usage: python benchmarks/multilabel.py [--held-out 2000] [--max-train-rows N] [--epochs E] [--out docs/multilabel.md]
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, emit, lorabudget, machine, seeded_held_out  # noqa: E402

GOEMOTIONS = SHARED_DATA / "goemotions-ekman" / "train_8k.csv"
PRESETS = ["minilm-cpu", "minilm-cpu-100k", "minilm-cpu-10k"]
RESAMPLES, SEED = 1000, 20261206


def read_sets(path: Path) -> tuple[list[str], list[list[str]]]:
    """Texts and label sets of a `text,labels` file (`|`-joined names; empty: none)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [r["text"] for r in rows], [[n for n in r["labels"].split("|") if n] for r in rows]


def write_file(path: Path, header: list[str], rows) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def split(data: Path, work: Path, held_out: int, seed: int, max_train: int | None):
    """train.csv (capped at ``max_train`` rows), the held-out texts, and the held-out label sets."""
    texts, sets = read_sets(data)
    if held_out >= len(texts):
        raise SystemExit(f"--held-out {held_out} leaves no training rows of {len(texts)}")
    train, test = seeded_held_out(len(texts), held_out, seed)
    if max_train is not None:
        train = train[:max_train]
    work.mkdir(parents=True, exist_ok=True)
    train_csv = write_file(work / "train.csv", ["text", "labels"], [(texts[i], "|".join(sets[i])) for i in train])
    test_txt = write_file(work / "held_out_texts.csv", ["text"], [(texts[i],) for i in test])
    return train_csv, test_txt, [texts[i] for i in train], [sets[i] for i in train], [sets[i] for i in test]


def multi_hot(sets: list[list[str]], classes: list[str]) -> np.ndarray:
    index = {c: j for j, c in enumerate(classes)}
    out = np.zeros((len(sets), len(classes)), dtype=bool)
    for i, names in enumerate(sets):
        for n in names:
            out[i, index[n]] = True
    return out


def _f1(tp, fp, fn):
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros(np.broadcast(tp, denom).shape), where=denom > 0)


def scores(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Micro/macro F1 with bootstrap 95% intervals, subset accuracy."""
    tp, fp, fn = (pred & truth).astype(float), (pred & ~truth).astype(float), (~pred & truth).astype(float)
    n = len(truth)
    w = np.random.default_rng(SEED).multinomial(n, np.full(n, 1 / n), size=RESAMPLES).astype(float)
    TP, FP, FN = w @ tp, w @ fp, w @ fn
    micro_b, macro_b = _f1(TP.sum(1), FP.sum(1), FN.sum(1)), _f1(TP, FP, FN).mean(1)
    return {
        "micro_f1": float(_f1(tp.sum(), fp.sum(), fn.sum())),
        "micro_ci": np.percentile(micro_b, [2.5, 97.5]).tolist(),
        "macro_f1": float(_f1(tp.sum(0), fp.sum(0), fn.sum(0)).mean()),
        "macro_ci": np.percentile(macro_b, [2.5, 97.5]).tolist(),
        "subset_accuracy": float((pred == truth).all(1).mean()),
    }


def majority_baseline(train_sets, n_test: int, classes: list[str]) -> tuple[np.ndarray, str]:
    from collections import Counter

    common = Counter(tuple(sorted(s)) for s in train_sets).most_common(1)[0][0]
    return multi_hot([list(common)] * n_test, classes), "{" + ", ".join(common) + "}"


def tfidf_baseline(train_texts, train_sets, test_texts, classes) -> tuple[np.ndarray, float]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    start = time.perf_counter()
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    x = vec.fit_transform(train_texts)
    model = OneVsRestClassifier(LogisticRegression(C=4.0, max_iter=2000, class_weight="balanced"))
    model.fit(x, multi_hot(train_sets, classes).astype(int))
    pred = model.predict_proba(vec.transform(test_texts)) >= 0.5
    return pred, time.perf_counter() - start


def run_preset(preset: str, train_csv: Path, test_txt: Path, work: Path, sets: list[str]) -> dict:
    """Train and predict through the CLI; wall seconds of each, the run's summary, the predicted sets."""
    import json

    run = work / preset
    argv = ["train", preset, "--data", str(train_csv), "--label-column", "labels", "--multi-label"]
    argv += ["--output", str(run), "--overwrite", "--no-report", *[a for s in sets for a in ("--set", s)]]
    start = time.perf_counter()
    done = subprocess.run(lorabudget(*argv), capture_output=True, text=True)
    train_s = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"training {preset} failed:\n{done.stderr[-3000:]}")
    out = run / "held_out_predictions.csv"
    argv = ["predict", str(run), "--input", str(test_txt), "--output", str(out), "--label-format", "name"]
    start = time.perf_counter()
    done = subprocess.run(lorabudget(*argv, "--no-report"), capture_output=True, text=True)
    predict_s = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"predict {preset} failed:\n{done.stderr[-3000:]}")
    with open(out, newline="", encoding="utf-8") as fh:
        predicted = [[n for n in row["Label"].split("|") if n] for row in csv.DictReader(fh)]
    summary = json.loads((run / "summary.json").read_text())
    return {"summary": summary, "train_s": train_s, "predict_s": predict_s, "sets": predicted}


def table(results: list[dict], n_test: int) -> list[str]:
    def ci(c):
        return f"{c[0]:.3f}–{c[1]:.3f}"

    lines = [
        f"| side | trainable params | training rows | training time (s) | predict {n_test:,} rows (s) | "
        "held-out micro F1 (95% CI) | held-out macro F1 (95% CI) | subset accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        s = r["scores"]
        params = f"{r['params']:,}" if isinstance(r.get("params"), int) else "–"
        rows = f"{r['train_rows']:,}" if r.get("train_rows") is not None else "–"
        train_s = f"{r['train_s']:.0f}" if r.get("train_s") is not None else "–"
        predict_s = f"{r['predict_s']:.1f}" if r.get("predict_s") is not None else "–"
        lines.append(
            f"| {r['side']} | {params} | {rows} | {train_s} | {predict_s} | {s['micro_f1']:.4f} ({ci(s['micro_ci'])}) | "
            f"{s['macro_f1']:.4f} ({ci(s['macro_ci'])}) | {s['subset_accuracy']:.4f} |"
        )
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=GOEMOTIONS)
    ap.add_argument("--held-out", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0, help="seed of the held-out permutation (default 0)")
    ap.add_argument("--max-train-rows", type=int, help="keep only the first N training rows (bounds the time)")
    ap.add_argument("--epochs", type=float, help="training.epochs for every preset (the presets say 3)")
    ap.add_argument("--presets", nargs="+", default=PRESETS)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE for every preset")
    ap.add_argument("--smoke", action="store_true", help="seconds-long check with --model DIR (measures nothing)")
    ap.add_argument("--model", help="--smoke: the model folder to train (a tiny test model)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if not args.data.is_file():
        print(f"skipped: {args.data} not found (the benchmark needs the shared GoEmotions rows)")
        return 0
    sets = list(args.overrides) + ([f"training.epochs={args.epochs:g}"] if args.epochs is not None else [])
    presets = args.presets
    if args.smoke:
        if not args.model:
            raise SystemExit("--smoke needs --model DIR")
        presets = presets[:1]
        sets += [f"model.name={args.model}", "model.max_length=32", "training.max_steps=2", "data.validation_size=20"]

    work = Path(tempfile.mkdtemp(prefix="multilabel-bench-"))
    train_csv, test_txt, train_texts, train_sets, test_sets = split(
        args.data, work, args.held_out, args.seed, args.max_train_rows
    )
    classes = sorted({n for s in train_sets + test_sets for n in s})
    truth = multi_hot(test_sets, classes)
    test_texts = [row[0] for row in list(csv.reader(open(test_txt, newline="", encoding="utf-8")))[1:]]
    results = []
    pred, common = majority_baseline(train_sets, len(test_sets), classes)
    results.append(
        {"side": f"all-majority (every row gets the most frequent set, {common})", "scores": scores(pred, truth)}
    )
    pred, seconds = tfidf_baseline(train_texts, train_sets, test_texts, classes)
    results.append(
        {"side": "TF-IDF + one-vs-rest logistic regression", "train_rows": len(train_texts), "train_s": seconds,
         "scores": scores(pred, truth)}
    )  # fmt: skip
    print(results[-1]["side"], results[-1]["scores"], flush=True)
    for preset in presets:
        r = run_preset(preset, train_csv, test_txt, work, sets)
        results.append(
            {
                "side": f"lorabudget `{preset}` --multi-label",
                "params": r["summary"].get("trainable_params"),
                "train_rows": r["summary"].get("train_rows"),
                "train_s": r["train_s"],
                "predict_s": r["predict_s"],
                "scores": scores(multi_hot(r["sets"], classes), truth),
            }
        )
        print(results[-1]["side"], results[-1]["scores"], flush=True)

    counts = truth.sum(0)
    lines = [
        f"{'Smoke run (tiny model, two steps: the numbers mean nothing). ' if args.smoke else ''}"
        f"Held-out rows: {len(test_sets):,} of {args.data.name} (permutation seed {args.seed}); training file: "
        f"{len(train_texts):,} rows (lorabudget splits its validation rows off it and chooses each class's "
        f"threshold there). Held-out positives per class: "
        + ", ".join(f"{c} {int(k):,}" for c, k in zip(classes, counts))
        + ".",
        "",
        *table(results, len(test_sets)),
        "",
        f"Overrides for every preset: {', '.join(sets) or 'none'}. Intervals: percentile bootstrap over the held-out "
        f"rows ({RESAMPLES:,} resamples). Times are wall-clock seconds of each `lorabudget train` / `predict` "
        "command (model loading included).",
        "",
        f"Machine: {machine()}.",
    ]
    emit("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
