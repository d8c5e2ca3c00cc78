"""A multi-label run end to end on the tiny model: train from the command line, predict `ID,Label`
with `|`-joined names, evaluate, thresholds.json, `--threshold`, and the Python API on a DataFrame."""

from __future__ import annotations

import csv
import json

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import MULTI_LABEL_CLASSES, multilabel_rows

from lorabudget.cli import main


@pytest.fixture(scope="module")
def ml_run(tmp_path_factory, make_config, multilabel_dir):
    base = tmp_path_factory.mktemp("ml-run")
    values = make_config(
        base / "cache",
        model={"labels": None},
        head={"type": "linear", "pooling": "mean"},
        training={"epochs": 3, "learning_rate": 2e-2},
    )
    cfg = base / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(values))
    argv = ["train", str(cfg), "--data", str(multilabel_dir / "train.csv"), "--label-column", "labels"]
    assert main([*argv, "--multi-label", "--output", str(base / "run"), "--no-report"]) == 0
    return base / "run"


def test_run_records_classes_thresholds_and_multi_label_metrics(ml_run):
    saved = yaml.safe_load((ml_run / "config.yaml").read_text())
    assert saved["model"]["problem_type"] == "multi_label" and saved["model"]["labels"] == MULTI_LABEL_CLASSES
    thresholds = json.loads((ml_run / "thresholds.json").read_text())
    assert set(thresholds["thresholds"]) == set(MULTI_LABEL_CLASSES) and thresholds["chosen_on"] == "validation"
    assert thresholds["rows"] == 40
    ev = json.loads((ml_run / "eval.json").read_text())
    for key in ("micro_f1", "micro_f1_ci95", "macro_f1", "macro_f1_ci95", "subset_accuracy", "hamming_loss"):
        assert key in ev
    assert ev["primary_metric"] == "micro_f1" and ev["thresholds_chosen_on_these_rows"] is True
    assert ev["per_class"]["sports"]["threshold"] == pytest.approx(thresholds["thresholds"]["sports"])
    summary = json.loads((ml_run / "summary.json").read_text())
    assert len(summary["train_label_distribution"]) == 4 and 0 < summary["train_label_distribution"][0] < 1
    assert summary["validation_micro_f1"] == ev["micro_f1"]


def test_predict_writes_pipe_joined_names(ml_run, multilabel_dir, tmp_path):
    out = tmp_path / "pred.csv"
    assert main(["predict", str(ml_run), "--input", str(multilabel_dir / "unlabelled.csv"), "--output", str(out)]) == 0
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["ID", "Label"] and len(rows) == 81
    cells = [r[1] for r in rows[1:]]
    assert all(name in MULTI_LABEL_CLASSES for cell in cells for name in cell.split("|") if cell)
    # a very low threshold predicts every class of every row; probabilities give one column per class
    argv = ["predict", str(ml_run), "--input", str(multilabel_dir / "unlabelled.csv"), "--output", str(out)]
    assert main([*argv, "--threshold", "0.0001", "--probabilities", "--label-format", "id"]) == 0
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["ID", "Label"] + [f"prob_{c}" for c in MULTI_LABEL_CLASSES]
    assert {r[1] for r in rows[1:]} == {"0|1|2|3"}


def test_evaluate_reads_labels_as_training_did(ml_run, multilabel_dir, capsys):
    assert main(["evaluate", str(ml_run), "--data", str(multilabel_dir / "test.csv"), "--no-report"]) == 0
    assert "micro F1" in capsys.readouterr().out
    ev = json.loads((ml_run / "eval.json").read_text())
    assert ev["n"] == 80 and ev["thresholds_chosen_on_these_rows"] is False
    assert ev["held_out"] is True


def test_classify_prints_label_sets(ml_run, capsys):
    assert main(["classify", str(ml_run), "game team score coach", "--threshold", "0.5"]) == 0
    label = capsys.readouterr().out.splitlines()[-1].split("\t")[0]
    assert all(name in MULTI_LABEL_CLASSES for name in label.split("|") if label)


def test_python_api_on_a_dataframe_of_lists(tmp_path, make_config):
    import lorabudget as lb

    rows = multilabel_rows(120, 5)
    frame = pd.DataFrame({"text": [t for t, _ in rows], "labels": [c for _, c in rows]})
    values = make_config(tmp_path / "cache", model={"labels": None}, training={"max_steps": 4})
    run = lb.train(values, frame, output=tmp_path / "run", problem_type="multi_label", report=False)
    assert run.config.model.labels == MULTI_LABEL_CLASSES
    preds = run.predict(frame["text"].tolist()[:5])
    assert isinstance(preds.labels[0], list) and preds.probabilities.shape == (5, 4)
    assert list(preds.to_frame().columns[:2]) == ["label", "label_id"]
    ev = run.evaluate(frame.iloc[:30], record=False)
    assert ev.micro_f1 is not None and set(ev.per_class.index) == set(MULTI_LABEL_CLASSES)
    every = run.predict(["x"], threshold=1e-6)
    assert every.labels == [MULTI_LABEL_CLASSES]
    np.testing.assert_array_equal(np.asarray(every.label_ids), [[0, 1, 2, 3]])


