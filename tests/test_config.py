import pytest
import yaml

from lorabudget.config import RunConfig, apply_overrides, from_dict, load_config, presets_dir
from lorabudget.errors import LorabudgetError
from lorabudget.model.budget import breakdown
from lorabudget.model.build import build_model

PRESETS = sorted(presets_dir().glob("*.yaml"))


def test_presets_exist():
    names = {p.stem for p in PRESETS}
    assert {"seed-lora", "seed-distill-student", "seed-reduced", "seed-targeted", "minilm-cpu"} <= names


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_shipped_config_parses_and_plans(path):
    cfg = load_config(str(path))
    assert isinstance(cfg, RunConfig)
    b = breakdown(build_model(cfg, weights=False).model)
    limit = cfg.budget.max_trainable_params
    assert 0 < b.total and (limit is None or b.total <= limit)
    assert limit is not None or cfg.adapter.method == "full"  # unlimited budgets are for full-fine-tune teachers
    assert (b.adapter_total > 0 or cfg.adapter.method == "full") and b.head > 0


def test_defaults_are_valid():
    cfg = from_dict({})
    assert cfg.model.name == "roberta-base" and cfg.num_labels == 4


def test_unknown_key_names_key_and_allowed():
    with pytest.raises(LorabudgetError, match=r"unknown config key 'training.learning_rat'.*learning_rate"):
        from_dict({"training": {"learning_rat": 1e-3}})
    with pytest.raises(LorabudgetError, match=r"unknown config key 'modle'.*model"):
        from_dict({"modle": {}})


def test_bad_literal_lists_allowed_values():
    with pytest.raises(LorabudgetError, match=r"'head.type'.*'full', 'linear'"):
        from_dict({"head": {"type": "mlp"}})


def test_bad_types_and_ranges():
    with pytest.raises(LorabudgetError, match="'adapter.r'"):
        from_dict({"adapter": {"r": "eight"}})
    with pytest.raises(LorabudgetError, match="'adapter.r': must be > 0"):
        from_dict({"adapter": {"r": 0}})
    with pytest.raises(LorabudgetError, match="'adapter.dropout'"):
        from_dict({"adapter": {"dropout": 1.5}})
    with pytest.raises(LorabudgetError, match="unknown module 'qurey'.*query, key, value"):
        from_dict({"adapter": {"modules": ["qurey"]}})
    with pytest.raises(LorabudgetError, match=r"adapter.placements\[0\].modules"):
        from_dict({"adapter": {"placements": [{"modules": ["nope"]}]}})
    with pytest.raises(LorabudgetError, match="'data.validation_size'"):
        from_dict({"data": {"validation_size": 1.5}})
    with pytest.raises(LorabudgetError, match="'data.train_on_validation' trains on the rows split off data.train"):
        from_dict({"data": {"train_on_validation": True, "validation": "val.csv"}})
    with pytest.raises(LorabudgetError, match="data.max_train_rows would cap them in file order"):
        from_dict({"data": {"train_on_validation": True, "max_train_rows": 100}})
    with pytest.raises(LorabudgetError, match="early stopping needs validation rows the run does not train on"):
        from_dict({"data": {"train_on_validation": True}, "training": {"early_stopping_patience": 2}})
    with pytest.raises(LorabudgetError, match="'training.batch_size'"):
        from_dict({"training": {"batch_size": 0}})
    with pytest.raises(LorabudgetError, match="'training.epochs'"):
        from_dict({"training": {"epochs": True}})


def test_overrides_parse_yaml_values():
    values = apply_overrides({}, ["training.learning_rate=3e-4", "adapter.modules=[query,key]", "name=x"])
    cfg = from_dict(values)
    assert cfg.training.learning_rate == pytest.approx(3e-4)
    assert cfg.adapter.modules == ["query", "key"]
    assert cfg.name == "x"


def test_override_errors():
    with pytest.raises(LorabudgetError, match="KEY=VALUE"):
        load_config(None, ["training.learning_rate"])
    with pytest.raises(LorabudgetError, match="unknown config key 'training.nope'"):
        load_config(None, ["training.nope=1"])


def test_missing_config_lists_presets():
    with pytest.raises(LorabudgetError, match="presets:.*seed-lora"):
        load_config("no-such-preset")


def test_bad_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model: [unclosed\n")
    with pytest.raises(LorabudgetError, match="not valid YAML"):
        load_config(str(p))
    p.write_text("- a list\n")
    with pytest.raises(LorabudgetError, match="mapping"):
        load_config(str(p))


def test_resolved_config_round_trips(tmp_path):
    from lorabudget.config import load_yaml, save_config

    cfg = load_config("seed-targeted", ["training.learning_rate=1e-4"])
    save_config(cfg, tmp_path / "c.yaml")
    again = from_dict(load_yaml(tmp_path / "c.yaml"))
    assert again == cfg


def test_unquoted_no_means_the_choice_no():
    """YAML reads an unquoted ``no`` as False; for a choice that allows "no" it means "no"."""
    cfg = load_config(None, ["training.mixed_precision=no"])
    assert cfg.training.mixed_precision == "no"


def test_a_config_saved_before_a_key_existed_compares_equal_with_its_default(tmp_path):
    from lorabudget.rundir.layout import RunDir

    values = from_dict({"name": "old", "adapter": {"r": 2}}).to_dict()
    path = RunDir(tmp_path).config_path
    path.write_text(
        yaml.safe_dump({**values, "data": {k: v for k, v in values["data"].items() if k != "train_on_validation"}})
    )
    assert "train_on_validation" not in yaml.safe_load(path.read_text())["data"]
    assert RunDir(tmp_path).saved_config_values() == values  # --resume and a reused teacher run accept it
