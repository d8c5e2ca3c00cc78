"""A run killed with SIGKILL and continued with --resume ends exactly like the same run uninterrupted."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from lorabudget.cli import main

# The child stops (sleeps) right after writing the training line of this step: after the checkpoint
# of the evaluation at step 4 (mid first epoch), with a metrics line past it to be cut back.
KILL_AFTER_STEP = 6

CHILD = """
import sys, time
import lorabudget.training.state as T
write = T.MetricsLog.write
def stalling_write(self, **record):
    write(self, **record)
    if record.get("type") == "train" and record.get("step") == {step}:
        print("KILL ME", flush=True)
        time.sleep(600)
T.MetricsLog.write = stalling_write
from lorabudget.cli import main
sys.exit(main({argv!r}))
"""


def _same_adapter(run, ref):
    """The resumed run's saved adapter equals the uninterrupted one's exactly, tensor by tensor. (Both
    need the same torch thread count: the in-process runs here and the child's; see conftest.)"""
    from safetensors.torch import load_file

    mine, theirs = (load_file(str(d / "adapter" / "adapter_model.safetensors")) for d in (run, ref))
    assert mine.keys() == theirs.keys()
    differ = [name for name in mine if not torch.equal(mine[name], theirs[name])]
    assert not differ, f"{len(differ)} of {len(mine)} tensors differ, e.g. {differ[0] if differ else ''}"


def _lines(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def _trajectory(run):
    return [(l["type"], l["step"], l.get("loss"), l.get("accuracy")) for l in _lines(run)]


KILL_9_CASES = {
    "lora": ("lora", {"type": "linear"}),
    "adalora": ("adalora", {"type": "linear"}),
    "prototype-head": ("lora", {"type": "prototype"}),
    # started from the class means (as mpnet-cpu-10k is): the start is computed once, before step 1
    "low-rank-class-mean-start": ("lora", {"type": "low_rank", "rank": 3, "init": "prototypes"}),
}


@pytest.mark.parametrize("case", list(KILL_9_CASES))
def test_kill_9_and_resume_matches_uninterrupted(tiny_config, tmp_path, case):
    method, head_spec = KILL_9_CASES[case]
    head = head_spec["type"]
    # 96 training rows in batches of 16: 6 steps per epoch, 12 in all, so the resumed part skips into
    # the middle of an epoch and crosses into the next; dropout on (the tiny encoder's hidden
    # dropout 0.1), so the restored RNG states matter. AdaLoRA (12 steps: ranks masked from step 2 to
    # 9) also needs its allocator's importance scores restored, or it masks different ranks.
    values = tiny_config(
        data={"max_train_rows": 96},
        training={"epochs": 2, "eval_every": 4, "log_every": 2},
        adapter={"method": method, "r": 4, "alpha": 8, "dropout": 0.0, "modules": ["query", "value"]},
        # prototype: the class vectors are computed once; the resumed part reads them from the checkpoint.
        head={**head_spec, "pooling": "mean"},
    )
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(values))
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(["train", str(cfg), "--output", str(ref), "--no-report"]) == 0

    argv = ["train", str(cfg), "--output", str(run), "--no-report"]
    with open(tmp_path / "child.err", "w") as err:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD.format(step=KILL_AFTER_STEP, argv=argv)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=dict(os.environ),
        )
        deadline = time.time() + 300
        for line in child.stdout:
            if "KILL ME" in line or time.time() > deadline:
                break
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL, (tmp_path / "child.err").read_text()[-2000:]
    assert (run / "checkpoint" / "state.pt").is_file() and not (run / "summary.json").exists()
    assert max(l["step"] for l in _lines(run)) == KILL_AFTER_STEP  # lines past the checkpoint exist
    assert json.loads((run / ".lock").read_text())["pid"] == child.pid  # a stale lock, taken over below
    saved = torch.load(run / "checkpoint" / "state.pt", weights_only=True)
    assert saved["mixed_precision"] == "no"  # what the resumed part trains in (the suite pins auto to fp32)
    if head == "prototype":
        vectors = list(saved["head_buffers"].values())  # PEFT's original head and its trained copy
        assert vectors and all(torch.equal(v, vectors[0]) for v in vectors)
        assert vectors[0].shape == (4, 32) and bool(vectors[0].abs().sum() > 0)
    if method == "adalora":  # the allocator's importance scores travel with the weights
        assert saved["method_state"]["exp_avg_ipt"] and saved["method_state"]["rank_pattern"]

    assert main(argv + ["--resume"]) == 0
    got, want = json.loads((run / "summary.json").read_text()), json.loads((ref / "summary.json").read_text())
    assert got["steps"] == want["steps"] == 12
    assert got["best_step"] == want["best_step"]
    assert got["validation_accuracy"] == want["validation_accuracy"]
    final = [l["loss"] for l in _lines(run) if l["type"] == "train"][-1]
    assert abs(final - [l["loss"] for l in _lines(ref) if l["type"] == "train"][-1]) < 1e-4
    # every metrics line once, in order, matching the uninterrupted run
    mine, theirs = _trajectory(run), _trajectory(ref)
    assert [m[:2] for m in mine] == [t[:2] for t in theirs]
    assert all(abs(a - b) < 1e-4 for m, t in zip(mine, theirs) for a, b in zip(m[2:], t[2:]) if a is not None)
    assert not (run / "checkpoint").exists() and not (run / ".lock").exists()
    _same_adapter(run, ref)


