"""Bad inputs and failures, one table: each must exit with its documented code, print exactly one
error line (no traceback), leave no file created or changed that should not be, and leave a
previous run intact.

Every case runs in-process through ``lorabudget.cli.main`` inside a fresh workspace holding a copy
of one finished run, a config and data files; the whole workspace is compared before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest
import yaml

from lorabudget.cli import main


class Evil:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@dataclass
class Workspace:
    root: Path
    cfg: Path  # the finished run's config
    run: Path  # a copy of a finished run
    marker: Path  # created only if a pickle's code ran

    def __truediv__(self, name: str) -> Path:
        return self.root / name


def _config(model: Path, train_csv: Path, cache: Path, **training) -> dict:
    return {
        "name": "tiny",
        "model": {"name": str(model), "max_length": 64, "labels": ["World", "Sports", "Business", "Sci/Tech"]},
        "head": {"type": "linear", "pooling": "mean"},
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.0, "modules": ["query", "value"]},
        "data": {"train": str(train_csv), "validation_size": 40, "cache_dir": str(cache)},
        "training": {"epochs": 1, "batch_size": 16, "learning_rate": 2e-2, "log_every": 2, "seed": 7, **training},
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_roberta, data_dir):
    """One finished tiny run (13 steps) and its config, copied into every case's workspace."""
    base = tmp_path_factory.mktemp("bad-inputs")
    cfg = base / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(_config(tiny_roberta, data_dir / "train.csv", base / "cache")))
    assert main(["train", str(cfg), "--output", str(base / "run"), "--no-report"]) == 0
    return base


@pytest.fixture
def ws(finished, tmp_path, data_dir, monkeypatch):
    root = tmp_path / "ws"
    root.mkdir()
    shutil.copy(finished / "cfg.yaml", root / "cfg.yaml")
    shutil.copytree(finished / "run", root / "run")
    shutil.copy(data_dir / "train.csv", root / "train.csv")
    shutil.copy(data_dir / "unlabelled.csv", root / "unlabelled.csv")
    marker = tmp_path / "PICKLE_CODE_RAN"
    (root / "evil.pkl").write_bytes(pickle.dumps(Evil(marker)))
    monkeypatch.chdir(root)  # nothing may appear in the working folder either
    return Workspace(root, root / "cfg.yaml", root / "run", marker)


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


# --------------------------------------------------------------------------------------------
# Setups: each prepares the workspace before the snapshot is taken


def write(name: str, text: str) -> Callable[[Workspace], None]:
    return lambda w: (w / name).write_text(text)


def config_with(name: str, **training) -> Callable[[Workspace], None]:
    def setup(w: Workspace) -> None:
        values = yaml.safe_load(w.cfg.read_text())
        values["training"].update(training)
        (w / name).write_text(yaml.safe_dump(values))

    return setup


def unfinished(w: Workspace) -> None:
    (w.run / "summary.json").unlink()


def lock_held_by(pid: int, host: str) -> Callable[[Workspace], None]:
    return lambda w: (w.run / ".lock").write_text(json.dumps({"pid": pid, "host": host}))


def corrupt_adapter(w: Workspace) -> None:
    path = w.run / "adapter" / "adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    data[-64:] = b"\xff" * 64
    path.write_bytes(bytes(data))


