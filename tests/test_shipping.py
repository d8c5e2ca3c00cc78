"""What a user installing lorabudget meets: the presets shipped in the package (`lorabudget presets`),
lorabudget's caches (`lorabudget cache info|clear`, no token file per inference call), and one line
naming the extra to install when an optional dependency is missing."""

import importlib.util

import pytest
import yaml

import lorabudget
from lorabudget.cli import main
from lorabudget.config import preset_files, presets_dir, resolve_config_path
from lorabudget.errors import LorabudgetError
from lorabudget.report.presets import preset_purpose


def test_presets_ship_inside_the_package():
    folder = presets_dir()
    assert folder.parent == __import__("pathlib").Path(lorabudget.__file__).parent  # lorabudget/presets
    names = set(preset_files())
    assert {"minilm-cpu", "minilm-cpu-100k", "seed-lora"} <= names
    assert resolve_config_path("minilm-cpu") == folder / "minilm-cpu.yaml"
    for path in folder.glob("*.yaml"):  # every shipped preset says what it is for, in one line
        assert preset_purpose(path) and "\n" not in preset_purpose(path)


def test_lorabudget_configs_adds_and_replaces_presets(tmp_path, monkeypatch):
    extra = tmp_path / "mine"
    extra.mkdir()
    (extra / "my-preset.yaml").write_text("# purpose: a folder of my own\nname: my-preset\n")
    (extra / "seed-lora.yaml").write_text("name: seed-lora\n")
    monkeypatch.setenv("LORABUDGET_CONFIGS", str(extra))
    presets = preset_files()
    assert presets["my-preset"] == extra / "my-preset.yaml" and presets["seed-lora"] == extra / "seed-lora.yaml"
    assert presets["minilm-cpu"] == presets_dir() / "minilm-cpu.yaml"  # the shipped ones stay
    with pytest.raises(LorabudgetError, match="presets: .*minilm-cpu.*my-preset"):
        resolve_config_path("no-such-preset")


def test_presets_command_lists_and_shows(tmp_path, monkeypatch, capsys):
    extra = tmp_path / "mine"
    extra.mkdir()
    values = {"name": "offline-less", "model": {"name": "no-such-org/no-such-model"}, "head": {"type": "linear"}}
    (extra / "offline-less.yaml").write_text("# purpose: a model nobody can fetch\n" + yaml.safe_dump(values))
    monkeypatch.setenv("LORABUDGET_CONFIGS", str(extra))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["presets"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["preset"].split()[:5] == ["preset", "model", "method", "trainable", "budget"]
    # counted on the meta device from the built-in or packaged model config, as `plan` counts it
    assert "665,092" in lines["minilm-cpu"] and "1,000,000" in lines["minilm-cpu"] and " lora " in lines["minilm-cpu"]
    assert "LoRA on the real MiniLM-L6 under 1M parameters" in lines["minilm-cpu"]
    assert "888,580" in lines["seed-lora"]
    assert "unlimited" in lines["seed-teacher-full"]
    # a model config not available offline: no count, said with a dash
    assert " — " in lines["offline-less"] and "a model nobody can fetch" in lines["offline-less"]
    assert main(["presets", "show", "minilm-cpu"]) == 0
    shown = capsys.readouterr().out
    assert shown == (presets_dir() / "minilm-cpu.yaml").read_text() and yaml.safe_load(shown)["name"] == "minilm-cpu"
    assert main(["presets", "show", "nope"]) == 2


def test_inference_writes_no_token_cache_and_cache_command(tmp_path, tiny_config, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("LORABUDGET_CACHE", str(cache))
    values = tiny_config(training={"max_steps": 2, "eval_every": 2}, data={"cache_dir": None})
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(values))
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--output", str(run), "--no-report"]) == 0
    tokens = cache / "tokens"
    before = sorted(tokens.iterdir())
    assert before  # training keeps its cache (training and validation texts)
    for k in range(50):
        assert main(["classify", str(run), f"text number {k} about sport and games", "stocks"]) == 0
    assert sorted(tokens.iterdir()) == before
    capsys.readouterr()
    assert main(["cache", "info"]) == 0
    info = capsys.readouterr().out.splitlines()
    assert info[0].startswith(f"{tokens} holds {len(before)} files, ")
    assert info[1] == f"{cache / 'teacher_logits'} holds 0 files, 0 B"
    assert info[2] == f"{cache / 'models'} holds 0 files, 0 B"  # packaged models unpacked from split zips
    (cache / "unrelated").mkdir()  # the cache root may hold other things: clear leaves them
    assert main(["cache", "clear"]) == 0
    assert capsys.readouterr().out.startswith(f"{tokens} removed {len(before)} files")
    assert not tokens.exists() and (cache / "unrelated").is_dir()
    assert main(["cache", "info"]) == 0
    assert f"{tokens} holds 0 files, 0 B" in capsys.readouterr().out


def test_a_missing_extra_is_named_in_one_line(monkeypatch, capsys, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real_find_spec(name, *a)
    )
    assert main(["search", "minilm-cpu", "--trials", "1", "--output", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "lorabudget search: error: lorabudget search needs optuna: pip install 'lorabudget[search]'"


def test_every_direct_import_is_declared():
    """Each third-party package that src/ imports is a core dependency or in an extra (tests' in [dev])."""
    import ast
    import sys
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    root = Path(lorabudget.__file__).parents[2]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]

    def names(specs):
        out = set()
        for spec in specs:
            name = spec.split(";")[0].split("[")[0]
            for sep in "<>=!~ ":
                name = name.split(sep)[0]
            out.add(name.strip().lower().replace("_", "-"))
        return out

    core = names(project["dependencies"])
    extras = {k: names(v) for k, v in project["optional-dependencies"].items()}
    declared = core | set().union(*extras.values())
    # import name -> distribution name where they differ
    dist = {
        "yaml": "pyyaml",
        "sklearn": "scikit-learn",
        "psycopg2": "psycopg2-binary",
        "huggingface_hub": "huggingface-hub",
    }
    stdlib = set(sys.stdlib_module_names)

    def third_party(folder):
        found = set()
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    found |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    found.add(node.module.split(".")[0])
        return {dist.get(n, n).replace("_", "-") for n in found if n not in stdlib and n != "lorabudget"}

    missing = third_party(root / "src") - declared
    assert not missing, f"imported in src/ but not declared in pyproject.toml: {sorted(missing)}"
    local = {p.stem.replace("_", "-") for p in (root / "tests").glob("*.py")}  # conftest, shared test data
    test_imports = third_party(root / "tests") - local
    assert not test_imports - declared, sorted(test_imports - declared)
    assert {"pytest", "scipy", "tokenizers"} <= extras["dev"] | core
    assert "optuna" not in core  # only `search` needs it
