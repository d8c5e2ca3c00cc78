"""Adapter methods at about 10k, 100k and 1M trainable parameters (head included) on real MiniLM-L6.

Data: ../shared/data/agnews/train_5k.csv. The last 1,000 rows are a held-out slice no run trains on;
every run trains on the first 4,000 (its own 500 validation rows split off them, the best checkpoint
kept by validation accuracy), with the same shortened schedule (``--epochs``, default 2), then is
evaluated on the held-out slice. Each run is its own process, so its peak resident memory
(``ru_maxrss``) is its own. Results are appended to ``--results`` (JSON lines), so an interrupted
benchmark continues where it stopped; ``--only`` runs a subset.

Writes ``docs/methods.md`` (table: budget, method, settings, trainable parameters, held-out accuracy
with its Wilson 95% interval, training time, peak memory) and the ``lorabudget compare`` plot of all
runs (accuracy vs trainable parameters, Pareto front) into ``docs/methods/``.

Usage: python benchmarks/methods.py [--epochs 2] [--only NAME ...] [--out docs/methods.md]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TRAIN_5K, emit, machine, split_held_out  # noqa: E402

from lorabudget.stats import accuracy_interval  # noqa: E402

ALL6 = "[query, key, value, attention_output, intermediate, output]"
# name -> (budget class, overrides on the minilm-cpu preset). Learning rates are each method's default
# (adapters.METHODS) unless set here.
CONFIGS: dict[str, tuple[int, list[str]]] = {
    "lora-r1-query": (10_000, ["adapter.r=1", "adapter.alpha=2", "adapter.modules=[query]"]),
    "vera-r256-qv": (10_000, ["adapter.method=vera", "adapter.r=256", "adapter.modules=[query, value]"]),
    "fourierft-700-qv": (
        10_000,
        ["adapter.method=fourierft", "adapter.modules=[query, value]", "adapter.options={n_frequency: 700}"],
    ),
    "ia3-kv": (10_000, ["adapter.method=ia3", "adapter.modules=[key, value]"]),
    "bitfit-qkv": (10_000, ["adapter.method=bitfit", "adapter.modules=[query, key, value]"]),
    "tinylora-tied-u8192": (
        10_000,
        [
            "adapter.method=tinylora",
            "adapter.r=2",
            f"adapter.modules={ALL6}",
            "adapter.options={u: 8192, weight_tying: 1.0}",
        ],
    ),
    "tinylora-tied": (10_000, ["adapter.method=tinylora", f"adapter.modules={ALL6}"]),  # its defaults: u=256, r=2
    "ln_tuning-output": (10_000, ["adapter.method=ln_tuning", "adapter.modules=[output]"]),
    "lora-r2-all": (100_000, ["adapter.r=2", "adapter.alpha=4", f"adapter.modules={ALL6}"]),
    "vera-r256-all": (100_000, ["adapter.method=vera", "adapter.r=256", f"adapter.modules={ALL6}"]),
    "fourierft-2600-all": (
        100_000,
        ["adapter.method=fourierft", f"adapter.modules={ALL6}", "adapter.options={n_frequency: 2600}"],
    ),
    "loha-r1-all": (100_000, ["adapter.method=loha", "adapter.r=1", "adapter.alpha=2", f"adapter.modules={ALL6}"]),
    "ia3-all": (100_000, ["adapter.method=ia3", f"adapter.modules={ALL6}"]),
    "vblora-all": (
        100_000,
        [
            "adapter.method=vblora",
            "adapter.r=4",
            f"adapter.modules={ALL6}",
            "adapter.options={num_vectors: 32, vector_length: 64}",
        ],
    ),
    "adalora-r2-all": (
        100_000,
        ["adapter.method=adalora", "adapter.r=2", "adapter.alpha=4", f"adapter.modules={ALL6}"],
    ),
    "lokr-r4-all": (100_000, ["adapter.method=lokr", "adapter.r=4", "adapter.alpha=8", f"adapter.modules={ALL6}"]),
    "vblora-r2-query": (
        10_000,
        [
            "adapter.method=vblora",
            "adapter.r=2",
            "adapter.modules=[query]",
            "adapter.options={num_vectors: 32, vector_length: 64}",
        ],
    ),
    "loha-r1-query-5layers": (
        10_000,
        [
            "adapter.method=loha",
            "adapter.r=1",
            "adapter.alpha=2",
            "adapter.modules=[query]",
            "adapter.layers=[1, 2, 3, 4, 5]",
        ],
    ),
    "lokr-r1-qv": (10_000, ["adapter.method=lokr", "adapter.r=1", "adapter.alpha=2", "adapter.modules=[query, value]"]),
    "adalora-r2-query-5layers": (
        10_000,
        [
            "adapter.method=adalora",
            "adapter.r=2",
            "adapter.alpha=4",
            "adapter.modules=[query]",
            "adapter.layers=[1, 2, 3, 4, 5]",
        ],
    ),  # r=1 leaves AdaLoRA nothing to reallocate
    "bitfit-all": (100_000, ["adapter.method=bitfit", f"adapter.modules={ALL6}"]),
    "lora-r16-all": (1_000_000, ["adapter.r=16", "adapter.alpha=32", f"adapter.modules={ALL6}"]),
    "loha-r8-all": (1_000_000, ["adapter.method=loha", "adapter.r=8", "adapter.alpha=16", f"adapter.modules={ALL6}"]),
    "lokr-r16-all": (100_000, ["adapter.method=lokr", "adapter.r=16", "adapter.alpha=32", f"adapter.modules={ALL6}"]),
    "adalora-r16-all": (
        1_000_000,
        ["adapter.method=adalora", "adapter.r=16", "adapter.alpha=32", f"adapter.modules={ALL6}"],
    ),
    "vblora-r16-all": (
        1_000_000,
        [
            "adapter.method=vblora",
            "adapter.r=16",
            f"adapter.modules={ALL6}",
            "adapter.options={num_vectors: 64, vector_length: 64}",
        ],
    ),
    "fourierft-25000-all": (
        1_000_000,
        ["adapter.method=fourierft", f"adapter.modules={ALL6}", "adapter.options={n_frequency: 25000}"],
    ),
}
# Settings every run shares: the method decides rank/modules/learning rates unless CONFIGS says.
COMMON = [
    "adapter.r=null",
    "adapter.alpha=null",
    "adapter.modules=null",
    "training.learning_rate=null",
    "training.head_learning_rate=null",
    "data.validation_size=500",
]


def run_one(name: str, data: Path, test: Path, work: Path, epochs: float) -> dict:
    """Train and evaluate one configuration in this process; return its result row."""
    from lorabudget.config import load_config
    from lorabudget.inference.runs import evaluate_run, load_run
    from lorabudget.training.loop import train

    budget, overrides = CONFIGS[name]
    cfg = load_config(
        "minilm-cpu",
        COMMON
        + overrides
        + [
            f"name={name}",
            f"data.train={data}",
            f"data.cache_dir={work / 'cache'}",
            f"training.epochs={epochs}",
            f"budget.max_trainable_params={budget}",
        ],
    )
    summary = train(cfg, work / name)
    metrics = evaluate_run(load_run(work / name), str(test))
    from lorabudget.rundir.layout import RunDir

    RunDir(work / name).write_eval(metrics, str(test), "evaluate")
    return {
        "name": name,
        "budget": budget,
        "method": cfg.adapter.method,
        "overrides": overrides,
        "trainable_params": summary["trainable_params"],
        "validation_accuracy": summary["validation_accuracy"],
        "test_accuracy": metrics["accuracy"],
        "test_macro_f1": metrics["macro_f1"],
        "n_test": int(sum(sum(row) for row in metrics["confusion_matrix"])),
        "train_time_s": summary["train_time_s"],
        "epochs": epochs,
        "learning_rate": cfg.training.learning_rate,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| budget | configuration | method | trainable params | lr | held-out accuracy (95% CI) | validation acc | "
        "training time (s) | peak RSS (MB) |",
        "|---:|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["budget"], -r["test_accuracy"])):
        low, high = accuracy_interval(r["test_accuracy"], r["n_test"])
        lines.append(
            f"| {r['budget']:,} | {r['name']} | {r['method']} | {r['trainable_params']:,} | {r['learning_rate']:g} | "
            f"{r['test_accuracy']:.4f} ({low:.3f}–{high:.3f}) | {r['validation_accuracy']:.4f} | "
            f"{r['train_time_s']:.0f} | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=TRAIN_5K)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--only", nargs="*", help="configuration names (default: all)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "lorabudget-methods")
    ap.add_argument("--results", type=Path, help="JSON lines of finished runs (default: WORK/results.jsonl)")
    ap.add_argument("--out", type=Path, default=Path("docs/methods.md"))
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration in this process
    args = ap.parse_args()
    if not args.data.is_file():
        print(f"skipped: {args.data} not found (the benchmark needs the shared AG News rows)")
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    train_csv, test_csv = args.work / "train.csv", args.work / "test.csv"
    if not test_csv.is_file():
        split_held_out(args.data, args.work)
    results_path = args.results or args.work / "results.jsonl"
    if args.one:
        row = run_one(args.one, train_csv, test_csv, args.work, args.epochs)
        with open(results_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        return 0

    done = {}
    if results_path.is_file():
        done = {
            r["name"]: r
            for r in map(json.loads, results_path.read_text().splitlines())
            if r.get("epochs") == args.epochs
        }
    for name in args.only or list(CONFIGS):
        if name in done:
            continue
        start = time.perf_counter()
        cmd = [
            sys.executable,
            __file__,
            "--one",
            name,
            "--data",
            str(args.data),
            "--epochs",
            str(args.epochs),
            "--work",
            str(args.work),
            "--results",
            str(results_path),
        ]
        code = subprocess.call(cmd)
        print(f"{name}: exit {code} after {time.perf_counter() - start:.0f}s", flush=True)
    rows = [r for r in map(json.loads, results_path.read_text().splitlines()) if r.get("epochs") == args.epochs]
    rows = list({r["name"]: r for r in rows}.values())
    if not rows:
        return 1
    plot_dir = args.out.parent / "methods"
    subprocess.call(
        [
            sys.executable,
            "-m",
            "lorabudget.cli",
            "compare",
            *[str(args.work / r["name"]) for r in rows],
            "--output",
            str(plot_dir),
        ],
        stdout=subprocess.DEVNULL,
    )
    text = (
        "# Adapter methods under tight budgets (MiniLM-L6, AG News)\n\n"
        f"Each run: real all-MiniLM-L6-v2, mean-pooled linear head (1,540 parameters), trained for {args.epochs:g} "
        "epoch(s) on 3,500 rows of `train_5k.csv` (500 more split off for validation, best checkpoint kept), "
        "evaluated on the last 1,000 rows, which no run trains on (one standard error about 1 point). "
        "Learning rates are each method's default unless the configuration sets one; training time includes "
        "the validation passes. Written by `benchmarks/methods.py`.\n\n"
        + table(rows)
        + f"\n\nMachine: {machine()}.\n\nPlot of all runs (accuracy vs trainable parameters, Pareto front): "
        "[methods/](methods/).\n"
    )
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