# The child waits for a signal right after writing the training line of step 6 (no checkpoint is due
# there: evaluations at 4 and 8), as a process stopped by `timeout`, Docker or Slurm would be.
TERM_CHILD = """
import sys, time
import lorabudget.signals as S
import lorabudget.training.state as T
write = T.MetricsLog.write
def waiting_write(self, **record):
    write(self, **record)
    if record.get("type") == "train" and record.get("step") == {step}:
        print("TERM ME", flush=True)
        deadline = time.time() + 300
        while S.stop_pending() is None and time.time() < deadline:  # until the SIGTERM handler has run
            time.sleep(0.05)
T.MetricsLog.write = waiting_write
from lorabudget.cli import main
sys.exit(main({argv!r}))
"""


def test_sigterm_saves_a_checkpoint_releases_the_lock_and_resumes_to_the_same_end(tiny_config, tmp_path):
    values = tiny_config(
        data={"max_train_rows": 96},
        training={"epochs": 2, "eval_every": 4, "log_every": 2},
        adapter={"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "modules": ["query", "value"]},
    )
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(values))
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(["train", str(cfg), "--output", str(ref), "--no-report"]) == 0

    argv = ["train", str(cfg), "--output", str(run), "--no-report"]
    child = subprocess.Popen(
        [sys.executable, "-c", TERM_CHILD.format(step=KILL_AFTER_STEP, argv=argv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    deadline = time.time() + 300
    for line in child.stdout:
        if "TERM ME" in line or time.time() > deadline:
            break
    os.kill(child.pid, signal.SIGTERM)
    try:
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith("lorabudget train: stopped by SIGTERM; checkpoint at step 6") and "--resume" in last
    assert f"--output {run} --resume" in last
    assert not (run / ".lock").exists(), "the lock was left behind"
    assert (run / "checkpoint" / "state.pt").is_file() and not (run / "summary.json").exists()
    assert max(l["step"] for l in _lines(run)) == KILL_AFTER_STEP

    assert main(argv + ["--resume"]) == 0
    got, want = json.loads((run / "summary.json").read_text()), json.loads((ref / "summary.json").read_text())
    assert got["steps"] == want["steps"] == 12
    assert got["best_step"] == want["best_step"]
    assert got["validation_accuracy"] == want["validation_accuracy"]
    mine, theirs = _trajectory(run), _trajectory(ref)
    assert [m[:2] for m in mine] == [t[:2] for t in theirs]
    assert all(abs(a - b) < 1e-4 for m, t in zip(mine, theirs) for a, b in zip(m[2:], t[2:]) if a is not None)
    _same_adapter(run, ref)
    assert not (run / ".lock").exists() and not (run / "checkpoint").exists()


def test_on_eval_stop_checkpoint_every_umask_and_overwrite(tiny_config, tmp_path, monkeypatch):
    import lorabudget.training.loop as train_mod
    from lorabudget.config import from_dict
    from lorabudget.errors import TrainingStopped

    values = tiny_config(training={"max_steps": 12, "eval_every": 4, "checkpoint_every": 3, "log_every": 2})
    run = tmp_path / "run"
    saved_at = []
    save = train_mod.Checkpointer.save
    monkeypatch.setattr(
        train_mod.Checkpointer,
        "save",
        lambda self, payload: (saved_at.append(payload["state"]["step"]), save(self, payload)),
    )

    def stop_at_8(step, result):
        assert 0 <= result["accuracy"] <= 1
        if step == 8:
            assert (run / "checkpoint" / "state.pt").is_file()  # written before the hook runs
            raise TrainingStopped("pruned")

    old_mask = os.umask(0o027)
    try:
        with pytest.raises(TrainingStopped) as stopped:
            train_mod.train(from_dict(values), run, on_eval=stop_at_8, log=lambda *_: None)
    finally:
        os.umask(old_mask)
    assert saved_at == [3, 4, 6, 8]
    summary = json.loads((run / "summary.json").read_text())
    assert stopped.value.summary["steps"] == summary["steps"] == 8 and summary["stopped_early"] == "pruned"
    assert not (run / "checkpoint").exists()  # a finished run keeps no checkpoint
    for path, mode in (
        (run / "summary.json", 0o640),
        (run / "eval.json", 0o640),
        (run / "adapter", 0o750),
        (run / "adapter" / "adapter_model.safetensors", 0o640),
        (run / "metrics.jsonl", 0o640),
    ):
        assert path.stat().st_mode & 0o777 == mode, path

    # --overwrite swaps the new run in only once it has finished, leaving nothing beside it
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(training={"max_steps": 4, "eval_every": 4})))
    assert main(["train", str(cfg), "--output", str(run), "--overwrite", "--no-report"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and "stopped_early" not in summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "cfg.yaml", "run"]
    assert not (run / ".lock").exists()


def test_training_threads_hold_for_the_run_only(tiny_config, tmp_path):
    # A run's training.threads must not outlive it in the caller's process: an in-process run left
    # at 1 thread computed this file's uninterrupted runs otherwise than their 2-thread subprocesses.
    import lorabudget.training.loop as train_mod
    from lorabudget.config import from_dict

    before = torch.get_num_threads()
    want = 2 if before == 1 else 1
    during = []
    values = tiny_config(training={"max_steps": 2, "eval_every": 2, "threads": want})
    train_mod.train(
        from_dict(values), tmp_path / "run", on_eval=lambda *_: during.append(torch.get_num_threads()), log=print
    )
    assert during == [want] and torch.get_num_threads() == before


RESUME_THREADS = {
    # training.threads unset: the resume goes back to the count its run started with, bit for bit.
    "as-started": (
        None,
        "resuming with 1 torch thread(s), as the run started (2 here otherwise), so it ends as it would have",
    ),
    # training.threads asking for another count is followed, and the log says what that may change.
    "asked": (
        2,
        "resuming with 2 torch thread(s) (training.threads) where the run started with 1: its weights may "
        "differ from an uninterrupted run's in the last bits",
    ),
}


@pytest.mark.parametrize("case", list(RESUME_THREADS))
def test_a_resume_computes_with_the_thread_count_its_run_started_with(tiny_config, tmp_path, sigterm_at_step, case):
    """Started at one thread, resumed where the process would use two."""
    import lorabudget.training.loop as train_mod
    from lorabudget.config import from_dict

    asked, line = RESUME_THREADS[case]
    before = torch.get_num_threads()
    values = tiny_config(
        training={"max_steps": 8, "eval_every": 4},
        adapter={"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "modules": ["query", "value"]},
    )
    try:
        torch.set_num_threads(1)
        train_mod.train(from_dict(values), tmp_path / "whole", log=lambda *_: None)
        sigterm_at_step(lambda: train_mod.train(from_dict(values), tmp_path / "cut", log=lambda *_: None))
        torch.set_num_threads(2)
        values["training"]["threads"] = asked
        lines: list[str] = []
        train_mod.train(from_dict(values), tmp_path / "cut", log=lines.append, resume=True)
        assert torch.get_num_threads() == 2  # the caller's count is back afterwards
    finally:
        torch.set_num_threads(before)
    assert [x for x in lines if "torch thread" in x] == [line]
    if asked is None:
        _same_adapter(tmp_path / "cut", tmp_path / "whole")
