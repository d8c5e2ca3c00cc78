"""The ``lorabudget`` command line: plan, train, search, distill, evaluate, predict, classify, export, report,
compare, env.

Exit codes: 0 success, 2 bad input (one line on stderr), 3 over budget, 4 training diverged (non-finite
loss or gradient norm), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from lorabudget import __version__
from lorabudget.config import apply_overrides, from_dict, load_yaml, resolve_config_path
from lorabudget.console import say
from lorabudget.errors import BudgetExceededError, LorabudgetError
from lorabudget.io import environment_error, writes_through
from lorabudget.search.space import default_space_raw
from lorabudget.search.study import SearchSettings
from lorabudget.signals import Terminated, handle_termination


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="preset name (e.g. seed-lora, minilm-cpu) or path to a YAML config")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set training.learning_rate=3e-4 (repeatable)",
    )


def _add_column_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-column", help="column holding the text (the first text of a pair); default: found by name")
    p.add_argument("--text-pair-column", help="column holding the second text of a sentence pair (e.g. hypothesis)")
    p.add_argument("--label-column", help="column holding the label; default: found by name")


def _column_overrides(args: argparse.Namespace) -> list[str]:
    """``--text-column`` ... as ``--set data.text_column=...`` values."""
    given = {
        "text_column": args.text_column,
        "text_pair_column": args.text_pair_column,
        "label_column": args.label_column,
    }
    return [f"data.{key}={value}" for key, value in given.items() if value]


def _columns(args: argparse.Namespace, run):
    return run.columns(args.text_column, args.text_pair_column, args.label_column)


def cmd_plan(args: argparse.Namespace) -> int:
    from lorabudget.config import load_config
    from lorabudget.data.load import resolve_labels
    from lorabudget.methods.registry import get_method
    from lorabudget.model.budget import breakdown, format_breakdown, within_budget
    from lorabudget.model.build import build_model

    overrides = list(args.overrides) + _column_overrides(args)
    cfg = load_config(args.config, overrides + ([f"data.train={args.data}"] if args.data else []))
    if cfg.model.labels is None and (args.data or cfg.model.num_labels is None):
        resolve_labels(cfg)  # the class count from the data's label column
    built = build_model(cfg, weights=False)
    b = breakdown(built.model)
    method = get_method(cfg.adapter.method)
    where = "every weight" if method.placement == "model" else f"{len(built.sites)} adapted modules"
    print(
        f"plan for {cfg.name}: model {cfg.model.name} ({built.config_source}), head {cfg.head.type}, "
        f"method {method.name}, {where}, {cfg.num_labels} classes"
    )
    if cfg.model.quantization != "none":
        print(
            f"  base quantized to {cfg.model.quantization} (bitsandbytes) for training: frozen weights only, "
            "the trainable count is unchanged"
        )
    if method.note:
        print(f"  note: {method.note}")
    for note in built.notes:
        print(f"  note: {note}")
    print(format_breakdown(b, cfg.budget.max_trainable_params, method=method.name))
    return 0 if within_budget(b, cfg.budget.max_trainable_params) else 3


def _new_run(args: argparse.Namespace):
    """Load the config of a train/distill command and check its run directory before any work."""
    from lorabudget.config import load_config
    from lorabudget.data.load import resolve_labels
    from lorabudget.rundir.layout import RunDir
    from lorabudget.rundir.lifecycle import check_can_create, is_main_launch_process

    overrides = list(args.overrides) + _column_overrides(args)
    if args.data:
        overrides.append(f"data.train={args.data}")
    if args.trust_pickle:
        overrides.append("data.trust_pickle=true")
    cfg = load_config(args.config, overrides)
    if is_main_launch_process():
        resolve_labels(cfg)  # class names and label format from the data, before a resume compares configs
    run_dir = Path(args.output) if args.output else Path("runs") / cfg.name
    if args.resume and args.overwrite:
        raise LorabudgetError("--resume continues a run and --overwrite replaces it: pass only one")
    if not is_main_launch_process():
        return cfg, run_dir  # the main process checks (and may already have made) the run directory
    if args.resume:
        _check_resumable(cfg, run_dir)
        check_can_create(RunDir(run_dir).checkpoint_dir)
    elif run_dir.exists() and not args.overwrite:
        raise LorabudgetError(
            f"run directory {run_dir} exists; pass --overwrite to replace it or --resume to continue it"
        )
    elif run_dir.exists() and not RunDir(run_dir).is_run():
        raise LorabudgetError(f"{run_dir} exists and is not a lorabudget run directory; choose another --output")
    else:
        check_can_create(run_dir)
    return cfg, run_dir


def _check_resumable(cfg, run_dir: Path) -> None:
    from lorabudget.rundir.layout import RunDir

    files = RunDir(run_dir)
    if not files.is_run():
        raise LorabudgetError(f"nothing to resume: {run_dir} is not a lorabudget run directory")
    if files.finished():
        raise LorabudgetError(f"{run_dir} has finished training; nothing to resume")
    saved, given = _flatten(files.saved_config_values()), _flatten(cfg.to_dict())
    changed = [k for k in sorted(set(saved) | set(given)) if saved.get(k) != given.get(k) and k != "training.threads"]
    if changed:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {given.get(k)!r}" for k in changed[:3])
        raise LorabudgetError(
            f"the config differs from the one {run_dir} was started with ({shown}); resume with the same "
            "config and --set values"
        )


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _train_into(run_dir: Path, args: argparse.Namespace, fit) -> None:
    """Run ``fit(folder)`` in the locked run directory (a sibling one for --overwrite)."""
    from lorabudget.errors import TrainingDiverged
    from lorabudget.rundir.lifecycle import run_directory

    with run_directory(run_dir, overwrite=args.overwrite, resume=args.resume) as folder:
        try:
            fit(folder)
        except TrainingDiverged as err:
            if folder != run_dir:
                err.kept = f"the new run was discarded and {run_dir} is left as it was"
            raise
        except Terminated as err:  # SIGTERM/SIGHUP: the lock is released on the way out
            if folder != run_dir:
                err.detail = f"the new run was discarded and {run_dir} is left as it was"
            elif err.detail:  # a checkpoint was saved
                same = " ..." if args.overrides or args.command == "distill" else ""  # the same --set, teachers
                err.detail += (
                    f"; continue with the same options: lorabudget {args.command} {args.config}{same} "
                    f"--output {run_dir} --resume"
                )
            raise


def cmd_train(args: argparse.Namespace) -> int:
    from lorabudget.training.loop import train

    cfg, run_dir = _new_run(args)
    _train_into(run_dir, args, lambda folder: train(cfg, folder, log=say, resume=args.resume))
    _report(run_dir, args)
    return 0


def _report(run_dir: Path, args: argparse.Namespace) -> None:
    from lorabudget.report.modelcard import write_model_card
    from lorabudget.rundir.layout import RunDir

    if not RunDir(run_dir).is_run():
        return  # an exported folder (predict on an ONNX export): nothing to report

    write_model_card(run_dir)
    if getattr(args, "no_report", False):
        return
    from lorabudget.report.run_report import write_report

    print(f"report: {write_report(run_dir)}")


def cmd_report(args: argparse.Namespace) -> int:
    from lorabudget.report.modelcard import write_model_card
    from lorabudget.report.run_report import write_report
    from lorabudget.rundir.layout import RunDir
    from lorabudget.rundir.lifecycle import check_not_in_use

    RunDir(args.run).read_config()  # a clear error for a folder that is not a run
    check_not_in_use(Path(args.run), "a report written now")

    write_model_card(Path(args.run))
    print(f"report: {write_report(Path(args.run))}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from lorabudget.report.compare import write_comparison
    from lorabudget.rundir.lifecycle import check_can_create

    for run in args.runs:
        if not Path(run).is_dir():
            raise LorabudgetError(f"run directory not found: {run}")
    check_can_create(Path(args.output) / "compare.md")
    path = write_comparison([Path(r) for r in args.runs], Path(args.output), names=args.names or ())
    print(path.read_text(encoding="utf-8"))
    print(f"written: {path}, {path.with_name('compare.csv')}")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from lorabudget.training.distill import distill

    cfg, run_dir = _new_run(args)
    _train_into(
        run_dir,
        args,
        lambda folder: distill(
            cfg,
            folder,
            teacher=args.teacher,
            unlabelled=args.unlabelled or (),
            log=say,
            resume=args.resume,
            transfer_fraction=args.transfer_fraction,
        ),
    )
    _report(run_dir, args)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from lorabudget.inference.runs import evaluate_run, load_run
    from lorabudget.metrics import format_metrics
    from lorabudget.rundir.layout import RunDir
    from lorabudget.rundir.lifecycle import check_can_create, check_not_in_use

    files = RunDir(args.run)
    files.read_config()
    check_not_in_use(files.path, "an evaluation written now")
    check_can_create(files.eval_path)  # before inference, not after
    run = load_run(Path(args.run), threads=args.threads, precision=args.precision)
    metrics = evaluate_run(run, args.data, trust_pickle=args.trust_pickle, columns=_columns(args, run))
    files.write_eval(metrics, args.data, "evaluate")
    print(format_metrics(metrics))
    print(f"written: {files.eval_path}")
    _report(run.run_dir, args)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from lorabudget.inference.runs import check_threads, load_run, predict_file, records_in_run
    from lorabudget.rundir.layout import RunDir, is_export_folder

    files = RunDir(args.run)
    if not is_export_folder(args.run):  # an ONNX export folder is no run directory
        files.read_config()  # a clear error for a folder that is not a run, before anything else
    check_threads(args.threads)
    output = Path(args.output) if args.output else files.predictions_path
    to_stdout = args.output == "-"
    if not to_stdout:
        _check_output_file(output, args.input)
    record = records_in_run(files.path, output, onnx=args.engine == "onnx")
    if args.engine == "onnx" and files.is_run():
        from lorabudget.export.formats import ensure_onnx_export

        ensure_onnx_export(files.path)  # RUN/onnx/, made once and refreshed when the weights change
    run = load_run(Path(args.run), threads=args.threads, precision=args.precision, engine=args.engine)
    summary = predict_file(
        run,
        args.input,
        output,
        probabilities=args.probabilities,
        trust_pickle=args.trust_pickle,
        columns=_columns(args, run),
        label_format=args.label_format,
        record=record,
    )
    counts = ", ".join(f"{k} {v:,}" for k, v in summary["counts"].items())
    where = "stdout" if to_stdout else output
    print(
        f"wrote {summary['rows']:,} predictions to {where} ({counts}; {summary['samples_per_s']:.1f} rows/s)",
        file=sys.stderr if to_stdout else sys.stdout,  # stdout carries the CSV alone
    )
    if record:
        with contextlib.redirect_stdout(sys.stderr) if to_stdout else contextlib.nullcontext():
            _report(run.run_dir, args)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from lorabudget.export.formats import export_run
    from lorabudget.rundir.layout import RunDir
    from lorabudget.rundir.lifecycle import check_can_create, check_not_in_use

    files = RunDir(args.run)
    if files.is_run() and not files.finished() and not files.weight_files():
        raise LorabudgetError(
            f"{args.run} has no trained weights yet (training has not finished): continue it with "
            f"`lorabudget train CONFIG --output {args.run} --resume`, then export it"
        )
    if Path(args.output).absolute().is_relative_to(Path(args.run).absolute()):
        check_not_in_use(Path(args.run), "an export written into it now")
    check_can_create(Path(args.output))  # a path under a file, a read-only disk: before any work
    path = export_run(Path(args.run), Path(args.output), args.format, quantize=args.quantize, overwrite=args.overwrite)
    print(f"exported {args.run} as {args.format} to {path} (model card: {RunDir(path).model_card_path})")
    return 0


def _check_output_file(output: Path, input_source: str) -> None:
    """Refuse an output that is a folder, is the input, or cannot be written: before any inference runs."""
    from lorabudget.rundir.lifecycle import check_can_create

    if output.is_dir():
        raise LorabudgetError(f"--output {output} is a folder; name the CSV file to write")
    if Path(input_source).exists() and output.resolve() == Path(input_source).resolve():
        raise LorabudgetError(f"--output {output} is the input file; choose another file so the input is kept")
    if writes_through(output):  # a device or FIFO: written in place, so only it must be writable
        if not os.access(output, os.W_OK):
            raise LorabudgetError(f"cannot write {output}: permission denied")
        return
    check_can_create(output)


def _valid_text(text: str) -> tuple[str, bool]:
    """``text`` with invalid UTF-8 (kept by Python as lone surrogates, which no tokenizer encodes) replaced
    by U+FFFD, and whether anything was replaced."""
    try:
        text.encode("utf-8")
        return text, False
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape" if _escaped_only(text) else "replace").decode(
            "utf-8", "replace"
        ), True


def _escaped_only(text: str) -> bool:
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in text)


def cmd_classify(args: argparse.Namespace) -> int:
    from lorabudget.console import warn
    from lorabudget.inference.runs import check_threads, classify_texts, load_run

    check_threads(args.threads)
    given = list(args.texts)
    if given == ["-"]:
        raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8", "replace")
        lines = raw.splitlines()
        given = [line.decode("utf-8", "surrogateescape") for line in lines if line.strip()]
        if len(lines) > len(given):
            warn(f"skipped {len(lines) - len(given):,} blank line(s) of stdin")
    checked = [_valid_text(t) for t in given]
    texts = [text for text, _ in checked]
    replaced = sum(changed for _, changed in checked)
    if replaced:
        warn(f"{replaced:,} text(s) held invalid UTF-8: those bytes were replaced with U+FFFD")
    pairs = None
    if not texts or any(not t.strip() for t in texts):
        raise LorabudgetError("classify needs one or more non-empty texts")
    run = load_run(Path(args.run), threads=args.threads, precision=args.precision)
    if run.is_pair_run:  # a pair is FIRST<TAB>SECOND in a text argument or stdin line
        split = [t.split("\t", 1) if "\t" in t else [t, ""] for t in texts]
        if any(not first.strip() or not second.strip() for first, second in split):
            raise LorabudgetError(
                "this run classifies sentence pairs: give each as FIRST<TAB>SECOND (arguments or stdin lines)"
            )
        texts, pairs = [first for first, _ in split], [second for _, second in split]
    for text, (label, prob, _) in zip(texts, classify_texts(run, texts, pairs)):
        short = text if len(text) <= 70 else text[:67] + "..."
        print(f"{label}\t{prob:.3f}\t{short}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from lorabudget.serve.app import ServeSettings, load_for_serving, serve

    if args.max_batch < 1 or args.max_wait_ms < 0 or not 0 <= args.port <= 65535:
        raise LorabudgetError("--max-batch must be at least 1, --max-wait-ms not negative, --port within 0-65535")
    settings = ServeSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
    run = load_for_serving(Path(args.run), args.engine, args.precision, args.threads)  # integrity checked here
    serve(run, args.host, args.port, settings)
    return 0


def load_search_config(
    config: str, overrides: list[str], trial_overrides: list[str], space_file: Optional[str]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], str]:
    """(trial base values, best.yaml base values, raw space, config name) from a config and a space file.

    The space comes from ``--space`` (a file holding a ``search:`` section or the space itself), else
    from the config's own ``search:`` section, else the built-in default.
    """
    path = resolve_config_path(config)
    values = load_yaml(path)
    space = values.pop("search", None)
    values.setdefault("name", Path(config).stem)
    if space_file:
        raw = load_yaml(space_file)
        space = raw.get("search", raw) if isinstance(raw, dict) else raw
    if space is None:
        space = default_space_raw()
    best_values = apply_overrides(copy.deepcopy(values), list(overrides))
    best_cfg = from_dict(copy.deepcopy(best_values))  # bad keys fail here, before any trial
    if best_cfg.model.labels is None or best_cfg.model.label_format is None:
        from lorabudget.data.load import resolve_labels

        resolve_labels(best_cfg)  # every trial and best.yaml get the classes read from the data once
        model_values = best_values.setdefault("model", {})
        model_values["labels"], model_values["label_format"] = best_cfg.model.labels, best_cfg.model.label_format
    trial_values = apply_overrides(copy.deepcopy(best_values), list(trial_overrides))
    trial_cfg = from_dict(copy.deepcopy(trial_values))
    if trial_cfg.data.train_on_validation:
        raise LorabudgetError(
            "a search chooses by validation rows its trials do not train on: drop data.train_on_validation "
            "(set it when retraining best.yaml on every labelled row)"
        )
    return trial_cfg.to_dict(), best_cfg.to_dict(), space, best_cfg.name


def settings_from_args(args) -> SearchSettings:
    overrides = list(args.overrides) + _column_overrides(args)
    if args.data:
        overrides.append(f"data.train={args.data}")
    if args.budget is not None:
        overrides.append(f"budget.max_trainable_params={args.budget}")
    base, best_base, space, cfg_name = load_search_config(args.config, overrides, args.trial_overrides, args.space)
    name = args.study or f"{cfg_name}-search"
    output = Path(args.output) if args.output else Path("runs") / name
    storage = args.storage
    if storage and storage.startswith("journal:"):
        storage = "journal:" + str(Path(storage[len("journal:") :]).expanduser().resolve())
    return SearchSettings(
        name=name,
        output=output,
        base=base,
        best_base=best_base,
        space=space,
        trials=args.trials,
        timeout=args.timeout,
        storage=storage,
        workers=args.workers,
        metric=args.metric,
        multi_objective=args.multi_objective,
        pruner=args.pruner,
        seed=args.seed,
        max_rejections=args.max_rejections,
        trial_overrides=list(args.trial_overrides),
        warm_start=not args.no_warm_start,
    )


def require_extra(module: str, command: str, extra: str) -> None:
    """One line naming the extra to install when an optional dependency is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise LorabudgetError(f"{command} needs {module}: pip install 'lorabudget[{extra}]'")


