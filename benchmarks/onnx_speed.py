"""Inference engines side by side on one trained run: torch fp32, torch bf16, ONNX Runtime fp32 and int8.

For each engine, on the same labelled rows tokenized once (so tokenization is not timed): rows/s of
the model alone (length-sorted batches, as `lorabudget predict`), agreement of its predictions with
torch fp32, and accuracy. The ONNX files come from `lorabudget export --format onnx --quantize int8`
into a temporary folder (export time is reported, not counted).

Typical use, on a `minilm-cpu` run trained without the last 1,000 rows of train_5k.csv (what
benchmarks/minilm_accuracy.py holds out):

    python benchmarks/onnx_speed.py runs/minilm-cpu --data held_out.csv --out docs/onnx-speed.md

Everything runs on the CPU (torch too, on a GPU machine). Without --data, the last 1,000 rows of
../shared/data/agnews/train_5k.csv are used: only honest for a run that did not train on them.

Usage: python benchmarks/onnx_speed.py RUN [--data CSV] [--rows N] [--repeats R] [--threads T]
                                          [--batch-size B] [--engines LIST] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TRAIN_5K, emit, machine, read_rows, write_rows  # noqa: E402


def timed(fn, repeats: int) -> tuple[np.ndarray, float]:
    """``(result of fn(), best wall time of `repeats` calls)``; the first call also warms caches."""
    best = float("inf")
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a trained run directory")
    ap.add_argument("--data", type=Path, help="labelled CSV (default: last 1,000 rows of train_5k.csv)")
    ap.add_argument("--rows", type=int, help="use only the first N rows")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per engine; the best is reported")
    ap.add_argument("--threads", type=int, help="CPU threads for torch and ONNX Runtime")
    ap.add_argument("--batch-size", type=int, help="rows per batch (default: the run's eval_batch_size)")
    ap.add_argument("--engines", default="torch-fp32,torch-bf16,onnx-fp32,onnx-int8")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import torch

    from lorabudget.data.batching import tokenize
    from lorabudget.data.load import load_labelled
    from lorabudget.export.formats import ONNX_FILE, ONNX_INT8_FILE, export_run, onnx_session
    from lorabudget.inference.batched import predict_logits, predict_logits_onnx
    from lorabudget.inference.runs import load_run
    from lorabudget.io import default_cache_dir

    tmp = Path(tempfile.mkdtemp())
    data_path = args.data
    if data_path is None:
        if not TRAIN_5K.is_file():
            print(f"skipped: {TRAIN_5K} not found; pass --data")
            return 0
        data_path = write_rows(tmp / "held_out.csv", read_rows(TRAIN_5K)[-1000:])
    if args.threads:
        torch.set_num_threads(args.threads)

    run = load_run(args.run)  # torch, adapters merged
    run.model.to("cpu")  # a CPU comparison: ONNX Runtime runs on the CPU provider here
    data = load_labelled(str(data_path), run.cfg.model.labels)
    if args.rows:
        data = data.subset(range(min(args.rows, len(data))))
    tokens = tokenize(run.tokenizer, data.texts, run.cfg.model.max_length, default_cache_dir(run.cfg.data.cache_dir))
    batch_size = args.batch_size or run.cfg.training.eval_batch_size

    start = time.perf_counter()
    export_dir = export_run(args.run, tmp / "onnx", "onnx", quantize="int8")
    export_s = time.perf_counter() - start

    engines = {
        "torch fp32": lambda: predict_logits(run.model, tokens, run.pad_id, batch_size, precision="fp32"),
        "torch bf16": lambda: predict_logits(run.model, tokens, run.pad_id, batch_size, precision="bf16"),
    }
    sessions = {
        "onnx fp32": onnx_session(export_dir / ONNX_FILE, args.threads),
        "onnx int8": onnx_session(export_dir / ONNX_INT8_FILE, args.threads),
    }
    for name, session in sessions.items():
        engines[name] = lambda session=session: predict_logits_onnx(session, tokens, run.pad_id, batch_size)
    wanted = {e.replace("-", " ") for e in args.engines.split(",")}
    engines = {k: v for k, v in engines.items() if k in wanted}

    results = {}
    for name, fn in engines.items():
        fn()  # warm-up pass, not timed
        logits, seconds = timed(fn, args.repeats)
        results[name] = (logits, seconds)
        print(f"{name}: {len(data) / seconds:.1f} rows/s", file=sys.stderr)

    reference = results.get("torch fp32", next(iter(results.values())))[0].argmax(axis=1)
    labelled = data.labels >= 0
    size = {
        name: (export_dir / file).stat().st_size
        for name, file in (("onnx fp32", ONNX_FILE), ("onnx int8", ONNX_INT8_FILE))
    }
    lines = [
        f"<!-- onnx-speed: run {args.run}, data {data_path}, {len(data):,} rows -->",
        f"Run `{args.run}` ({run.cfg.model.name}, head {run.cfg.head.type}/{run.cfg.head.pooling}), {len(data):,} rows "
        f"of `{data_path}`, batch size {batch_size}, best of {args.repeats} timed passes after one warm-up; tokenization "
        f"not timed. ONNX export (fp32 + int8) took {export_s:.1f} s.",
        "",
        "| engine | rows/s | vs torch fp32 | agreement with torch fp32 | accuracy | model file |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    base_rate = len(data) / results["torch fp32"][1] if "torch fp32" in results else None
    for name, (logits, seconds) in results.items():
        preds = logits.argmax(axis=1)
        rate = len(data) / seconds
        accuracy = float((preds[labelled] == data.labels[labelled]).mean()) if labelled.any() else float("nan")
        ratio = f"{rate / base_rate:.2f}x" if base_rate else "—"
        mb = f"{size[name] / 1e6:.1f} MB" if name in size else "—"
        lines.append(f"| {name} | {rate:.1f} | {ratio} | {(preds == reference).mean():.2%} | {accuracy:.4f} | {mb} |")
    lines += ["", f"Machine: {machine()}; ONNX Runtime threads: {args.threads or 'default'}."]
    emit("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
