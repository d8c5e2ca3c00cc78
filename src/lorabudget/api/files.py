"""Commands that write files from a run: predictions for a whole input file, and exports.

Every output is checked before any inference runs: a folder, the input itself, a path that cannot be
written, or one of a run's own records and weights is refused in one line.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from lorabudget.console import say
from lorabudget.errors import LorabudgetError
from lorabudget.io import writes_through


def check_output_file(output: Path, input_source: str) -> None:
    """Refuse an output that is a folder, is the input, or cannot be written: before any inference runs."""
    from lorabudget.rundir.lifecycle import check_can_create, check_not_run_file

    if output.is_dir():
        raise LorabudgetError(f"--output {output} is a folder; name the CSV file to write")
    check_not_run_file(output, "--output")
    if Path(input_source).exists() and output.resolve() == Path(input_source).resolve():
        raise LorabudgetError(f"--output {output} is the input file; choose another file so the input is kept")
    if writes_through(output):  # a device or FIFO: written in place, so only it must be writable
        if not os.access(output, os.W_OK):
            raise LorabudgetError(f"cannot write {output}: permission denied")
        return
    check_can_create(output)


def predict_to_file(
    run,
    input_source: str,
    output: Optional[str] = None,
    *,
    probabilities: bool = False,
    label_format: Optional[str] = None,
    columns: Optional[dict[str, Optional[str]]] = None,
    trust_pickle: bool = False,
    report: bool = True,
    threshold: Optional[float] = None,
) -> dict[str, Any]:
    """``ID,Label`` predictions for every row of ``input_source`` into the CSV ``output`` (default
    ``RUN/predictions.csv``; ``-`` writes to stdout); returns the summary (rows, counts, speed)."""
    from lorabudget.inference.multilabel import check_threshold
    from lorabudget.inference.runs import check_threads, predict_file, records_in_run
    from lorabudget.rundir.layout import is_export_folder

    check_threshold(threshold)
    files = run.files
    if not is_export_folder(run.path):  # an ONNX export folder is no run directory
        files.read_config()  # a clear error for a folder that is not a run, before anything else
        files.check_writable_layout()
    check_threads(run.threads)
    target = Path(output) if output else files.predictions_path
    to_stdout = output == "-"
    if not to_stdout:
        check_output_file(target, input_source)
    # Only a CSV written into the run records there; one written elsewhere leaves the run as it was.
    record = records_in_run(files.path, "-" if to_stdout else target)
    if run._loaded is None:
        run.load(export_into_run=record)  # the onnx engine's export too leaves a run it records nothing in
    columns = columns or {}
    summary = predict_file(
        run.loaded,
        input_source,
        target,
        probabilities=probabilities,
        trust_pickle=trust_pickle,
        columns=run.loaded.columns(columns.get("text"), columns.get("text_pair"), columns.get("label")),
        label_format=label_format,
        record=record,
        threshold=threshold,
    )
    counts = ", ".join(f"{k} {v:,}" for k, v in summary["counts"].items())
    where = "stdout" if to_stdout else target
    print(
        f"wrote {summary['rows']:,} predictions to {where} ({counts}; {summary['samples_per_s']:.1f} rows/s)",
        file=sys.stderr if to_stdout else sys.stdout,  # stdout carries the CSV alone
    )
    if record:
        with contextlib.redirect_stdout(sys.stderr) if to_stdout else contextlib.nullcontext():
            write_run_report(run.path, report, log=print)
    return summary


def export_run_checked(
    run_dir: Path, output: Path, fmt: str, quantize: Optional[str] = None, overwrite: bool = False
) -> Path:
    """Export a finished run as ``hf``, ``peft`` or ``onnx`` into ``output``; checks come first."""
    from lorabudget.export.formats import export_run
    from lorabudget.rundir.layout import RunDir
    from lorabudget.rundir.lifecycle import check_can_create, check_not_in_use

    files = RunDir(run_dir)
    if files.is_run() and not files.finished() and not files.weight_files():
        raise LorabudgetError(
            f"{run_dir} has no trained weights yet (training has not finished): continue it with "
            f"`lorabudget train CONFIG --output {run_dir} --resume`, then export it"
        )
    if Path(output).absolute().is_relative_to(Path(run_dir).absolute()):
        check_not_in_use(Path(run_dir), "an export written into it now")
    check_can_create(Path(output))  # a path under a file, a read-only disk: before any work
    return export_run(Path(run_dir), Path(output), fmt, quantize=quantize, overwrite=overwrite)


def write_run_report(run_dir: Path, report: bool = True, log: Callable[[str], None] = say) -> None:
    """The model card always, ``report.md`` and figures unless ``report`` is false."""
    from lorabudget.report.modelcard import write_model_card
    from lorabudget.report.run_report import write_report
    from lorabudget.rundir.layout import RunDir

    if not RunDir(run_dir).is_run():
        return  # an exported folder (predict on an ONNX export): nothing to report
    write_model_card(run_dir)
    if report:
        log(f"report: {write_report(run_dir)}")
