"""Scores on rows a run has seen never travel as test results; reports keep every evaluation; compare
refuses unrelated tasks; runs are named by their folder everywhere.

One tiny run is trained on 600 rows (``train.csv``) with 100 validation rows (``val.csv``) into
``runs/reviews`` from a config named ``tiny``; the cases below are the inputs each problem was seen with.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import synthetic_rows, write_csv

from lorabudget.cli import main
from lorabudget.report.modelcard import parse_model_card
from lorabudget.report.ranking import run_row
from lorabudget.rundir.layout import RunDir
from lorabudget.rundir.rows import normalised, text_digests

SRC = Path(__file__).resolve().parents[1] / "src" / "lorabudget"


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:")]


@pytest.fixture(scope="module")
def world(tmp_path_factory, make_config):
    """The trained run and the data files: train.csv (600), val.csv (100), mixed.csv (500 rows: 389 of them
    training rows, some re-spaced and re-cased), test.csv (80 rows the run never saw)."""
    root = tmp_path_factory.mktemp("overlap")
    rows = synthetic_rows(1000, seed=21)
    unique, seen = [], set()
    for text, label in rows:  # distinct texts, so every count below is exact
        if normalised(text) not in seen:
            seen.add(normalised(text))
            unique.append((text, label))
    train, val, fresh = unique[:600], unique[600:700], unique[700:]
    write_csv(root / "train.csv", train)
    write_csv(root / "val.csv", val)
    write_csv(root / "test.csv", fresh[:80])
    reused = [(f"  {t.upper()} " if i % 3 == 0 else t.replace(" ", "  "), y) for i, (t, y) in enumerate(train[:389])]
    write_csv(root / "mixed.csv", reused + fresh[80:191])
    values = make_config(
        root / "cache",
        name="tiny",
        data={"train": str(root / "train.csv"), "validation": str(root / "val.csv")},
        training={"max_steps": 2, "batch_size": 32, "learning_rate": 2e-2, "log_every": 1, "seed": 3},
    )
    (root / "tiny.yaml").write_text(yaml.safe_dump(values))
    run = root / "runs" / "reviews"
    assert main(["train", str(root / "tiny.yaml"), "--output", str(run)]) == 0
    return root, run


def _evaluate(run: Path, data: Path, capsys) -> tuple[dict, str]:
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(data)]) == 0
    err = capsys.readouterr().err
    record = next(r for r in RunDir(run).eval_records() if r.get("data") == data.name)
    return record, err


def test_a_run_records_a_digest_of_each_training_and_validation_text(world):
    root, run = world
    stored = RunDir(run).read_row_digests()
    assert (len(stored["train"]), len(stored["validation"])) == (600, 100)
    assert (
        stored["train"].dtype == np.dtype("<u8")
        and RunDir(run).row_digests_path.stat().st_size < (600 + 100) * 8 + 1000
    )
    with open(root / "train.csv", newline="") as fh:
        texts = [row[0] for row in csv.reader(fh)]
    assert set(text_digests(texts).tolist()) == set(stored["train"].tolist())


def test_digests_fold_case_and_whitespace_and_keep_pairs_apart():
    a, b, c = text_digests(["Stocks  rallied\ttoday", " stocks rallied TODAY\n", "stocks rallied"])
    assert a == b != c
    first, second = text_digests(["q", "q"], pairs=["yes", "no"])
    assert first != second and first != text_digests(["q"])[0]


def test_evaluate_on_a_file_sharing_389_of_500_rows_says_so(world, capsys):
    root, run = world
    record, err = _evaluate(run, root / "mixed.csv", capsys)
    assert record["overlap"] == {"rows": 500, "training_rows": 389, "validation_rows": 0}
    assert record["held_out"] is False and record["rows"] == 500
    assert record["data"] == "mixed.csv" and str(root) not in json.dumps(record)  # the file name, not a path
    assert re.fullmatch(r"[0-9a-f]{32}", record["data_digest"])
    [line] = _warnings(err)
    assert "mixed.csv" in line and "389 of its 500 rows are training rows" in line and "0 validation rows" in line


def test_evaluate_on_the_training_file_itself(world, capsys):
    root, run = world
    record, err = _evaluate(run, root / "train.csv", capsys)
    assert record["overlap"] == {"rows": 600, "training_rows": 600, "validation_rows": 0}
    assert record["held_out"] is False and len(_warnings(err)) == 1
    record, err = _evaluate(run, root / "val.csv", capsys)
    assert record["overlap"] == {"rows": 100, "training_rows": 0, "validation_rows": 100}
    assert record["held_out"] is False and len(_warnings(err)) == 1


def test_evaluate_on_new_rows_is_held_out_without_a_warning(world, capsys):
    root, run = world
    record, err = _evaluate(run, root / "test.csv", capsys)
    assert record["overlap"] == {"rows": 80, "training_rows": 0, "validation_rows": 0}
    assert record["held_out"] is True and _warnings(err) == []


def test_a_run_without_digests_has_unknown_overlap(world, tmp_path, capsys):
    root, run = world
    old = tmp_path / "old"
    shutil.copytree(run, old)
    RunDir(old).row_digests_path.unlink()
    record, err = _evaluate(old, root / "mixed.csv", capsys)
    assert record["held_out"] is None and record["overlap"] is None and _warnings(err) == []
    assert "overlap with the run's training rows unknown" in (old / "report.md").read_text()


def _sections(report: str) -> list[str]:
    return [line for line in report.splitlines() if line.startswith("## ")]


def test_report_keeps_validation_and_a_section_per_evaluated_file(world, capsys):
    root, run = world
    for name in ("mixed.csv", "train.csv", "val.csv", "test.csv"):
        _evaluate(run, root / name, capsys)
    before = sorted(p.name for p in (run / "evals").iterdir())
    _evaluate(run, root / "mixed.csv", capsys)  # the same file again replaces its own record and section
    assert sorted(p.name for p in (run / "evals").iterdir()) == before
    report = (run / "report.md").read_text()
    sections = _sections(report)
    assert sections.count("## Evaluation: mixed.csv") == 1 and "## Evaluation: test.csv" in sections
    assert "## Evaluation: train.csv" in sections and any(s.startswith("## Validation: ") for s in sections)
    pictures = re.findall(r"!\[Confusion matrix on [^]]*\]\((figures/[^)]*)\)", report)
    assert len(pictures) == len(set(pictures)) == 5  # validation, mixed, train, val, test: a file each
    assert all((run / p).is_file() for p in pictures)
    for section in report.split("\n## ")[1:]:
        if section.startswith(("Validation", "Evaluation")):
            assert "| class | precision |" in section and "Confusion matrix on" in section, section[:60]
    mixed = report.split("## Evaluation: mixed.csv")[1].split("\n## ")[0]
    assert "500 rows" in mixed and "not held out: 389 of its 500 rows are training rows" in mixed
    assert "**not held out**" in mixed and "test acc" not in report.lower()
    held = report.split("## Evaluation: test.csv")[1].split("\n## ")[0]
    assert "held out: none of its 80 rows" in held


def test_model_card_lists_held_out_evaluations_only_by_file_name(world, capsys):
    root, run = world
    _evaluate(run, root / "mixed.csv", capsys)
    _evaluate(run, root / "test.csv", capsys)
    meta, body = parse_model_card((run / "README.md").read_text())
    [entry] = meta["model-index"]
    assert entry["name"] == "reviews"
    datasets = {r["dataset"]["name"] for r in entry["results"]}
    assert datasets == {"test.csv"}  # mixed.csv, train.csv and the validation rows are not held out
    assert str(root) not in yaml.safe_dump(meta)
    row = next(line for line in body.splitlines() if line.startswith("| mixed.csv |"))
    assert "**not held out** (389 training, 0 validation rows)" in row
    assert body.startswith("\n# reviews\n")


def test_compare_never_calls_a_score_on_training_rows_a_test_accuracy(world, tmp_path, capsys):
    root, run = world
    _evaluate(run, root / "mixed.csv", capsys)
    only_seen = tmp_path / "runs" / "seen-only"
    shutil.copytree(run, only_seen)
    for path in (only_seen / "evals").iterdir():
        if json.loads(path.read_text())["kind"] == "evaluate" and "mixed.csv" not in path.name:
            path.unlink()
    (only_seen / "eval.json").unlink()
    row = run_row(only_seen)
    assert row["tests"] == {} and row["test_accuracy"] is None and len(row["not_held_out"]) == 1
    out = tmp_path / "cmp"
    assert main(["compare", str(only_seen), "--output", str(out)]) == 0
    table = (out / "compare.md").read_text()
    assert "Ranked by **validation accuracy" in table
    line = next(l for l in table.splitlines() if l.startswith("| 1 | seen-only |"))
    header = next(l for l in table.splitlines() if l.startswith("| rank |"))
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in line.split("|")]))
    assert cells["test acc (95% CI)"] == "–"
    assert "on mixed.csv (389 training, 0 validation rows)" in cells["not held out (rows the run had seen)"]
    with open(out / "compare.csv", newline="") as fh:
        [record] = list(csv.DictReader(fh))
    assert record["test_accuracy"] == "" and "mixed.csv" in record["not_held_out"]


def test_predict_elsewhere_leaves_the_run_byte_for_byte(world, tmp_path, capsys):
    root, run = world
    write_csv(root / "texts.csv", [(t,) for t, _ in synthetic_rows(20, seed=5)], header=["text"])
    before = _snapshot(run)
    assert main(["predict", str(run), "--input", str(root / "texts.csv"), "--output", str(tmp_path / "e.csv")]) == 0
    assert (tmp_path / "e.csv").is_file() and _snapshot(run) == before
    capsys.readouterr()
    assert main(["predict", str(run), "--input", str(root / "texts.csv"), "--output", "-"]) == 0
    assert _snapshot(run) == before
    assert main(["predict", str(run), "--input", str(root / "texts.csv")]) == 0  # the default: into the run
    assert RunDir(run).predictions_summary_path.is_file() and _snapshot(run) != before


def test_records_in_run_decides_by_where_the_csv_goes(world, tmp_path):
    from lorabudget.inference.runs import records_in_run

    root, run = world
    assert records_in_run(run, run / "predictions.csv") is True
    assert records_in_run(run, tmp_path / "elsewhere.csv") is False
    assert records_in_run(run, "-") is False
    assert records_in_run(tmp_path, tmp_path / "p.csv") is False  # not a run: nothing to record


def _task_run(path: Path, classes: list[str], accuracy: float) -> Path:
    path.mkdir(parents=True)
    summary = {
        "name": "minilm-cpu",
        "trainable_params": 5000,
        "budget": 1_000_000,
        "validation_accuracy": accuracy,
        "validation_rows": 300,
        "class_names": classes,
    }
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def test_compare_refuses_a_2_class_run_beside_a_4_class_run(tmp_path, capsys):
    two = _task_run(tmp_path / "sentiment", ["neg", "pos"], 0.95)
    four = _task_run(tmp_path / "news", ["World", "Sports", "Business", "Sci/Tech"], 0.90)
    assert main(["compare", str(two), str(four), "--output", str(tmp_path / "cmp")]) == 2
    [line] = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert "sentiment (neg, pos)" in line and "news (World, Sports, Business, Sci/Tech)" in line
    assert not (tmp_path / "cmp" / "compare.md").exists()


def test_compare_allowed_different_classes_ranks_each_set_on_its_own(tmp_path):
    from lorabudget.report.compare import write_comparison

    runs = [
        _task_run(tmp_path / "sentiment", ["neg", "pos"], 0.95),
        _task_run(tmp_path / "news", ["World", "Sports", "Business", "Sci/Tech"], 0.90),
        _task_run(tmp_path / "news-2", ["Sports", "World", "Business", "Sci/Tech"], 0.91),  # same set
    ]
    text = write_comparison(runs, tmp_path / "cmp", allow_different_classes=True).read_text()
    assert [l for l in text.splitlines() if l.startswith("## Classes")] == [
        "## Classes: neg, pos",
        "## Classes: World, Sports, Business, Sci/Tech",
    ]
    first, second = text.split("## Classes: World")
    assert "| 1 | sentiment |" in first and "news" not in first.split("Run directories")[0]
    assert "| 1 | news-2 |" in second and "| 2 | news |" in second and "sentiment |" not in second
    with open(tmp_path / "cmp" / "compare.csv", newline="") as fh:
        table = {r["name"]: r for r in csv.DictReader(fh)}
    assert table["sentiment"]["classes"] == "neg|pos" and table["news"]["rank"] == "2"


def test_runs_are_named_by_their_folder_not_the_preset(world, tmp_path):
    root, run = world
    assert RunDir(run).display_name == "reviews" and RunDir(str(run) + "/").display_name == "reviews"
    assert (run / "report.md").read_text().startswith("# Run report: reviews\n")
    assert run_row(run)["name"] == "reviews" and run_row(run)["config_name"] == "tiny"
    from lorabudget.report.compare import write_comparison

    assert "| reviews |" in write_comparison([run], tmp_path / "cmp").read_text()


@pytest.mark.parametrize(
    "path, name",
    [
        ("report/run_report.py", "write_report"),
        ("report/compare.py", "write_comparison"),
        ("report/modelcard.py", "load_instructions"),
    ],
)
def test_long_functions_were_split_into_named_steps(path, name):
    tree = ast.parse((SRC / path).read_text(encoding="utf-8"))
    [node] = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name]
    assert node.end_lineno - node.lineno + 1 < 80


def test_a_damaged_digest_file_means_unknown_overlap_not_none(tmp_path, capsys):
    from lorabudget.rundir.rows import overlap

    files = RunDir(tmp_path)
    files.write_row_digests(text_digests(["a", "b"]), text_digests(["c"]))
    assert overlap(text_digests(["A ", "c", "d"]), files.read_row_digests()) == {
        "overlap": {"rows": 3, "training_rows": 1, "validation_rows": 1},
        "held_out": False,
    }
    data = files.row_digests_path.read_bytes()
    files.row_digests_path.write_bytes(data[: len(data) // 2])
    assert files.read_row_digests() is None
    [line] = _warnings(capsys.readouterr().err)
    assert "rows.npz: unreadable" in line and "overlap with training rows unknown" in line