def cmd_presets(args: argparse.Namespace) -> int:
    from lorabudget.report.presets import format_preset_table, preset_rows

    if args.action == "show":
        if not args.name:
            raise LorabudgetError("presets show needs a preset name")
        print(resolve_config_path(args.name).read_text(encoding="utf-8"), end="")
        return 0
    print(format_preset_table(preset_rows()))
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from lorabudget.data.cache import cache_folders, clear_caches, human_size

    held = clear_caches() if args.action == "clear" else cache_folders()
    verb = "removed" if args.action == "clear" else "holds"
    for folder in held:
        print(f"{folder.path} {verb} {folder.files:,} files, {human_size(folder.bytes)}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    require_extra("optuna", "lorabudget search", "search")
    from lorabudget.search.worker import run_search

    run_search(settings_from_args(args))
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    from lorabudget.envinfo import report

    print(report(probe=not args.no_probe), end="")
    return 0


def _add_search_parser(sub) -> None:
    p = sub.add_parser("search", help="search method, placement, ranks and settings under the budget (Optuna)")
    _add_config_args(p)
    p.add_argument(
        "--trials", type=int, required=True, help="trained trials in total (complete or pruned), all workers together"
    )
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument(
        "--budget", type=int, help="trainable-parameter budget (shortcut for --set budget.max_trainable_params=N)"
    )
    p.add_argument(
        "--space",
        help="YAML search space (a `search:` section or the space itself; default: the "
        "config's `search:` section, else the built-in space)",
    )
    p.add_argument(
        "--storage",
        help="postgresql://USER@HOST/DB, sqlite:///FILE or journal:FILE (default: SQLite in the search directory)",
    )
    p.add_argument(
        "--study",
        help="study name (default: <config name>-search); workers with the same --storage and --study join one search",
    )
    p.add_argument("--workers", type=int, default=1, help="local worker processes sharing the storage (default 1)")
    p.add_argument("--data", help="training data file (shortcut for --set data.train=FILE)")
    _add_column_args(p)
    p.add_argument("--output", help="search directory (default: runs/<study name>)")
    p.add_argument(
        "--trial-set",
        dest="trial_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for the search's trials only, left out of best.yaml (e.g. shorter training)",
    )
    p.add_argument("--metric", choices=["accuracy", "macro_f1"], default="accuracy", help="validation objective")
    p.add_argument(
        "--multi-objective",
        action="store_true",
        help="NSGA-II over validation metric and trainable parameters: a Pareto front",
    )
    p.add_argument(
        "--pruner",
        choices=["median", "hyperband", "none"],
        default="median",
        help="stops hopeless trials at their validation evaluations (default median)",
    )
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    p.add_argument(
        "--no-warm-start",
        action="store_true",
        help="do not start a new study with the base config (scaled down to the budget) and the "
        "measured presets for its model",
    )
    p.add_argument(
        "--max-rejections",
        type=int,
        default=100,
        help="give up after this many over-budget samples in a row (default 100)",
    )
    p.set_defaults(func=cmd_search)


def _add_run_dir_args(p: argparse.ArgumentParser, overwrite_help: str) -> None:
    p.add_argument("--overwrite", action="store_true", help=overwrite_help)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in --output from its last checkpoint (same config and --set values)",
    )
    p.add_argument("--trust-pickle", action="store_true", help=TRUST_PICKLE_HELP)
    p.add_argument("--no-report", action="store_true", help="do not write report.md and figures at the end")


