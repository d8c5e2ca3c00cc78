"""lorabudget: fine-tune transformer encoders for text classification under a hard budget of
trainable parameters, counted exactly (head included), with reports you can show.

From Python (a notebook or a script)::

    import lorabudget as lb

    lb.plan("minilm-cpu-10k")                                  # the exact count, before any weight is read
    run = lb.train("minilm-cpu-10k", data=df, output="runs/news")   # df: a DataFrame with text and label
    run.evaluate(test_df).accuracy
    run.predict(["Stocks rallied after the earnings report."]).labels

The names below are loaded on first use, so ``import lorabudget`` does not import torch.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from lorabudget.errors import BudgetExceededError, LorabudgetError
from lorabudget.version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from lorabudget.api import (
        Comparison,
        Evaluation,
        Plan,
        Predictions,
        Run,
        Search,
        compare,
        distill,
        load_run,
        plan,
        resolve_config,
        search,
        train,
    )
    from lorabudget.runconfig import RunConfig


_LAZY = {
    "Comparison": "lorabudget.api",
    "Evaluation": "lorabudget.api",
    "Plan": "lorabudget.api",
    "Predictions": "lorabudget.api",
    "Run": "lorabudget.api",
    "Search": "lorabudget.api",
    "compare": "lorabudget.api",
    "distill": "lorabudget.api",
    "load_run": "lorabudget.api",
    "plan": "lorabudget.api",
    "resolve_config": "lorabudget.api",
    "search": "lorabudget.api",
    "train": "lorabudget.api",
    "RunConfig": "lorabudget.runconfig",
}
__all__ = [
    "BudgetExceededError",
    "Comparison",
    "Evaluation",
    "LorabudgetError",
    "Plan",
    "Predictions",
    "Run",
    "RunConfig",
    "Search",
    "__version__",
    "compare",
    "distill",
    "load_run",
    "plan",
    "resolve_config",
    "search",
    "train",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lorabudget' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _OptionalKernelsHint(logging.Filter):
    """bitsandbytes (0.50) logs that the optional ``kernels`` package is missing whenever PEFT imports
    it, on every command, quantized or not; it only names a faster 4-bit CPU kernel (docs/guide/methods.md,
    QLoRA). Where ``kernels`` is installed (transformers requires it), it logs instead, offline, that it
    skips the hub's trust check of that same kernel: the same notice, about the same optional kernel."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()


for _logger in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
    logging.getLogger(_logger).addFilter(_OptionalKernelsHint())
