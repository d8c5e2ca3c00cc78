"""Experiment trackers: training.report_to through Accelerate; TensorBoard offline."""

from __future__ import annotations

import json

import pytest

from lorabudget.config import from_dict
from lorabudget.errors import LorabudgetError
from lorabudget.training.loop import train
from lorabudget.training.setup import make_accelerator
from lorabudget.training.state import MetricsLog
from lorabudget.training.tracking import accelerator_kwargs, flat_config, record_scalars


def _events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list(log_dir.rglob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event files under {log_dir}"
    scalars = {}
    for path in files:
        acc = EventAccumulator(str(path))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
    return scalars


def test_metrics_log_forwards_records_to_tensorboard(tiny_config, tmp_path):
    cfg = from_dict(tiny_config(training={"report_to": ["tensorboard"]}))
    accelerator = make_accelerator(cfg, tmp_path)
    from lorabudget.training.tracking import start_trackers

    log = MetricsLog(tmp_path / "metrics.jsonl", True, trackers=start_trackers(accelerator, cfg))
    log.write(type="train", step=2, epoch=0.5, loss=1.25, lr=1e-3)
    log.write(type="train", step=4, epoch=1.0, loss=0.75, lr=5e-4)
    log.write(type="eval", step=4, epoch=1.0, accuracy=0.5, best=True)
    log.close()
    scalars = _events(tmp_path / "logs")
    assert scalars["train/loss"] == [(2, 1.25), (4, 0.75)]
    assert scalars["eval/accuracy"] == [(4, 0.5)] and scalars["eval/best"] == [(4, 1.0)]
    # the same records still reach metrics.jsonl
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [2, 4, 4]


def test_training_logs_to_tensorboard(tiny_config, tmp_path):
    values = tiny_config(training={"max_steps": 4, "log_every": 2, "eval_every": 2, "report_to": ["tensorboard"]})
    run = tmp_path / "run"
    train(from_dict(values), run, log=lambda *_: None)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scalars = _events(run / "logs")
    for kind, key in (("train", "loss"), ("eval", "accuracy")):
        expected = [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in lines if r["type"] == kind]
        assert scalars[f"{kind}/{key}"] == expected
    # the resolved config is logged once as hyperparameters (hparams.yml beside the events)
    hparams = list((run / "logs").rglob("hparams.yml"))
    assert hparams and "adapter.r: 4" in hparams[0].read_text()


def test_trackers_off_by_default_and_names_checked(tiny_config, tmp_path):
    assert accelerator_kwargs(from_dict(tiny_config()), tmp_path) == {}
    with pytest.raises(LorabudgetError, match="unknown tracker 'tensorbored'"):
        accelerator_kwargs(from_dict(tiny_config(training={"report_to": ["tensorbored"]})), tmp_path)


def test_flat_config_and_record_scalars():
    assert flat_config({"a": {"b": 1, "c": None, "d": [1, 2]}, "e": "x"}) == {
        "a.b": 1,
        "a.c": "null",
        "a.d": "[1, 2]",
        "e": "x",
    }
    assert record_scalars({"type": "eval", "step": 3, "accuracy": 0.5, "best": False, "data": "v"}) == {
        "eval/accuracy": 0.5,
        "eval/best": 0.0,
    }