TRUST_PICKLE_HELP = "allow .pkl/.pickle data files: unpickling runs code from the file, so only for files you trust"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lorabudget",
        description="Fine-tune transformer encoders for text classification with PEFT methods under a hard "
        "trainable-parameter budget.",
    )
    parser.add_argument("--version", action="version", version=f"lorabudget {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("plan", help="count trainable parameters exactly (no weights loaded) and check the budget")
    _add_config_args(p)
    p.add_argument("--data", help="training data whose label column gives the class count (when model.labels is null)")
    _add_column_args(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("train", help="train a config into a run directory")
    _add_config_args(p)
    p.add_argument("--data", help="training data file (shortcut for --set data.train=FILE)")
    _add_column_args(p)
    p.add_argument("--output", help="run directory (default: runs/<config name>)")
    _add_run_dir_args(p, "replace an existing run directory once the new run has finished")
    p.set_defaults(func=cmd_train)

    _add_search_parser(sub)

    p = sub.add_parser("distill", help="train a student config with knowledge distillation from a teacher")
    _add_config_args(p)
    p.add_argument(
        "--teacher",
        action="append",
        metavar="RUN|CONFIG",
        help="teacher run directory, or a config/preset trained first (default: distill.teacher); "
        "repeat for an ensemble whose class probabilities are averaged",
    )
    p.add_argument(
        "--transfer-from-train-fraction",
        dest="transfer_fraction",
        type=float,
        metavar="F",
        help="use this share of the labelled training rows without their labels, taught by the "
        "teacher's soft labels only (default: distill.transfer_fraction)",
    )
    p.add_argument(
        "--unlabelled",
        action="append",
        metavar="FILE",
        help="extra texts (no labels) taught by the teacher's soft labels only (repeatable)",
    )
    p.add_argument("--data", help="training data file (shortcut for --set data.train=FILE)")
    _add_column_args(p)
    p.add_argument("--output", help="student run directory (default: runs/<config name>)")
    _add_run_dir_args(p, "replace an existing student run directory once the new run has finished")
    p.set_defaults(func=cmd_distill)

    def run_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help_text)
        q.add_argument("run", help="run directory written by `lorabudget train`")
        q.add_argument("--threads", type=int, help="CPU threads for torch")
        q.add_argument(
            "--precision",
            choices=["auto", "fp32", "bf16"],
            default="auto",
            help="forward pass precision: auto = bf16 on a GPU that supports it or on a CPU where "
            "bf16 measured clearly faster than fp32 (a cached probe), else fp32",
        )
        return q

    p = run_parser("evaluate", "accuracy, macro P/R/F1, per-class table and confusion matrix on labelled data")
    p.add_argument("--data", required=True, help="labelled data file (or ag_news:test, hub:REPO[:CONFIG]:SPLIT)")
    _add_column_args(p)
    p.add_argument("--trust-pickle", action="store_true", help=TRUST_PICKLE_HELP)
    p.add_argument("--no-report", action="store_true", help="do not rewrite report.md and figures")
    p.set_defaults(func=cmd_evaluate)

    p = run_parser("predict", "write ID,Label predictions for an unlabelled file (RUN may be an ONNX export)")
    p.add_argument(
        "--engine",
        choices=["torch", "onnx"],
        default="torch",
        help="torch (default), or onnx: ONNX Runtime on the run exported to RUN/onnx (an ONNX export "
        "folder always runs on ONNX Runtime)",
    )
    p.add_argument("--input", required=True, help="texts to label: CSV, JSON Lines, Parquet or pickle")
    p.add_argument("--output", help="CSV to write (default: RUN/predictions.csv)")
    p.add_argument("--probabilities", action="store_true", help="add one probability column per class")
    p.add_argument(
        "--label-format",
        choices=["id", "name"],
        help="write labels as class ids or names (default: as the training data wrote them)",
    )
    _add_column_args(p)
    p.add_argument("--trust-pickle", action="store_true", help=TRUST_PICKLE_HELP)
    p.add_argument("--no-report", action="store_true", help="do not rewrite report.md and figures")
    p.set_defaults(func=cmd_predict)

    p = run_parser("classify", "print class and probability for texts given on the command line")
    p.add_argument(
        "texts",
        nargs="+",
        help="texts to classify ('-' reads one text per line from stdin); for a sentence-pair run "
        "each is FIRST<TAB>SECOND (in bash: $'first\\tsecond')",
    )
    p.set_defaults(func=cmd_classify)

    p = run_parser("serve", "serve a run over HTTP: JSON API with dynamic batching and a page to try it")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--engine", choices=["torch", "onnx"], default="torch", help="torch (default) or onnx (RUN/onnx)")
    p.add_argument("--max-batch", type=int, default=32, help="texts per forward pass, from all requests (default 32)")
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=0.0,
        help="how long a text may wait for others to fill its batch (default 0: a batch is what queued up "
        "while the model ran the previous one)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "export", help="export a run for transformers (hf), PEFT (peft) or ONNX Runtime (onnx), with a model card"
    )
    p.add_argument("run", help="run directory written by `lorabudget train`")
    p.add_argument(
        "--format",
        required=True,
        choices=["hf", "peft", "onnx"],
        help="hf: adapters merged, loads with plain transformers; peft: adapter + head for "
        "PeftModel.from_pretrained; onnx: merged model for ONNX Runtime",
    )
    p.add_argument("--output", required=True, help="folder to write")
    p.add_argument(
        "--quantize", choices=["int8"], help="onnx only: also write model_int8.onnx (dynamic int8 weights) and use it"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("presets", help="list the presets (name, model, method, trainable count, budget, purpose)")
    p.add_argument("action", nargs="?", choices=["list", "show"], default="list", help="list (default) or show NAME")
    p.add_argument("name", nargs="?", help="the preset to print (with show)")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("cache", help="lorabudget's caches (tokens, teacher logits, unpacked models): info or clear")
    p.add_argument("action", choices=["info", "clear"])
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("report", help="write figures and report.md for a run directory")
    p.add_argument("run", help="run directory")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="results table and accuracy-vs-parameters plot across runs")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument(
        "--output",
        default="runs/compare",
        help="folder for compare.md, compare.csv and the plot (default runs/compare)",
    )
    p.add_argument(
        "--name",
        dest="names",
        action="append",
        metavar="NAME",
        help="display name of the next run, in the order the runs are given (repeatable; "
        "default: the run directory's name)",
    )
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("env", help="versions, device, CPU flags, the bf16 probe and the caches, for bug reports")
    p.add_argument("--no-probe", action="store_true", help="do not time fp32 against bf16 (about half a second)")
    p.set_defaults(func=cmd_env)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        with handle_termination():  # SIGTERM/SIGHUP raise Terminated: cleanups run, locks are released
            return args.func(args)
    except LorabudgetError as err:
        if args.debug:
            raise
        print(f"lorabudget {args.command}: error: {err}", file=sys.stderr)
        return 3 if isinstance(err, BudgetExceededError) else getattr(err, "exit_code", 2)
    except KeyboardInterrupt:
        print(f"lorabudget {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated as err:
        print(f"lorabudget {args.command}: {err}", file=sys.stderr)
        return err.exit_code
    except Exception as err:  # noqa: BLE001 - only environment errors (full disk, read-only ...) are reworded
        message = environment_error(err)
        if message is None or args.debug:
            raise
        print(f"lorabudget {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
