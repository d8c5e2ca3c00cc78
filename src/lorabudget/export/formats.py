"""Export a trained run to the ecosystem's formats.

- ``hf``: adapters merged into the weights, saved with ``save_pretrained``. The ``full`` head is the
  architecture's own ``*ForSequenceClassification``; the ``linear``, ``low_rank`` and ``prototype``
  heads (either pooling) are shipped
  as a small model class inside the folder (``modeling_lorabudget.py``, registered through the
  config's ``auto_map``), because no standard class has a bare Linear layer on the first or mean
  token state (see :mod:`lorabudget.model.hf_classifier`).
- ``peft``: the PEFT adapter folder (adapters and trained head), loaded by ``PeftModel.from_pretrained``
  on the base model; for the ``linear`` head the folder also holds the model class to build the base.
- ``onnx``: the merged model traced by ``torch.onnx`` (inputs ``input_ids`` and ``attention_mask``,
  plus ``token_type_ids`` for a sentence-pair run on a BERT-style tokenizer; output ``logits``,
  dynamic batch and sequence axes), optionally quantized to int8 weights by
  ONNX Runtime's dynamic quantizer.

Every export holds the tokenizer, a model card (``README.md``) and ``lorabudget_export.json``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch import nn

from lorabudget.config import RunConfig
from lorabudget.console import warn
from lorabudget.errors import LorabudgetError
from lorabudget.inference.decisions import THRESHOLDS_FILE, is_multi_label, thresholds_record
from lorabudget.inference.onnx import onnx_session, require_onnx, run_export_is_current
from lorabudget.inference.runs import load_run
from lorabudget.io import atomic_dir, atomic_write_json
from lorabudget.model.hub import load_model_config, load_tokenizer
from lorabudget.report.modelcard import base_model_name, write_model_card
from lorabudget.rundir.layout import PEFT_ADAPTER_CONFIG, RunDir, write_export_meta
from lorabudget.rundir.lifecycle import check_not_run_file
from lorabudget.version import __version__

FORMATS = ("hf", "peft", "onnx")
QUANTIZATIONS = ("int8",)
REMOTE_CODE_FILE = "modeling_lorabudget.py"
ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model_int8.onnx"
ONNX_OPSET = 18
# Largest |logit| difference accepted between the traced ONNX model and torch (float32 on both sides).
ONNX_TOLERANCE = 1e-3


def _meta(run_dir: Path, cfg: RunConfig, fmt: str, **extra: Any) -> dict[str, Any]:
    return {
        "format": fmt,
        "lorabudget_version": __version__,
        "source_run": str(Path(run_dir).resolve()),
        "adapter_digest": RunDir(run_dir).adapter_digest(),
        **extra,
        "config": cfg.to_dict(),
    }


def _save_tokenizer(tokenizer, cfg: RunConfig, folder: Path) -> None:
    # model_max_length = the training max_length: `truncation=True` then cuts rows where lorabudget does.
    tokenizer.model_max_length = cfg.model.max_length
    tokenizer.save_pretrained(str(folder))


def _label_maps(cfg: RunConfig) -> dict[str, Any]:
    maps: dict[str, Any] = dict(
        num_labels=cfg.num_labels,
        id2label=dict(enumerate(cfg.class_names)),
        label2id={label: i for i, label in enumerate(cfg.class_names)},
    )
    if is_multi_label(cfg):
        # transformers' own name for sigmoid scores: its pipeline then applies sigmoid by default.
        maps["problem_type"] = "multi_label_classification"
    return maps


def _thresholds_config(config, cfg: RunConfig, run_dir: Path) -> None:
    """A multi-label run's per-class thresholds in the exported ``config.json`` (``lorabudget_thresholds``):
    the pipeline gives sigmoid scores, and a class is the run's prediction where its score reaches its threshold."""
    if is_multi_label(cfg):
        config.lorabudget_thresholds = dict(thresholds_record(run_dir, cfg.class_names)["thresholds"])