def without_checksum(change: Callable[[Path], None]) -> Callable[[Workspace], None]:
    """A run written before checksums were recorded, then changed by ``change(weights file)``."""

    def setup(w: Workspace) -> None:
        summary = json.loads((w.run / "summary.json").read_text())
        summary.pop("adapter_sha256")
        (w.run / "summary.json").write_text(json.dumps(summary))
        change(w.run / "adapter" / "adapter_model.safetensors")

    return setup


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def fill_nan(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    save_file({k: v * float("nan") for k, v in tensors.items()}, str(path))


def pickle_of(name: str, obj) -> Callable[[Workspace], None]:
    return lambda w: (w / name).write_bytes(pickle.dumps(obj))


# --------------------------------------------------------------------------------------------
# Checks of what a case may leave


def diverged_run_is_clean(w: Workspace) -> None:
    run = w / "div"
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in metrics.jsonl"))
    assert not (run / "summary.json").exists() and not (run / ".lock").exists()
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert all(bool(torch.isfinite(t).all()) for t in weights.values())


def no_overwrite_leftovers(w: Workspace) -> None:
    assert not [p.name for p in w.root.iterdir() if p.name.startswith(".run.")]


@dataclass
class Case:
    id: str
    argv: Callable[[Workspace], list[str]]
    match: str  # in the one error line
    code: int = 2
    setup: Optional[Callable[[Workspace], None]] = None
    may_create: tuple[str, ...] = ()  # workspace paths (prefixes) this failure may leave
    check: Optional[Callable[[Workspace], None]] = None
    tags: set = field(default_factory=set)


def T(w: Workspace, *args: str) -> list[str]:
    """``train cfg.yaml ARGS --no-report``."""
    return ["train", str(w.cfg), *args, "--no-report"]


DIVERGE = [
    "--set",
    "training.learning_rate=1e4",
    "--set",
    "training.head_learning_rate=1e4",
    "--set",
    "training.eval_every=2",
    "--set",
    "training.max_steps=8",
]
OTHER_HOST = "elsewhere.invalid"

CASES = [
    # --- config values
    Case(
        "nan-learning-rate",
        lambda w: T(w, "--output", "new", "--set", "training.learning_rate=.nan"),
        "not a finite number",
    ),
    Case(
        "inf-learning-rate",
        lambda w: T(w, "--output", "new", "--set", "training.learning_rate=.inf"),
        "not a finite number",
    ),
    Case("nan-in-plan", lambda w: ["plan", str(w.cfg), "--set", "adapter.alpha=.nan"], "not a finite number"),
    Case(
        "nan-string-value",
        lambda w: T(w, "--output", "new", "--set", "training.weight_decay=nan"),
        "not a finite number",
    ),
    Case(
        "overwrite-with-nan-keeps-old-run",
        lambda w: T(
            w, "--output", "run", "--overwrite", "--set", "training.learning_rate=.nan", "--set", "training.max_steps=3"
        ),
        "not a finite number",
    ),
    Case(
        "unknown-key", lambda w: T(w, "--output", "new", "--set", "training.lr=1"), "unknown config key 'training.lr'"
    ),
    Case("set-without-equals", lambda w: T(w, "--output", "new", "--set", "training.seed"), "--set expects KEY=VALUE"),
    Case("unknown-module", lambda w: ["plan", str(w.cfg), "--set", "adapter.modules=[qkv]"], "unknown module 'qkv'"),
    Case(
        "layer-out-of-range",
        lambda w: T(w, "--output", "new", "--set", "adapter.layers=[7]"),
        "layer 7 is out of range",
    ),
    Case(
        "negative-checkpoint-every",
        lambda w: T(w, "--output", "new", "--set", "training.checkpoint_every=-1"),
        "checkpoint_every",
    ),
    Case(
        "over-budget",
        lambda w: T(w, "--output", "new", "--set", "budget.max_trainable_params=1000"),
        "exceed the budget",
        code=3,
    ),
    Case("config-file-missing", lambda w: ["train", "missing.yaml", "--output", "new"], "neither a file nor a preset"),
    Case("config-not-yaml", lambda w: ["plan", "bad.yaml"], "not valid YAML", setup=write("bad.yaml", "a: [1, 2\n")),
    Case(
        "model-not-available",
        lambda w: T(w, "--output", "new", "--set", "model.name=no-such-org/no-such-model"),
        "--set model.name=/path/to/model",
    ),
    # --- run directories
    Case("run-exists", lambda w: T(w, "--output", "run"), "exists; pass --overwrite"),
    Case(
        "overwrite-non-run-folder",
        lambda w: T(w, "--output", "other", "--overwrite"),
        "not a lorabudget run directory",
        setup=lambda w: ((w / "other").mkdir(), (w / "other" / "notes.txt").write_text("mine")),
    ),
    Case("output-is-a-file", lambda w: T(w, "--output", "train.csv", "--overwrite"), "not a lorabudget run directory"),
    Case("output-under-a-file", lambda w: T(w, "--output", "train.csv/run"), "is not a folder"),
    Case("output-not-writable", lambda w: T(w, "--output", "/proc/lorabudget-run"), "cannot write"),
    Case("resume-finished-run", lambda w: T(w, "--output", "run", "--resume"), "has finished training"),
    Case("resume-missing-run", lambda w: T(w, "--output", "nothing", "--resume"), "nothing to resume"),
    Case("resume-and-overwrite", lambda w: T(w, "--output", "run", "--resume", "--overwrite"), "pass only one"),
    Case(
        "resume-other-config",
        lambda w: T(w, "--output", "run", "--resume", "--set", "training.seed=8"),
        "config differs",
        setup=unfinished,
    ),
    Case(
        "resume-without-checkpoint",
        lambda w: T(w, "--output", "run", "--resume"),
        "no checkpoint to resume from",
        setup=unfinished,
    ),
    Case(
        "resume-corrupt-checkpoint",
        lambda w: T(w, "--output", "run", "--resume"),
        "unreadable checkpoint",
        setup=lambda w: (
            unfinished(w),
            (w.run / "checkpoint").mkdir(),
            (w.run / "checkpoint" / "state.pt").write_bytes(b"junk"),
        ),
    ),
    Case(
        "locked-by-live-process",
        lambda w: T(w, "--output", "run", "--overwrite"),
        f"in use by process 1 on {socket.gethostname()}",
        setup=lock_held_by(1, socket.gethostname()),
    ),
    Case(
        "locked-on-other-host",
        lambda w: T(w, "--output", "run", "--resume"),
        f"in use by process 999999 on {OTHER_HOST}",
        setup=lambda w: (unfinished(w), lock_held_by(999999, OTHER_HOST)(w)),
    ),
    # --- training data (the run folder is made, then removed again: training never started)
    Case("data-missing", lambda w: T(w, "--output", "sub/new", "--data", "none.csv"), "data file not found"),
    Case("data-pickle-untrusted", lambda w: T(w, "--output", "new", "--data", "evil.pkl"), "--trust-pickle"),
    Case(
        "data-jsonl-bad-line",
        lambda w: T(w, "--output", "new", "--data", "bad.jsonl"),
        "line 3 is not valid JSON",
        setup=write("bad.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n{"text": "c", label: 2}\n'),
    ),
    Case(
        "data-json-not-object",
        lambda w: T(w, "--output", "new", "--data", "bad.jsonl"),
        "line 2 is not a JSON object",
        setup=write("bad.jsonl", '{"text": "a", "label": 0}\n[1, 2]\n'),
    ),
    Case(
        "data-csv-short-first-row",
        lambda w: T(w, "--output", "new", "--data", "short.csv"),
        "line 1 has 2 fields",
        setup=write("short.csv", "a b,0\nc d,1,x\ne f,2,y\ng h,3,z\n"),
    ),
    Case(
        "data-label-outside-classes",
        lambda w: T(w, "--output", "new", "--data", "labels.csv"),
        "outside the class set",
        setup=write("labels.csv", "text,label\nhello there,0\nworld,7\n"),
    ),
    Case(
        "data-empty-file",
        lambda w: T(w, "--output", "new", "--data", "empty.csv"),
        "the file is empty",
        setup=write("empty.csv", ""),
    ),
    Case(
        "data-unknown-format",
        lambda w: T(w, "--output", "new", "--data", "d.xlsx"),
        "unknown data format",
        setup=write("d.xlsx", "x"),
    ),
    # --- training that fails after it started
    Case(
        "diverges",
        lambda w: T(w, "--output", "div", *DIVERGE),
        "training diverged at step",
        code=4,
        may_create=("div",),
        check=diverged_run_is_clean,
    ),
    Case(
        "diverges-with-overwrite-keeps-old-run",
        lambda w: T(w, "--output", "run", "--overwrite", *DIVERGE),
        "left as it was",
        code=4,
        check=no_overwrite_leftovers,
    ),
    # --- using a run
    Case(
        "predict-pickle-untrusted",
        lambda w: ["predict", "run", "--input", "evil.pkl", "--output", "p.csv"],
        "--trust-pickle",
    ),
    Case("evaluate-pickle-untrusted", lambda w: ["evaluate", "run", "--data", "evil.pkl"], "--trust-pickle"),
    Case(
        "predict-pickle-of-int",
        lambda w: ["predict", "run", "--input", "int.pkl", "--output", "p.csv", "--trust-pickle"],
        "the pickle holds an int",
        setup=pickle_of("int.pkl", 3),
    ),
    Case(
        "predict-output-is-input",
        lambda w: ["predict", "run", "--input", "unlabelled.csv", "--output", "./unlabelled.csv"],
        "is the input file",
    ),
    Case(
        "predict-output-not-writable",
        lambda w: ["predict", "run", "--input", "unlabelled.csv", "--output", "/proc/p.csv"],
        "cannot write",
    ),
    Case(
        "predict-output-is-folder",
        lambda w: ["predict", "run", "--input", "unlabelled.csv", "--output", "run"],
        "is a folder",
    ),
    Case(
        "predict-input-missing",
        lambda w: ["predict", "run", "--input", "x.csv", "--output", "p.csv"],
        "data file not found",
    ),
    Case("predict-not-a-run", lambda w: ["predict", "nope", "--input", "unlabelled.csv"], "run directory not found"),
    Case(
        "predict-negative-threads",
        lambda w: ["predict", "run", "--input", "unlabelled.csv", "--threads", "-1"],
        "--threads must be",
    ),
    Case("classify-negative-threads", lambda w: ["classify", "run", "--threads", "-1", "hello"], "--threads must be"),
    Case("classify-zero-threads", lambda w: ["classify", "run", "--threads", "0", "hello"], "--threads must be"),
    Case("classify-empty-text", lambda w: ["classify", "run", " "], "non-empty texts"),
    Case(
        "adapter-bytes-changed", lambda w: ["classify", "run", "hello"], "sha256 does not match", setup=corrupt_adapter
    ),
    Case(
        "adapter-truncated",
        lambda w: ["predict", "run", "--input", "unlabelled.csv", "--output", "p.csv"],
        "unreadable weights",
        setup=without_checksum(truncate),
    ),
    Case("adapter-nan", lambda w: ["classify", "run", "hello"], "non-finite values", setup=without_checksum(fill_nan)),
    Case(
        "adapter-missing-file",
        lambda w: ["classify", "run", "hello"],
        "missing",
        setup=lambda w: (w.run / "adapter" / "adapter_model.safetensors").unlink(),
    ),
    Case("evaluate-no-label-column", lambda w: ["evaluate", "run", "--data", "unlabelled.csv"], "no label column"),
    Case("report-not-a-run", lambda w: ["report", "."], "not a lorabudget run directory"),
    Case("compare-missing-run", lambda w: ["compare", "run", "nope", "--output", "cmp"], "run directory not found"),
    Case(
        "distill-without-teacher",
        lambda w: ["distill", str(w.cfg), "--output", "student", "--no-report"],
        "needs a teacher",
    ),
    Case(
        "distill-train-on-validation",
        lambda w: [
            "distill",
            str(w.cfg),
            "--output",
            "student",
            "--teacher",
            "run",
            "--set",
            "data.train_on_validation=true",
            "--no-report",
        ],
        "keeps the validation rows out of the teacher",
    ),
    Case(
        "distill-resume-missing",
        lambda w: ["distill", str(w.cfg), "--output", "student", "--resume"],
        "nothing to resume",
    ),
    Case("argparse-missing-option", lambda w: ["predict", "run"], "required: --input"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, ws: Workspace, capsys):
    if case.setup:
        case.setup(ws)
    before = snapshot(ws.root)
    capsys.readouterr()
    try:
        code = main(case.argv(ws))
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == case.code, err[-2000:]
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("lorabudget"), err[-2000:]
    assert case.match in errors[0]
    after = snapshot(ws.root)
    allowed = lambda path: any(path == p or path.startswith(p + "/") for p in case.may_create)  # noqa: E731
    assert {k: v for k, v in after.items() if not allowed(k)} == {k: v for k, v in before.items() if not allowed(k)}
    assert not ws.marker.exists(), "code from a pickle ran"
    if case.check:
        case.check(ws)


def test_table_is_big_enough():
    assert len(CASES) >= 40
