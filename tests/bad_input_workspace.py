"""The bad-input tables' workspace: a finished tiny run copied into a fresh folder per case, the
setups that damage it, the checks of what a case may leave, and :func:`run_case`, which runs one case
through ``lorabudget.cli.main`` and compares the whole workspace before and after.

A module of test helpers, not a test file: conftest.py loads its fixtures (``pytest_plugins``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
import stat
import subprocess
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


def mount_tmpfs(where: Path, options: str) -> None:
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
        mount_tmpfs(where, "size=3m" if name == "full" else "size=1m,ro")
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


def run_case(case: Case, ws: Workspace, capsys, request) -> None:
    """Run one case in ``ws`` and check its exit code, its one error line and what it left."""
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


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err
