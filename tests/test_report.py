"""Reports: every figure written as a valid PNG, regenerated identically, numbers read from the files."""

import json
import shutil
import struct

import numpy as np
import pytest

from lorabudget.cli import main
from lorabudget.report.compare import run_row, write_comparison
from lorabudget.report.plots import pareto_front
from lorabudget.report.run_report import reliability, write_report


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory, tiny_bert, data_dir, make_config):
    import yaml

    tmp = tmp_path_factory.mktemp("report")
    cfg = tmp / "cfg.yaml"
    values = make_config(
        tmp / "cache",
        name="tiny-report",
        model={"name": str(tiny_bert), "labels": None},  # class names read from the data: "0".."3"
        head={"type": "linear", "pooling": "mean"},
        adapter={"r": 2, "alpha": 4, "dropout": 0.1, "modules": ["query"]},
        training={"batch_size": 32, "learning_rate": 2e-2, "log_every": 1, "eval_every": 3, "seed": 42},
    )
    cfg.write_text(yaml.safe_dump(values))
    run = tmp / "run"
    assert main(["train", str(cfg), "--output", str(run)]) == 0
    assert main(["evaluate", str(run), "--data", str(data_dir / "test.csv")]) == 0
    assert main(["predict", str(run), "--input", str(data_dir / "unlabelled.csv")]) == 0
    return run


FIGURES = [
    "training_loss.png",
    "validation.png",
    "confusion_matrix.png",
    "reliability.png",
    "prediction_distribution.png",
]


def test_all_figures_written_and_valid(reported_run):
    for name in FIGURES:
        w, h = _png_size(reported_run / "figures" / name)
        assert 300 <= w <= 2000 and 300 <= h <= 2000, (name, w, h)
    report = (reported_run / "report.md").read_text()
    for name in FIGURES:
        assert f"figures/{name}" in report
    assert "Not available" not in report
    assert "classification head" in report and "tiny-report" in report


def test_report_regenerates_identically(reported_run, tmp_path):
    before = {n: (reported_run / "figures" / n).read_bytes() for n in FIGURES}
    md = (reported_run / "report.md").read_text()
    assert main(["report", str(reported_run)]) == 0
    assert {n: (reported_run / "figures" / n).read_bytes() for n in FIGURES} == before
    assert (reported_run / "report.md").read_text() == md


def test_run_without_eval_or_predictions_still_reports(reported_run, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(reported_run, bare)
    shutil.rmtree(bare / "figures")
    shutil.rmtree(bare / "evals")  # the report reads every kept evaluation, not only eval.json
    for name in ("eval.json", "predictions.json"):
        (bare / name).unlink()
    (bare / "metrics.jsonl").write_text(
        "\n".join(l for l in (bare / "metrics.jsonl").read_text().splitlines() if json.loads(l)["type"] == "train")
    )
    write_report(bare)
    report = (bare / "report.md").read_text()
    assert (bare / "figures" / "training_loss.png").is_file()
    assert not (bare / "figures" / "confusion_matrix.png").exists()
    assert "## Not available" in report and "no eval.json" in report and "no predictions.json" in report
    assert "validation curves" in report


def test_compare_table_reads_the_files(reported_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(reported_run, other)
    summary = json.loads((other / "summary.json").read_text())
    summary.update(name="other", validation_accuracy=0.123456, trainable_params=5000)
    (other / "summary.json").write_text(json.dumps(summary))
    shutil.rmtree(other / "evals")
    (other / "eval.json").unlink()
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "cmp"
    assert main(["compare", str(reported_run), str(other), str(empty), "--output", str(out)]) == 0
    table = (out / "compare.md").read_text()
    # "other" has no test evaluation: ranked on validation accuracy, which all runs with a figure share
    assert "Ranked by **validation accuracy (40 rows)**" in table
    row = next(l for l in table.splitlines() if "| other |" in l)
    cells = [c.strip() for c in row.split("|")]
    assert cells[1] == "2" and cells[4] == "5,000" and cells[6].startswith("12.35% (")
    assert cells[7] == "–"  # no test evaluation: a dash, not a number
    ref = run_row(reported_run)
    assert f"{100 * ref['test_accuracy']:.2f}%" in table
    empty_row = next(l for l in table.splitlines() if "| empty (unfinished) |" in l)  # no summary.json
    assert empty_row.count("–") == 7
    _png_size(out / "accuracy_vs_params.png")
    assert (out / "compare.csv").read_text().splitlines()[0].startswith("rank,name,run,method")
    # change a file, the table changes
    summary["validation_accuracy"] = 0.5
    (other / "summary.json").write_text(json.dumps(summary))
    write_comparison([reported_run, other], out)
    assert "50.00% (" in (out / "compare.md").read_text()


def test_pareto_front_and_ece():
    pts = [(100, 0.8), (200, 0.79), (300, 0.9), (50, 0.7), (300, 0.85)]
    assert sorted(pareto_front(pts)) == [0, 2, 3]
    conf = np.array([0.95, 0.95, 0.55, 0.55])
    correct = np.array([1.0, 1.0, 1.0, 0.0])
    *_, ece = reliability(conf, correct)
    # bin 0.9-1.0: |1 - 0.95| * 0.5; bin 0.5-0.6: |0.5 - 0.55| * 0.5
    assert ece == pytest.approx(0.05)


def test_report_on_non_run_is_an_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a lorabudget run directory" in capsys.readouterr().err


def test_evaluations_written_in_the_same_second_keep_their_order(tmp_path):
    from lorabudget.rundir.layout import RunDir

    files = RunDir(tmp_path)
    metrics = {"accuracy": 0.5, "time": "ignored"}
    files.write_eval(metrics, "zz-validation", "validation")  # a name sorting after the next one
    evaluated = files.write_eval(metrics, "aa-test.csv", "evaluate")
    same = {"time": "2026-12-02T08:00:00"}
    for path in (tmp_path / "evals").glob("*.json"):  # both in one second, as a fast evaluate after training
        path.write_text(json.dumps({**json.loads(path.read_text()), **same}))
    import os

    os.utime(evaluated, ns=(2_000_000_000_000_000_000, 2_000_000_000_000_000_000))
    assert [r["kind"] for r in files.eval_records()] == ["validation", "evaluate"]
