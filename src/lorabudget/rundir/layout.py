"""Every file of a run directory: its name, its record layout, how it is read and written.

This module is the only place that spells a run directory's file names. ``RunDir(path)`` gives the
paths and the readers and writers; compatibility with older runs' keys (``lora_*``, written before
lorabudget had more than one adapter method) is translated here, so readers see today's keys only.

    RUN/
      config.yaml            the resolved config the run trained with
      budget.json            the exact trainable-parameter breakdown (per site, shared, head)
      metrics.jsonl          one JSON object per training log line or evaluation
      checkpoint/state.pt    the resumable training state (removed when the run finishes)
      adapter/               trained weights: PEFT adapter + head, or a full fine-tune's model.safetensors
      tokenizer/             the tokenizer the run trained with
      summary.json           written when training finished: scores, times, adapter sha256
      thresholds.json        a multi-label run's per-class decision thresholds (with the best adapter)
      eval.json, evals/      the latest evaluation, and one record per evaluated data set
      rows.npz               a digest of each training and validation text (``rows``: overlap checks)
      predictions.csv/.json  the last ``predict``'s labels and its summary
      report.md, figures/    the run's report
      README.md              the model card
      onnx/                  the ONNX export ``predict --engine onnx`` made and reuses
      .lock                  held while a process trains into the run

An export folder (``lorabudget export``) holds ``lorabudget_export.json`` (:data:`EXPORT_META`).
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from lorabudget.config import RunConfig, from_dict, load_yaml, save_config
from lorabudget.console import warn
from lorabudget.errors import LorabudgetError
from lorabudget.io import atomic_path, atomic_write_json
from lorabudget.rundir.rows import source_key, source_name

CONFIG = "config.yaml"
BUDGET = "budget.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint"
CHECKPOINT_STATE = "state.pt"
ADAPTER = "adapter"
TOKENIZER = "tokenizer"
SUMMARY = "summary.json"
EVAL = "eval.json"
THRESHOLDS = "thresholds.json"
EVALS = "evals"
ROW_DIGESTS = "rows.npz"
PREDICTIONS = "predictions.csv"
PREDICTIONS_SUMMARY = "predictions.json"
REPORT = "report.md"
FIGURES = "figures"
MODEL_CARD = "README.md"
ONNX = "onnx"
LOCK = ".lock"
EXPORT_META = "lorabudget_export.json"
PEFT_ADAPTER_CONFIG = "adapter_config.json"
FULL_WEIGHTS = "model.safetensors"  # a full fine-tune's weights inside RUN/adapter/
WEIGHT_SUFFIXES = (".safetensors", ".bin")  # an adapter folder's weight files
TRAINED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")  # any trained file under the run
# Folders of a run that hold no weights (a teacher's fingerprint skips them).
NOT_WEIGHTS = (TOKENIZER, FIGURES, EVALS)

PathLike = Union[str, Path]


def read_json(path: Path) -> Optional[Any]:
    """A JSON file's value, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weight_files(folder: Path) -> list[Path]:
    """The weight files directly in ``folder`` (an adapter folder)."""
    return sorted(p for p in Path(folder).glob("*") if p.suffix in WEIGHT_SUFFIXES)


def _budget_today(record: dict[str, Any]) -> dict[str, Any]:
    """A ``budget.json`` record with the keys runs from before the method seam used renamed."""
    record = dict(record)
    if "by_site" not in record and "lora_by_site" in record:
        record["by_site"] = [dict(site, kind=site.get("kind", "lora")) for site in record.pop("lora_by_site")]
    if "adapter_params" not in record and "lora_params" in record:
        record["adapter_params"] = record.pop("lora_params")
    record.setdefault("method", "lora")
    return record


def _summary_today(record: dict[str, Any]) -> dict[str, Any]:
    record = dict(record)
    if "adapter_params" not in record and "lora_params" in record:
        record["adapter_params"] = record.pop("lora_params")
    return record


