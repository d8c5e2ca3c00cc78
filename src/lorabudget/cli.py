"""The ``lorabudget`` command line: plan, train, distill, evaluate, predict, classify, export, report, compare.

Exit codes: 0 success, 2 bad input (one line on stderr), 3 over budget, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from . import __version__
from .errors import BudgetExceededError, LorabudgetError


def _say(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(message)  # keeps progress bars intact


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="preset name (e.g. seed-lora, minilm-cpu) or path to a YAML config")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set training.learning_rate=3e-4 (repeatable)",
    )


def cmd_plan(args: argparse.Namespace) -> int:
    from .budget import breakdown, format_breakdown
    from .config import load_config
    from .modeling import build_model

    cfg = load_config(args.config, args.overrides)
    built = build_model(cfg, weights=False)
    b = breakdown(built.model)
    print(f"plan for {cfg.name}: model {cfg.model.name} ({built.config_source}), head {cfg.head.type}, "
          f"{len(built.sites)} adapted modules, {cfg.num_labels} classes")
    print(format_breakdown(b, cfg.budget.max_trainable_params))
    return 0 if b.total <= cfg.budget.max_trainable_params else 3


def _new_run(args: argparse.Namespace):
    """Load the config of a train/distill command and make room for its run directory."""
    from .config import load_config
    from .train import clear_run_dir

    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.train={args.data}")
    cfg = load_config(args.config, overrides)
    run_dir = Path(args.output) if args.output else Path("runs") / cfg.name
    if run_dir.exists() and not args.overwrite:
        raise LorabudgetError(f"run directory {run_dir} exists; pass --overwrite or choose --output")
    if args.overwrite:
        clear_run_dir(run_dir)
    return cfg, run_dir


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    cfg, run_dir = _new_run(args)
    train(cfg, run_dir, log=_say)
    _report(run_dir, args)
    return 0


def _report(run_dir: Path, args: argparse.Namespace) -> None:
    if not (run_dir / "config.yaml").is_file():
        return  # an exported folder (predict on an ONNX export): nothing to report
    from .modelcard import write_model_card

    write_model_card(run_dir)
    if getattr(args, "no_report", False):
        return
    from .report import write_report

    print(f"report: {write_report(run_dir)}")


def cmd_report(args: argparse.Namespace) -> int:
    from .runs import read_run_config

    read_run_config(Path(args.run))  # a clear error for a folder that is not a run
    from .modelcard import write_model_card
    from .report import write_report

    write_model_card(Path(args.run))
    print(f"report: {write_report(Path(args.run))}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .report import write_comparison

    for run in args.runs:
        if not Path(run).is_dir():
            raise LorabudgetError(f"run directory not found: {run}")
    path = write_comparison([Path(r) for r in args.runs], Path(args.output))
    print(path.read_text(encoding="utf-8"))
    print(f"written: {path}")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from .distill import distill

    cfg, run_dir = _new_run(args)
    distill(cfg, run_dir, teacher=args.teacher, unlabelled=args.unlabelled or (), log=_say)
    _report(run_dir, args)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .metrics import format_metrics
    from .runs import evaluate_run, load_run
    from .train import write_eval

    run = load_run(Path(args.run), threads=args.threads, precision=args.precision)
    metrics = evaluate_run(run, args.data)
    write_eval(run.run_dir, metrics, args.data, "evaluate")
    print(format_metrics(metrics))
    print(f"written: {run.run_dir / 'eval.json'}")
    _report(run.run_dir, args)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .runs import load_run, predict_file

    run = load_run(Path(args.run), threads=args.threads, precision=args.precision, engine=args.engine)
    output = Path(args.output) if args.output else run.run_dir / "predictions.csv"
    summary = predict_file(run, args.input, output, probabilities=args.probabilities)
    counts = ", ".join(f"{k} {v:,}" for k, v in summary["counts"].items())
    print(f"wrote {summary['rows']:,} predictions to {output} ({counts}; {summary['samples_per_s']:.1f} rows/s)")
    _report(run.run_dir, args)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_run

    path = export_run(Path(args.run), Path(args.output), args.format, quantize=args.quantize, overwrite=args.overwrite)
    print(f"exported {args.run} as {args.format} to {path} (model card: {path / 'README.md'})")
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from .runs import classify_texts, load_run

    texts = list(args.texts)
    if texts == ["-"]:
        texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts or any(not t.strip() for t in texts):
        raise LorabudgetError("classify needs one or more non-empty texts")
    run = load_run(Path(args.run), threads=args.threads, precision=args.precision)
    for text, (label, prob, _) in zip(texts, classify_texts(run, texts)):
        short = text if len(text) <= 70 else text[:67] + "..."
        print(f"{label}\t{prob:.3f}\t{short}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lorabudget",
        description="Fine-tune transformer encoders for text classification with LoRA under a hard "
        "trainable-parameter budget.",
    )
    parser.add_argument("--version", action="version", version=f"lorabudget {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("plan", help="count trainable parameters exactly (no weights loaded) and check the budget")
    _add_config_args(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("train", help="train a config into a run directory")
    _add_config_args(p)
    p.add_argument("--data", help="training data file (shortcut for --set data.train=FILE)")
    p.add_argument("--output", help="run directory (default: runs/<config name>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--no-report", action="store_true", help="do not write report.md and figures at the end")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("distill", help="train a student config with knowledge distillation from a teacher")
    _add_config_args(p)
    p.add_argument("--teacher", help="teacher run directory, or a config/preset trained first (default: distill.teacher)")
    p.add_argument("--unlabelled", action="append", metavar="FILE",
                   help="extra texts (no labels) taught by the teacher's soft labels only (repeatable)")
    p.add_argument("--data", help="training data file (shortcut for --set data.train=FILE)")
    p.add_argument("--output", help="student run directory (default: runs/<config name>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing student run directory")
    p.add_argument("--no-report", action="store_true", help="do not write report.md and figures at the end")
    p.set_defaults(func=cmd_distill)

    def run_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help_text)
        q.add_argument("run", help="run directory written by `lorabudget train`")
        q.add_argument("--threads", type=int, help="CPU threads for torch")
        q.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                       help="forward pass precision: auto = bf16 on a GPU that supports it, else fp32; "
                       "bf16 on a CPU with native bf16 (AVX512-BF16, AMX) is about 2x faster")
        return q

    p = run_parser("evaluate", "accuracy, macro P/R/F1, per-class table and confusion matrix on labelled data")
    p.add_argument("--data", required=True, help="labelled data file (or ag_news:test)")
    p.add_argument("--no-report", action="store_true", help="do not rewrite report.md and figures")
    p.set_defaults(func=cmd_evaluate)

    p = run_parser("predict", "write ID,Label predictions for an unlabelled file (RUN may be an ONNX export)")
    p.add_argument("--engine", choices=["torch", "onnx"], default="torch",
                   help="torch (default), or onnx: ONNX Runtime on the run exported to RUN/onnx (an ONNX export "
                   "folder always runs on ONNX Runtime)")
    p.add_argument("--input", required=True, help="texts to label: CSV, JSON Lines, Parquet or pickle")
    p.add_argument("--output", help="CSV to write (default: RUN/predictions.csv)")
    p.add_argument("--probabilities", action="store_true", help="add one probability column per class")
    p.add_argument("--no-report", action="store_true", help="do not rewrite report.md and figures")
    p.set_defaults(func=cmd_predict)

    p = run_parser("classify", "print class and probability for texts given on the command line")
    p.add_argument("texts", nargs="+", help="texts to classify ('-' reads one text per line from stdin)")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("export", help="export a run for transformers (hf), PEFT (peft) or ONNX Runtime (onnx), "
                       "with a model card")
    p.add_argument("run", help="run directory written by `lorabudget train`")
    p.add_argument("--format", required=True, choices=["hf", "peft", "onnx"],
                   help="hf: adapters merged, loads with plain transformers; peft: adapter + head for "
                   "PeftModel.from_pretrained; onnx: merged model for ONNX Runtime")
    p.add_argument("--output", required=True, help="folder to write")
    p.add_argument("--quantize", choices=["int8"],
                   help="onnx only: also write model_int8.onnx (dynamic int8 weights) and use it")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="write figures and report.md for a run directory")
    p.add_argument("run", help="run directory")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="results table and accuracy-vs-parameters plot across runs")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--output", default="runs/compare", help="folder for compare.md and the plot (default runs/compare)")
    p.set_defaults(func=cmd_compare)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.func(args)
    except LorabudgetError as err:
        if args.debug:
            raise
        print(f"lorabudget {args.command}: error: {err}", file=sys.stderr)
        return 3 if isinstance(err, BudgetExceededError) else 2
    except KeyboardInterrupt:
        print(f"lorabudget {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
