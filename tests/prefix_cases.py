"""A run config with adapters in the tiny model's top layer only, so that layers 0-1 form a frozen
prefix the run can cache (``training.cache_frozen_layers``); shared by tests/test_prefix_cache.py and
the damaged-cache table of tests/test_bad_inputs.py (a module of test data, not a test file)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def top_layer(make: Callable[..., dict], cache: Path, model: Path, setting, **training) -> dict:
    """``make_config``'s config on ``model`` with LoRA on layer 2 of 3 only and the cache ``setting``;
    ``training`` updates the training section."""
    return make(
        cache,
        model={"name": str(model)},
        adapter={"r": 4, "alpha": 8, "dropout": 0.0, "modules": ["query", "value"], "layers": [2]},
        head={"type": "linear", "pooling": "mean"},
        training={
            "epochs": 2,
            "batch_size": 16,
            "learning_rate": 5e-3,
            "log_every": 2,
            "seed": 7,
            "cache_frozen_layers": setting,
            **training,
        },
    )