def test_report_draws_the_multi_label_figures(ml_run):
    from lorabudget.report.run_report import write_report

    text = write_report(ml_run).read_text()
    assert "| threshold |" in text and "micro F1" in text and "Confusion matrix" not in text
    for figure in ("per_class_f1", "label_counts", "precision_recall"):
        assert list(ml_run.rglob(f"*{figure}*.png")), figure
    from lorabudget.report.modelcard import write_model_card

    card = write_model_card(ml_run).read_text()
    assert "best validation micro F1" in card and "Multi-label: accuracy is subset accuracy" in card


def test_bad_threshold_is_refused_in_one_line(ml_run, multilabel_dir, capsys):
    for value in ("0", "1", "1.5", "-0.2", "nan"):
        argv = ["predict", str(ml_run), "--input", str(multilabel_dir / "unlabelled.csv"), "--threshold", value]
        assert main([*argv, "--output", "-"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--threshold must be" in err[0]


def test_plan_counts_one_output_per_class(tmp_path, make_config, multilabel_dir, capsys):
    import lorabudget as lb

    values = make_config(tmp_path / "cache", model={"labels": None}, head={"type": "linear", "pooling": "mean"})
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(values))
    data = ["--data", str(multilabel_dir / "train.csv"), "--label-column", "labels"]
    assert main(["plan", str(cfg), *data, "--multi-label"]) == 0
    assert "WITHIN budget" in capsys.readouterr().out
    plan = lb.plan(
        values,
        data=str(multilabel_dir / "train.csv"),
        label_column="labels",
        overrides={"model.problem_type": "multi_label"},
    )
    assert plan.head == 33 * 4  # a linear head: hidden 32 + bias, one output per class
    assert plan.config.model.labels == MULTI_LABEL_CLASSES


def test_a_class_without_positive_training_rows_is_named(tmp_path, make_config, capsys):
    from lorabudget.config import from_dict
    from lorabudget.training.setup import prepare_data

    rows = multilabel_rows(60, 3)
    path = tmp_path / "rare.csv"
    lines = ["text,labels"] + [f"{t},{'|'.join(c)}" for t, c in rows] + ["kept apart,rare"]
    path.write_text("\n".join(lines) + "\n")
    values = make_config(tmp_path / "cache", model={"labels": None, "problem_type": "multi_label"})
    values["data"].update(train=str(path), label_column="labels", validation_size=1, max_train_rows=50)
    prepare_data(from_dict(values), log=lambda _: None)
    assert "training rows: class rare has no positive row" in capsys.readouterr().err


def test_bf16_row_chunks_and_balanced_pos_weight_train(tmp_path, make_config, multilabel_dir, capsys):
    """Mixed precision, batches cut into row chunks (max_batch_positions) and pos_weight together."""
    values = make_config(
        tmp_path / "cache",
        model={"labels": None},
        training={
            "max_steps": 4,
            "eval_every": 2,
            "mixed_precision": "bf16",
            "max_batch_positions": 128,
            "class_weights": "balanced",
        },
    )
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(values))
    argv = ["train", str(cfg), "--data", str(multilabel_dir / "train.csv"), "--label-column", "labels"]
    assert main([*argv, "--multi-label", "--output", str(tmp_path / "run"), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "positive-class weights (balanced): business" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["mixed_precision"] == "bf16" and np.isfinite(summary["validation_micro_f1"])
    assert (tmp_path / "run" / "thresholds.json").is_file()


@pytest.mark.parametrize("content", ["{not json", '{"thresholds": {"sports": 7}}', '{"thresholds": [0.5]}'])
def test_a_damaged_thresholds_file_is_an_error(tmp_path, content):
    from lorabudget.errors import LorabudgetError
    from lorabudget.inference.multilabel import run_thresholds

    (tmp_path / "thresholds.json").write_text(content)
    with pytest.raises(LorabudgetError, match="thresholds.json"):
        run_thresholds(tmp_path, MULTI_LABEL_CLASSES)
    assert list(run_thresholds(tmp_path, MULTI_LABEL_CLASSES, 0.3)) == [0.3] * 4  # --threshold needs no file
    (tmp_path / "thresholds.json").write_text('{"thresholds": {"sports": 0.2}}')
    assert list(run_thresholds(tmp_path, MULTI_LABEL_CLASSES)) == [0.5, 0.2, 0.5, 0.5]


def test_multi_label_with_chunked_long_texts(tmp_path, make_config):
    """Windows repeat their row's 0/1 targets in training; prediction pools them back to one row each."""
    import lorabudget as lb

    rows = multilabel_rows(80, 9)
    frame = pd.DataFrame({"text": [t for t, _ in rows], "labels": ["|".join(c) for _, c in rows]})
    values = make_config(tmp_path / "cache", model={"labels": None, "max_length": 16}, training={"max_steps": 3})
    values["data"].update(long_text="chunks", validation_size=20)
    run = lb.train(values, frame, output=tmp_path / "run", problem_type="multi_label", report=False)
    preds = run.predict(frame["text"].tolist()[:6])
    assert len(preds.labels) == 6 and preds.probabilities.shape == (6, 4)
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["n"] == 20
