"""Accuracy and CPU time: lorabudget's `minilm-cpu` preset vs the notebook recipe, real MiniLM-L6.

Data: ../shared/data/agnews/train_5k.csv (real AG News training rows). The last 1,000 rows are held
out as a test set neither side trains on; both sides train on the first 4,000 (lorabudget splits its
own 500 validation rows off those). The notebook side is LoRA r=8 on query+value, the model's default
head, 2 epochs, batch 16, fp32, chunk padding (benchmarks/notebook_recipe.py).

The notebook side trains about 10x slower on a CPU (chunk padding); `--notebook-steps N` runs only its first
N steps and reports its measured throughput with an extrapolated 2-epoch time and no accuracy.

Usage: python benchmarks/minilm_accuracy.py [--data PATH] [--skip-notebook | --notebook-steps N] [--out docs/minilm-accuracy.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import notebook_recipe as nb  # noqa: E402
from common import TRAIN_5K, emit, machine, read_rows, split_held_out  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=TRAIN_5K)
    ap.add_argument("--preset", default="minilm-cpu")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--skip-notebook", action="store_true")
    ap.add_argument(
        "--notebook-steps", type=int, help="run only this many notebook steps and extrapolate its 2-epoch time"
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if not args.data.is_file():
        print(f"skipped: {args.data} not found (the benchmark needs the shared AG News rows)")
        return 0

    from lorabudget.config import load_config
    from lorabudget.inference.runs import evaluate_run, load_run
    from lorabudget.metrics import classification_metrics
    from lorabudget.model.hub import resolve_model_source
    from lorabudget.training.loop import train

    tmp = Path(tempfile.mkdtemp())
    train_csv, test_csv = split_held_out(args.data, tmp)
    train_rows = [(t, int(l)) for t, l in read_rows(train_csv)]
    test_rows = [(t, int(l)) for t, l in read_rows(test_csv)]
    test_labels = np.array([l for _, l in test_rows])
    results = []

    cfg = load_config(
        args.preset, [f"data.train={tmp / 'train.csv'}", f"data.cache_dir={tmp / 'cache'}", *args.overrides]
    )
    summary = train(cfg, tmp / "run")
    run = load_run(tmp / "run")
    start = time.perf_counter()
    metrics = evaluate_run(run, str(tmp / "test.csv"))
    results.append(
        {
            "side": f"lorabudget `{args.preset}`" + (f" ({', '.join(args.overrides)})" if args.overrides else ""),
            "params": summary["trainable_params"],
            "train_rows": summary["train_rows"],
            "train_s": summary["train_time_s"],
            "samples_per_s": summary["samples_per_s"],
            "test_acc": metrics["accuracy"],
            "test_f1": metrics["macro_f1"],
            "predict_s": time.perf_counter() - start,
        }
    )
    print(results[-1], flush=True)

    if not args.skip_notebook:
        from transformers import AutoTokenizer

        model_dir = resolve_model_source(cfg.model.name)
        tok = AutoTokenizer.from_pretrained(model_dir)
        torch.manual_seed(42)
        model = nb.build_model(model_dir, 4)
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        train_ds = nb.tokenize_like_notebook(tok, [t for t, _ in train_rows], [l for _, l in train_rows])
        full = args.notebook_steps is None
        steps = -1 if full else args.notebook_steps
        train_s, rows_trained = nb.train_like_notebook(model, tok, train_ds, epochs=2, max_steps=steps)
        row = {
            "side": "notebook recipe (r=8 query+value, default head, 2 epochs, batch 16, fp32)",
            "params": params,
            "train_rows": len(train_rows),
            "samples_per_s": rows_trained / train_s,
        }
        if full:
            test_ds = nb.tokenize_like_notebook(tok, [t for t, _ in test_rows])
            start = time.perf_counter()
            m = classification_metrics(nb.predict_like_notebook(model, tok, test_ds), test_labels, cfg.model.labels)
            row.update(
                train_s=train_s, test_acc=m["accuracy"], test_f1=m["macro_f1"], predict_s=time.perf_counter() - start
            )
        else:
            # Only the first steps were run: the 2-epoch time is extrapolated from their measured rate.
            row.update(train_s=2 * len(train_rows) / row["samples_per_s"], extrapolated=args.notebook_steps)
        results.append(row)
        print(results[-1], flush=True)

    def fmt(r, key, spec):
        return "–" if r.get(key) is None else format(r[key], spec)

    lines = [
        "| side | trainable params | training rows | training samples/s | training time (s) | held-out accuracy | held-out macro F1 | predict 1,000 rows (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        time_text = fmt(r, "train_s", ".0f")
        if r.get("extrapolated"):
            time_text = f"≈{time_text} (extrapolated from {r['extrapolated']} measured steps)"
        lines.append(
            f"| {r['side']} | {r['params']:,} | {r['train_rows']:,} | {fmt(r, 'samples_per_s', '.1f')} | {time_text} | "
            f"{fmt(r, 'test_acc', '.4f')} | {fmt(r, 'test_f1', '.4f')} | {fmt(r, 'predict_s', '.1f')} |"
        )
    if len(results) == 2:
        lines.append("")
        lines.append(
            f"Training throughput ratio (lorabudget / notebook, samples/s): "
            f"{results[0]['samples_per_s'] / results[1]['samples_per_s']:.2f}x; "
            f"training time ratio (notebook / lorabudget): {results[1]['train_s'] / results[0]['train_s']:.2f}x."
        )
    emit("\n".join(lines) + f"\n\nMachine: {machine()}.\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
