"""ONNX Runtime: sessions, and runs loaded from an ONNX export folder (``lorabudget export --format
onnx``, the ``RUN/onnx/`` export that ``predict --engine onnx`` keeps current, or a temporary one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from lorabudget.config import RunConfig, from_dict
from lorabudget.console import warn
from lorabudget.errors import LorabudgetError
from lorabudget.inference.decisions import THRESHOLDS_FILE, is_multi_label, thresholds_record
from lorabudget.rundir.layout import RunDir, read_export_meta, verify_export


def require_onnx(export: bool = False) -> None:
    """onnx and onnxruntime to run an ONNX model; onnxscript too to ``export`` one (torch's dynamo exporter)."""
    try:
        import onnx  # noqa: F401 - the quantizer needs it
        import onnxruntime  # noqa: F401

        if export:
            import onnxscript  # noqa: F401
    except ImportError as err:
        raise LorabudgetError(
            f"ONNX needs onnx, onnxruntime and onnxscript ({err}); pip install 'lorabudget[onnx]'"
        ) from err


def onnx_session(path: Path, threads: Optional[int] = None):
    require_onnx()
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_export_is_current(run_dir: Path) -> bool:
    """Whether ``RUN/onnx/`` holds an fp32 ONNX export of the run's present weights and, for a multi-label
    run, of its present ``thresholds.json`` (the export carries a copy, read when the folder is used alone)."""
    files = RunDir(run_dir)
    try:
        cached = read_export_meta(files.onnx_dir)
        current = cached is not None and cached.get("adapter_digest") == files.adapter_digest()
        if current and not cached.get("quantize"):
            verify_export(files.onnx_dir, cached)
            _check_thresholds_copy(files, cached)
            return True
    except LorabudgetError as err:  # changed or truncated: made again from the run's verified weights
        warn(f"{err}; exporting it again")
    return False


def _check_thresholds_copy(files: RunDir, meta: dict[str, Any]) -> None:
    """A multi-label run's thresholds in ``RUN/onnx/`` must be the run's own as they are now: the file can
    change while the weights do not."""
    if not is_multi_label(meta.get("config")):
        return
    record = thresholds_record(files.path, files.read_config().class_names)
    if RunDir(files.onnx_dir).read_thresholds() != record or meta.get("thresholds") != record["thresholds"]:
        raise LorabudgetError(f"{files.onnx_dir / THRESHOLDS_FILE}: not the run's present {THRESHOLDS_FILE}")


def open_onnx_export(
    path: Path, threads: Optional[int] = None, folder: Optional[Path] = None
) -> tuple[RunConfig, Any, Any]:
    """``(config, ONNX Runtime session, tokenizer)`` from an ONNX export folder, or from a run directory:
    its export in ``folder`` when given (made from it just now), else its ``RUN/onnx/`` export, which must be
    current (``lorabudget.load_run`` and ``predict`` make it)."""
    import torch

    from lorabudget.model.hub import load_tokenizer

    path = Path(path)
    meta = read_export_meta(path)
    if meta is not None:
        if meta.get("format") != "onnx":
            raise LorabudgetError(
                f"{path} is a '{meta.get('format')}' export; lorabudget runs ONNX exports and run directories "
                "(load this one as its README.md shows)"
            )
        folder = path
    else:
        RunDir(path).read_config()  # a clear error for a folder that is neither
        if folder is None and not run_export_is_current(path):
            raise LorabudgetError(
                f"{path} has no current ONNX export; run `lorabudget export {path} --format onnx "
                f"--output {RunDir(path).onnx_dir} --overwrite` first"
            )
        folder = Path(folder) if folder is not None else RunDir(path).onnx_dir
        meta = read_export_meta(folder)
    if threads:
        torch.set_num_threads(threads)
    verify_export(folder, meta)  # a changed or truncated model is refused, never run
    cfg = from_dict(meta["config"])
    try:
        session = onnx_session(folder / meta["onnx_file"], threads)
    except LorabudgetError:
        raise
    except Exception as err:  # noqa: BLE001 - onnxruntime's InvalidProtobuf, Fail, ... on a damaged file
        raise LorabudgetError(
            f"{folder / meta['onnx_file']}: unreadable ONNX model ({type(err).__name__}); export the run again"
        ) from None
    return cfg, session, load_tokenizer(str(folder))
