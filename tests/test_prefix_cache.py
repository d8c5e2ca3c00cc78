"""The frozen-prefix cache (``training.cache_frozen_layers``): the split forward equals the full model on
every family, the depth is right for every method, a run with the cache trains the same weights as one
without, the warm cache is reused, ``true`` is refused where it cannot work, ``cache info|clear`` list
it and search trials share it. Damaged cache files are the damaged-cache table of test_bad_inputs.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAMILY_KINDS
from method_cases import METHOD_SETTINGS
from prefix_cases import top_layer
from test_families import _batch, family_cfg

from lorabudget.config import from_dict
from lorabudget.data.prefix_store import PREFIX_FOLDER, open_store, write_store
from lorabudget.errors import LorabudgetError
from lorabudget.model.build import build_model
from lorabudget.model.prefix import frozen_prefix_depth, split_refusal
from lorabudget.model.prefix_forward import capture, from_layer
from lorabudget.training.loop import train

SPLITTABLE = [k for k in FAMILY_KINDS if k != "albert"]  # ALBERT applies one set of weights in every layer


@pytest.mark.parametrize("head", ["linear", "full"])
@pytest.mark.parametrize("kind", SPLITTABLE)
def test_split_forward_equals_the_full_model(family_model_dir, kind, head):
    """Cached states entering layer k + layers k.. and the head == the whole model, in eval mode."""
    cfg = family_cfg(family_model_dir(kind), kind, "lora", head=head, pooling="mean")
    cfg.adapter.modules, cfg.adapter.layers = ["attention_output"], [2]
    model = build_model(cfg, weights=True).model.eval()
    depth = frozen_prefix_depth(model)
    assert depth == 2 and split_refusal(model, depth) is None
    ids, mask = _batch()
    with torch.no_grad():
        whole = model(input_ids=ids, attention_mask=mask).logits
        for k in (1, 2):
            hidden = capture(model, k, {"input_ids": ids, "attention_mask": mask})
            hidden = hidden * mask[..., None]  # the cache holds each row at its own length: zeros after it
            with from_layer(model, k, hidden):
                split = model(input_ids=ids, attention_mask=mask).logits
            torch.testing.assert_close(split, whole, rtol=0, atol=1e-5)
        again = model(input_ids=ids, attention_mask=mask).logits  # the layer list is whole again
    torch.testing.assert_close(again, whole, rtol=0, atol=0)


@pytest.mark.parametrize("method", list(METHOD_SETTINGS))
def test_depth_of_every_method(tiny_roberta, method):
    """Adapters on the top layer only: k = 2 of 3 for every method (shared banks count where their users
    are; bitfit and ln_tuning placements sit inside the layer); ``full`` trains the embeddings: 0."""
    cfg = family_cfg(tiny_roberta, "roberta", method)
    if method != "full":
        cfg.adapter.layers = [2]
    assert frozen_prefix_depth(build_model(cfg, weights=False).model) == (0 if method == "full" else 2)
    if method != "full":
        cfg.adapter.layers = [0, 2]
        assert frozen_prefix_depth(build_model(cfg, weights=False).model) == 0


def test_a_trainable_final_norm_sits_above_the_layers(family_model_dir):
    cfg = family_cfg(family_model_dir("modernbert"), "modernbert", "lora")
    cfg.adapter.layers = [1]
    model = build_model(cfg, weights=False).model
    model.base_model.model.backbone.final_norm.weight.requires_grad_(True)
    assert frozen_prefix_depth(model) == 1
    model.base_model.model.backbone.embeddings.norm.weight.requires_grad_(True)
    assert frozen_prefix_depth(model) == 0


# --------------------------------------------------------------------------------------------
# Training runs with the cache


@pytest.fixture(scope="module")
def still_roberta(tiny_roberta, tmp_path_factory):
    """The tiny RoBERTa without dropout: a run with the cache must then train exactly what one without trains."""
    folder = tmp_path_factory.mktemp("still-roberta")
    for item in tiny_roberta.iterdir():
        shutil.copy(item, folder / item.name)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _train(values: dict, run: Path) -> tuple[dict, list[str]]:
    lines: list[str] = []
    summary = train(from_dict(values), run, log=lines.append)
    return summary, lines


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def _prefix_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("frozen-prefix cache")]


def test_cached_run_trains_the_same_weights_and_the_warm_cache_is_reused(make_config, still_roberta, tmp_path):
    cache = tmp_path / "cache"
    plain, plain_lines = _train(top_layer(make_config, cache, still_roberta, False), tmp_path / "plain")
    assert plain["frozen_prefix"] == {
        "layers": 0,
        "used": False,
        "cache_hit": False,
        "build_seconds": 0.0,
        "bytes": 0,
        "reason": "training.cache_frozen_layers: false",
    }
    assert not _prefix_lines(plain_lines)
    cold, cold_lines = _train(top_layer(make_config, cache, still_roberta, True), tmp_path / "cold")
    (line,) = _prefix_lines(cold_lines)
    assert "layers 0-1 of 3" in line and "built" in line
    assert cold["frozen_prefix"]["used"] and not cold["frozen_prefix"]["cache_hit"]
    assert cold["frozen_prefix"]["layers"] == 2 and cold["frozen_prefix"]["bytes"] > 0
    expected = _weights(tmp_path / "plain")
    got = _weights(tmp_path / "cold")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-5)
    assert cold["validation_accuracy"] == plain["validation_accuracy"]
    assert cold["train_flops"] < plain["train_flops"]  # the executed FLOPs count the layers the steps ran
    # Warm: another learning rate, the same base, rows and layer: nothing is built again.
    warm, warm_lines = _train(
        top_layer(make_config, cache, still_roberta, "auto", learning_rate=1e-2), tmp_path / "warm"
    )
    (line,) = _prefix_lines(warm_lines)
    assert "reused" in line and warm["frozen_prefix"]["cache_hit"]
    files = sorted(p.name for p in (cache / PREFIX_FOLDER).iterdir())
    assert len(files) == 4  # training and validation rows: states and record each


def test_auto_says_why_it_is_off_in_one_line(make_config, tiny_roberta, tmp_path):
    values = top_layer(make_config, tmp_path / "cache", tiny_roberta, "auto", epochs=1)
    summary, lines = _train(values, tmp_path / "one-pass")
    (line,) = _prefix_lines(lines)
    assert "not used: one pass over the training rows" in line
    assert summary["frozen_prefix"]["used"] is False and summary["frozen_prefix"]["layers"] == 2
    values["adapter"]["layers"] = None  # every layer adapted
    values["training"]["epochs"] = 2
    summary, lines = _train(values, tmp_path / "all-layers")
    (line,) = _prefix_lines(lines)
    assert "not used: adapter.method 'lora' trains parameters in layer 0" in line


def test_the_start_of_run_estimate_counts_no_fill_for_a_warm_cache(make_config, tiny_roberta, tmp_path, monkeypatch):
    import lorabudget.training.costs as costs
    from lorabudget.model import estimate as est

    monkeypatch.setattr(costs, "measured_rates", lambda *a, **k: est.Throughput(2e9, 1e9))
    values = top_layer(make_config, tmp_path / "cache", tiny_roberta, True, max_steps=2)
    said = {}
    for run in ("cold", "warm"):
        summary, lines = _train(values, tmp_path / run)
        (said[run],) = [line for line in lines if line.startswith("estimated training time")]
        said[run + "_s"] = summary["estimate"]["train_seconds"]
    assert "(cold: filled first)" in said["cold"] and "filling the prefix cache" in said["cold"]
    assert "(warm)" in said["warm"] and "filling" not in said["warm"]
    assert said["warm_s"] < said["cold_s"]


@pytest.mark.parametrize("init, used", [("prototypes", True), ("names", False)])
def test_auto_counts_the_pass_that_computes_the_head_s_class_vectors(make_config, tiny_roberta, tmp_path, init, used):
    """One epoch with ``head.init: prototypes`` goes over the training rows twice: the cache pays. The
    class names' vectors take no pass over the rows: one pass, no cache."""
    values = top_layer(make_config, tmp_path / "cache", tiny_roberta, "auto", epochs=1)
    values["head"]["init"] = init
    summary, lines = _train(values, tmp_path / "run")
    (line,) = _prefix_lines(lines)
    assert ("built" in line) is used and summary["frozen_prefix"]["used"] is used


