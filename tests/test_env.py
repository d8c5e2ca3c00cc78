"""The run directory named by the last line of a training run with --overwrite."""

import json

import yaml

from lorabudget import precision as prec
from lorabudget.cli import main


def test_overwrite_run_ends_by_naming_the_folder_asked_for(tiny_config, tmp_path, monkeypatch, capsys):
    """The new run trains in the hidden sibling PARENT/.NAME.overwrite, but the last line names NAME."""
    monkeypatch.setattr(prec, "cpu_bf16_flags", lambda: ())  # fp32, no probe
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(training={"max_steps": 2, "log_every": 1})))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(cfg.read_text())  # an earlier run to replace
    assert main(["train", str(cfg), "--output", str(run), "--overwrite", "--no-report"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "run directory: " in line]
    assert lines and lines[-1].endswith(f"run directory: {run}")
    assert ".overwrite" not in lines[-1]
    assert json.loads((run / "summary.json").read_text())["trainable_params"] > 0
    assert not list(tmp_path.glob(".run.*"))
