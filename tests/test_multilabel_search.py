"""`lorabudget search --multi-label` on the tiny model: the objective is the chosen validation metric
(micro F1 by default), and trials.csv says which metric its values are."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from lorabudget.cli import main
from lorabudget.errors import LorabudgetError
from lorabudget.search.study import resolve_metric

SPACE = {"r": [1, 2], "modules": [["query"]], "layers": ["all"], "learning_rate": {"low": 1e-2, "high": 3e-2}}
MULTI = {"model": {"problem_type": "multi_label"}}
SINGLE = {"model": {"problem_type": "single_label"}}


@pytest.mark.parametrize(
    "metric, base, expected",
    [
        (None, MULTI, "micro_f1"),
        (None, SINGLE, "accuracy"),
        (None, {}, "accuracy"),
        ("macro_f1", MULTI, "macro_f1"),
        ("micro_f1", MULTI, "micro_f1"),
        ("accuracy", MULTI, "accuracy"),
        ("macro_f1", SINGLE, "macro_f1"),
    ],
)
def test_metric_defaults_to_micro_f1_for_multi_label(metric, base, expected):
    assert resolve_metric(metric, base) == expected


@pytest.mark.parametrize(
    "metric, base, message",
    [
        ("micro_f1", SINGLE, "micro_f1 is a multi-label metric; pass --multi-label"),
        ("f1", MULTI, "unknown metric 'f1'"),
    ],
)
def test_bad_metric_is_refused(metric, base, message):
    with pytest.raises(LorabudgetError, match=message):
        resolve_metric(metric, base)


def _config(make_config, tmp_path: Path) -> Path:
    values = make_config(
        tmp_path / "cache",
        name="tiny-ml",
        model={"labels": None},
        head={"type": "linear", "pooling": "mean"},
        training={"max_steps": 2, "eval_every": 2, "learning_rate": 2e-2, "threads": 1},
        budget={"max_trainable_params": 2000},
        search=SPACE,
    )
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize("metric", [None, "macro_f1"])
def test_multilabel_search_maximises_the_chosen_metric(make_config, multilabel_dir, tmp_path, metric):
    cfg = _config(make_config, tmp_path)
    out = tmp_path / "out"
    argv = ["search", str(cfg), "--data", str(multilabel_dir / "train.csv"), "--label-column", "labels"]
    argv += ["--multi-label", "--trials", "2", "--output", str(out), "--pruner", "none", "--seed", "1"]
    assert main(argv + (["--metric", metric] if metric else [])) == 0
    with open(out / "trials.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["state"] == "complete"]
    assert rows
    chosen = metric or "micro_f1"
    for r in rows:
        summary = json.loads((Path(r["run_dir"]) / "summary.json").read_text())
        assert r["metric"] == chosen
        assert float(r["value"]) == pytest.approx(summary[f"validation_{chosen}"])
        assert float(r["validation_micro_f1"]) == pytest.approx(summary["validation_micro_f1"])
    assert yaml.safe_load((out / "best.yaml").read_text())["model"]["problem_type"] == "multi_label"
    text = (out / "search.md").read_text()
    assert f"validation {chosen}" in text and "validation micro F1" in text


def test_micro_f1_search_of_a_single_label_config_is_refused(make_config, data_dir, tmp_path, capsys):
    cfg = _config(make_config, tmp_path)
    argv = ["search", str(cfg), "--data", str(data_dir / "train.csv"), "--metric", "micro_f1"]
    assert main(argv + ["--trials", "1", "--output", str(tmp_path / "out")]) != 0
    assert "micro_f1 is a multi-label metric" in capsys.readouterr().err
