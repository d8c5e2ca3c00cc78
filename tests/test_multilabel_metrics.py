"""Multi-label metrics against scikit-learn, their intervals, the BCE loss and balanced pos_weight,
and the selection of the best checkpoint by micro F1."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, hamming_loss, precision_score, recall_score

from lorabudget.labelsets import best_thresholds, decide, sigmoid
from lorabudget.metrics import classification_metrics, format_metrics
from lorabudget.metrics_multilabel import multilabel_metrics
from lorabudget.training.setup import balanced_pos_weight, bce_loss, weighted_bce_loss
from lorabudget.training.state import BestKeeper, primary_score

NAMES = ["a", "b", "c", "d"]


def _data(seed: int = 0, n: int = 300):
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, 4)) < [0.5, 0.3, 0.1, 0.02]).astype(np.float32)
    logits = rng.normal(size=(n, 4)) + 2.5 * truth - 1
    return logits, truth


@pytest.mark.parametrize("given", [None, [0.5, 0.4, 0.3, 0.9]])
def test_metrics_match_scikit_learn(given):
    logits, truth = _data()
    m = classification_metrics(logits, truth, NAMES, thresholds=given)
    cuts = best_thresholds(sigmoid(logits), truth) if given is None else np.array(given)
    pred = decide(sigmoid(logits), cuts).astype(int)
    y = truth.astype(int)
    assert m["problem_type"] == "multi_label" and m["primary_metric"] == "micro_f1"
    assert m["thresholds_chosen_on_these_rows"] is (given is None)
    assert m["micro_f1"] == pytest.approx(f1_score(y, pred, average="micro", zero_division=0))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    assert m["subset_accuracy"] == pytest.approx(accuracy_score(y, pred)) == m["accuracy"]
    assert m["hamming_loss"] == pytest.approx(hamming_loss(y, pred))
    per = f1_score(y, pred, average=None, zero_division=0)
    prec = precision_score(y, pred, average=None, zero_division=0)
    rec = recall_score(y, pred, average=None, zero_division=0)
    for j, name in enumerate(NAMES):
        row = m["per_class"][name]
        assert (row["f1"], row["precision"], row["recall"]) == pytest.approx((per[j], prec[j], rec[j]))
        assert row["support"] == int(y[:, j].sum()) and row["threshold"] == pytest.approx(cuts[j])
    for key in ("micro_f1", "macro_f1", "subset_accuracy"):
        low, high = m[f"{key}_ci95"]
        assert 0 <= low <= m[key] <= high <= 1
    torch_loss = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(logits), torch.tensor(truth))
    assert m["loss"] == pytest.approx(float(torch_loss), rel=1e-6)
    assert "micro F1" in format_metrics(m)


def test_intervals_are_deterministic_and_narrow_with_rows():
    small, big = multilabel_metrics(*_data(1, 100), NAMES), multilabel_metrics(*_data(1, 2000), NAMES)
    assert small["micro_f1_ci95"] == multilabel_metrics(*_data(1, 100), NAMES)["micro_f1_ci95"]
    width = lambda m: m["micro_f1_ci95"][1] - m["micro_f1_ci95"][0]  # noqa: E731
    assert width(big) < width(small)


def test_thresholds_maximise_each_class_f1():
    logits, truth = _data(2)
    probs = sigmoid(logits)
    cuts = best_thresholds(probs, truth)
    for j in range(3):  # classes with positives: no other cut beats the chosen one
        chosen = f1_score(truth[:, j], probs[:, j] >= cuts[j], zero_division=0)
        for t in np.unique(probs[:, j]):
            assert f1_score(truth[:, j], probs[:, j] >= t, zero_division=0) <= chosen + 1e-12


def test_pos_weight_and_bce():
    targets = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]], dtype=np.float32)
    np.testing.assert_allclose(balanced_pos_weight(targets), [1 / 3, 3.0, 1.0])  # no positive: 1
    rare = np.zeros((1000, 1), dtype=np.float32)
    rare[0] = 1
    assert balanced_pos_weight(rare)[0] == 100.0  # clipped
    logits = torch.randn(4, 3)
    batch = {"labels": torch.tensor(targets)}
    plain = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["labels"])
    assert torch.allclose(bce_loss(logits, batch), plain)
    ones = weighted_bce_loss(np.ones(3, dtype=np.float32))(logits, batch)
    assert torch.allclose(ones, plain)
    # row chunks weighted by their share add up to the whole batch's loss (split_rows)
    halves = 0.5 * bce_loss(logits[:2], {"labels": batch["labels"][:2]}) + 0.5 * bce_loss(
        logits[2:], {"labels": batch["labels"][2:]}
    )
    assert torch.allclose(halves, plain)


def test_best_checkpoint_follows_micro_f1():
    keeper = BestKeeper()
    model = torch.nn.Linear(2, 2)
    first = {"primary_metric": "micro_f1", "micro_f1": 0.5, "accuracy": 0.4, "loss": 1.0}
    second = {"primary_metric": "micro_f1", "micro_f1": 0.6, "accuracy": 0.1, "loss": 1.0}
    assert keeper.offer(1, first, model) and keeper.offer(2, second, model)
    assert keeper.step == 2 and primary_score(second) == 0.6
    assert not keeper.offer(3, {**first, "accuracy": 0.9}, model)  # higher subset accuracy, lower micro F1
