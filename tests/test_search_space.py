"""The search space and the search's configs: sampling, placement, rates, a space that varies the base
model, the base config's checks, best.yaml's settings, the data cache key."""

from __future__ import annotations

import pytest
import yaml
from search_cases import trial_rows

from lorabudget.cli import main
from lorabudget.errors import LorabudgetError


def test_search_refuses_a_base_config_that_trains_on_its_validation_rows(tiny_config, tmp_path):
    from lorabudget.api.studies import search_config

    cfg = tmp_path / "base.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config()))
    with pytest.raises(LorabudgetError, match="a search chooses by validation rows its trials do not train on"):
        search_config(str(cfg), ["data.train_on_validation=true"], None, {})


def test_best_yaml_trains_on_the_validation_rows_unless_a_setting_forbids_it(tiny_config):
    from types import SimpleNamespace

    from lorabudget.search.outputs import best_config_values

    trial = SimpleNamespace(user_attrs={"sample": {"adapter.r": 2}})
    for data, training, expected in [
        ({}, {}, True),
        ({"max_train_rows": 100}, {}, False),
        ({"validation": "val.csv"}, {}, False),
        ({}, {"early_stopping_patience": 2}, False),
    ]:
        base = tiny_config(data=data, training=training)
        values = best_config_values(SimpleNamespace(best_base=base, name="s"), trial)
        assert (values["data"]["train_on_validation"], values["adapter"]["r"]) == (expected, 2)


def test_space_errors_and_default_space():
    from lorabudget.errors import LorabudgetError
    from lorabudget.search.space import available_methods, default_space_raw, parse_space

    space = parse_space(default_space_raw())
    assert space.methods() and set(space.methods()) <= set(available_methods()) | {"lora"}
    parse_space({"method": ["lora", "vera", "ia3"], "options": {"vera": {"d_initial": [0.1, 0.5]}}})
    for bad, words in [
        ({"rank": [1]}, "unknown search key 'rank'"),
        ({"method": ["lora", "magic"]}, "unknown method 'magic'"),
        ({"modules": {"subsets_of": ["query", "nope"]}}, "unknown module 'nope'"),
        ({"layers": ["all", "middle"]}, "unknown mode 'middle'"),
        ({"learning_rate": {"low": 0, "high": 1, "log": True}}, "log range needs low > 0"),
        ({"alpha": [8], "alpha_ratio": [2]}, "exclude each other"),
        ({"set": {"warmup_ratio": [0.0]}}, "with its section"),
        ({"set": {"data.train_on_validation": [True, False]}}, "trials choose by validation rows"),
    ]:
        with pytest.raises(LorabudgetError, match=words):
            parse_space(bad)


