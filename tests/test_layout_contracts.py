"""Contracts of the split-up modules: sizes refused while only the model config is known, the search's
storage refused up front, a trial's typed outcome, the checkpoint contract, the error helper."""

from __future__ import annotations

import pytest
import yaml

from lorabudget.cli import main
from lorabudget.config import from_dict
from lorabudget.errors import LorabudgetError, TrainingStopped, first_line
from lorabudget.model.build import build_model


def test_max_length_beyond_the_positions_is_refused_at_plan(tiny_config, tiny_roberta, tiny_bert):
    # The tiny RoBERTa has 260 positions and pads with id 1: positions 0 and 1 are never a token's.
    cfg = from_dict(tiny_config(model={"max_length": 100000}))
    with pytest.raises(LorabudgetError) as err:
        build_model(cfg, weights=False)
    text = str(err.value)
    assert "\n" not in text and "max_position_embeddings 260 minus its padding offset 2 = 258" in text
    build_model(from_dict(tiny_config(model={"max_length": 258})), weights=False)
    with pytest.raises(LorabudgetError, match="at most 258"):
        build_model(from_dict(tiny_config(model={"max_length": 259})), weights=False)
    # BERT's positions start at 0: all 260 are usable.
    build_model(from_dict(tiny_config(model={"name": str(tiny_bert), "max_length": 260})), weights=False)
    with pytest.raises(LorabudgetError, match=r"max_position_embeddings 260\)"):
        build_model(from_dict(tiny_config(model={"name": str(tiny_bert), "max_length": 261})), weights=False)


