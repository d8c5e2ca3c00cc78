"""Two-process data-parallel training on the CPU (gloo), launched by torchrun as a user would."""

import json
import socket
import subprocess
import sys

import torch
import yaml


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp_path, tiny_config, batch_size, name):
    values = tiny_config(
        name=name,
        model={"labels": None},
        # The prototype head: its class vectors are computed by both processes, each on a share of the rows.
        head={"type": "prototype", "pooling": "mean"},
        # 192 training rows split evenly into batches; 48 validation rows in batches of 5: uneven shards.
        data={"validation_size": 48},
        training={
            "epochs": 4,
            "batch_size": batch_size,
            "learning_rate": 2e-2,
            "eval_every": 6,
            "eval_batch_size": 5,
            "seed": 11,
        },
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _lines(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one_process(tmp_path, tiny_config):
    one = _config(tmp_path, tiny_config, batch_size=16, name="one")
    two = _config(tmp_path, tiny_config, batch_size=8, name="two")  # 2 x 8 = same effective batch
    from lorabudget.cli import main

    assert main(["train", str(one), "--output", str(tmp_path / "one"), "--no-report"]) == 0
    env_cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        "-m",
        "lorabudget.cli",
        "train",
        str(two),
        "--output",
        str(tmp_path / "two"),
        "--no-report",
    ]
    res = subprocess.run(env_cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    run = tmp_path / "two"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2
    lines = _lines(run)
    train_steps = [l["step"] for l in lines if l["type"] == "train"]
    eval_steps = [l["step"] for l in lines if l["type"] == "eval"]
    # written once: no step appears twice
    assert len(train_steps) == len(set(train_steps)) and len(eval_steps) == len(set(eval_steps))
    # evaluation counted every validation row exactly once
    ev = json.loads((run / "eval.json").read_text())
    assert ev["rows"] == 48 and sum(map(sum, ev["confusion_matrix"])) == 48
    assert sum(c["support"] for c in ev["per_class"]) == 48
    # same number of optimizer steps and similar results as one process with the same effective batch
    ref = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert summary["steps"] == ref["steps"]
    assert abs(summary["validation_accuracy"] - ref["validation_accuracy"]) <= 0.15
    final_loss = [l["loss"] for l in lines if l["type"] == "train"][-1]
    ref_loss = [l["loss"] for l in _lines(tmp_path / "one") if l["type"] == "train"][-1]
    assert abs(final_loss - ref_loss) <= 0.35
    # Both processes' share of the class vectors, gathered: the same vectors as one process computed.
    from safetensors.torch import load_file

    def vectors(name):
        weights = load_file(str(tmp_path / name / "adapter" / "adapter_model.safetensors"))
        return next(v for k, v in weights.items() if k.endswith("prototypes"))

    assert torch.allclose(vectors("two"), vectors("one"), atol=1e-4)
