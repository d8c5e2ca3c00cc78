"""Integrity and edge cases: outputs that would replace a run's own files, cached packaged weights that
were changed, lock files and cache folders that are links, the cache root, a closed stdout, a run whose
``figures`` is a file, and YAML files that are not UTF-8. Each case is the exact input that showed it."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import yaml

import lorabudget
from lorabudget.cli import main
from lorabudget.data.cache import clear_caches
from lorabudget.errors import LorabudgetError
from lorabudget.io import default_cache_dir, exclusive_lock
from lorabudget.model import hub, packaged
from lorabudget.model.packaged import PackagedModel, packaged_model_folder
from lorabudget.rundir import layout
from lorabudget.rundir.layout import RunDir
from lorabudget.rundir.lifecycle import check_not_run_file

SRC = Path(lorabudget.__file__).parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, make_config) -> Path:
    """One finished tiny run (no report), copied by the tests that change it."""
    base = tmp_path_factory.mktemp("edges")
    cfg = base / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(make_config(base / "cache", training={"epochs": 1, "learning_rate": 2e-2})))
    assert main(["train", str(cfg), "--output", str(base / "run"), "--no-report"]) == 0
    return base / "run"


@pytest.fixture
def run(trained, tmp_path) -> Path:
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err[-2000:]
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


# --------------------------------------------------------------------------------------------
# 1. An output path that is one of a run's records or weight files is refused


def fake_run(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / layout.CONFIG).write_text("name: fake\n")
    return folder


@pytest.mark.parametrize(
    "inside",
    [
        f"{layout.ADAPTER}/adapter_model.safetensors",
        f"{layout.ADAPTER}/{layout.FULL_WEIGHTS}",
        layout.SUMMARY,
        layout.CONFIG,
        layout.METRICS,
        layout.EVAL,
        layout.BUDGET,
        layout.PREDICTIONS_SUMMARY,
        f"{layout.CHECKPOINT}/{layout.CHECKPOINT_STATE}",
        f"{layout.TOKENIZER}/tokenizer.json",
        f"{layout.EVALS}/test.csv.json",
        "",
    ],
)
def test_a_run_file_is_refused_as_an_output(tmp_path, inside):
    run_dir = fake_run(tmp_path / "runs" / "r")
    output = run_dir / inside if inside else run_dir
    with pytest.raises(LorabudgetError) as err:
        check_not_run_file(output, "--output")
    assert "\n" not in str(err.value) and str(run_dir.resolve()) in str(err.value)


@pytest.mark.parametrize("elsewhere", [layout.PREDICTIONS, "mine.csv", f"{layout.FIGURES}/x.csv", "../next.csv"])
def test_outputs_of_the_commands_themselves_are_allowed(tmp_path, elsewhere):
    run_dir = fake_run(tmp_path / "r")
    check_not_run_file(run_dir / elsewhere, "--output")


def test_a_link_into_a_run_is_refused_through_the_link(tmp_path):
    run_dir = fake_run(tmp_path / "r")
    (run_dir / layout.ADAPTER).mkdir()
    (tmp_path / "weights.safetensors").symlink_to(run_dir / layout.ADAPTER / "adapter_model.safetensors")
    (tmp_path / "folder").symlink_to(run_dir / layout.ADAPTER)
    for output in (tmp_path / "weights.safetensors", tmp_path / "folder" / "x.csv"):
        with pytest.raises(LorabudgetError, match="would replace its trained weights"):
            check_not_run_file(output, "--output")


def test_predict_output_into_the_runs_weights_is_refused_and_keeps_them(run, data_dir, capsys):
    weights = RunDir(run).weight_files()
    kept = {p: sha(p) for p in RunDir(run).adapter_dir.iterdir()} | {
        run / name: sha(run / name) for name in (layout.SUMMARY, layout.CONFIG, layout.METRICS, layout.EVAL)
    }
    for target in [weights[0], *(run / name for name in (layout.SUMMARY, layout.CONFIG, layout.METRICS, layout.EVAL))]:
        capsys.readouterr()
        code = main(["predict", str(run), "--input", str(data_dir / "unlabelled.csv"), "--output", str(target)])
        assert code == 2
        assert "would replace" in one_error_line(capsys.readouterr().err)
    assert {p: sha(p) for p in kept} == kept


def test_export_into_the_runs_adapter_is_refused(run, capsys):
    before = {p: sha(p) for p in RunDir(run).adapter_dir.iterdir()}
    argv = ["export", str(run), "--format", "peft", "--output", str(RunDir(run).adapter_dir), "--overwrite"]
    assert main(argv) == 2
    assert "would replace its trained weights" in one_error_line(capsys.readouterr().err)
    assert {p: sha(p) for p in RunDir(run).adapter_dir.iterdir()} == before


def test_export_over_the_folder_holding_the_run_is_refused(run, capsys):
    before = {p: sha(p) for p in RunDir(run).adapter_dir.iterdir()}
    assert main(["export", str(run), "--format", "peft", "--output", str(run.parent), "--overwrite"]) == 2
    assert "holds the run" in one_error_line(capsys.readouterr().err)
    assert {p: sha(p) for p in RunDir(run).adapter_dir.iterdir()} == before


# --------------------------------------------------------------------------------------------
# 2. and 3. Packaged model weights unpacked into the cache: checked by sha256; lock files; cache clear


def fake_distribution(site: Path, dist: str, files: dict[str, bytes]) -> None:
    info = site / f"{dist.replace('-', '_')}-0.0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
    for relative, data in files.items():
        (site / relative).parent.mkdir(parents=True, exist_ok=True)
        (site / relative).write_bytes(data)


@pytest.fixture
def packaged_from(tmp_path, monkeypatch):
    """``packaged_from({name: bytes})`` -> the model installed as 'tiny-model', zipped and split in two fake
    packages (the layout of all-mpnet-base-v2's part packages); the cache root is this test's own."""
    monkeypatch.setenv("LORABUDGET_CACHE", str(tmp_path / "cache"))
    site = tmp_path / "site"
    monkeypatch.syspath_prepend(str(site))

    def install(files: dict[str, bytes]) -> PackagedModel:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, data in files.items():
                archive.writestr(f"tiny-model/{name}", data)
        data = buffer.getvalue()
        pieces = [data[: len(data) // 2], data[len(data) // 2 :]]
        parts = tuple((f"tiny-model-part-{i}", f"tiny_model_part_{i}/model.zip.00{i}") for i in (1, 2))
        model = PackagedModel("someone/tiny-model", parts, "tiny", zip_folder="tiny-model")
        for (dist, path), piece in zip(parts, pieces):
            fake_distribution(site, dist, {path: piece})
        monkeypatch.setitem(packaged.PACKAGED_MODELS, "tiny-model", model)
        return model

    return install


WEIGHTS = bytes(range(256)) * 64


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: path.write_bytes(path.read_bytes()[:1000]),  # truncated
        lambda path: path.write_bytes(os.urandom(path.stat().st_size)),  # same size, random bytes
        lambda path: path.unlink(),
    ],
    ids=["truncated", "same-size-random", "removed"],
)
def test_damaged_unpacked_weights_are_unpacked_again(packaged_from, capsys, damage):
    packaged_from({"config.json": b'{"model_type": "bert"}', "model.safetensors": WEIGHTS})
    folder = Path(packaged_model_folder("tiny-model"))
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    capsys.readouterr()
    damage(folder / "model.safetensors")
    assert Path(packaged_model_folder("tiny-model")) == folder
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "model.safetensors" in warnings[0] and "unpacking someone/tiny-model again" in err
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert packaged_model_folder("tiny-model") == str(folder)  # intact now: nothing said, nothing unpacked
    assert capsys.readouterr().err == ""


def test_an_unpack_without_checksums_is_unpacked_again(packaged_from, capsys):
    packaged_from({"config.json": b"{}", "sub/tokenizer.json": b"{}", "model.safetensors": WEIGHTS})
    folder = Path(packaged_model_folder("tiny-model"))
    recorded = json.loads((folder / packaged.CHECKSUMS_FILE).read_text())
    assert set(recorded) == {"config.json", "sub/tokenizer.json", "model.safetensors"}
    assert recorded["model.safetensors"] == hashlib.sha256(WEIGHTS).hexdigest()
    (folder / packaged.CHECKSUMS_FILE).unlink()  # as a folder unpacked before checksums were recorded
    (folder / "model.safetensors").write_bytes(b"\0" * len(WEIGHTS))
    packaged_model_folder("tiny-model")
    assert "cannot be verified" in capsys.readouterr().err
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS


def test_classify_on_changed_cached_weights_unpacks_them_again(run, tiny_roberta, packaged_from, capsys):
    """The exact case: same-size random bytes in the unpacked weights classified every text as one class
    with probability nan, exit 0."""
    packaged_from({p.name: p.read_bytes() for p in tiny_roberta.iterdir() if p.is_file()})
    config = yaml.safe_load((run / layout.CONFIG).read_text())
    config["model"]["name"] = "tiny-model"
    (run / layout.CONFIG).write_text(yaml.safe_dump(config))
    texts = ["stocks rallied on earnings", "the match ended in a draw"]
    assert main(["classify", str(run), *texts]) == 0
    expected = capsys.readouterr().out
    folder = Path(packaged_model_folder("tiny-model"))
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")  # safetensors: header length, JSON header, then the tensors
    weights.write_bytes(data[:header] + os.urandom(len(data) - header))  # same size, random tensor bytes
    assert main(["classify", str(run), *texts]) == 0
    out, err = capsys.readouterr()
    assert "nan" not in out and out == expected
    assert "unpacking someone/tiny-model again" in err
    assert hub.resolve_model_source("tiny-model") == str(folder)


def test_a_planted_link_at_the_unpack_lock_is_refused_not_followed(packaged_from, tmp_path):
    packaged_from({"config.json": b'{"model_type": "bert"}', "model.safetensors": WEIGHTS})
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    root = default_cache_dir()
    root.mkdir(parents=True)
    (root / packaged.UNPACK_LOCK).symlink_to(victim)
    with pytest.raises(LorabudgetError, match="is a symbolic link, not a lock file") as err:
        packaged_model_folder("tiny-model")
    assert "\n" not in str(err.value)
    assert victim.read_text() == "precious"


def test_a_lock_file_is_not_truncated(tmp_path):
    lock = tmp_path / "held.lock"
    lock.write_text("kept")
    with exclusive_lock(lock):
        assert lock.read_text() == "kept"
    assert lock.read_text() == "kept"
    (tmp_path / "link.lock").symlink_to(tmp_path / "absent-target")
    with pytest.raises(LorabudgetError):
        with exclusive_lock(tmp_path / "link.lock"):
            pass
    assert not (tmp_path / "absent-target").exists()  # the link did not create its target


def test_cache_clear_during_an_unpack_waits_for_it(packaged_from, monkeypatch):
    packaged_from({"config.json": b'{"model_type": "bert"}', "model.safetensors": WEIGHTS})
    started, go, results, errors = threading.Event(), threading.Event(), {}, []
    real_unpack = packaged._unpack

    def slow_unpack(*args):
        started.set()
        assert go.wait(60)
        real_unpack(*args)

    def guarded(name, function):
        def target():
            try:
                results[name] = function()
            except BaseException as err:  # noqa: BLE001 - reported by the assertion below
                errors.append(err)

        return threading.Thread(target=target)

    monkeypatch.setattr(packaged, "_unpack", slow_unpack)
    unpacking = guarded("folder", lambda: packaged_model_folder("tiny-model"))
    unpacking.start()
    assert started.wait(60)
    clearing = guarded("cleared", lambda: clear_caches(waiting=lambda: results.setdefault("waited", True)))
    clearing.start()
    clearing.join(1.0)
    assert clearing.is_alive() and results.get("waited")  # held off while the unpack runs
    go.set()
    unpacking.join(60)
    clearing.join(60)
    assert not errors, errors
    models = next(f for f in results["cleared"] if f.path.name == packaged.MODELS_FOLDER)
    assert models.files == 3  # config, weights and checksums: cleared after the unpack finished
    assert not Path(results["folder"]).exists()


def test_cache_clear_removes_a_linked_cache_folder_not_its_target(tmp_path, monkeypatch, capsys):
    root = tmp_path / "cache"
    root.mkdir()
    elsewhere = tmp_path / "big-disk" / "models"
    (elsewhere / "m").mkdir(parents=True)
    (elsewhere / "m" / "w.bin").write_bytes(b"x" * 100)
    (root / packaged.MODELS_FOLDER).symlink_to(elsewhere)
    monkeypatch.setenv("LORABUDGET_CACHE", str(root))
    assert main(["cache", "info"]) == 0
    assert main(["cache", "clear"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert not (root / packaged.MODELS_FOLDER).exists() and not (root / packaged.MODELS_FOLDER).is_symlink()
    assert (elsewhere / "m" / "w.bin").read_bytes() == b"x" * 100


# --------------------------------------------------------------------------------------------
# 4. The cache root and the caches `env` names


def test_cache_root_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LORABUDGET_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "lorabudget"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # invalid under the XDG spec: ignored
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "lorabudget"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "lorabudget"
    monkeypatch.setenv("LORABUDGET_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    assert default_cache_dir(str(tmp_path / "configured")) == tmp_path / "configured"


def test_env_prints_the_cache_paths_the_libraries_use(tmp_path, monkeypatch, capsys):
    import datasets.config
    import torch
    from huggingface_hub import constants

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("LORABUDGET_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    # Where datasets resolved its cache from its own settings, not from HF_HOME/datasets.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-own")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-own"))
    assert main(["env", "--no-probe"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith(f"- lorabudget cache: {tmp_path / 'xdg' / 'lorabudget'} ") for line in lines)
    assert f"- Hugging Face datasets cache: {tmp_path / 'datasets-own'} (not created yet)" in lines
    assert f"- Hugging Face hub cache: {tmp_path / 'hub-own'} (not created yet)" in lines


# --------------------------------------------------------------------------------------------
# 5. A closed stdout ends quietly


def closed_stdout(code: str, stdin: bytes | None = None) -> tuple[int, str]:
    """Run ``python -c code`` whose stdout's reader has gone before it writes; (exit code, stderr)."""
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    proc.stdout.close()  # as `| head` after its line, or `| true`: nobody reads any more
    if stdin:
        proc.stdin.write(stdin)
    proc.stdin.close()
    err = proc.stderr.read().decode()
    return proc.wait(timeout=300), err


LOTS = "for i in range(200000): print(i)"


def test_quiet_broken_pipe_ends_quietly_where_python_alone_does_not():
    code, err = closed_stdout(LOTS)
    assert code != 0 and "BrokenPipeError" in err  # what the commands did
    code, err = closed_stdout(
        f"from lorabudget.console import quiet_broken_pipe\nwith quiet_broken_pipe():\n    {LOTS}"
    )
    assert (code, err) == (0, "")
    # Output still buffered at the end fails at the flush inside the block, not at exit.
    code, err = closed_stdout(
        "from lorabudget.console import quiet_broken_pipe\nwith quiet_broken_pipe():\n    print(1)"
    )
    assert (code, err) == (0, "")


WRAPPED_MAIN = (
    "import sys\nfrom lorabudget.cli import main\nfrom lorabudget.console import quiet_broken_pipe\n"
    "code = 0\nwith quiet_broken_pipe():\n    code = main(sys.argv[1:])\nsys.exit(code)\n"
)


def commands(run: Path, data_dir: Path) -> dict[str, tuple[list[str], bytes | None]]:
    return {
        "presets": (["presets"], None),
        "predict": (["predict", str(run), "--input", str(data_dir / "unlabelled.csv"), "--output", "-"], None),
        "classify": (["classify", str(run), "-"], b"stocks rallied\nthe match ended\n" * 500),
    }


@pytest.mark.parametrize("command", ["presets", "predict", "classify"])
def test_commands_inside_quiet_broken_pipe_end_quietly(command, run, data_dir):
    argv, stdin = commands(run, data_dir)[command]
    code, err = closed_stdout(WRAPPED_MAIN.replace("sys.argv[1:]", repr(argv)), stdin)
    assert code == 0 and "Traceback" not in err and "Exception ignored" not in err, err[-3000:]


def test_presets_into_a_closed_pipe_is_quiet():
    code, err = closed_stdout("import sys\nfrom lorabudget.cli import main\nsys.exit(main(['presets']))")
    assert code == 0 and "Traceback" not in err and "Exception ignored" not in err, err[-3000:]


# --------------------------------------------------------------------------------------------
# 6. A run whose `figures` is a file


def test_check_writable_layout_names_the_file_in_one_line(tmp_path):
    run_dir = fake_run(tmp_path / "r")
    RunDir(run_dir).check_writable_layout()
    (run_dir / layout.FIGURES).write_text("not a folder")
    with pytest.raises(LorabudgetError, match="is a file, not a folder") as err:
        RunDir(run_dir).check_writable_layout()
    assert "\n" not in str(err.value) and layout.FIGURES in str(err.value)
    (run_dir / layout.FIGURES).unlink()
    (run_dir / layout.REPORT).mkdir()
    with pytest.raises(LorabudgetError, match="is a folder, not a file"):
        RunDir(run_dir).check_writable_layout()


@pytest.mark.parametrize("command", ["report", "evaluate", "predict"])
def test_figures_as_a_file_is_one_line_before_any_work(command, run, data_dir, capsys):
    (run / layout.FIGURES).write_text("not a folder")
    argv = {
        "report": ["report", str(run)],
        "evaluate": ["evaluate", str(run), "--data", str(data_dir / "test.csv")],
        "predict": ["predict", str(run), "--input", str(data_dir / "unlabelled.csv")],
    }[command]
    before = sorted(p.name for p in run.iterdir())
    capsys.readouterr()
    try:
        code = main(argv)
    except FileExistsError:
        code = None
    assert code == 2 and "figures" in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in run.iterdir()) == before  # refused before any work: nothing written