@dataclass(frozen=True)
class RunDir:
    """A run directory's files (see the module docstring); nothing is read until asked."""

    path: Path

    def __init__(self, path: PathLike):
        object.__setattr__(self, "path", Path(path))

    # ---- paths
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def budget_path(self) -> Path:
        return self.path / BUDGET

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def checkpoint_candidates(self) -> list[Path]:
        """Where a checkpoint's state may be: ``atomic_dir`` parks the previous checkpoint as
        ``.checkpoint.old`` while swapping, and a kill between its two renames leaves only that one."""
        return [self.checkpoint_dir / CHECKPOINT_STATE, self.parked_checkpoint_dir / CHECKPOINT_STATE]

    @property
    def parked_checkpoint_dir(self) -> Path:
        return self.path / f".{CHECKPOINT}.old"

    @property
    def adapter_dir(self) -> Path:
        return self.path / ADAPTER

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / TOKENIZER

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY

    @property
    def eval_path(self) -> Path:
        return self.path / EVAL

    @property
    def row_digests_path(self) -> Path:
        return self.path / ROW_DIGESTS

    @property
    def display_name(self) -> str:
        """The run's name wherever it is shown (reports, model card, compare, figures, progress): its folder's
        name. The config's ``name`` is the preset's, shared by every run trained from it."""
        # abspath, not resolve: a run reached through a symbolic link is named as the user named it.
        return Path(os.path.abspath(self.path)).name or str(self.path)

    @property
    def predictions_path(self) -> Path:
        """Where ``predict`` writes its CSV unless told otherwise."""
        return self.path / PREDICTIONS

    @property
    def predictions_summary_path(self) -> Path:
        return self.path / PREDICTIONS_SUMMARY

    @property
    def report_path(self) -> Path:
        return self.path / REPORT

    @property
    def figures_dir(self) -> Path:
        return self.path / FIGURES

    @property
    def model_card_path(self) -> Path:
        return self.path / MODEL_CARD

    @property
    def onnx_dir(self) -> Path:
        return self.path / ONNX

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK

    # ---- state
    def is_run(self) -> bool:
        """Whether the folder is a lorabudget run directory (it has its config)."""
        return self.config_path.is_file()

    def training_started(self) -> bool:
        return self.metrics_path.exists()

    def finished(self) -> bool:
        """Training finished (``summary.json`` exists); unfinished runs were killed, failed or still train."""
        return self.summary_path.is_file()

    # ---- config
    def write_config(self, cfg: RunConfig) -> None:
        save_config(cfg, self.config_path)

    def config_values(self) -> dict[str, Any]:
        """The saved config as written (a plain dict; no validation)."""
        return load_yaml(self.config_path)

    def saved_config_values(self) -> dict[str, Any]:
        """The saved config as ``to_dict`` gives it today: a config written before a key existed compares
        equal to the same config with that key's default (as it ran)."""
        values = self.config_values()
        try:
            return from_dict(copy.deepcopy(values)).to_dict()
        except LorabudgetError:
            return values  # no longer valid: compared as it is, so the difference is shown

    def read_config(self) -> RunConfig:
        """The run's validated config; one error line when the folder is no run directory."""
        if not self.path.is_dir():
            raise LorabudgetError(f"run directory not found: {self.path}")
        if not self.is_run():
            raise LorabudgetError(f"{self.path} is not a lorabudget run directory (no {CONFIG})")
        return from_dict(self.config_values())

    # ---- budget and summary
    def write_budget(self, record: dict[str, Any]) -> None:
        atomic_write_json(self.budget_path, record)

    def read_budget(self) -> Optional[dict[str, Any]]:
        """``budget.json`` with today's keys (``by_site``, ``adapter_params``), or None."""
        record = read_json(self.budget_path)
        return _budget_today(record) if isinstance(record, dict) else None

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.summary_path, summary)

    def read_summary(self) -> dict[str, Any]:
        """``summary.json`` with today's keys; empty when the run has not finished."""
        record = read_json(self.summary_path)
        return _summary_today(record) if isinstance(record, dict) else {}

    def recorded_checksums(self) -> dict[str, str]:
        """The sha256 per adapter weight file that ``summary.json`` recorded (empty for older runs)."""
        if not self.summary_path.is_file():
            return {}
        try:
            recorded = json.loads(self.summary_path.read_text(encoding="utf-8")).get("adapter_sha256")
        except (OSError, ValueError, AttributeError):
            raise LorabudgetError(f"{self.summary_path}: not readable JSON") from None
        if not recorded:
            warn(f"{self.summary_path} records no adapter_sha256: the adapter weights cannot be verified")
        return recorded or {}

    def weight_files(self) -> list[Path]:
        return weight_files(self.adapter_dir)

    def adapter_checksums(self) -> dict[str, str]:
        """sha256 of each adapter weight file, as recorded in ``summary.json`` and checked on load."""
        return {p.name: file_sha256(p) for p in self.weight_files()}

    def adapter_digest(self) -> str:
        """A hash of every file under ``adapter/``: tells whether an export made from the run is current."""
        digest = hashlib.sha256()
        for path in sorted(p for p in self.adapter_dir.rglob("*") if p.is_file()):
            digest.update(path.relative_to(self.adapter_dir).as_posix().encode())
            digest.update(path.read_bytes())
        return digest.hexdigest()

    def trained_files(self) -> list[Path]:
        """Every trained weight file of the run (any method: adapter files, a full model) and the JSON
        configs beside them; tokenizer, figures, evaluations and hidden (temporary) folders are not weights."""
        found = []
        for path in sorted(self.path.rglob("*")):
            rel = path.relative_to(self.path).parts
            if not path.is_file() or rel[0] in NOT_WEIGHTS or any(p.startswith(".") for p in rel) or len(rel) < 2:
                continue
            if path.suffix in TRAINED_SUFFIXES:
                found.append(path)
        folders = {p.parent for p in found}
        found += [p for folder in folders for p in sorted(folder.glob("*.json"))]
        return sorted(set(found))

    def has_peft_adapter(self) -> bool:
        return (self.adapter_dir / PEFT_ADAPTER_CONFIG).is_file()

    # ---- metrics
    def read_metrics(self) -> tuple[list[dict], list[dict]]:
        """(training lines, evaluation lines) of ``metrics.jsonl``; an undecodable, partial or non-object
        line (a crash mid-write, appended garbage) is skipped with a warning naming it."""
        train, evals = [], []
        if self.metrics_path.is_file():
            skipped = []
            for number, line in enumerate(self.metrics_path.read_bytes().splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line.decode("utf-8"))
                except ValueError:  # UnicodeDecodeError included
                    record = None
                if not isinstance(record, dict):
                    skipped.append(number)
                    continue
                if record.get("type") == "train":
                    train.append(record)
                elif record.get("type") == "eval":
                    evals.append(record)
            if skipped:
                shown = ", ".join(map(str, skipped[:5])) + (" ..." if len(skipped) > 5 else "")
                warn(f"{self.metrics_path}: skipped {len(skipped)} unreadable line(s) (line {shown})")
        return train, evals

    def write_thresholds(self, record: dict[str, Any]) -> None:
        """Multi-label: ``{"thresholds": {class: float}, "chosen_on": ..., "rows": n}``, with the best adapter."""
        atomic_write_json(self.path / THRESHOLDS, record)

    def read_thresholds(self) -> Optional[dict[str, Any]]:
        record = read_json(self.path / THRESHOLDS)  # None: a single-label run, or one without thresholds
        values = record.get("thresholds") if isinstance(record, dict) else None
        ok = isinstance(values, dict) and all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in values.values())
        if record is not None and not ok:
            raise LorabudgetError(f"{self.path / THRESHOLDS}: expected {{'thresholds': {{class: number in 0..1}}}}")
        return record

    # ---- evaluations
    def write_eval(self, metrics: dict[str, Any], data_name: str, kind: str) -> Path:
        """``eval.json`` holds the latest evaluation; ``evals/`` keeps one record per evaluated data set.

        ``kind`` is ``validation`` (written by training; ``data_name`` describes the split) or ``evaluate``
        (a labelled source the user evaluated; ``data_name`` is its path or hub name). An evaluated file is
        named by its file name only (``data``); its record is keyed by ``source_key`` too, so two files of
        one name keep a record each and the same file evaluated again replaces its own. Returns the
        record's path in ``evals/``.
        """
        record = dict(metrics, kind=kind, time=time.strftime("%Y-%m-%dT%H:%M:%S"))
        if kind == "evaluate":
            record.update(data=source_name(data_name), source_key=source_key(data_name))
        else:
            record["data"] = data_name
        atomic_write_json(self.eval_path, record)
        path = self.path / EVALS / f"{_record_stem(record)}.json"
        atomic_write_json(path, record)
        if kind == "evaluate":
            self._drop_older_records_of(record, path)
        return path

    def _drop_older_records_of(self, record: dict[str, Any], kept: Path) -> None:
        """Records of the same evaluated file under another name (written before records had a
        ``source_key``, named after the path as typed) would show the file twice."""
        for path in (self.path / EVALS).glob("*.json"):
            old = read_json(path)
            if path == kept or not isinstance(old, dict) or old.get("kind") != "evaluate":
                continue
            if old.get("source_key") is None and source_name(str(old.get("data", ""))) == record["data"]:
                path.unlink(missing_ok=True)

    def eval_figure_path(self, record: dict[str, Any], figure: str) -> Path:
        """Where a figure of one evaluation record goes (``figure``: ``confusion_matrix``, ``reliability``):
        the validation record's under the plain name, each evaluated file's under a name of its own."""
        if record.get("kind") == "validation":
            return self.figures_dir / f"{figure}.png"
        return self.figures_dir / f"{figure}-{_record_stem(record)}.png"

    def latest_eval(self) -> Optional[dict[str, Any]]:
        record = read_json(self.eval_path)
        return record if isinstance(record, dict) else None

    def eval_records(self) -> list[dict[str, Any]]:
        """Every evaluation the run kept (``evals/``, else ``eval.json``), oldest first."""
        found = []
        evals_dir = self.path / EVALS
        if evals_dir.is_dir():
            for path in evals_dir.glob("*.json"):
                record = read_json(path)
                if isinstance(record, dict):
                    # Records name the second they were written; the file's time orders two of the same second.
                    found.append((str(record.get("time", "")), path.stat().st_mtime_ns, path.name, record))
        if not found:
            latest = self.latest_eval()
            return [latest] if latest else []
        return [record for *_, record in sorted(found, key=lambda item: item[:3])]

    # ---- rows the run trained and validated on
    def write_row_digests(self, train: np.ndarray, validation: np.ndarray) -> None:
        """The digests of the training and validation texts (``rundir.rows``), sorted, unique, uint64."""
        buffer = io.BytesIO()
        np.savez(  # random digests do not compress
            buffer, train=np.unique(np.asarray(train, "<u8")), validation=np.unique(np.asarray(validation, "<u8"))
        )
        with atomic_path(self.row_digests_path) as tmp:
            tmp.write_bytes(buffer.getvalue())

    def read_row_digests(self) -> Optional[dict[str, np.ndarray]]:
        """``{"train": ..., "validation": ...}``, or None when the run recorded none (an unreadable file is
        said in a warning: overlap is then unknown, never assumed to be zero)."""
        if not self.row_digests_path.is_file():
            return None
        try:
            with np.load(self.row_digests_path, allow_pickle=False) as stored:
                return {"train": stored["train"].astype("<u8"), "validation": stored["validation"].astype("<u8")}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            warn(f"{self.row_digests_path}: unreadable ({type(err).__name__}); overlap with training rows unknown")
            return None

    # ---- predictions
    def write_predictions_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.predictions_summary_path, summary)

    def read_predictions_summary(self) -> Optional[dict[str, Any]]:
        record = read_json(self.predictions_summary_path)
        return record if isinstance(record, dict) else None

    def check_writable_layout(self) -> None:
        """One error line, before any work, when a folder that evaluate, predict or report write into is a
        file there (or a file they replace is a folder)."""
        for folder in (self.figures_dir, self.path / EVALS):
            if folder.exists() and not folder.is_dir():
                raise LorabudgetError(f"{folder} is a file, not a folder: move it away so the run's records fit")
        for file in (self.report_path, self.model_card_path, self.eval_path, self.predictions_summary_path):
            if file.is_dir():
                raise LorabudgetError(f"{file} is a folder, not a file: move it away so the run's records fit")


