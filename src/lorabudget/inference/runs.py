"""Using a finished run directory: reload the model, evaluate, predict, classify.

A run directory holds ``config.yaml``, ``tokenizer/`` and ``adapter/`` (adapter weights and the
trained head). With the base model's weights available (hub cache or local folder), that is all a
fresh process needs: no training data.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from lorabudget.config import RunConfig
from lorabudget.console import warn
from lorabudget.data.batching import tokenize
from lorabudget.data.load import Columns, load_labelled, load_unlabelled
from lorabudget.errors import LorabudgetError
from lorabudget.inference.batched import predict_logits, predict_logits_onnx, resolve_precision
from lorabudget.inference.multilabel import label_cell, multilabel_predictions, run_thresholds
from lorabudget.inference.onnx import open_onnx_export
from lorabudget.inference.predictions import Predictions, text_list
from lorabudget.io import atomic_path
from lorabudget.methods.registry import can_merge
from lorabudget.metrics import classification_metrics, softmax
from lorabudget.model.build import load_tokenizer, merge_adapters
from lorabudget.rundir.layout import RunDir, is_export_folder
from lorabudget.rundir.lifecycle import check_can_create, check_not_in_use
from lorabudget.rundir.rows import overlap, overlap_text, rows_digest, source_name, text_digests
from lorabudget.rundir.weights import load_trained_model


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: RunConfig
    model: Any  # torch: the model with adapters merged, eval mode; onnx: an onnxruntime.InferenceSession
    tokenizer: Any
    precision: str = "fp32"  # "fp32" or "bf16" (autocast) for the forward pass
    engine: str = "torch"  # "torch" or "onnx"

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    @property
    def is_pair_run(self) -> bool:
        """Whether the run was trained on sentence pairs (``data.text_pair_column``)."""
        return bool(self.cfg.data.text_pair_column)

    @property
    def multi_label(self) -> bool:
        return self.cfg.model.problem_type == "multi_label"

    def columns(self, text: Optional[str] = None, text_pair: Optional[str] = None, label: Optional[str] = None):
        """The run's data columns, each replaced by the one given (and how it reads multi-label rows)."""
        d = self.cfg.data
        given = {"text": text or d.text_column, "text_pair": text_pair or d.text_pair_column}
        return dataclasses.replace(Columns.of(self.cfg), label=label or d.label_column, **given)

    def thresholds(self, override: Optional[float] = None) -> Optional[np.ndarray]:
        """A multi-label run's per-class decision thresholds (``override``: one for every class); None
        for a single-label run, which refuses an ``override``."""
        if not self.multi_label:
            if override is not None:
                raise LorabudgetError(f"--threshold applies to multi-label runs; {self.run_dir} is single-label")
            return None
        return run_thresholds(self.run_dir, self.cfg.class_names, override)

    def logits(
        self,
        texts: Union[str, Sequence[str]],
        batch_size: Optional[int] = None,
        progress: Optional[str] = None,
        pairs: Union[None, str, Sequence[str]] = None,
    ) -> np.ndarray:
        """Logits [len(texts), classes] in input order (one string is one text); ``pairs``: the second
        texts of sentence pairs."""
        texts = text_list(texts)
        pairs = None if pairs is None else text_list(pairs, "pairs")
        if pairs is not None and len(pairs) != len(texts):
            raise LorabudgetError(f"{len(texts)} texts but {len(pairs)} second texts (pairs): give one per text")
        if self.is_pair_run and pairs is None:
            raise LorabudgetError(
                f"{self.run_dir} was trained on sentence pairs ({self.cfg.data.text_column or 'text'}, "
                f"{self.cfg.data.text_pair_column}): give the second text of each row too"
            )
        if not texts:
            return np.zeros((0, len(self.cfg.class_names)), dtype=np.float32)
        # No token cache here: each predict/classify/evaluate call has its own texts, so a cache file per
        # call would only pile up (tokenizing is cheap next to the forward pass); training keeps its cache.
        d = self.cfg.data
        tokens = tokenize(
            self.tokenizer,
            list(texts),
            self.cfg.model.max_length,
            cache_dir=None,
            pairs=None if pairs is None else list(pairs),
            long_text=d.long_text,  # the run's own cut or windows; windows' logits pooled per text below
            stride=d.chunk_stride,
            pooling=d.chunk_pooling,
        )
        batch_size = batch_size or self.cfg.training.eval_batch_size
        if self.engine == "onnx":
            return predict_logits_onnx(self.model, tokens, self.pad_id, batch_size, progress)
        return predict_logits(
            self.model,
            tokens,
            self.pad_id,
            batch_size,
            progress=progress,
            precision=self.precision,
        )

    def predict(
        self,
        texts: Union[str, Sequence[str]],
        batch_size: Optional[int] = None,
        pairs: Union[None, str, Sequence[str]] = None,
        threshold: Optional[float] = None,
    ) -> Predictions:
        """Class names and probabilities for ``texts`` (and their ``pairs`` for a pair task; length-sorted
        batches, results in input order). A multi-label run gives each text's list of class names
        (``threshold``: one decision threshold for every class instead of the run's own)."""
        cuts = self.thresholds(threshold)
        if cuts is not None:
            return multilabel_predictions(self.logits(texts, batch_size, pairs=pairs), self.cfg.class_names, cuts)
        probs = softmax(self.logits(texts, batch_size, pairs=pairs))
        ids = probs.argmax(axis=1)
        names = list(self.cfg.class_names)
        return Predictions([names[i] for i in ids], ids, probs, names)