def test_train_refuses_max_length_before_making_the_run_folder(tiny_config, tmp_path, capsys):
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(tiny_config(model={"max_length": 100000})))
    run_dir = tmp_path / "run"
    assert main(["train", str(path), "--output", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "max_position_embeddings" in err[0]
    assert not run_dir.exists()


def test_an_absurd_rank_is_refused_on_the_meta_device(tiny_config):
    cfg = from_dict(tiny_config(adapter={"r": 1000000000}, budget={"max_trainable_params": None}))
    with pytest.raises(LorabudgetError) as err:
        build_model(cfg, weights=False)
    assert "\n" not in str(err.value) and "more than the base model's" in str(err.value)
    assert "lower adapter.r" in str(err.value)
    # A large adapter on a tiny model is legitimate: more parameters than the base, far under the memory.
    cfg = from_dict(tiny_config(adapter={"r": 512}, budget={"max_trainable_params": None}))
    built = build_model(cfg, weights=False).model
    trainable = sum(p.numel() for p in built.parameters() if p.requires_grad)
    assert trainable > sum(p.numel() for p in built.parameters()) - trainable


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://", "sqlite:///file:x?mode=memory&uri=true"])
def test_search_refuses_an_in_memory_storage_before_training(tiny_config, tmp_path, capsys, url):
    # Each open of an in-memory database is a new one: trials trained into one, the outputs read another
    # ("0 trials trained", no best.yaml, exit 0).
    values = tiny_config(training={"max_steps": 2, "eval_every": 2, "threads": 1}, search={"r": [1, 2]})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(values))
    out = tmp_path / "out"
    assert main(["search", str(path), "--trials", "1", "--output", str(out), "--storage", url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "in-memory SQLite database" in err[0] and "sqlite:///search.db" in err[0]
    assert not (out / "trials").exists()


def test_sqlite_file_urls_are_not_in_memory():
    from lorabudget.search.study import sqlite_in_memory

    assert not sqlite_in_memory("sqlite:///search.db")
    assert not sqlite_in_memory("sqlite:////abs/memory.db")
    assert not sqlite_in_memory("journal:/tmp/x.log")
    assert sqlite_in_memory("sqlite:///:memory:")


def test_a_trial_reports_a_typed_outcome(tiny_config, tmp_path):
    import optuna

    from lorabudget.search.study import SearchSettings
    from lorabudget.search.trial import Outcome, TrialOutcome
    from lorabudget.search.worker import Worker

    # The linear head alone is over a budget of 10: every draw is rejected, at no training cost.
    values = tiny_config(training={"max_steps": 2, "threads": 1}, budget={"max_trainable_params": 10})
    settings = SearchSettings(
        name="typed",
        output=tmp_path / "out",
        base=values,
        best_base=values,
        space={"r": [1, 2]},
        trials=1,
        storage=f"sqlite:///{tmp_path / 's.db'}",
        warm_start=False,
    )
    worker = Worker(settings, say=lambda message: None)
    ended = worker.run_trial(worker.study.ask())
    assert isinstance(ended, TrialOutcome) and ended.outcome is Outcome.REJECTED
    assert ended.detail.startswith("over budget:")
    assert worker.study.get_trials()[0].state == optuna.trial.TrialState.PRUNED


def test_training_stopped_is_a_signal_not_a_user_error():
    assert not issubclass(TrainingStopped, LorabudgetError)
    with pytest.raises(TrainingStopped):
        try:
            raise TrainingStopped("pruned")
        except LorabudgetError:  # a handler of user errors must not swallow the signal
            pytest.fail("TrainingStopped was caught as a user error")


def test_first_line_of_an_error():
    assert first_line(ValueError("bad value\n  at line 3")) == "bad value"
    assert first_line(ValueError("  \n")) == "ValueError"
    assert first_line(OSError()) == "OSError"


def test_checkpointer_only_writes_and_reads_files(tmp_path):
    import inspect

    import torch

    from lorabudget.training.state import Checkpointer

    checkpoints = Checkpointer(tmp_path / "run")
    assert list(inspect.signature(Checkpointer.save).parameters) == ["self", "payload"]
    assert not checkpoints.exists()
    checkpoints.save({"state": {"step": 3}, "trainable": {"w": torch.ones(2)}})
    loaded = checkpoints.load()
    assert loaded["state"] == {"step": 3} and torch.equal(loaded["trainable"]["w"], torch.ones(2))
    checkpoints.remove()
    assert not checkpoints.exists()
    with pytest.raises(LorabudgetError, match="no checkpoint to resume from"):
        checkpoints.load()


def test_a_new_search_key_is_one_class(monkeypatch):
    import optuna

    from lorabudget.config import from_dict
    from lorabudget.search import space
    from lorabudget.search.dist import parse_dist
    from lorabudget.search.keys import SpaceKey

    class WarmupKey(SpaceKey):
        names = ("warmup",)
        summarised = ("training.warmup_ratio",)

        def __init__(self, dist):
            self.dist = dist

        @classmethod
        def parse(cls, raw):
            return [cls(parse_dist("warmup", raw["warmup"]))] if "warmup" in raw else []

        def sample(self, d):
            d.out["training.warmup_ratio"] = self.dist.suggest(d.trial, "warmup")

        def invert(self, p):
            self.dist.record(p.params, "warmup", p.cfg.training.warmup_ratio, "its warmup")

        @classmethod
        def describe(cls, overrides, base_method):
            return [f"warmup {overrides['training.warmup_ratio']:g}"] if "training.warmup_ratio" in overrides else []

    monkeypatch.setattr(space, "KEYS", space.KEYS + (WarmupKey,))
    monkeypatch.setattr(space, "DESCRIBED", space.DESCRIBED + (WarmupKey,))
    monkeypatch.setattr(space, "NAMED", space.NAMED + WarmupKey.names)
    parsed = space.parse_space({"r": [2, 4], "warmup": [0.0, 0.1]})
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    overrides = space.sample(trial, parsed, 3)
    assert overrides["training.warmup_ratio"] in (0.0, 0.1)
    assert space.describe(overrides).endswith(f"warmup {overrides['training.warmup_ratio']:g}")
    cfg = from_dict({"model": {"name": "x"}, "adapter": {"r": 4}, "training": {"warmup_ratio": 0.1}})
    assert [p["warmup"] for p in space.base_points(parsed, cfg, 3)] == [0.1, 0.1]  # ranks 4 and 2
    with pytest.raises(LorabudgetError, match="unknown search key 'warmups'"):
        space.parse_space({"warmups": [0.1]})
