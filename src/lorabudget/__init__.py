"""lorabudget: fine-tuning transformer encoders with PEFT methods under a hard trainable-parameter budget.

From Python::

    from lorabudget import load_run
    run = load_run("runs/minilm-cpu")
    run.predict(["Stocks rallied after the earnings report."]).labels  # ['Business']
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

if TYPE_CHECKING:  # importing torch and transformers is left to the first call
    from lorabudget.inference.runs import LoadedRun

__version__ = "0.1.0"
__all__ = ["load_run", "__version__"]


class _OptionalKernelsHint(logging.Filter):
    """bitsandbytes (0.50) logs that the optional ``kernels`` package is missing whenever PEFT imports
    it, on every command, quantized or not; it only names a faster 4-bit CPU kernel (README, QLoRA)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_OptionalKernelsHint())


def load_run(
    path: Union[str, Path], engine: str = "torch", threads: Optional[int] = None, precision: str = "fp32"
) -> "LoadedRun":
    """Load a run directory (or an ONNX export folder) for prediction.

    ``engine``: ``torch`` (adapters merged into the weights) or ``onnx`` (ONNX Runtime; the run is
    exported to ``RUN/onnx/`` once). ``precision``: ``fp32``, ``bf16`` or ``auto`` (torch only).
    The result's ``predict(texts)`` returns :class:`~lorabudget.inference.runs.Predictions` (``labels``,
    ``label_ids``, ``probabilities``); ``logits(texts)`` returns the raw logits [n, classes].
    """
    from lorabudget.inference.runs import load_run as _load_run

    if engine == "onnx":
        from lorabudget.export.formats import ensure_onnx_export
        from lorabudget.rundir.layout import RunDir

        if RunDir(path).is_run():  # a run directory runs its RUN/onnx/ export, made or refreshed here
            ensure_onnx_export(Path(path))
    return _load_run(Path(path), threads=threads, precision=precision, engine=engine)
