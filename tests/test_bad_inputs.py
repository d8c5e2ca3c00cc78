"""Bad inputs and failures, one table: each must exit with its documented code, print exactly one
error line (no traceback), leave no file created or changed that should not be, and leave a
previous run intact. A damaged frozen-prefix cache is no error: its own table (``CACHE_CASES``, below)
runs with one warning line per damaged file and ends as a run on a sound cache does.

Every case runs in-process through ``lorabudget.cli.main`` inside a fresh workspace holding a copy
of one finished run, a config and data files; the whole workspace is compared before and after.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
import socket
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest
import yaml
from prefix_cases import top_layer

from lorabudget.cli import main
from lorabudget.data.prefix_store import PREFIX_FOLDER


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


@pytest.fixture(scope="module")
def finished(tmp_path_factory, make_config):
    """One finished tiny run (13 steps) and its config, copied into every case's workspace."""
    base = tmp_path_factory.mktemp("bad-inputs")
    cfg = base / "cfg.yaml"
    values = make_config(
        base / "cache", head={"type": "linear", "pooling": "mean"}, training={"epochs": 1, "learning_rate": 2e-2}
    )
    cfg.write_text(yaml.safe_dump(values))
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


@pytest.fixture(scope="module")
def onnx_export(finished) -> Path:
    """An ONNX export folder of the finished run, copied into the cases that need one."""
    folder = finished / "exp"
    assert main(["export", str(finished / "run"), "--format", "onnx", "--output", str(folder)]) == 0
    return folder


def _mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'})")


@pytest.fixture
def mounts(tmp_path):
    """Small file systems outside the workspace: ``full`` (3 MB tmpfs, filled to its last few KB) and
    ``readonly`` (a read-only tmpfs); skipped where mounting is not permitted."""
    made = []

    def mount(name: str) -> Path:
        where = tmp_path / "mnt" / name
        _mount_tmpfs(where, "size=3m" if name == "full" else "size=1m,ro")
        made.append(where)
        if name == "full":  # filled to the last block: files can be created, not written
            with open(where / "filler", "wb") as fh:
                with contextlib.suppress(OSError):
                    while True:
                        fh.write(b"\0" * 65536)
                        fh.flush()
        return where

    yield mount
    for where in made:
        subprocess.run(["umount", str(where)], capture_output=True)


def device_node(name: str, major: int, minor: int) -> Callable[[Workspace], None]:
    """A character device made beside the workspace (never inside: the snapshot would read it)."""

    def setup(w: Workspace) -> None:
        path = w.root.parent / name
        try:
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        except (PermissionError, OSError) as err:
            pytest.skip(f"mknod is not allowed here ({err.strerror})")

    return setup


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


