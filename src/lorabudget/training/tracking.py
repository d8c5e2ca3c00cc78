"""Experiment trackers (TensorBoard, MLflow, Weights & Biases, ...) through Accelerate's trackers.

``training.report_to: [tensorboard, mlflow]`` (default: none) makes the training loop's
:class:`~lorabudget.training.loop.MetricsLog`, the one sink every logged scalar goes through, forward each
``metrics.jsonl`` record to the trackers as well: ``train/loss``, ``train/lr``, ``eval/accuracy`` ...
at the record's optimizer step. The resolved config is logged once, flattened (``adapter.r`` ...).

Trackers write under ``RUN/logs/`` (TensorBoard: ``tensorboard --logdir RUN/logs``; MLflow: a local
file store there unless ``MLFLOW_TRACKING_URI`` says otherwise).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from lorabudget.config import RunConfig
from lorabudget.errors import LorabudgetError

PROJECT_NAME = "lorabudget"  # TensorBoard folder, MLflow experiment, W&B project


def check_trackers(names: list[str]) -> None:
    """Refuse unknown tracker names and trackers whose package is not installed (Accelerate would
    silently drop those)."""
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    known = [t for t in LoggerType.list() if t != "all"]
    available = {str(t) for t in get_available_trackers()}
    for name in names:
        if name not in known:
            raise LorabudgetError(
                f"config key 'training.report_to': unknown tracker '{name}'; allowed: " + ", ".join(known)
            )
        if name not in available:
            extra = "pip install 'lorabudget[tracking]'" if name == "tensorboard" else f"pip install {name}"
            raise LorabudgetError(f"training.report_to: tracker '{name}' is not installed ({extra})")


def accelerator_kwargs(cfg: RunConfig, run_dir: Optional[Path]) -> dict[str, Any]:
    """Keyword arguments for ``Accelerator(...)``: the trackers and where they write."""
    names = list(getattr(cfg.training, "report_to", None) or [])
    if not names or run_dir is None:
        return {}
    from accelerate.utils import ProjectConfiguration

    check_trackers(names)
    project = ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(Path(run_dir) / "logs"))
    return {"log_with": names, "project_config": project}


def flat_config(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"adapter": {"r": 8}}`` -> ``{"adapter.r": 8}``; lists and ``None`` become strings, since
    trackers' hyperparameter tables take scalars only."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(value)
    return out


def record_scalars(record: dict[str, Any]) -> dict[str, float]:
    """A ``metrics.jsonl`` record as tracker scalars: ``{"train/loss": 0.41, ...}`` (type prefix, step dropped)."""
    kind = record.get("type", "metrics")
    return {
        f"{kind}/{key}": float(value)
        for key, value in record.items()
        if key not in ("type", "step") and isinstance(value, (bool, int, float))
    }


class TrackerSink:
    """Forwards records to the accelerator's trackers; ``close`` ends the tracker runs."""

    def __init__(self, accelerator):
        self.accelerator = accelerator

    def __call__(self, record: dict[str, Any]) -> None:
        values = record_scalars(record)
        if values:
            self.accelerator.log(values, step=record.get("step"))

    def close(self) -> None:
        self.accelerator.end_training()


def start_trackers(accelerator, cfg: RunConfig, run_name: Optional[str] = None) -> Optional[TrackerSink]:
    """Start the configured trackers with the resolved config, naming the run ``run_name`` (its folder's
    name; default the config's name); ``None`` when none are configured."""
    if not getattr(accelerator, "log_with", None):
        return None
    run_name = run_name or cfg.name
    accelerator.init_trackers(
        PROJECT_NAME,
        config=flat_config(cfg.to_dict()),
        init_kwargs={"mlflow": {"run_name": run_name}, "wandb": {"name": run_name}},
    )
    return TrackerSink(accelerator)