def test_space_samples_method_options_and_placement():
    import optuna

    from lorabudget.search.space import apply_sample, parse_space, sample

    space = parse_space(
        {
            "method": ["lora", "ia3", "bitfit"],
            "modules": {"subsets_of": ["query", "value"]},
            "layers": ["range"],
            "r": [2, 4],
            "r_per_module": True,
            "alpha_ratio": [2],
            "options": {"ia3": {"init_ia3_weights": [True]}},
            "head": ["linear-mean"],
        }
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        try:
            out = sample(trial, space, num_layers=3)
        except Exception:  # an empty module draw is rejected by the caller
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        method = out.get("adapter.method", "lora")
        seen.add(method)
        if method == "lora":
            assert set(out["adapter.rank_pattern"]) == set(out["adapter.modules"])
            assert out["adapter.alpha_pattern"] == {m: 2.0 * r for m, r in out["adapter.rank_pattern"].items()}
        if method == "ia3":  # no rank drawn: the base config's rank is reset to the method's default
            assert out["adapter.options"] == {"init_ia3_weights": True} and out["adapter.r"] is None
        if method == "bitfit":  # placed like any method on linear modules, with no rank
            assert set(out["adapter.modules"]) <= {"query", "value"} and out["adapter.r"] is None
        if "adapter.layers" in out:
            layers = out["adapter.layers"]
            assert layers == list(range(layers[0], layers[-1] + 1)) and 0 <= layers[0] <= layers[-1] < 3
        assert out["head.type"] == "linear" and out["head.pooling"] == "mean"
        values = apply_sample({"adapter": {"r": 8}}, out)
        assert values["adapter"].get("r", 8) == out.get("adapter.r", 8)
        study.tell(trial, 0.5)
    assert seen == {"lora", "ia3", "bitfit"}


def test_lr_scale_multiplies_the_base_configs_rate_for_its_own_method():
    import optuna

    from lorabudget.methods.registry import METHODS
    from lorabudget.search.space import parse_space, sample

    space = parse_space(
        {
            "method": ["lora", "ia3"],
            "lr_scale": {"low": 0.3, "high": 3.0, "log": True},
            "head_lr_scale": {"low": 0.3, "high": 3.0, "log": True},
        }
    )

    def rates(method, base_rates):
        trial = optuna.trial.FixedTrial({"method": method, "lr_scale": 3.0, "head_lr_scale": 2.0})
        out = sample(trial, space, 3, "lora", base_rates=base_rates)
        return out["training.learning_rate"], out["training.head_learning_rate"]

    # MiniLM's LoRA r=2 measured best at 3e-3 (docs/methods.md): reachable from a 1e-3 base config,
    # not from LoRA's 5e-4 default (at most 1.5e-3).
    assert rates("lora", (1e-3, 2e-3)) == pytest.approx((3e-3, 4e-3))
    lora, ia3 = METHODS["lora"], METHODS["ia3"]
    assert rates("lora", (1e-3, None)) == pytest.approx((3e-3, 2 * (lora.head_learning_rate or 1e-3)))
    assert rates("lora", (None, None)) == pytest.approx(
        (3 * lora.learning_rate, 2 * (lora.head_learning_rate or lora.learning_rate))
    )
    # Another method never inherits the base config's rates.
    assert rates("ia3", (1e-3, 2e-3)) == pytest.approx(
        (3 * ia3.learning_rate, 2 * (ia3.head_learning_rate or ia3.learning_rate))
    )


def test_default_space_samples_build_for_every_method(tiny_roberta):
    """Every method the built-in space draws builds on the meta device, each other method with its
    own defaults (not the base config's LoRA rank or learning rate), and a scaled learning rate."""
    import collections
    import copy

    import optuna

    from lorabudget.config import from_dict
    from lorabudget.methods.registry import METHODS
    from lorabudget.model.budget import breakdown
    from lorabudget.model.build import build_model
    from lorabudget.search.space import apply_sample, default_space_raw, describe, parse_space, sample

    base = {
        "name": "x",
        "model": {"name": str(tiny_roberta)},
        "head": {"type": "linear"},
        "adapter": {"r": 16, "alpha": 32, "modules": ["query", "value"]},
        "training": {"learning_rate": 1e-3},
    }
    space = parse_space(default_space_raw())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    built = collections.Counter()
    for _ in range(40):
        trial = study.ask()
        try:
            overrides = sample(trial, space, 3, "lora", base_rates=(1e-3, None))
        except Exception as err:  # an empty draw is a rejected sample, nothing else is
            assert "chosen" in str(err)
            study.tell(trial, 0.0)
            continue
        cfg = from_dict(apply_sample(copy.deepcopy(base), overrides))
        assert breakdown(build_model(cfg, weights=False).model).total > 0
        line = describe(overrides, "lora")  # the trial's log line: a method's null defaults are left out
        assert line.split()[0] == cfg.adapter.method and "None" not in line
        assert "=False" not in line and "={}" not in line and "=[]" not in line  # resets are not news
        method = METHODS[cfg.adapter.method]
        # The base method's rate is scaled from the base config's own (1e-3, not LoRA's 5e-4 default);
        # another method's from that method's default.
        reference = 1e-3 if cfg.adapter.method == "lora" else method.learning_rate
        assert 0.3 * reference <= cfg.training.learning_rate <= 3.0 * reference
        if cfg.adapter.method in ("vera", "vblora"):
            assert cfg.adapter.r == method.default_r
        built[cfg.adapter.method] += 1
        study.tell(trial, 0.0)
    assert len(built) >= 6, built


def test_the_space_can_vary_the_base_model(make_config, tiny_bert, tiny_roberta, tmp_path):
    values = make_config(
        tmp_path / "cache",
        model={"labels": None},
        head={"type": "linear", "pooling": "mean"},
        training={"max_steps": 2, "eval_every": 2, "learning_rate": 2e-2, "threads": 1},
        search={"model": [str(tiny_roberta), str(tiny_bert)], "r": [1, 2], "layers": ["all", "top"]},
    )
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(values))
    out = tmp_path / "out"
    argv = ["search", str(cfg), "--trials", "4", "--output", str(out), "--seed", "5", "--pruner", "none"]
    assert main(argv + ["--no-warm-start"]) == 0
    rows = [r for r in trial_rows(out) if r["state"] == "complete"]
    bases = {r["base_model"] for r in rows}
    assert len(rows) == 4 and bases <= {str(tiny_roberta), str(tiny_bert)} and len(bases) == 2, bases
    for r in rows:  # the frozen size is the base's own: the budget counts only the trainable parameters
        frozen = int(r["frozen_params"])
        assert frozen > 0 and r["param:model"] == r["base_model"]
    assert {int(r["frozen_params"]) for r in rows if r["base_model"] == str(tiny_bert)} != {
        int(r["frozen_params"]) for r in rows if r["base_model"] == str(tiny_roberta)
    }
    text = (out / "search.md").read_text()
    assert "| base model | frozen params |" in text and f"`{tiny_bert}`" in text


def test_the_data_cache_key_changes_with_every_data_field_and_nothing_a_trial_varies(make_config, tmp_path):
    """A trial reuses tokenized data only when everything that loading and tokenizing read is the same:
    every field of the data section (train_on_validation and trust_pickle included), the model's name
    (its tokenizer), classes, max_length and problem type."""
    import copy
    import dataclasses

    from lorabudget.config import from_dict
    from lorabudget.search.trial import DataCache

    cfg = from_dict(make_config(tmp_path / "cache"))
    key = DataCache.key(cfg)
    changed = {f.name: not getattr(cfg.data, f.name) for f in dataclasses.fields(cfg.data)}
    changed.update({name: f"another {name}" for name, value in changed.items() if not isinstance(value, bool)})
    for name, value in changed.items():
        other = copy.deepcopy(cfg)
        setattr(other.data, name, value)
        assert DataCache.key(other) != key, f"data.{name}"
    for name, value in {"name": "another-model", "labels": ["a", "b"], "max_length": 7}.items():
        other = copy.deepcopy(cfg)
        setattr(other.model, name, value)
        assert DataCache.key(other) != key, f"model.{name}"
    other = copy.deepcopy(cfg)
    other.model.problem_type = "multi_label"
    assert DataCache.key(other) != key
    other = copy.deepcopy(cfg)  # what a trial draws: the same data, one cache entry
    other.adapter.r, other.training.learning_rate, other.head.type = 3, 0.5, "linear"
    assert DataCache.key(other) == key
