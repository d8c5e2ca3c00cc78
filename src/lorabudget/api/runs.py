"""A run directory from Python: :class:`Run` (evaluate, predict, report, export) and :class:`Evaluation`."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from lorabudget.api.html_parts import run_html
from lorabudget.api.sources import as_source
from lorabudget.errors import LorabudgetError
from lorabudget.inference.predictions import Predictions, text_list
from lorabudget.runconfig import RunConfig
from lorabudget.rundir.layout import RunDir, is_export_folder


@dataclass
class Evaluation:
    """Metrics of a run on labelled rows: ``accuracy`` with its Wilson 95% ``interval``, ``macro_f1``,
    ``per_class`` and ``confusion`` (rows true, columns predicted) as DataFrames, ``metrics`` the whole
    record (as ``eval.json`` holds it) and ``data`` what was evaluated."""

    metrics: dict[str, Any]
    data: str

    @property
    def accuracy(self) -> float:
        return float(self.metrics["accuracy"])

    @property
    def interval(self) -> tuple[float, float]:
        low, high = self.metrics["accuracy_ci95"]
        return float(low), float(high)

    @property
    def macro_f1(self) -> float:
        return float(self.metrics["macro_f1"])

    @property
    def rows(self) -> int:
        return int(self.metrics["rows"])

    @property
    def micro_f1(self) -> Optional[float]:
        """Multi-label runs: micro F1 (None for a single-label run)."""
        value = self.metrics.get("micro_f1")
        return None if value is None else float(value)

    @property
    def per_class(self):
        import pandas as pd

        table = self.metrics["per_class"]
        if isinstance(table, dict):  # multi-label: {class: {precision, recall, f1, support, threshold}}
            return pd.DataFrame.from_dict(table, orient="index").rename_axis("class")
        return pd.DataFrame(table).set_index("class")

    @property
    def confusion(self):
        import pandas as pd

        if "confusion_matrix" not in self.metrics:
            raise LorabudgetError("a multi-label evaluation has no confusion matrix; see per_class")
        names = self.metrics["class_names"]
        frame = pd.DataFrame(self.metrics["confusion_matrix"], index=names, columns=names)
        frame.index.name, frame.columns.name = "true", "predicted"
        return frame

    def __str__(self) -> str:
        from lorabudget.metrics import format_metrics

        return format_metrics(self.metrics)

    def __repr__(self) -> str:
        low, high = self.interval
        if self.micro_f1 is not None:
            return (
                f"Evaluation({self.data}: micro F1 {self.micro_f1:.4f}, macro F1 {self.macro_f1:.4f}, "
                f"subset accuracy {self.accuracy:.4f} [{low:.4f}, {high:.4f}] on {self.rows:,} rows)"
            )
        return f"Evaluation({self.data}: accuracy {self.accuracy:.4f} [{low:.4f}, {high:.4f}] on {self.rows:,} rows)"

    def _repr_html_(self) -> str:
        low, high = self.interval
        if self.micro_f1 is not None:
            head = (
                f"<p><b>{html.escape(self.data)}</b>: micro F1 <b>{self.micro_f1:.4f}</b>, macro F1 "
                f"{self.macro_f1:.4f}, subset accuracy {self.accuracy:.2%} (95% interval {low:.2%} to {high:.2%}, "
                f"{self.rows:,} rows)</p>"
            )
        else:
            head = (
                f"<p><b>{html.escape(self.data)}</b>: accuracy <b>{self.accuracy:.2%}</b> "
                f"(95% interval {low:.2%} to {high:.2%}, {self.rows:,} rows), macro F1 {self.macro_f1:.4f}</p>"
            )
        tables = self.per_class.to_html(float_format=lambda v: f"{v:.3f}")
        tables += self.confusion.to_html() if "confusion_matrix" in self.metrics else ""
        return head + tables


@dataclass
class Run:
    """A run directory: what ``lorabudget train`` (or :func:`lorabudget.train`) wrote.

    The model is loaded on first use (``predict``, ``logits``, ``evaluate``) with the ``engine``
    (``torch`` or ``onnx``), ``threads`` and ``precision`` (``fp32``, ``bf16``, ``auto``) given here.
    """

    path: Path
    engine: str = "torch"
    threads: Optional[int] = None
    precision: str = "fp32"
    _loaded: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    @property
    def files(self) -> RunDir:
        return RunDir(self.path)

    @property
    def config(self) -> RunConfig:
        """The run's resolved config (``config.yaml``)."""
        return self.loaded.cfg if self._loaded is not None else self.files.read_config()

    cfg = config

    @property
    def summary(self) -> dict[str, Any]:
        """``summary.json``: what training recorded (accuracy, parameters, time, data ...)."""
        return self.files.read_summary()

    @property
    def name(self) -> str:
        """The run's folder name, as reports and compare show it."""
        return self.files.display_name

    def __getattr__(self, name: str) -> Any:
        # What a loaded run offers beyond these methods (run_dir, model, tokenizer, columns, is_pair_run ...)
        # stays reachable, as it was when load_run returned the loaded run itself.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.loaded, name)

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names)

    @property
    def loaded(self):
        """The model and tokenizer, loaded (and checked) once."""
        return self._loaded if self._loaded is not None else self.load()

    def load(self, export_into_run: bool = True):
        """Load (and check) the model now; the first use does so itself. With the ``onnx`` engine a run is
        exported to ``RUN/onnx/`` when that export is missing or stale, or with ``export_into_run=False``
        (the run is left exactly as it is) into a temporary folder used for this load only."""
        from lorabudget.export.formats import load_exported

        self._loaded = load_exported(self.path, self.threads, self.precision, self.engine, export_into_run)
        return self._loaded

    def logits(self, texts: Any, pairs: Any = None, batch_size: Optional[int] = None):
        """Raw logits [n, classes] for ``texts`` (one string is one text)."""
        return self.loaded.logits(text_list(texts), batch_size, pairs=pairs)

    def predict(
        self, texts: Any, pairs: Any = None, batch_size: Optional[int] = None, threshold: Optional[float] = None
    ) -> Predictions:
        """Predictions for one string (one text), a list, tuple or pandas Series of strings, or a
        DataFrame (its text columns as the run was trained on them: ``text``, or the configured ones).
        A multi-label run's ``labels`` are lists of class names; ``threshold`` (in (0, 1)) then decides
        every class instead of the per-class thresholds chosen on the validation rows."""
        import pandas as pd

        from lorabudget.inference.multilabel import check_threshold

        check_threshold(threshold)

        if isinstance(texts, pd.DataFrame):
            from lorabudget.data.load import load_unlabelled
            from lorabudget.data.memory import forget_frame

            source = as_source(texts, "texts").source
            try:
                data = load_unlabelled(source, columns=self.loaded.columns())
            finally:
                forget_frame(source)
            texts, pairs = data.texts, data.pairs
        return self.loaded.predict(text_list(texts), batch_size, pairs=pairs, threshold=threshold)

    def evaluate(
        self,
        data: Any,
        *,
        text_column: Optional[str] = None,
        text_pair_column: Optional[str] = None,
        label_column: Optional[str] = None,
        trust_pickle: bool = False,
        record: bool = True,
        report: bool = True,
        threshold: Optional[float] = None,
    ) -> Evaluation:
        """Metrics on labelled ``data`` (a path, DataFrame, ``datasets.Dataset`` or list of tuples).

        ``record``: keep the evaluation in the run (``eval.json``; compare and the report read it) and,
        with ``report``, rewrite ``report.md`` and the model card. A multi-label run decides each class
        by its ``thresholds.json``, or by ``threshold`` (in (0, 1)) for every class."""
        from lorabudget.inference.multilabel import check_threshold
        from lorabudget.inference.runs import evaluate_run

        check_threshold(threshold)
        from lorabudget.rundir.lifecycle import check_can_create, check_not_in_use

        source = as_source(data)
        files = self.files
        files.read_config()  # a clear error for a folder that is not a run
        if record:
            files.check_writable_layout()  # a file where a folder belongs: said before any work
            check_not_in_use(files.path, "an evaluation written now")
            check_can_create(files.eval_path)  # before inference, not after
        columns = self.loaded.columns(
            text_column or source.text_column,
            text_pair_column or source.text_pair_column,
            label_column or source.label_column,
        )
        from lorabudget.data.memory import forget_frame, is_memory_source, registered_rows

        name = source.source
        if is_memory_source(name):  # named by its rows' digest: two DataFrames of one size keep a record each
            name = f"DataFrame {name.split(':', 1)[1]} ({registered_rows(name):,} rows)"
        try:
            metrics = evaluate_run(
                self.loaded, source.source, trust_pickle=trust_pickle, columns=columns, threshold=threshold
            )
        finally:
            forget_frame(source.source)
        if record:
            files.write_eval(metrics, name, "evaluate")
            if report:
                self.report()
        return Evaluation(metrics, name)

    def report(self) -> Path:
        """Write the figures, ``report.md`` and the model card (``README.md``); return the report's path."""
        from lorabudget.report.modelcard import write_model_card
        from lorabudget.report.run_report import write_report
        from lorabudget.rundir.lifecycle import check_not_in_use

        if not self.files.is_run():
            raise LorabudgetError(f"{self.path} is not a lorabudget run directory (an export has no report)")
        self.files.check_writable_layout()
        check_not_in_use(self.path, "a report written now")
        write_model_card(self.path)
        return write_report(self.path)

    def export(
        self, format: str, output: Union[str, Path], *, quantize: Optional[str] = None, overwrite: bool = False
    ) -> Path:
        """Export as ``hf`` (adapters merged, plain transformers), ``peft`` or ``onnx`` into ``output``."""
        from lorabudget.api.files import export_run_checked

        return export_run_checked(self.path, Path(output), format, quantize=quantize, overwrite=overwrite)

    def figures(self) -> list[Path]:
        """The report's figures (PNG files), written by :meth:`report`."""
        folder = self.files.figures_dir
        return sorted(folder.glob("*.png")) if folder.is_dir() else []

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def _repr_html_(self) -> str:
        if is_export_folder(self.path):
            return f"<p>ONNX export <code>{html.escape(str(self.path))}</code></p>"
        return run_html(self)


def load_run(
    path: Union[str, Path], engine: str = "torch", threads: Optional[int] = None, precision: str = "fp32"
) -> Run:
    """Open a run directory (or an ONNX export folder) and load its model for prediction, checking its
    weights first.

    ``engine``: ``torch`` (adapters merged into the weights) or ``onnx`` (ONNX Runtime; a run is exported
    to ``RUN/onnx/`` once). ``precision``: ``fp32``, ``bf16`` or ``auto`` (torch only).

    >>> run = load_run("runs/minilm-cpu")                      # doctest: +SKIP
    >>> run.predict("Stocks rallied after the earnings report.").labels  # doctest: +SKIP
    ['Business']
    """
    run = Run(Path(path), engine=engine, threads=threads, precision=precision)
    run.loaded  # noqa: B018 - load and check now, so a broken run fails here
    return run
