"""Distillation of multi-label runs: the per-class BCE loss against a hand computation, the
teacher/student checks, the ensemble average, and a tiny end-to-end distill from the command line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from lorabudget.cli import main
from lorabudget.errors import LorabudgetError
from lorabudget.training.distill import ensemble_logits
from lorabudget.training.distill_multilabel import kd_loss_multilabel, teacher_confidence


def _sig(x):
    return 1 / (1 + math.exp(-x))


def _bce(p, y):
    """Binary cross-entropy of probability p against target y (0/1 or soft)."""
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_multilabel_kd_loss_matches_hand_computation():
    s = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.0, -1.0]])
    t = torch.tensor([[2.0, -1.0, -0.5], [-0.4, 1.5, 0.2]])
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    T, lam = 2.0, 0.6
    gold = np.mean([_bce(_sig(s[i, j].item()), y[i, j].item()) for i in range(2) for j in range(3)])
    soft = np.mean([_bce(_sig(s[i, j].item() / T), _sig(t[i, j].item() / T)) for i in range(2) for j in range(3)])
    expected = (1 - lam) * gold + lam * T * T * soft
    assert kd_loss_multilabel(s, t, y, T, lam).item() == pytest.approx(expected, rel=1e-6)
    # a row without gold labels (-1 everywhere) leaves the gold term to the labelled row only
    y_part = torch.tensor([[1.0, 0.0, 1.0], [-1.0, -1.0, -1.0]])
    gold_row0 = np.mean([_bce(_sig(s[0, j].item()), y[0, j].item()) for j in range(3)])
    part = kd_loss_multilabel(s, t, y_part, T, lam).item()
    assert part == pytest.approx((1 - lam) * gold_row0 + lam * T * T * soft, rel=1e-6)
    # no gold label at all: the soft term only, no NaN
    none = kd_loss_multilabel(s, t, -torch.ones(2, 3), T, lam).item()
    assert none == pytest.approx(lam * T * T * soft, rel=1e-6)
    # lambda 0 is exactly the multi-label training loss
    assert torch.equal(kd_loss_multilabel(s, t, y, T, 0.0), torch.nn.functional.binary_cross_entropy_with_logits(s, y))
    # pos_weight weighs each class's positive term in the gold BCE
    w = torch.tensor([2.0, 1.0, 3.0])
    weighted = np.mean(
        [
            -(
                w[j].item() * y[i, j].item() * math.log(_sig(s[i, j].item()))
                + (1 - y[i, j].item()) * math.log(1 - _sig(s[i, j].item()))
            )
            for i in range(2)
            for j in range(3)
        ]
    )
    assert kd_loss_multilabel(s, t, y, T, 0.0, w).item() == pytest.approx(weighted, rel=1e-6)


def test_multilabel_ensemble_averages_probabilities():
    a = np.array([[2.0, -1.0]], dtype=np.float32)
    b = np.array([[0.0, 3.0]], dtype=np.float32)
    mean = (1 / (1 + np.exp(-a)) + 1 / (1 + np.exp(-b))) / 2
    out = ensemble_logits([a, b], multi_label=True)
    np.testing.assert_allclose(1 / (1 + np.exp(-out)), mean, rtol=1e-5)
    assert np.isfinite(ensemble_logits([np.full((1, 2), 80.0)] * 2, multi_label=True)).all()


def test_teacher_confidence_is_the_least_sure_class():
    logits = np.array([[4.0, -4.0], [4.0, 0.0]])
    np.testing.assert_allclose(teacher_confidence(logits), [1 / (1 + np.exp(-4.0)), 0.5])


# ---- end to end on the tiny model


def _config(make_config, cache, name, **training):
    return make_config(
        cache,
        name=name,
        model={"labels": None},
        head={"type": "linear", "pooling": "mean"},
        training={"epochs": 2, "learning_rate": 2e-2, "log_every": 5, **training},
        distill={"temperature": 2.0, "alpha": 0.5},
    )


@pytest.fixture(scope="module")
def ml_teacher(tmp_path_factory, make_config, multilabel_dir):
    tmp = tmp_path_factory.mktemp("ml-teacher")
    cfg = tmp / "teacher.yaml"
    cfg.write_text(yaml.safe_dump(_config(make_config, tmp / "cache", "teacher", seed=5)))
    argv = ["train", str(cfg), "--data", str(multilabel_dir / "train.csv"), "--label-column", "labels"]
    assert main([*argv, "--multi-label", "--output", str(tmp / "teacher"), "--no-report"]) == 0
    return tmp / "teacher"


def _distill_argv(cfg, multilabel_dir, teacher, out):
    return ["distill", str(cfg), "--teacher", str(teacher), "--data", str(multilabel_dir / "train.csv"),
            "--label-column", "labels", "--multi-label", "--output", str(out), "--no-report"]  # fmt: skip


def test_tiny_multilabel_distill_end_to_end(ml_teacher, make_config, multilabel_dir, tmp_path):
    cfg = tmp_path / "student.yaml"
    cfg.write_text(yaml.safe_dump(_config(make_config, tmp_path / "cache", "student")))
    argv = _distill_argv(cfg, multilabel_dir, ml_teacher, tmp_path / "student")
    assert main([*argv, "--unlabelled", str(multilabel_dir / "unlabelled.csv")]) == 0
    summary = json.loads((tmp_path / "student" / "summary.json").read_text())
    assert 0 <= summary["validation_micro_f1"] <= 1 and 0 <= summary["teacher_validation_micro_f1"] <= 1
    assert summary["unlabelled_rows"] == 80 and summary["distill"] == "T=2, λ=0.5"
    assert all(0 <= share <= 1 for share in summary["train_label_distribution"])  # -1 rows are not counted
    assert (tmp_path / "student" / "thresholds.json").is_file()
    # an ensemble of the teacher and itself-as-a-copy: probabilities averaged, the same classes
    import shutil

    twin = tmp_path / "twin"
    shutil.copytree(ml_teacher, twin)
    argv = _distill_argv(cfg, multilabel_dir, ml_teacher, tmp_path / "ensemble")
    assert main([*argv, "--teacher", str(twin)]) == 0


def test_teacher_and_student_must_be_multi_label_with_the_same_classes(
    ml_teacher, make_config, multilabel_dir, data_dir, tmp_path, capsys
):
    from lorabudget.config import from_dict
    from lorabudget.training.distill_multilabel import check_teachers

    student = from_dict(_config(make_config, tmp_path / "cache", "s"))
    single = student  # single-label (the default) against the multi-label teacher
    with pytest.raises(LorabudgetError, match="is a multi-label run and the student is single-label"):
        check_teachers([ml_teacher], single)
    multi = from_dict(
        {
            **_config(make_config, tmp_path / "cache", "s"),
            "model": {**student.model.__dict__, "problem_type": "multi_label", "labels": ["a", "b"]},
        }
    )
    with pytest.raises(LorabudgetError, match="must have the student's classes, in order"):
        check_teachers([ml_teacher], multi)
    # from the command line: one line, before the student trains
    cfg = tmp_path / "student.yaml"
    cfg.write_text(yaml.safe_dump(_config(make_config, tmp_path / "cache", "student")))
    argv = ["distill", str(cfg), "--teacher", str(ml_teacher), "--data", str(data_dir / "train.csv")]
    assert main([*argv, "--output", str(tmp_path / "out"), "--no-report"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a multi-label run and the student is single-label" in err[0]
