"""The command line's arguments, as a table: each command lists its argument groups, each group its
arguments. ``build_parser`` turns the table into argparse parsers; nothing else lives here."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable

from lorabudget.cli.info import cmd_cache, cmd_env, cmd_presets
from lorabudget.cli.runs import cmd_classify, cmd_compare, cmd_evaluate, cmd_export, cmd_predict, cmd_report, cmd_serve
from lorabudget.cli.training import cmd_distill, cmd_plan, cmd_search, cmd_train
from lorabudget.version import __version__

Arg = tuple[tuple[str, ...], dict[str, Any]]


def arg(*flags: str, **options: Any) -> Arg:
    return flags, options


TRUST_PICKLE_HELP = "allow .pkl/.pickle data files: unpickling runs code from the file, so only for files you trust"
PRECISION_HELP = (
    "forward pass precision: auto = bf16 on a GPU that supports it or on a CPU where "
    "bf16 measured clearly faster than fp32 (a cached probe), else fp32"
)

CONFIG = [
    arg("config", help="preset name (e.g. seed-lora, minilm-cpu) or path to a YAML config"),
    arg(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set training.learning_rate=3e-4 (repeatable)",
    ),
]
COLUMNS = [
    arg("--text-column", help="column holding the text (the first text of a pair); default: found by name"),
    arg("--text-pair-column", help="column holding the second text of a sentence pair (e.g. hypothesis)"),
    arg("--label-column", help="column holding the label; default: found by name"),
]
TRAIN_DATA = [arg("--data", help="training data file (shortcut for --set data.train=FILE)")]
MULTI_LABEL = [
    arg(
        "--multi-label",
        action="store_true",
        help="any number of classes per row (names joined by data.label_separator, default |; a JSON list; or "
        "data.label_columns): sigmoid outputs, per-class thresholds (shortcut for --set model.problem_type=multi_label)",
    )
]
THRESHOLD = [
    arg(
        "--threshold",
        type=float,
        metavar="T",
        help="multi-label runs: predict a class where its probability reaches T, for every class (default: "
        "the per-class thresholds chosen on the validation rows, RUN/thresholds.json)",
    )
]


def run_dir_args(overwrite_help: str, output_help: str) -> list[Arg]:
    return [
        arg("--output", help=output_help),
        arg("--overwrite", action="store_true", help=overwrite_help),
        arg(
            "--resume",
            action="store_true",
            help="continue an interrupted run in --output from its last checkpoint (same config and --set values)",
        ),
        arg("--trust-pickle", action="store_true", help=TRUST_PICKLE_HELP),
        arg("--no-report", action="store_true", help="do not write report.md and figures at the end"),
    ]


RUN = [
    arg("run", help="run directory written by `lorabudget train`"),
    arg("--threads", type=int, help="CPU threads for torch"),
    arg("--precision", choices=["auto", "fp32", "bf16"], default="auto", help=PRECISION_HELP),
]
READS_DATA = [
    arg("--trust-pickle", action="store_true", help=TRUST_PICKLE_HELP),
    arg("--no-report", action="store_true", help="do not rewrite report.md and figures"),
]

PLAN = [
    *CONFIG,
    arg(
        "--data",
        help="training data: its label column gives the class count (when model.labels is null), its lengths "
        "the estimated training time and peak memory",
    ),
    *COLUMNS,
    *MULTI_LABEL,
]
TRAIN = [
    *CONFIG,
    *TRAIN_DATA,
    *COLUMNS,
    *MULTI_LABEL,
    *run_dir_args(
        "replace an existing run directory once the new run has finished", "run directory (default: runs/<config name>)"
    ),
]
DISTILL = [
    *CONFIG,
    arg(
        "--teacher",
        action="append",
        metavar="RUN|CONFIG",
        help="teacher run directory, or a config/preset trained first (default: distill.teacher); "
        "repeat for an ensemble whose class probabilities are averaged",
    ),
    arg(
        "--transfer-from-train-fraction",
        dest="transfer_fraction",
        type=float,
        metavar="F",
        help="use this share of the labelled training rows without their labels, taught by the "
        "teacher's soft labels only (default: distill.transfer_fraction)",
    ),
    arg(
        "--unlabelled",
        action="append",
        metavar="FILE",
        help="extra texts (no labels) taught by the teacher's soft labels only (repeatable)",
    ),
    *TRAIN_DATA,
    *COLUMNS,
    *MULTI_LABEL,
    *run_dir_args(
        "replace an existing student run directory once the new run has finished",
        "student run directory (default: runs/<config name>)",
    ),
]
SEARCH = [
    *CONFIG,
    arg("--trials", type=int, required=True, help="trained trials in total (complete or pruned), all workers together"),
    arg("--timeout", type=float, help="stop starting trials after this many seconds"),
    arg("--budget", type=int, help="trainable-parameter budget (shortcut for --set budget.max_trainable_params=N)"),
    arg(
        "--space",
        help="YAML search space (a `search:` section or the space itself; default: the "
        "config's `search:` section, else the built-in space)",
    ),
    arg(
        "--storage",
        help="postgresql://USER@HOST/DB, sqlite:///FILE or journal:FILE (default: SQLite in the search directory)",
    ),
    arg(
        "--study",
        help="study name (default: <config name>-search); workers with the same --storage and --study join one search",
    ),
    arg("--workers", type=int, default=1, help="local worker processes sharing the storage (default 1)"),
    *TRAIN_DATA,
    *COLUMNS,
    *MULTI_LABEL,
    arg("--output", help="search directory (default: runs/<study name>)"),
    arg(
        "--trial-set",
        dest="trial_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for the search's trials only, left out of best.yaml (e.g. shorter training)",
    ),
    arg(
        "--metric",
        choices=["accuracy", "macro_f1", "micro_f1"],
        default=None,
        help="validation objective (default: micro_f1 for a multi-label search, accuracy otherwise; micro_f1 is "
        "for multi-label searches only)",
    ),
    arg(
        "--multi-objective",
        action="store_true",
        help="NSGA-II over validation metric and trainable parameters: a Pareto front",
    ),
    arg(
        "--pruner",
        choices=["median", "hyperband", "none"],
        default="median",
        help="stops hopeless trials at their validation evaluations (default median)",
    ),
    arg("--seed", type=int, default=0, help="sampler seed (default 0)"),
    arg(
        "--no-warm-start",
        action="store_true",
        help="do not start a new study with the base config (scaled down to the budget) and the "
        "measured presets for its model",
    ),
    arg(
        "--max-rejections",
        type=int,
        default=100,
        help="give up after this many over-budget samples in a row (default 100)",
    ),
]
EVALUATE = [
    *RUN,
    arg("--data", required=True, help="labelled data file (or ag_news:test, hub:REPO[:CONFIG]:SPLIT)"),
    *COLUMNS,
    *THRESHOLD,
    *READS_DATA,
]
PREDICT = [
    *RUN,
    arg(
        "--engine",
        choices=["torch", "onnx"],
        default="torch",
        help="torch (default), or onnx: ONNX Runtime on the run exported to RUN/onnx (with --output elsewhere "
        "a missing or stale RUN/onnx is exported to a temporary folder instead; an ONNX export folder always "
        "runs on ONNX Runtime)",
    ),
    arg("--input", required=True, help="texts to label: CSV, JSON Lines, Parquet or pickle"),
    arg("--output", help="CSV to write (default: RUN/predictions.csv)"),
    arg("--probabilities", action="store_true", help="add one probability column per class"),
    arg(
        "--label-format",
        choices=["id", "name"],
        help="write labels as class ids or names (default: as the training data wrote them)",
    ),
    *COLUMNS,
    *THRESHOLD,
    *READS_DATA,
]
CLASSIFY = [
    *RUN,
    arg(
        "texts",
        nargs="+",
        help="texts to classify ('-' reads one text per line from stdin); for a sentence-pair run "
        "each is FIRST<TAB>SECOND (in bash: $'first\\tsecond')",
    ),
    *THRESHOLD,
]
SERVE = [
    *RUN,
    arg("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"),
    arg("--port", type=int, default=8000, help="port (default 8000)"),
    arg("--engine", choices=["torch", "onnx"], default="torch", help="torch (default) or onnx (RUN/onnx)"),
    arg("--max-batch", type=int, default=32, help="texts per forward pass, from all requests (default 32)"),
    arg(
        "--max-wait-ms",
        type=float,
        default=0.0,
        help="how long a text may wait for others to fill its batch (default 0: a batch is what queued up "
        "while the model ran the previous one)",
    ),
    arg(
        "--body-timeout-s",
        type=float,
        default=30.0,
        help="seconds a request body may take to arrive (default 30; then 408)",
    ),
    arg(
        "--header-timeout-s",
        type=float,
        default=10.0,
        help="seconds a request's headers may take to arrive (default 10; then the connection is closed)",
    ),
    arg("--max-connections", type=int, default=256, help="requests open at once (default 256; one more gets 503)"),
    arg(
        "--threshold",
        type=float,
        default=None,
        help="multi-label runs: one decision threshold in (0, 1) for every class instead of the run's "
        'per-class thresholds (a request\'s "threshold" still overrides it)',
    ),
]
EXPORT = [
    arg("run", help="run directory written by `lorabudget train`"),
    arg(
        "--format",
        required=True,
        choices=["hf", "peft", "onnx"],
        help="hf: adapters merged, loads with plain transformers; peft: adapter + head for "
        "PeftModel.from_pretrained; onnx: merged model for ONNX Runtime",
    ),
    arg("--output", required=True, help="folder to write"),
    arg("--quantize", choices=["int8"], help="onnx only: also write model_int8.onnx (dynamic int8 weights) and use it"),
    arg("--overwrite", action="store_true", help="replace a non-empty output folder"),
]
PRESETS = [
    arg("action", nargs="?", choices=["list", "show"], default="list", help="list (default) or show NAME"),
    arg("name", nargs="?", help="the preset to print (with show)"),
]
COMPARE = [
    arg("runs", nargs="+", help="run directories"),
    arg(
        "--output",
        default="runs/compare",
        help="folder for compare.md, compare.csv and the plot (default runs/compare)",
    ),
    arg(
        "--name",
        dest="names",
        action="append",
        metavar="NAME",
        help="display name of the next run, in the order the runs are given (repeatable; "
        "default: the run directory's name)",
    ),
    arg(
        "--allow-different-classes",
        action="store_true",
        help="compare runs of different class sets (tasks): each set is ranked in its own table",
    ),
]


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    args: list[Arg]


COMMANDS = [
    Command(
        "plan",
        "count trainable parameters exactly (no weights loaded) and check the budget; with data, estimate time and memory",
        cmd_plan,
        PLAN,
    ),
    Command("train", "train a config into a run directory", cmd_train, TRAIN),
    Command(
        "search",
        "search method, placement, ranks and settings under the budget (Optuna)",
        cmd_search,
        SEARCH,
    ),
    Command(
        "distill",
        "train a student config with knowledge distillation from a teacher",
        cmd_distill,
        DISTILL,
    ),
    Command(
        "evaluate",
        "accuracy, macro P/R/F1, per-class table and confusion matrix on labelled data",
        cmd_evaluate,
        EVALUATE,
    ),
    Command(
        "predict",
        "write ID,Label predictions for an unlabelled file (RUN may be an ONNX export)",
        cmd_predict,
        PREDICT,
    ),
    Command("classify", "print class and probability for texts given on the command line", cmd_classify, CLASSIFY),
    Command("serve", "serve a run over HTTP: JSON API with dynamic batching and a page to try it", cmd_serve, SERVE),
    Command(
        "export",
        "export a run for transformers (hf), PEFT (peft) or ONNX Runtime (onnx), with a model card",
        cmd_export,
        EXPORT,
    ),
    Command(
        "presets",
        "list the presets (name, model, method, trainable count, budget, purpose)",
        cmd_presets,
        PRESETS,
    ),
    Command(
        "cache",
        "lorabudget's caches (tokens, teacher logits, unpacked models, frozen-prefix states): info or clear",
        cmd_cache,
        [arg("action", choices=["info", "clear"])],
    ),
    Command(
        "report", "write figures and report.md for a run directory", cmd_report, [arg("run", help="run directory")]
    ),
    Command("compare", "results table and accuracy-vs-parameters plot across runs", cmd_compare, COMPARE),
    Command(
        "env",
        "versions, device, CPU flags, the bf16 probe and the caches, for bug reports",
        cmd_env,
        [arg("--no-probe", action="store_true", help="do not time fp32 against bf16 (about half a second)")],
    ),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lorabudget",
        description="Fine-tune transformer encoders for text classification with PEFT methods under a hard "
        "trainable-parameter budget.",
    )
    parser.add_argument("--version", action="version", version=f"lorabudget {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help)
        for flags, options in command.args:
            p.add_argument(*flags, **options)
        p.set_defaults(func=command.run)
    return parser