# --------------------------------------------------------------------------------------------
# 7. YAML files that are not UTF-8

LATIN1_YAML = "# purpose: caf\xe9 preset\nname: caf\xe9\n".encode("latin-1")


def test_preset_text_of_a_latin1_file_is_one_line(tmp_path):
    from lorabudget.report.presets import preset_text

    path = tmp_path / "latin.yaml"
    path.write_bytes(LATIN1_YAML)
    with pytest.raises(LorabudgetError, match="is not UTF-8 text") as err:
        preset_text(str(path))
    assert "\n" not in str(err.value) and "line 1" in str(err.value)


def test_presets_listing_a_latin1_preset_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "latin.yaml").write_bytes(LATIN1_YAML)
    monkeypatch.setenv("LORABUDGET_CONFIGS", str(tmp_path))
    assert main(["presets"]) == 2
    assert "latin.yaml is not UTF-8 text" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("command", ["plan", "presets show"])
def test_a_latin1_config_is_one_line_exit_2(command, tmp_path, capsys):
    path = tmp_path / "latin.yaml"
    path.write_bytes(LATIN1_YAML)
    try:
        code = main([*command.split(), str(path)])
    except UnicodeDecodeError:
        code = None
    assert code == 2 and "not UTF-8" in one_error_line(capsys.readouterr().err)