def check_threads(threads: Optional[int]) -> None:
    if threads is not None and threads < 1:
        raise LorabudgetError(f"--threads must be a positive number of CPU threads, got {threads}")


def verify_adapter(run_dir: Path) -> None:
    """Check the run's adapter weights before they are used: each file reads back whole, holds only
    finite values, and matches the sha256 that summary.json recorded when training finished."""
    run = RunDir(run_dir)
    adapter_dir = run.adapter_dir
    expected = run.recorded_checksums()
    files = run.weight_files()
    if not files and run.has_peft_adapter():
        raise LorabudgetError(f"{adapter_dir}: no weight file (adapter_model.safetensors is missing)")
    missing = sorted(set(expected) - {p.name for p in files})
    if missing:
        raise LorabudgetError(f"{adapter_dir / missing[0]}: missing (summary.json records it)")
    actual = run.adapter_checksums() if expected else {}
    for path in files:
        if path.name in expected and actual[path.name] != expected[path.name]:
            raise LorabudgetError(
                f"{path}: sha256 does not match the one summary.json recorded; the file was changed or corrupted"
            )
        try:
            tensors = _read_weights(path)
        except Exception as err:  # noqa: BLE001 - truncated or corrupt file in any reader
            raise LorabudgetError(f"{path}: unreadable weights ({type(err).__name__}: {err})".splitlines()[0]) from None
        for name, tensor in tensors.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise LorabudgetError(f"{path}: tensor {name} holds non-finite values (NaN or inf)")


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def load_run(
    run_dir: Union[str, Path],
    merge: bool = True,
    threads: Optional[int] = None,
    precision: str = "fp32",
    engine: str = "torch",
    onnx_folder: Optional[Path] = None,
) -> LoadedRun:
    """Load a trained run for inference; adapters are merged into the base weights by default.

    ``precision``: ``fp32``, ``bf16`` or ``auto`` (bf16 on a GPU that supports it or a CPU where it measured
    clearly faster than fp32: ``precision.resolve``, else fp32).
    ``engine``: ``torch``, or ``onnx`` (ONNX Runtime, fp32; ``run_dir`` may also be a folder written by
    ``lorabudget export --format onnx``, which always runs on ONNX Runtime). ``onnx_folder``: the run's ONNX
    export to run, when not ``RUN/onnx/``.
    The adapter weights are checked first (:func:`verify_adapter`).
    """
    run_dir = Path(run_dir)
    check_threads(threads)
    if engine == "onnx" or is_export_folder(run_dir):
        if precision == "bf16":
            raise LorabudgetError("the onnx engine runs in fp32 (or the int8 of an export); drop --precision bf16")
        cfg, session, tokenizer = open_onnx_export(run_dir, threads, onnx_folder)
        return LoadedRun(run_dir, cfg, session, tokenizer, "fp32", engine="onnx")
    cfg = RunDir(run_dir).read_config()
    verify_adapter(run_dir)
    if threads:
        torch.set_num_threads(threads)
    tok_dir = RunDir(run_dir).tokenizer_dir
    tokenizer = load_tokenizer(str(tok_dir) if tok_dir.is_dir() else cfg.model.name)
    model = load_trained_model(run_dir, cfg)
    if merge and can_merge(cfg.adapter.method, quantized=cfg.model.quantization != "none"):
        model = merge_adapters(model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.model.quantization == "none":  # bitsandbytes places a quantized model itself
        model.to(device)
    model.eval()
    chosen = resolve_precision(precision, model=model, cache_dir=cfg.data.cache_dir)  # auto on a CPU: measured
    return LoadedRun(run_dir, cfg, model, tokenizer, chosen)


def evaluate_run(
    run: LoadedRun,
    data_source: str,
    trust_pickle: bool = False,
    columns: Optional[Columns] = None,
    threshold: Optional[float] = None,
) -> dict[str, Any]:
    """Metrics of the run on a labelled source; ``columns`` default to the run's own data columns.

    Beside the metrics: ``data`` (the source's file name), ``rows``, ``data_digest`` (of its texts),
    ``overlap`` (how many of its rows are training and validation rows of the run) and ``held_out``
    (true only when none is; None when the run recorded no row digests). Rows the run has seen make
    the accuracy no estimate of accuracy on new text: one warning line says how many. A multi-label
    run decides by its ``thresholds.json`` (or ``threshold`` for every class).
    """
    cuts = run.thresholds(threshold)
    data = load_labelled(data_source, run.cfg.class_names, trust_pickle=trust_pickle, columns=columns or run.columns())
    logits = run.logits(data.texts, progress="evaluate", pairs=data.pairs)
    metrics = classification_metrics(logits, data.labels, run.cfg.class_names, texts=data.texts, thresholds=cuts)
    digests = text_digests(data.texts, data.pairs)
    seen = RunDir(run.run_dir).read_row_digests() if RunDir(run.run_dir).is_run() else None
    metrics.update(data=source_name(data_source), rows=len(data), data_digest=rows_digest(digests))
    metrics.update(overlap(digests, seen))
    if metrics["held_out"] is False:
        warn(f"{metrics['data']}: {overlap_text(metrics)}; its accuracy is no estimate of accuracy on new text")
    return metrics


def records_in_run(run_dir: Union[str, Path], output: Union[str, Path]) -> bool:
    """Whether ``predict`` writing its CSV to ``output`` also records into the run (``predictions.json``,
    report and model card, and with the onnx engine its ``RUN/onnx/`` export): only when the CSV goes into
    the run directory itself (the default). A CSV written elsewhere (or to stdout, ``-``) leaves the run
    directory exactly as it was. One error line when the run cannot take the record: another process
    trains or replaces it, or it is read-only."""
    files = RunDir(run_dir)
    if not files.is_run():
        return False  # an export folder: nothing to record
    inside = str(output) != "-" and Path(output).resolve().is_relative_to(files.path.resolve())
    if inside:
        check_not_in_use(files.path, "predictions written into it now")
        check_can_create(files.predictions_summary_path)
    return inside


def predictions_csv(
    preds: np.ndarray, class_names: Sequence[str], probs: Optional[np.ndarray] = None, label_format: str = "id"
) -> str:
    """``ID,Label`` rows (ID = input row from 0) for ``preds`` [n]: the class id, or with
    ``label_format="name"`` the class name; with ``probs`` [n, classes], one probability column per
    class follows."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = ["ID", "Label"] + ([f"prob_{name}" for name in class_names] if probs is not None else [])
    writer.writerow(header)
    for i, label in enumerate(preds):
        if isinstance(label, (list, tuple)):  # multi-label: the ids of the predicted classes
            row: list[Any] = [i, label_cell(label, class_names, label_format)]
        else:
            row = [i, class_names[int(label)] if label_format == "name" else int(label)]
        if probs is not None:
            row += [f"{p:.6f}" for p in probs[i]]
        writer.writerow(row)
    return out.getvalue()


def predict_file(
    run: LoadedRun,
    input_source: str,
    output: Path,
    probabilities: bool = False,
    trust_pickle: bool = False,
    columns: Optional[Columns] = None,
    label_format: Optional[str] = None,
    record: bool = True,
    threshold: Optional[float] = None,
) -> dict[str, Any]:
    """Predict every row of ``input_source`` into the CSV ``output`` (``-``: stdout); ``record``: also the
    run's predictions.json. Labels are written as the training data wrote them (``model.label_format``:
    class names or ids; ids for runs that did not record it) unless ``label_format`` (``id`` or ``name``)
    says otherwise. A multi-label run writes each row's classes joined by ``|`` (``threshold``: one
    decision threshold for every class)."""
    cuts = run.thresholds(threshold)
    data = load_unlabelled(input_source, trust_pickle=trust_pickle, columns=columns or run.columns())
    label_format = label_format or run.cfg.model.label_format or "id"
    start = time.perf_counter()
    logits = run.logits(data.texts, progress="predict", pairs=data.pairs)
    elapsed = time.perf_counter() - start
    if cuts is not None:
        decided = multilabel_predictions(logits, run.cfg.class_names, cuts)
        preds, probs = decided.label_ids, decided.probabilities
        counts = np.bincount([j for ids in preds for j in ids], minlength=len(run.cfg.class_names))
    else:
        preds = logits.argmax(axis=1)
        probs = softmax(logits)
        counts = np.bincount(preds, minlength=len(run.cfg.class_names))
    text = predictions_csv(preds, run.cfg.class_names, probs if probabilities else None, label_format)
    if str(output) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        with atomic_path(output) as tmp:  # a device or FIFO is written through, never replaced
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
    summary = {
        "input": str(input_source),
        "output": str(output),
        "rows": len(data),
        "label_format": label_format,
        "counts": {name: int(counts[i]) for i, name in enumerate(run.cfg.class_names)},
        "mean_confidence": float(probs.max(axis=1).mean()) if len(probs) else None,
        "seconds": elapsed,
        "samples_per_s": len(data) / elapsed if elapsed > 0 else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if record:
        RunDir(run.run_dir).write_predictions_summary(summary)
    return summary