@pytest.mark.parametrize(
    "sections, match",
    [
        ({"adapter": {"layers": None}}, "trains parameters in layer 0"),
        ({"adapter": {"method": "full"}, "budget": {"max_trainable_params": None}}, "trains every weight"),
        ({"training": {"compile": True}}, "training.compile"),
    ],
    ids=["lora-in-layer-0", "full", "compile"],
)
def test_true_is_refused_where_it_cannot_work(make_config, tiny_roberta, tmp_path, sections, match):
    values = top_layer(make_config, tmp_path / "cache", tiny_roberta, True)
    for section, overrides in sections.items():
        values[section] = overrides if overrides.get("method") == "full" else {**values.get(section, {}), **overrides}
    with pytest.raises(LorabudgetError, match="cache_frozen_layers.*true cannot be used") as err:
        train(from_dict(values), tmp_path / "run", log=lambda *_: None)
    assert match in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------
# The store; damaged stores (truncated, tampered, another entry's, without a record) are the
# damaged-cache table of tests/test_bad_inputs.py


def test_a_store_gives_back_each_row_padded(tmp_path):
    offsets = np.array([0, 3, 5], dtype=np.int64)
    wanted = np.arange(5 * 4, dtype=np.float32).reshape(5, 4)

    def fill(states):
        states[:] = wanted

    write_store(tmp_path, "k" * 64, offsets, 4, fill)
    store = open_store(tmp_path, "k" * 64, offsets, 4)
    assert np.array_equal(store.states, wanted)
    batch = store.padded(torch.tensor([1, 0]), 4)
    assert torch.equal(batch[0, :2], torch.from_numpy(wanted[3:5])) and not batch[0, 2:].any()
    assert torch.equal(batch[1, :3], torch.from_numpy(wanted[:3])) and not batch[1, 3:].any()


