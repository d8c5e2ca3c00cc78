"""The wheel a user installs: built from the checkout's files (offline, no build isolation), installed into a
fresh virtual environment outside the checkout, its `lorabudget` lists the presets and plans one."""

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import lorabudget

ROOT = Path(lorabudget.__file__).parents[2]


def _build_wheel(tmp_path: Path) -> Path:
    """``pip wheel`` on a copy of the files a fresh clone has (so the checkout gets no build/ or egg-info)."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed: the wheel cannot be built offline without build isolation")
    source = tmp_path / "source"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    dist = tmp_path / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    done = subprocess.run([*cmd, "-w", str(dist), str(source)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"building the wheel offline failed here: {done.stderr.strip().splitlines()[-1:]}")
    [wheel] = dist.glob("lorabudget-*.whl")
    return wheel


def test_wheel_installs_with_its_presets(tmp_path):
    wheel = _build_wheel(tmp_path)
    packaged = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("lorabudget/presets/")}
    shipped = list((ROOT / "src" / "lorabudget" / "presets").glob("*.yaml"))
    assert "lorabudget/presets/minilm-cpu.yaml" in packaged and len(packaged) == len(shipped)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    target_site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # torch, transformers, ... come from this environment's site-packages, listed after the venv's own (a
    # plain .pth line: that folder's own .pth files, an editable lorabudget among them, are not run).
    (target_site / "outer-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "1"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index"]
    subprocess.run([*install, str(wheel)], check=True, env=env, capture_output=True)

    def run(*args):
        done = subprocess.run(list(args), cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    where = run(str(python), "-c", "import lorabudget; print(lorabudget.__file__)")
    assert where.strip().startswith(str(target_site)), where  # the wheel's copy, not the checkout's
    listed = run(str(venv / "bin" / "lorabudget"), "presets")
    assert "minilm-cpu " in listed and "seed-lora " in listed and "665,092" in listed
    plan = run(str(venv / "bin" / "lorabudget"), "plan", "minilm-cpu")
    assert "plan for minilm-cpu" in plan and "WITHIN budget" in plan