def alias_bomb() -> str:
    """A YAML list whose last item expands to 9**8 strings (a "billion laughs")."""
    items = ["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return "[" + ", ".join(items) + "]"


def with_export(change: Optional[Callable[[Path], None]] = None, drop_checksums: bool = False):
    """Copy the ONNX export into the workspace as ``exp``, then change its model file."""

    def setup(w: Workspace) -> None:
        source = w.root.parent / "onnx-export"
        shutil.copytree(source.resolve(), w / "exp")
        if drop_checksums:
            meta = json.loads((w / "exp" / "lorabudget_export.json").read_text())
            meta.pop("files_sha256")
            (w / "exp" / "lorabudget_export.json").write_text(json.dumps(meta))
        if change:
            change(w / "exp" / "model.onnx")

    return setup


def negate_head(path: Path) -> None:
    """Negate the classifier's weights inside the ONNX graph: a valid model that labels differently."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    floats = [i for i in model.graph.initializer if numpy_helper.to_array(i).dtype == np.float32]
    heads = [i for i in floats if "head" in i.name or "classifier" in i.name] or floats[-1:]
    for init in heads:
        init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
    onnx.save(model, str(path))


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
        "prefix-cache-true-with-adapters-in-layer-0",
        lambda w: T(w, "--output", "new", "--set", "training.cache_frozen_layers=true"),
        "training.cache_frozen_layers: true cannot be used here: adapter.method 'lora' trains parameters in layer 0",
    ),
    Case(
        "prefix-cache-unknown-value",
        lambda w: T(w, "--output", "new", "--set", "training.cache_frozen_layers=sometimes"),
        "training.cache_frozen_layers",
    ),
    Case(
        "negative-checkpoint-every",
        lambda w: T(w, "--output", "new", "--set", "training.checkpoint_every=-1"),
        "checkpoint_every",
    ),
    # long texts (data.long_text): the stride is a count of shared tokens below a window's text tokens
    Case(
        "negative-chunk-stride",
        lambda w: T(w, "--output", "new", "--set", "data.long_text=chunks", "--set", "data.chunk_stride=-1"),
        "'data.chunk_stride': tokens shared by consecutive windows must be >= 0",
    ),
    Case(
        "chunk-stride-fills-the-window",
        lambda w: T(w, "--output", "new", "--set", "data.long_text=chunks", "--set", "data.chunk_stride=63"),
        "'data.chunk_stride': must be >= 0 and below the 62 text tokens of a 64-token window, got 63",
    ),
    Case(
        "long-text-unknown",
        lambda w: T(w, "--output", "new", "--set", "data.long_text=middle"),
        "'data.long_text': 'middle' is not allowed",
    ),
    Case(
        "over-budget",
        lambda w: T(w, "--output", "new", "--set", "budget.max_trainable_params=1000"),
        "exceed the budget",
        code=3,
    ),
    # --- the head; the tiny model's hidden size is 32
    Case(
        "head-rank-zero",
        lambda w: ["plan", str(w.cfg), "--set", "head.type=low_rank", "--set", "head.rank=0"],
        "'head.rank': must be >= 1, got 0",
    ),
    Case(
        "head-rank-with-linear",
        lambda w: ["plan", str(w.cfg), "--set", "head.rank=4"],
        "'head.rank' applies to head.type low_rank only",
    ),
    Case(
        "head-rank-with-auto",
        lambda w: ["plan", str(w.cfg), "--set", "head.type=auto", "--set", "head.rank=4"],
        "auto chooses its own rank",
    ),
    Case(
        "head-rank-not-below-hidden",
        lambda w: T(w, "--output", "new", "--set", "head.type=low_rank", "--set", "head.rank=32"),
        "'head.rank': 32 is not below the hidden size 32",
    ),
    Case(
        "head-init-names-with-full",
        lambda w: ["plan", str(w.cfg), "--set", "head.type=full", "--set", "head.init=names"],
        "'head.init': names needs a lorabudget head",
    ),
    Case(
        "head-init-prototypes-with-full",
        lambda w: T(w, "--output", "new", "--set", "head.type=full", "--set", "head.init=prototypes"),
        "'head.init': prototypes needs a lorabudget head",
    ),
    Case(
        "head-low-rank-fits-nowhere",
        lambda w: ["plan", str(w.cfg), "--set", "head.type=low_rank", "--set", "budget.max_trainable_params=200"],
        "no low_rank head fits",
    ),
    Case(
        "head-low-rank-unlimited-budget",
        lambda w: ["plan", str(w.cfg), "--set", "head.type=low_rank", "--set", "budget.max_trainable_params=null"],
        "no rank is the largest",
    ),
    Case(
        "head-type-unknown",
        lambda w: ["plan", str(w.cfg), "--set", "head.type=tiny"],
        "'head.type': 'tiny' is not allowed",
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
    # --- multi-label data
    Case(
        "multi-label-file-without-flag",
        lambda w: T(w, "--output", "new", "--data", "ml.csv"),
        "row 1 has several labels ('World|Sports' in column 'label'); pass --multi-label",
        setup=write("ml.csv", "text,label\nhello there,World\nworld cup,World|Sports\nscore,Sports\n"),
    ),
    Case(
        "multi-label-class-name-holds-separator",
        lambda w: T(w, "--output", "new", "--data", "ml.jsonl", "--multi-label", "--set", "model.labels=null"),
        "row 1: class name 'y|z' in column 'labels' contains the label separator",
        setup=write("ml.jsonl", '{"text": "a", "labels": ["x"]}\n{"text": "b", "labels": ["x", "y|z"]}\n'),
    ),
    Case(
        "multi-label-class-column-not-0-1",
        lambda w: T(
            w,
            "--output",
            "new",
            "--data",
            "cols.csv",
            "--multi-label",
            "--set",
            "model.labels=null",
            "--set",
            "data.label_columns=[a, b]",
        ),
        "row 1: column 'a' holds 'yes'; a class column (data.label_columns) holds 0 or 1",
        setup=write("cols.csv", "text,a,b\nhello,1,0\nworld,yes,1\n"),
    ),
    Case(
        "multi-label-bad-separator",
        lambda w: T(w, "--output", "new", "--data", "ml.csv", "--multi-label", "--set", "data.label_separator=/"),
        "'data.label_separator': must be one of",
        setup=write("ml.csv", "text,label\nhello,World/Sports\nworld,World\n"),
    ),
    Case(
        "label-columns-without-multi-label",
        lambda w: T(w, "--output", "new", "--data", "cols.csv", "--set", "data.label_columns=[a, b]"),
        "set model.problem_type=multi_label (--multi-label)",
        setup=write("cols.csv", "text,a,b\nhello,1,0\nworld,0,1\n"),
    ),
    *[
        Case(
            f"threshold-{name}",
            lambda w, value=value: ["predict", "run", "--input", "unlabelled.csv", "--threshold", value],
            "--threshold must be",
        )
        for name, value in (("zero", "0"), ("one", "1"), ("above-one", "1.5"), ("negative", "-0.1"), ("nan", "nan"))
    ],
    Case(
        "threshold-on-a-single-label-run",
        lambda w: ["predict", "run", "--input", "unlabelled.csv", "--threshold", "0.3"],
        "--threshold applies to multi-label runs",
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
    # --- seeds and names
    Case("seed-negative", lambda w: T(w, "--output", "new", "--set", "training.seed=-1"), "'training.seed': must be"),
    Case("seed-negative-in-plan", lambda w: ["plan", str(w.cfg), "--set", "training.seed=-1"], "'training.seed'"),
    Case(
        "seed-above-2-32",
        lambda w: T(w, "--output", "new", "--set", "training.seed=4294967296"),
        "0 .. 4294967295",
    ),
    Case("seed-1e23", lambda w: T(w, "--output", "new", "--set", "training.seed=1e23"), "'training.seed'"),
    Case("name-escapes-runs", lambda w: T(w, "--set", "name=../../escaped-run"), "not a plain folder name"),
    Case("name-with-separator", lambda w: ["plan", str(w.cfg), "--set", "name=a/b"], "not a plain folder name"),
    Case(
        "alias-bomb-report-to",
        lambda w: ["plan", "bomb.yaml"],
        "'training.report_to[0]'",
        setup=lambda w: (w / "bomb.yaml").write_text(f"name: bomb\ntraining:\n  report_to: {alias_bomb()}\n"),
    ),
    Case(
        "alias-bomb-adapter-options",
        lambda w: ["plan", "bomb.yaml"],
        "adapter.options",
        setup=lambda w: (w / "bomb.yaml").write_text(
            f"name: bomb\nadapter:\n  options:\n    exclude_modules: {alias_bomb()}\n"
        ),
    ),
    # --- paths, devices, full and read-only disks
    Case(
        "export-output-under-a-file",
        lambda w: ["export", "run", "--format", "peft", "--output", "train.csv/sub"],
        "is not a folder",
    ),
    Case(
        "predict-to-full-device",
        lambda w: ["predict", "run", "--input", "unlabelled.csv", "--output", str(w.root.parent / "fulldev")],
        "No space left on device",
        setup=device_node("fulldev", 1, 7),
    ),
    Case(
        "train-onto-full-disk",
        lambda w: T(w, "--output", str(w.root.parent / "mnt" / "full" / "run")),
        "No space left on device",
        tags={"full"},
    ),
    Case(
        "predict-onto-full-disk",
        lambda w: ["predict", "run", "--input", "unlabelled.csv", "--output", str(w.root.parent / "mnt/full/p.csv")],
        "No space left on device",
        tags={"full"},
    ),
    Case(
        "export-onto-full-disk",
        lambda w: ["export", "run", "--format", "hf", "--output", str(w.root.parent / "mnt" / "full" / "exp")],
        "No space left on device",
        tags={"full"},
    ),
    Case(
        "train-onto-read-only-disk",
        lambda w: T(w, "--output", str(w.root.parent / "mnt" / "readonly" / "run")),
        "Read-only file system",
        tags={"readonly"},
    ),
    Case(
        "export-onto-read-only-disk",
        lambda w: ["export", "run", "--format", "peft", "--output", str(w.root.parent / "mnt" / "readonly" / "e")],
        "Read-only file system",
        tags={"readonly"},
    ),
    Case(
        "export-unfinished-run-without-weights",
        lambda w: ["export", "run", "--format", "peft", "--output", "e"],
        "has no trained weights yet",
        setup=lambda w: (unfinished(w), shutil.rmtree(w.run / "adapter")),
    ),
    # --- tampered ONNX
    Case(
        "onnx-export-tampered",
        lambda w: ["predict", "exp", "--input", "unlabelled.csv", "--output", "p.csv"],
        "sha256 does not match",
        setup=with_export(negate_head),
    ),
    Case(
        "onnx-export-truncated",
        lambda w: ["predict", "exp", "--input", "unlabelled.csv", "--output", "p.csv"],
        "sha256 does not match",
        setup=with_export(truncate),
    ),
    Case(
        "onnx-export-truncated-without-checksums",
        lambda w: ["predict", "exp", "--input", "unlabelled.csv", "--output", "p.csv"],
        "unreadable ONNX model",
        setup=with_export(truncate, drop_checksums=True),
    ),
    # --- a run being replaced (--overwrite) or trained holds its lock: writers into it refuse
    Case(
        "predict-during-overwrite",
        lambda w: ["predict", "run", "--input", "unlabelled.csv"],
        "in use by process 1",
        setup=lock_held_by(1, socket.gethostname()),
    ),
    Case(  # its RUN/onnx/ export is made with the record, into the run
        "predict-onnx-during-overwrite",
        lambda w: ["predict", "run", "--input", "unlabelled.csv", "--engine", "onnx"],
        "in use by process 1",
        setup=lock_held_by(1, socket.gethostname()),
    ),
    Case(
        "evaluate-during-overwrite",
        lambda w: ["evaluate", "run", "--data", "train.csv"],
        "in use by process 1",
        setup=lock_held_by(1, socket.gethostname()),
    ),
    Case(
        "report-during-overwrite",
        lambda w: ["report", "run"],
        "in use by process 1",
        setup=lock_held_by(1, socket.gethostname()),
    ),
    Case(
        "export-into-run-during-overwrite",
        lambda w: ["export", "run", "--format", "peft", "--output", "run/exported"],
        "in use by process 1",
        setup=lock_held_by(1, socket.gethostname()),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, ws: Workspace, capsys, request):
    if "full" in case.tags or "readonly" in case.tags:
        request.getfixturevalue("mounts")("full" if "full" in case.tags else "readonly")
    if case.setup and case.setup.__qualname__.startswith("with_export"):
        (ws.root.parent / "onnx-export").symlink_to(request.getfixturevalue("onnx_export"))
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


def test_case_ids_are_unique():
    # pytest would run a duplicate id under a suffixed name, hiding which case a failure is.
    ids = [c.id for c in CASES] + [c.id for c in CACHE_CASES]
    assert not {i for i in ids if ids.count(i) > 1}


# --------------------------------------------------------------------------------------------
# Issue 32: damage and odd outputs that are handled (exit 0) rather than refused, each with its warning


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_device_output_is_written_through_not_replaced(ws: Workspace, capsys):
    node = ws.root.parent / "nulldev"
    device_node("nulldev", 1, 3)(ws)  # skips where mknod is not allowed
    code, out, err = run_cli(["predict", "run", "--input", "unlabelled.csv", "--output", str(node)], capsys)
    assert code == 0, err
    assert stat.S_ISCHR(os.stat(node).st_mode), "the device node was replaced by a regular file"
    assert not [p for p in node.parent.iterdir() if p.name.startswith(".nulldev.")]


def test_output_dash_writes_the_csv_to_stdout(ws: Workspace, capsys):
    code, out, err = run_cli(["predict", "run", "--input", "unlabelled.csv", "--output", "-"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "ID,Label" and len(lines) == 81  # 80 input rows, nothing else on stdout
    assert "to stdout" in err and not (ws.root / "-").exists()


def test_predict_elsewhere_while_run_is_locked_keeps_the_run(ws: Workspace, capsys):
    lock_held_by(1, socket.gethostname())(ws)
    before = snapshot(ws.run)
    code, out, err = run_cli(["predict", "run", "--input", "unlabelled.csv", "--output", "p.csv"], capsys)
    assert code == 0, err
    assert (ws / "p.csv").is_file()
    assert snapshot(ws.run) == before  # nothing written into the run that the swap would delete


def test_report_and_compare_skip_damaged_metrics_lines(ws: Workspace, capsys):
    with open(ws.run / "metrics.jsonl", "ab") as fh:
        fh.write(b'\xff\xfe\x00garbage\n{"type": "train", "step": 3, "lo')  # undecodable, then a partial line
    code, out, err = run_cli(["report", "run"], capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "unreadable line" in line]
    assert warnings and "metrics.jsonl" in warnings[0] and "skipped 2" in warnings[0]
    code, out, err = run_cli(["compare", "run", "--output", "cmp"], capsys)  # reads summaries and evaluations
    assert code == 0, err


def test_classify_replaces_invalid_utf8_and_counts_blank_lines(ws: Workspace, capsys, monkeypatch):
    import io
    import sys

    stdin = io.TextIOWrapper(io.BytesIO(b"stocks rallied\n\xff\xfe broken bytes\n\n  \nthe match ended\n"))
    monkeypatch.setattr(sys, "stdin", stdin)
    code, out, err = run_cli(["classify", "run", "-"], capsys)
    assert code == 0, err
    assert len(out.splitlines()) == 3 and "\ufffd" in out.splitlines()[1]
    assert "1 text(s) held invalid UTF-8" in err and "skipped 2 blank line(s)" in err
    # on the command line Python keeps invalid bytes as surrogates
    code, out, err = run_cli(["classify", "run", b"caf\xe9 news".decode("utf-8", "surrogateescape")], capsys)
    assert code == 0 and "1 text(s) held invalid UTF-8" in err


def test_run_without_checksums_says_it_cannot_verify(ws: Workspace, capsys):
    without_checksum(lambda path: None)(ws)
    code, out, err = run_cli(["classify", "run", "hello"], capsys)
    assert code == 0, err
    assert "cannot be verified" in err


def test_rewritten_token_cache_is_rebuilt_not_used(tiny_roberta, tmp_path, capsys):
    """Training's token cache (inference keeps none): a valid entry rewritten with other ids is rebuilt."""
    import numpy as np

    from lorabudget.data.batching import TOKENS_FOLDER, tokenize
    from lorabudget.model.hub import load_tokenizer

    tokenizer, texts = load_tokenizer(str(tiny_roberta)), ["the market rallied", "a game of the season"]
    first = tokenize(tokenizer, texts, 32, tmp_path)
    (path,) = (tmp_path / TOKENS_FOLDER).glob("*.npz")
    with np.load(path) as data:  # its recorded key and checksum left as they were
        entry = {k: data[k] for k in data.files}
    entry["ids"] = np.roll(entry["ids"], 1)
    np.savez(path, **entry)
    again = tokenize(tokenizer, texts, 32, tmp_path)
    assert "does not match its key or checksum: rebuilding it" in capsys.readouterr().err
    assert np.array_equal(again.ids, first.ids) and np.array_equal(again.offsets, first.offsets)


def test_teacher_logit_cache_with_other_columns_is_rebuilt(tmp_path):
    import numpy as np

    from lorabudget.training.distill import TeacherLogitsCache

    cache = TeacherLogitsCache(tmp_path)
    key = cache.key("teacher", ["a", "b"])
    cache.save(key, np.ones((2, 4), dtype=np.float32))
    assert cache.load(key, 2) is not None
    with np.load(cache.path(key)) as data:
        entry = {k: data[k] for k in data.files}
    entry["logits"] = np.ones((2, 3), dtype=np.float32)  # key and row count still match
    np.savez(cache.path(key), **entry)
    assert cache.load(key, 2) is None


# --------------------------------------------------------------------------------------------
# A damaged frozen-prefix cache (training.cache_frozen_layers) is not an error either: the run says in
# one line per damaged store that it rebuilds it, never reads the damaged states, and ends (exit 0) with
# the weights and validation metrics of the run that built the cache.


def tamper(states: Path, record: Path) -> None:
    data = bytearray(states.read_bytes())
    data[-5] ^= 0xFF  # the sign and exponent of the last row's second-last value; the record unchanged
    states.write_bytes(bytes(data))


def foreign_key(states: Path, record: Path) -> None:
    entry = json.loads(record.read_text())
    entry["key"] = "0" * 64  # a record (and its states) left by another entry under this name
    record.write_text(json.dumps(entry))


@dataclass
class CacheCase:
    id: str
    damage: Callable[[Path, Path], None]  # (states .npy, record .json) of each store
    line: str  # on stderr after "prefix cache <states>", once per damaged store


UNSOUND, UNREADABLE = "does not match its key or checksum: rebuilding it", "is unreadable: rebuilding it"
CACHE_CASES = [
    CacheCase("prefix-cache-truncated", lambda states, record: truncate(states), UNREADABLE),
    CacheCase("prefix-cache-tampered", tamper, UNSOUND),
    CacheCase("prefix-cache-foreign-key", foreign_key, UNSOUND),
    CacheCase("prefix-cache-no-record", lambda states, record: record.unlink(), UNREADABLE),
]


@pytest.fixture(scope="module")
def prefix_cached(tmp_path_factory, make_config, tiny_roberta) -> Path:
    """A 2-step run with adapters in the top layer only (``first``), which built the frozen-prefix cache
    of its training and validation rows (``cache``), and its config (``cfg.yaml``)."""
    base = tmp_path_factory.mktemp("prefix-cached")
    values = top_layer(make_config, base / "cache", tiny_roberta, True, epochs=1, max_steps=2)
    (base / "cfg.yaml").write_text(yaml.safe_dump(values))
    assert main(["train", str(base / "cfg.yaml"), "--output", str(base / "first"), "--no-report"]) == 0
    return base


@pytest.mark.parametrize("case", CACHE_CASES, ids=[c.id for c in CACHE_CASES])
def test_damaged_prefix_cache_is_rebuilt_not_used(case: CacheCase, prefix_cached: Path, tmp_path, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(prefix_cached / "cache", cache)  # the module's cache stays sound for the next case
    records = sorted((cache / PREFIX_FOLDER).glob("*.json"))
    assert len(records) == 2  # training and validation rows
    for record in records:
        case.damage(record.with_suffix(".npy"), record)
    argv = ["train", str(prefix_cached / "cfg.yaml"), "--set", f"data.cache_dir={cache}", "--no-report"]
    code, out, err = run_cli([*argv, "--output", str(tmp_path / "again")], capsys)
    assert code == 0, err[-2000:]
    rebuilt = sorted(line for line in err.splitlines() if "rebuilding" in line)
    assert rebuilt == [f"warning: prefix cache {r.with_suffix('.npy')} {case.line}" for r in records], err[-2000:]
    first, again = (ended(run) for run in (prefix_cached / "first", tmp_path / "again"))
    assert again["frozen_prefix"]["used"] and not again["frozen_prefix"]["cache_hit"]  # built, not reused
    assert again["adapter_sha256"] == first["adapter_sha256"]  # the same weights, to the bit
    assert again["eval"] == first["eval"]  # validation metrics, predictions and confidences


def ended(run: Path) -> dict:
    """A finished run's summary.json with its eval.json (less the time it was written) as ``eval``."""
    evaluated = json.loads((run / "eval.json").read_text())
    evaluated.pop("time")
    return {**json.loads((run / "summary.json").read_text()), "eval": evaluated}


def test_tampered_run_onnx_export_is_made_again(ws: Workspace, capsys):
    argv = ["predict", "run", "--input", "unlabelled.csv", "--engine", "onnx", "--no-report"]
    assert run_cli(argv, capsys)[0] == 0  # into the run: RUN/onnx/ made
    negate_head(ws.run / "onnx" / "model.onnx")
    code, out, err = run_cli(argv + ["--output", "p2.csv"], capsys)
    assert code == 0, err
    assert "sha256 does not match" in err and "exporting it again" in err
    assert (ws.run / "predictions.csv").read_text() == (ws / "p2.csv").read_text()


def test_sigterm_inside_atomic_outputs_leaves_no_temporary_files(tmp_path):
    import signal

    from lorabudget.io import atomic_dir, atomic_path
    from lorabudget.signals import Terminated, handle_termination

    for writer in (atomic_dir, atomic_path):
        with handle_termination(), pytest.raises(Terminated) as stopped:
            with writer(tmp_path / "out") as tmp:
                (tmp / "part").write_text("x") if writer is atomic_dir else tmp.write_text("x")
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(100):  # the handler runs between bytecodes
                    pass
        assert stopped.value.exit_code == 143
        assert list(tmp_path.iterdir()) == []


def test_predict_elsewhere_from_a_read_only_run(ws: Workspace, tmp_path, capsys):
    mnt = tmp_path / "mnt" / "ro-run"
    _mount_tmpfs(mnt, "size=8m")
    try:
        shutil.copytree(ws.run, mnt / "run")
        remount = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True, text=True)
        if remount.returncode:
            pytest.skip(f"cannot remount read-only ({remount.stderr.strip()})")
        argv = ["predict", str(mnt / "run"), "--input", "unlabelled.csv", "--no-report"]
        code, out, err = run_cli(argv + ["--output", "p.csv"], capsys)
        assert code == 0, err
        assert (ws / "p.csv").is_file()  # a CSV outside the run: nothing to record in the run
        code, out, err = run_cli(argv, capsys)  # the default output is inside the run: one line, exit 2
        assert code == 2 and len([line for line in err.splitlines() if "error:" in line]) == 1
        assert "Read-only file system" in err
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


EXPORT_CHILD = """
import sys, time
import lorabudget.export.formats as F
def stalled_export(*args, **kwargs):
    print("TERM ME", flush=True)
    time.sleep(300)  # the SIGTERM handler raises out of the sleep
F.export_onnx = stalled_export
from lorabudget.cli import main
sys.exit(main({argv!r}))
"""


def test_sigterm_during_onnx_export_removes_its_temporary_folder(ws: Workspace):
    import signal
    import sys
    import time

    argv = ["export", str(ws.run), "--format", "onnx", "--output", str(ws / "exp")]
    child = subprocess.Popen(
        [sys.executable, "-c", EXPORT_CHILD.format(argv=argv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        for line in child.stdout:
            if "TERM ME" in line or time.time() > deadline:
                break
        assert [p.name for p in ws.root.iterdir() if p.name.startswith(".exp.")], "the export had not started"
        os.kill(child.pid, signal.SIGTERM)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 143, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "lorabudget export: stopped by SIGTERM"
    assert not [p.name for p in ws.root.iterdir() if p.name.startswith(".exp") or p.name == "exp"]