def test_cache_info_and_clear_list_the_prefix_cache(make_config, tiny_roberta, tmp_path, monkeypatch, capsys):
    from lorabudget.cli import main

    cache = tmp_path / "cache"
    _train(top_layer(make_config, cache, tiny_roberta, True, max_steps=2), tmp_path / "run")
    monkeypatch.setenv("LORABUDGET_CACHE", str(cache))
    capsys.readouterr()
    assert main(["cache", "info"]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if str(cache / PREFIX_FOLDER) in line]
    assert "holds 4 files" in line
    assert main(["cache", "clear"]) == 0
    assert f"{cache / PREFIX_FOLDER} removed 4 files" in capsys.readouterr().out
    assert not (cache / PREFIX_FOLDER).exists()


def test_search_trials_share_one_prefix_cache(make_config, tiny_roberta, tmp_path):
    """Trials on one base, one data set and one lowest adapted layer: the first builds, the others reuse."""
    import csv

    import yaml

    from lorabudget.cli import main

    values = top_layer(make_config, tmp_path / "cache", tiny_roberta, "auto", max_steps=4, eval_every=2, threads=1)
    values["model"]["labels"] = None
    values["budget"] = {"max_trainable_params": 2000}
    values["search"] = {"r": [1, 2, 4], "learning_rate": {"low": 5e-3, "high": 3e-2, "log": True}}
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(values))
    argv = ["search", str(config), "--trials", "3", "--output", str(tmp_path / "out"), "--seed", "3"]
    assert main([*argv, "--pruner", "none"]) == 0
    with open(tmp_path / "out" / "trials.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["state"] == "complete"]
    assert [r["prefix_cache"] for r in rows] == ["built", "reused", "reused"]
    assert all(float(r["prefix_cache_seconds"]) >= 0 for r in rows)
    assert len(list((tmp_path / "cache" / PREFIX_FOLDER).glob("*.npy"))) == 2


# --------------------------------------------------------------------------------------------
# The cache with the loop's other settings: the same weights as the run without it


WITH = {
    "full-head": ({"head": {"type": "full"}}, 1e-5),
    "row-chunks": ({"training": {"max_batch_positions": 40}}, 1e-5),
    # bf16: the states are built under the run's autocast with its frozen base in bf16, as its steps run.
    "bf16": ({"training": {"mixed_precision": "bf16"}}, 1e-5),
    # Long texts cut into windows: a window is a row of the cache.
    "chunks": ({"model": {"max_length": 12}, "data": {"long_text": "chunks"}}, 1e-5),
    # The head's class vectors: the training rows' pass before training reads the cache too.
    "prototype-head": ({"head": {"type": "prototype"}}, 1e-5),
    "prototype-init": ({"head": {"init": "prototypes"}}, 1e-5),
    # bf16 class vectors are means of states rounded to bf16 in other batch shapes (the cache's build
    # batches against the inference batches): they agree to bf16's rounding, and the head starts from them.
    "prototype-init-bf16": ({"head": {"init": "prototypes"}, "training": {"mixed_precision": "bf16"}}, 5e-3),
}


@pytest.mark.parametrize("case", list(WITH))
def test_the_cache_with_other_settings_trains_the_same_weights(make_config, still_roberta, tmp_path, case):
    sections, tolerance = WITH[case]
    runs = {}
    for setting in (False, True):
        values = top_layer(make_config, tmp_path / "cache", still_roberta, setting, max_steps=6, eval_every=3)
        for section, overrides in sections.items():
            values[section] = {**values[section], **overrides}
        summary, lines = _train(values, tmp_path / str(setting))
        assert summary["frozen_prefix"]["used"] is setting
        head_lines = [line for line in lines if line.startswith("head: ")]
        assert len(head_lines) == ("prototype" in case)
        assert all(("from the frozen-prefix cache" in line) is setting for line in head_lines)
        assert (summary["head_init_s"] > 0) is ("prototype" in case)
        runs[setting] = _weights(tmp_path / str(setting))
    for name, expected in runs[False].items():
        torch.testing.assert_close(runs[True][name], expected, rtol=0, atol=tolerance)


def test_a_resumed_run_reads_the_cache_and_ends_as_an_uninterrupted_one(
    make_config, tiny_roberta, tmp_path, sigterm_at_step
):
    """Dropout in the upper layers as usual: the resume restores the RNG, so the weights match exactly."""
    values = top_layer(make_config, tmp_path / "cache", tiny_roberta, True, max_steps=8, eval_every=4)
    _train(values, tmp_path / "whole")
    sigterm_at_step(lambda: _train(values, tmp_path / "cut"))
    lines: list[str] = []
    summary = train(from_dict(values), tmp_path / "cut", log=lines.append, resume=True)
    assert summary["frozen_prefix"]["cache_hit"] and any(line.startswith("resuming") for line in lines)
    whole, cut = _weights(tmp_path / "whole"), _weights(tmp_path / "cut")
    assert all(torch.equal(cut[name], whole[name]) for name in whole)


def test_a_distilled_student_uses_the_cache(make_config, tiny_roberta, data_dir, tmp_path):
    """The student side: its training rows (gold and unlabelled texts) and validation rows are cached."""
    import yaml

    from lorabudget.cli import main

    teacher = make_config(tmp_path / "cache", name="teacher", model={"labels": None}, training={"max_steps": 2})
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump(teacher))
    assert main(["train", str(tmp_path / "teacher.yaml"), "--output", str(tmp_path / "teacher"), "--no-report"]) == 0
    student = top_layer(make_config, tmp_path / "cache", tiny_roberta, True, max_steps=4, eval_every=2)
    student["data"]["train"] = str(data_dir / "train.csv")
    student["model"]["labels"], student["name"] = None, "student"
    student["distill"] = {"unlabelled": [str(data_dir / "unlabelled.csv")]}
    (tmp_path / "student.yaml").write_text(yaml.safe_dump(student))
    argv = ["distill", str(tmp_path / "student.yaml"), "--teacher", str(tmp_path / "teacher")]
    assert main([*argv, "--output", str(tmp_path / "student"), "--no-report"]) == 0
    summary = json.loads((tmp_path / "student" / "summary.json").read_text())
    assert summary["frozen_prefix"]["used"] and summary["frozen_prefix"]["layers"] == 2


