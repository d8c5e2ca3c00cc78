"""`compare` of multi-label runs: ranked by micro F1 with its interval, paired tests on exact label sets,
and a one-line refusal to rank single- and multi-label runs together."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from lorabudget.cli import main
from lorabudget.errors import LorabudgetError
from lorabudget.report.compare import write_comparison
from lorabudget.stats import rows_fingerprint, wilson_interval


def _fake_ml_run(path, params, micro_f1, correct, data="test.csv", val_f1=0.7):
    """A multi-label run's files as compare reads them: summary and one evaluation with per-row results."""
    path.mkdir(parents=True)
    correct = np.asarray(correct, dtype=bool)
    summary = {
        "name": path.name,
        "method": "lora",
        "trainable_params": params,
        "head_params": 100,
        "budget": 100_000,
        "validation_accuracy": 0.3,
        "validation_micro_f1": val_f1,
        "validation_rows": 200,
        "train_time_s": 10.0,
        "class_names": ["a", "b", "c"],
    }
    (path / "summary.json").write_text(json.dumps(summary))
    n = len(correct)
    record = {
        "kind": "evaluate",
        "problem_type": "multi_label",
        "data": data,
        "n": n,
        "rows": n,
        "micro_f1": micro_f1,
        "micro_f1_ci95": [micro_f1 - 0.03, micro_f1 + 0.03],
        "accuracy": float(correct.mean()),  # subset accuracy: not what ranks
        "accuracy_ci95": list(wilson_interval(int(correct.sum()), n)),
        "correct": correct.tolist(),
        "rows_fingerprint": rows_fingerprint(np.zeros((n, 3), dtype=np.int64), [str(i) for i in range(n)]),
        "class_names": ["a", "b", "c"],
        "time": "2026-01-01T00:00:00",
    }
    (path / "evals").mkdir()
    (path / "evals" / f"{data}.json").write_text(json.dumps(record))
    return path


def _single_label_run(path):
    path.mkdir(parents=True)
    (path / "summary.json").write_text(
        json.dumps({"name": path.name, "validation_accuracy": 0.9, "class_names": ["a", "b", "c"]})
    )
    return path


def test_ranked_by_micro_f1_not_subset_accuracy(tmp_path):
    rng = np.random.default_rng(0)
    exact_a = rng.random(300) < 0.40  # a: better micro F1, fewer exact sets
    exact_b = rng.random(300) < 0.45
    runs = [_fake_ml_run(tmp_path / "b", 5000, 0.61, exact_b), _fake_ml_run(tmp_path / "a", 6000, 0.74, exact_a)]
    text = write_comparison(runs, tmp_path / "cmp").read_text()
    assert "Ranked by **test micro F1 on test.csv (300 rows)**" in text
    assert "| 1 | a |" in text and "| 2 | b |" in text
    assert "0.7400 (0.7100–0.7700)" in text
    assert "bootstrap 95% intervals of micro F1" in text and "label set is exactly the true set" in text
    assert "rows only a got right exactly (label set)" in text  # the paired test counted exact sets
    with open(tmp_path / "cmp" / "compare.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == ["a", "b"] and float(rows[0]["score"]) == pytest.approx(0.74)
    assert rows[0]["ranked_by"].startswith("test micro F1") and {r["metric"] for r in rows} == {"micro_f1"}


def test_paired_test_on_exact_label_sets_names_a_winner(tmp_path):
    a = np.ones(300, dtype=bool)
    b = np.ones(300, dtype=bool)
    b[:60] = False
    runs = [_fake_ml_run(tmp_path / "a", 5000, 0.9, a), _fake_ml_run(tmp_path / "b", 6000, 0.7, b)]
    text = write_comparison(runs, tmp_path / "cmp").read_text()
    assert "**a beats b** (p<0.001, McNemar exact" in text


def test_validation_micro_f1_when_no_shared_test_set(tmp_path):
    runs = [
        _fake_ml_run(tmp_path / "a", 5000, 0.8, [True] * 50, data="one.csv", val_f1=0.66),
        _fake_ml_run(tmp_path / "b", 6000, 0.8, [True] * 50, data="two.csv", val_f1=0.71),
    ]
    text = write_comparison(runs, tmp_path / "cmp").read_text()
    assert "Ranked by **validation micro F1 (200 rows)**" in text
    assert "| 1 | b |" in text


def test_single_and_multi_label_runs_are_refused_together(tmp_path, capsys):
    ml = _fake_ml_run(tmp_path / "tags", 5000, 0.8, [True] * 20)
    sl = _single_label_run(tmp_path / "topics")
    with pytest.raises(
        LorabudgetError, match=r"cannot compare single-label runs \(topics\) with multi-label runs \(tags\)"
    ):
        write_comparison([ml, sl], tmp_path / "cmp")
    assert main(["compare", str(ml), str(sl), "--output", str(tmp_path / "cmp")]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot compare single-label runs" in err
    assert not (tmp_path / "cmp" / "compare.md").exists()
