"""End-to-end through the command line on tiny data, and every bad input's one-line error."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lorabudget.cli import main


def _write_config(tmp_path, values) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_roberta, data_dir):
    """One tiny training run shared by the end-to-end tests."""
    tmp = tmp_path_factory.mktemp("e2e")
    values = {
        "name": "tiny",
        "model": {"name": str(tiny_roberta), "max_length": 64, "labels": ["World", "Sports", "Business", "Sci/Tech"]},
        # A random tiny encoder carries keyword identity in its mean token state, not in <s>.
        "head": {"type": "linear", "pooling": "mean"},
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.0, "modules": ["query", "value"]},
        "data": {"train": str(data_dir / "train.csv"), "validation_size": 40, "cache_dir": str(tmp / "cache")},
        "training": {"epochs": 5, "batch_size": 16, "learning_rate": 2e-2, "log_every": 2, "eval_every": 5, "seed": 7},
    }
    cfg = _write_config(tmp, values)
    run = tmp / "run"
    assert main(["train", str(cfg), "--output", str(run)]) == 0
    return run, cfg


def test_train_writes_run_directory(trained_run):
    run, _ = trained_run
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "budget.json",
        "summary.json",
        "eval.json",
        "adapter/adapter_config.json",
        "tokenizer",
    ):
        assert (run / name).exists(), name
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    train_lines = [l for l in lines if l["type"] == "train"]
    evals = [l for l in lines if l["type"] == "eval"]
    assert train_lines and all(l["samples_per_s"] > 0 and l["tokens_per_s"] > 0 for l in train_lines)
    assert [e["step"] for e in evals][:2] == [5, 10]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["validation_accuracy"] == max(e["accuracy"] for e in evals)
    assert summary["trainable_params"] == json.loads((run / "budget.json").read_text())["trainable_params"]
    # the keywords make the tiny task learnable: training must have done something
    assert summary["validation_accuracy"] > 0.7
    assert not list(run.glob(".*.tmp")) and not list(run.parent.glob(".*.tmp"))


def test_evaluate_predict_classify(trained_run, data_dir, capsys):
    run, _ = trained_run
    assert main(["evaluate", str(run), "--data", str(data_dir / "test.csv")]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "confusion matrix" in out
    ev = json.loads((run / "eval.json").read_text())
    assert ev["rows"] == 80 and sum(map(sum, ev["confusion_matrix"])) == 80
    assert len(ev["confidence"]) == 80

    pred = run / "preds.csv"
    assert (
        main(
            ["predict", str(run), "--input", str(data_dir / "unlabelled.csv"), "--output", str(pred), "--probabilities"]
        )
        == 0
    )
    rows = list(csv.reader(pred.open()))
    assert rows[0][:2] == ["ID", "Label"] and len(rows[0]) == 6
    assert [int(r[0]) for r in rows[1:]] == list(range(80))
    assert all(0 <= int(r[1]) <= 3 for r in rows[1:])
    assert all(abs(sum(map(float, r[2:])) - 1) < 1e-4 for r in rows[1:])
    # predictions agree with evaluate's accuracy on the same texts
    labels = [int(r[1]) for r in csv.reader(open(data_dir / "test.csv"))]
    acc = sum(int(r[1]) == l for r, l in zip(rows[1:], labels)) / 80
    assert acc == pytest.approx(ev["accuracy"])

    capsys.readouterr()
    assert main(["classify", str(run), "the team won the game and the league", "stocks and shares"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in out] == ["Sports", "Business"]
    assert all(0.25 < float(line.split("\t")[1]) <= 1 for line in out)


def test_reload_in_fresh_process_without_training_data(trained_run, data_dir, tmp_path):
    run, _ = trained_run
    # the same texts under another name, and the training data out of reach
    texts = tmp_path / "in.csv"
    texts.write_text((data_dir / "unlabelled.csv").read_text())
    out = tmp_path / "fresh.csv"
    env = {"HF_HUB_OFFLINE": "1", "PATH": "", "HOME": str(tmp_path), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    code = (
        "import sys; from lorabudget.cli import main; "
        f"sys.exit(main(['predict', {str(run)!r}, '--input', {str(texts)!r}, '--output', {str(out)!r}]))"
    )
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    in_process = tmp_path / "same.csv"
    assert main(["predict", str(run), "--input", str(texts), "--output", str(in_process)]) == 0
    assert out.read_text() == in_process.read_text()


def test_same_seed_same_metrics(tiny_config, tmp_path):
    values = tiny_config(training={"epochs": 1, "eval_every": 4})
    cfg = _write_config(tmp_path, values)
    metrics = []
    for name in ("a", "b"):
        assert main(["train", str(cfg), "--output", str(tmp_path / name)]) == 0
        lines = [json.loads(l) for l in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        metrics.append([(l["step"], l.get("loss"), l.get("accuracy")) for l in lines])
    assert metrics[0] == metrics[1]


def test_train_on_validation_trains_on_every_row_and_keeps_the_last_weights(tiny_config, tmp_path, capsys):
    from lorabudget.report.compare import run_row

    values = tiny_config(data={"train_on_validation": True}, training={"epochs": 1, "eval_every": 4})
    run = tmp_path / "run"
    assert main(["train", str(_write_config(tmp_path, values)), "--output", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["train_rows"], summary["validation_rows"], summary["validation_trained_on"]) == (240, 40, True)
    evals = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in l]
    assert [e["step"] for e in evals] == [4, 8, 12, 15] and all(e["best"] for e in evals)
    assert (summary["best_step"], summary["validation_accuracy"]) == (15, evals[-1]["accuracy"])
    out = capsys.readouterr().out
    assert "240 training rows, 40 validation rows (trained on too" in out and "last weights kept" in out
    assert main(["report", str(run)]) == 0
    assert "is no estimate" in (run / "report.md").read_text()
    card = (run / "README.md").read_text()
    assert (
        "trained on too (`data.train_on_validation`)" in card
        and "The kept weights are the last evaluation's, at step 15 of 15" in card
    )
    assert "95% interval" not in card  # no interval for a figure on rows the run trained on
    assert run_row(run)["validation"] is None  # compare cannot rank it by rows it trained on
    assert main(["evaluate", str(run), "--data", values["data"]["train"]]) == 0
    rows = [
        l
        for l in (run / "README.md").read_text().splitlines()
        if l.startswith("| ") and ("| validation |" in l or "| evaluate |" in l)
    ]
    # The training file is no held-out set: no interval for it either, and it says why.
    assert len(rows) == 2 and "95% interval" not in (run / "README.md").read_text()
    assert rows[1].startswith("| train.csv | evaluate | 240 |")
    assert rows[1].endswith("| **not held out** (240 training, 40 validation rows) |")


def test_best_keeper_keeps_the_best_or_the_last():
    import torch

    from lorabudget.training.state import BestKeeper

    model = torch.nn.Linear(2, 2)
    for keep_last, kept_step in ((False, 1), (True, 2)):
        keeper = BestKeeper(keep_last=keep_last)
        keeper.offer(1, {"accuracy": 0.9, "loss": 0.3}, model)
        keeper.offer(2, {"accuracy": 0.8, "loss": 0.5}, model)
        assert keeper.step == kept_step


def test_plan_command_output(capsys):
    assert main(["plan", "seed-targeted"]) == 0
    out = capsys.readouterr().out
    assert "796,420" in out and "593,668" in out and "WITHIN budget" in out


def _err(capsys, argv, code=2):
    assert main(argv) == code
    captured = capsys.readouterr()
    lines = [l for l in captured.err.strip().splitlines() if l.startswith("lorabudget")]
    assert lines and "Traceback" not in captured.err
    return lines[-1]


def test_bad_inputs_give_one_line_errors(capsys, tiny_config, tmp_path, data_dir, trained_run):
    run, _ = trained_run
    over = _write_config(tmp_path, tiny_config(budget={"max_trainable_params": 1000}))
    capsys.readouterr()
    assert main(["train", str(over), "--output", str(tmp_path / "o")]) == 3
    captured = capsys.readouterr()
    assert "exceed the budget of 1,000" in captured.err.strip().splitlines()[-1] and not (tmp_path / "o").exists()
    assert "verdict: OVER budget" in captured.out  # the breakdown is printed before the refusal

    bad_module = _write_config(tmp_path, tiny_config(adapter={"modules": ["qkv"]}))
    assert "unknown module 'qkv'" in _err(capsys, ["plan", str(bad_module)])
    bad_layer = _write_config(tmp_path, tiny_config(adapter={"layers": [7]}))
    assert "layer 7 is out of range" in _err(capsys, ["plan", str(bad_layer)])
    assert "unknown config key 'training.lr'" in _err(capsys, ["plan", "seed-lora", "--set", "training.lr=1"])

    missing = _write_config(tmp_path, tiny_config(data={"train": str(tmp_path / "none.csv")}))
    assert "data file not found" in _err(capsys, ["train", str(missing), "--output", str(tmp_path / "m")])
    offline = _write_config(tmp_path, tiny_config(model={"name": "no-such-org/no-such-model"}))
    assert "--set model.name=/path/to/model" in _err(capsys, ["train", str(offline), "--output", str(tmp_path / "n")])

    assert "run directory not found" in _err(capsys, ["predict", str(tmp_path / "nope"), "--input", "x.csv"])
    out = tmp_path / "p.csv"
    assert "data file not found" in _err(
        capsys, ["predict", str(run), "--input", str(tmp_path / "x.csv"), "--output", str(out)]
    )
    assert not out.exists()
    nolabel = tmp_path / "nolabel.csv"
    nolabel.write_text("text\nhello\n")
    assert "no label column" in _err(capsys, ["evaluate", str(run), "--data", str(nolabel)])
    assert "exists" in _err(capsys, ["train", str(trained_run[1]), "--output", str(run)])


def test_debug_shows_traceback(tmp_path):
    from lorabudget.errors import LorabudgetError

    with pytest.raises(LorabudgetError):
        main(["--debug", "plan", str(tmp_path / "missing.yaml")])


def test_console_script_runs():
    res = subprocess.run([sys.executable, "-m", "lorabudget.cli", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and "lorabudget" in res.stdout


def test_predict_bf16_close_to_fp32(trained_run, data_dir, tmp_path):
    run, _ = trained_run
    outs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.csv"
        assert (
            main(
                [
                    "predict",
                    str(run),
                    "--input",
                    str(data_dir / "unlabelled.csv"),
                    "--output",
                    str(out),
                    "--probabilities",
                    "--precision",
                    precision,
                    "--no-report",
                ]
            )
            == 0
        )
        outs[precision] = [list(map(float, r[2:])) for r in list(csv.reader(out.open()))[1:]]
    diffs = [abs(a - b) for ra, rb in zip(outs["fp32"], outs["bf16"]) for a, b in zip(ra, rb)]
    assert max(diffs) < 0.1 and sum(diffs) > 0  # bf16 really ran, and stayed close