def _record_stem(record: dict[str, Any]) -> str:
    """The file name (no suffix) of an evaluation record in ``evals/`` and of its figures."""
    name = str(record.get("data", "eval"))
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]
    return f"{slug}-{record['source_key']}" if record.get("source_key") else slug


def is_export_folder(path: PathLike) -> bool:
    """An export folder written by ``lorabudget export`` (not a run directory)."""
    return (Path(path) / EXPORT_META).is_file()


def read_export_meta(folder: PathLike) -> Optional[dict[str, Any]]:
    """The export's metadata, or ``None`` when ``folder`` is not a lorabudget export."""
    path = Path(folder) / EXPORT_META
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise LorabudgetError(f"{path}: not readable JSON; export the run again") from None
    if not isinstance(meta, dict):
        raise LorabudgetError(f"{path}: not a lorabudget export record; export the run again")
    return meta


EXPORT_CHECKSUMS = "files_sha256"  # key of the export metadata: sha256 of each weight file in the folder
EXPORT_WEIGHT_SUFFIXES = (".onnx", ".safetensors", ".bin", ".data")


def export_weight_files(folder: PathLike) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix in EXPORT_WEIGHT_SUFFIXES)


def write_export_meta(folder: PathLike, meta: dict[str, Any]) -> None:
    """The export's metadata, with the sha256 of every weight file (checked by :func:`verify_export`)."""
    meta = dict(meta, **{EXPORT_CHECKSUMS: {p.name: file_sha256(p) for p in export_weight_files(folder)}})
    atomic_write_json(Path(folder) / EXPORT_META, meta)


def verify_export(folder: PathLike, meta: dict[str, Any]) -> None:
    """Check an export's weight files against the sha256 its metadata recorded (a one-line error when one
    was changed, truncated or removed); an export without checksums is used with a warning."""
    folder = Path(folder)
    expected = meta.get(EXPORT_CHECKSUMS)
    if not isinstance(expected, dict):
        warn(f"{folder / EXPORT_META} records no checksums (an older export): its files cannot be verified")
        return
    for name, digest in sorted(expected.items()):
        path = folder / str(name)
        if not path.is_file():
            raise LorabudgetError(f"{path}: missing ({EXPORT_META} records it)")
        if file_sha256(path) != digest:
            raise LorabudgetError(
                f"{path}: sha256 does not match the one {EXPORT_META} recorded; the file was changed or "
                "truncated (export the run again)"
            )
