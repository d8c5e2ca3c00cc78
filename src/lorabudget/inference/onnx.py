"""ONNX Runtime: sessions, and runs loaded from an ONNX export folder (``lorabudget export --format
onnx``, or the ``RUN/onnx/`` export that ``predict --engine onnx`` keeps current)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from lorabudget.config import RunConfig, from_dict
from lorabudget.console import warn
from lorabudget.errors import LorabudgetError
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
    """Whether ``RUN/onnx/`` holds an fp32 ONNX export of the run's present weights."""
    files = RunDir(run_dir)
    try:
        cached = read_export_meta(files.onnx_dir)
        current = cached is not None and cached.get("adapter_digest") == files.adapter_digest()
        if current and not cached.get("quantize"):
            verify_export(files.onnx_dir, cached)
            return True
    except LorabudgetError as err:  # changed or truncated: made again from the run's verified weights
        warn(f"{err}; exporting it again")
    return False


def open_onnx_export(path: Path, threads: Optional[int] = None) -> tuple[RunConfig, Any, Any]:
    """``(config, ONNX Runtime session, tokenizer)`` from an ONNX export folder, or from a run directory whose
    ``RUN/onnx/`` export is current (``lorabudget.load_run`` and ``predict`` make it)."""
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
        if not run_export_is_current(path):
            raise LorabudgetError(
                f"{path} has no current ONNX export; run `lorabudget export {path} --format onnx "
                f"--output {RunDir(path).onnx_dir} --overwrite` first"
            )
        folder = RunDir(path).onnx_dir
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