def _copy_thresholds(run_dir: Path, cfg: RunConfig, folder: Path, extra: dict[str, Any]) -> None:
    """Every export of a multi-label run carries ``thresholds.json`` and the thresholds in its metadata."""
    if not is_multi_label(cfg):
        return
    record = thresholds_record(run_dir, cfg.class_names)
    atomic_write_json(folder / THRESHOLDS_FILE, record)
    extra["problem_type"] = "multi_label"
    extra["thresholds"] = dict(record["thresholds"])


def remote_code_config(encoder_config, cfg: RunConfig):
    """The ``config.json`` of a model with a lorabudget head (``linear``, ``low_rank``, ``prototype``): the
    encoder's config, the pooling and head, the labels,
    and ``auto_map`` pointing at the model class shipped in the folder."""
    from lorabudget.model.hf_classifier import LorabudgetClassifierConfig

    encoder = encoder_config.to_dict()
    for key in ("architectures", "id2label", "label2id", "transformers_version", "_name_or_path"):
        encoder.pop(key, None)
    config = LorabudgetClassifierConfig(
        encoder=encoder,
        pooling=cfg.head.pooling,
        head_dropout=float(getattr(encoder_config, "hidden_dropout_prob", 0.1)),
        head_type=cfg.head.type,
        head_rank=cfg.head.rank,
        **_label_maps(cfg),
    )
    module = Path(REMOTE_CODE_FILE).stem
    config.auto_map = {
        "AutoConfig": f"{module}.LorabudgetClassifierConfig",
        "AutoModelForSequenceClassification": f"{module}.LorabudgetForSequenceClassification",
    }
    config.architectures = ["LorabudgetForSequenceClassification"]
    config.custom_pipelines = {
        "text-classification": {
            "impl": f"{module}.LorabudgetTextClassificationPipeline",
            "pt": ["AutoModelForSequenceClassification"],
            "type": "text",
        }
    }
    return config


def _copy_remote_code(folder: Path) -> None:
    from lorabudget.model import hf_classifier  # transformers: imported when a folder is written

    shutil.copyfile(hf_classifier.__file__, folder / REMOTE_CODE_FILE)


def to_transformers_model(merged: nn.Module, cfg: RunConfig) -> nn.Module:
    """A model that plain transformers can save and reload: the ``full`` head's model as it is, the
    ``linear`` head's as :class:`~lorabudget.model.hf_classifier.LorabudgetForSequenceClassification`."""
    from lorabudget.model.heads import EncoderWithLinearHead
    from lorabudget.model.hf_classifier import LorabudgetForSequenceClassification

    if not isinstance(merged, EncoderWithLinearHead):
        for key, value in _label_maps(cfg).items():
            setattr(merged.config, key, value)
        return merged
    model = LorabudgetForSequenceClassification(remote_code_config(merged.backbone.config, cfg))
    # Same names on both sides (backbone.*, head.*, the prototype vectors included): strict loading proves
    # the mapping complete.
    model.load_state_dict(merged.state_dict(), strict=True)
    return model.eval()


def export_hf(run, folder: Path) -> None:
    model = to_transformers_model(run.model.to("cpu"), run.cfg)
    _thresholds_config(model.config, run.cfg, run.run_dir)
    if getattr(model.config, "auto_map", None):
        _copy_remote_code(folder)
    model.save_pretrained(str(folder))
    _save_tokenizer(run.tokenizer, run.cfg, folder)


def export_peft(run_dir: Path, cfg: RunConfig, tokenizer, folder: Path) -> None:
    adapter = RunDir(run_dir).adapter_dir
    if not RunDir(run_dir).has_peft_adapter():
        raise LorabudgetError(f"{run_dir} has no PEFT adapter ({adapter}); export it with --format hf instead")
    for path in adapter.iterdir():
        if path.is_file():
            shutil.copy2(path, folder / path.name)
    adapter_config = json.loads((folder / PEFT_ADAPTER_CONFIG).read_text(encoding="utf-8"))
    # The run recorded wherever the base weights were read from (maybe a local folder): name the public model.
    adapter_config["base_model_name_or_path"] = base_model_name(cfg) or adapter_config.get("base_model_name_or_path")
    atomic_write_json(folder / PEFT_ADAPTER_CONFIG, adapter_config)
    if cfg.head.type != "full":
        # PEFT needs the base model built first; for this head that is the class shipped in the folder.
        model_config, _ = load_model_config(cfg)
        config = remote_code_config(model_config, cfg)
        _thresholds_config(config, cfg, run_dir)
        config.save_pretrained(str(folder))
        _copy_remote_code(folder)
    _save_tokenizer(tokenizer, cfg, folder)