def test_two_processes_read_the_cache_the_main_process_built(make_config, tiny_roberta, tmp_path):
    import socket
    import subprocess
    import sys

    import yaml

    values = top_layer(make_config, tmp_path / "cache", tiny_roberta, True, epochs=2, batch_size=8, eval_every=6)
    values["model"]["labels"] = None
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(values))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    argv += [
        "-m",
        "lorabudget.cli",
        "train",
        str(tmp_path / "two.yaml"),
        "--output",
        str(tmp_path / "two"),
        "--no-report",
    ]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["frozen_prefix"]["used"]
    assert (res.stdout + res.stderr).count("frozen-prefix cache: layers 0-1 of 3") == 1
    evaluated = json.loads((tmp_path / "two" / "eval.json").read_text())
    assert evaluated["rows"] == 40


def test_no_rows_make_an_empty_store(tmp_path):
    offsets = np.array([0], dtype=np.int64)
    store = write_store(tmp_path, "e" * 64, offsets, 4, lambda states: None)
    assert store.states.shape == (0, 4) and open_store(tmp_path, "e" * 64, offsets, 4) is not None


@pytest.mark.parametrize("setting", ["auto", True])
def test_a_cache_that_cannot_be_written(make_config, tiny_roberta, tmp_path, monkeypatch, setting):
    """A full disk or a read-only cache folder: auto trains on without the cache and says why in one
    line; true stops with one error line."""
    import errno

    import lorabudget.training.prefix_cache as prefix_mod

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(prefix_mod, "write_store", full_disk)
    values = top_layer(make_config, tmp_path / "cache", tiny_roberta, setting, max_steps=2, eval_every=1)
    if setting is True:
        with pytest.raises(LorabudgetError, match="could not be written .OSError: No space left on device"):
            _train(values, tmp_path / "run")
        return
    summary, lines = _train(values, tmp_path / "run")
    (line,) = _prefix_lines(lines)
    assert "not used: the cache could not be written (OSError: No space left on device)" in line
    assert summary["frozen_prefix"]["used"] is False