class _LogitsOnly(nn.Module):
    """``(input_ids, attention_mask[, token_type_ids]) -> logits``: the signature traced into the ONNX graph."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits


def _check_onnx_against_torch(path: Path, wrapper: nn.Module, names: list[str], samples: list[tuple]) -> None:
    """The exported graph must give torch's logits on every sample (tensors in the order of ``names``);
    a difference beyond ``ONNX_TOLERANCE`` is a bug, not user input."""
    session = onnx_session(path)
    for sample in samples:
        with torch.no_grad():
            expected = wrapper(*sample).numpy()
        feed = {name: t.numpy() for name, t in zip(names, sample)}
        diff = float(np.abs(session.run(["logits"], feed)[0] - expected).max())
        if diff > ONNX_TOLERANCE:
            raise RuntimeError(f"ONNX export differs from torch by {diff:.2e} (> {ONNX_TOLERANCE})")


def export_onnx(run, folder: Path, quantize: Optional[str] = None) -> str:
    """Write ``model.onnx`` (and ``model_int8.onnx`` with ``quantize="int8"``); returns the file to run.

    torch.onnx's dynamo exporter (``torch.export`` + onnxscript), with batch and sequence dynamic."""
    import logging
    import warnings

    require_onnx(export=True)

    wrapper = _LogitsOnly(run.model.to("cpu").eval()).eval()
    # Two lengths, so the sample has padding: the attention mask's path is in the graph.
    texts = ["a short text", "a somewhat longer text to vary the width"]
    seconds = ["and its second text", "another"] if run.is_pair_run else None
    sample = run.tokenizer(texts, seconds, padding=True, return_tensors="pt")
    inputs = (sample["input_ids"], sample["attention_mask"])
    names = ["input_ids", "attention_mask"]
    types = sample.get("token_type_ids")
    if seconds is not None and types is not None and bool(types.any()):
        # A BERT-style pair: the segment ids are an input, so ONNX and torch see the same pair.
        inputs, names = inputs + (types,), names + ["token_type_ids"]
    path = folder / ONNX_FILE
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    axes = {0: batch, 1: sequence}
    registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration_log.level
    with warnings.catch_warnings(), torch.no_grad():
        # torch.export's notes on specialised constants, and the exporter's log lines on torchvision
        # operators it skips when torchvision is absent, are not the user's business; a failed export raises.
        warnings.simplefilter("ignore")
        registration_log.setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(
                wrapper,
                inputs,
                input_names=names,
                output_names=["logits"],
                dynamic_shapes=tuple(axes for _ in names),
                opset_version=ONNX_OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        finally:
            registration_log.setLevel(level)
        program.save(str(path))
    # Another batch size and width than the traced sample: the dynamic axes at work.
    other_texts = ["one", "three texts of", "different lengths here, the longest of the three"]
    other_seconds = ["a", "second text", "and the last second text"] if seconds is not None else None
    other = run.tokenizer(other_texts, other_seconds, padding=True, return_tensors="pt")
    _check_onnx_against_torch(path, wrapper, names, [inputs, tuple(other[name] for name in names)])
    if quantize is None:
        return ONNX_FILE
    if quantize != "int8":
        raise LorabudgetError(f"unknown quantization '{quantize}'; allowed: " + ", ".join(QUANTIZATIONS))
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    # The quantizer suggests its pre-processing step on the root logger; on these models it changed
    # nothing in the output (checked on RoBERTa) and costs seconds, so it is skipped and the hint muted.
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(path), str(folder / ONNX_INT8_FILE), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    return ONNX_INT8_FILE


def export_run(run_dir: Path, output: Path, fmt: str, quantize: Optional[str] = None, overwrite: bool = False) -> Path:
    """Export the run in ``run_dir`` to ``output`` (written atomically) in format ``fmt``."""
    run_dir, output = Path(run_dir), Path(output)
    files = RunDir(run_dir)
    if fmt not in FORMATS:
        raise LorabudgetError(f"unknown export format '{fmt}'; allowed: " + ", ".join(FORMATS))
    if quantize and fmt != "onnx":
        raise LorabudgetError("--quantize applies to --format onnx only")
    if fmt == "onnx":
        require_onnx(export=True)
    cfg = files.read_config()
    if fmt != "peft" and cfg.model.quantization != "none":
        raise LorabudgetError(
            f"the run's base is quantized ({cfg.model.quantization}): merging adapters into it would re-quantize "
            "the weights; export it with --format peft"
        )
    check_not_run_file(output, "--output")
    if run_dir.resolve().is_relative_to(output.resolve()):  # the folder is replaced as a whole
        raise LorabudgetError(f"--output {output} holds the run {run_dir} it would replace; choose another folder")
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise LorabudgetError(f"output folder {output} exists and is not empty; pass --overwrite or choose another")
    extra: dict[str, Any] = {"head": cfg.head.type, "pooling": cfg.head.pooling}
    with atomic_dir(output) as tmp:
        if fmt == "peft":
            tok_dir = files.tokenizer_dir
            export_peft(run_dir, cfg, load_tokenizer(str(tok_dir) if tok_dir.is_dir() else cfg.model.name), tmp)
        else:
            run = load_run(run_dir, merge=True)
            if fmt == "hf":
                export_hf(run, tmp)
                extra["trust_remote_code"] = (tmp / REMOTE_CODE_FILE).is_file()
            else:
                _save_tokenizer(run.tokenizer, cfg, tmp)
                extra.update(onnx_file=export_onnx(run, tmp, quantize), quantize=quantize)
        _copy_thresholds(run_dir, cfg, tmp, extra)
        write_export_meta(tmp, _meta(run_dir, cfg, fmt, **extra))
        write_model_card(run_dir, tmp, export_format=fmt, folder_name=output.name)
    return output


@contextlib.contextmanager
def run_onnx_export(run_dir: Path, into_run: bool = True) -> Iterator[Path]:
    """The folder of an ONNX export of the run as it is now, for ``predict --engine onnx``, ``serve`` and
    ``load_run(engine="onnx")``: ``RUN/onnx/`` when current, else exported again there; with ``into_run``
    false (a predict that leaves the run as it was) into a temporary folder instead, removed when the block
    ends, and one line says so."""
    files = RunDir(run_dir)
    if run_export_is_current(run_dir):
        yield files.onnx_dir
    elif into_run:
        yield export_run(run_dir, files.onnx_dir, "onnx", overwrite=True)
    else:
        warn(
            f"{run_dir} has no current ONNX export: exporting it into a temporary folder for this predict only "
            f"(a predict into the run keeps one in {files.onnx_dir})"
        )
        with tempfile.TemporaryDirectory(prefix="lorabudget-onnx-") as tmp:
            yield export_run(run_dir, Path(tmp) / files.onnx_dir.name, "onnx")


def load_exported(
    run_dir: Path,
    threads: Optional[int] = None,
    precision: str = "fp32",
    engine: str = "torch",
    export_into_run: bool = True,
):
    """:func:`~lorabudget.inference.runs.load_run`, where the ``onnx`` engine on a run directory first gets
    the run's ONNX export (:func:`run_onnx_export`; ``export_into_run`` as its ``into_run``)."""
    export = contextlib.nullcontext(None)
    if engine == "onnx" and RunDir(run_dir).is_run():
        export = run_onnx_export(Path(run_dir), into_run=export_into_run)
    with export as folder:  # ONNX Runtime holds the model once loaded: a temporary folder may go
        return load_run(run_dir, threads=threads, precision=precision, engine=engine, onnx_folder=folder)
