"""`lorabudget search` on the tiny model: budget first, pruning, best.yaml, resume, workers, PostgreSQL."""

from __future__ import annotations

import gc
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from search_cases import load_study, search_config_file, trial_rows

from lorabudget.cli import main
from lorabudget.errors import LorabudgetError


def _live_peft_models() -> int:
    import peft

    gc.collect()
    return sum(isinstance(o, peft.PeftModel) for o in gc.get_objects())


@pytest.fixture(scope="module")
def searched(make_config, tmp_path_factory, tiny_roberta, data_dir):
    """One in-process search of 3 trained trials at a budget some samples exceed."""
    import lorabudget.training.setup as setup_mod

    tmp = tmp_path_factory.mktemp("search")
    cfg = search_config_file(make_config, tmp)
    calls = []
    original = setup_mod.prepare_data

    def counting(cfg_, log=print):
        calls.append(cfg_.model.max_length)
        return original(cfg_, log)

    setup_mod.prepare_data = counting
    try:
        before = _live_peft_models()
        rc = main(
            [
                "search",
                str(cfg),
                "--trials",
                "3",
                "--output",
                str(tmp / "out"),
                "--seed",
                "3",
                "--trial-set",
                "training.max_steps=2",
                "--pruner",
                "none",
            ]
        )
        after = _live_peft_models()
    finally:
        setup_mod.prepare_data = original
    assert rc == 0
    return tmp, tmp / "out", calls, before, after


def test_search_trains_within_budget_and_writes_outputs(searched):
    tmp, out, prepare_calls, peft_before, peft_after = searched
    rows = trial_rows(out)
    trained = [r for r in rows if r["state"] in ("complete", "pruned")]
    assert len(trained) == 3 and all(r["state"] == "complete" for r in trained)
    for r in rows:
        if r["reason"] == "invalid: no module kind chosen":  # a draw with no module at all: nothing to plan
            continue
        assert int(r["trainable_params"]) > 0  # every planned trial, rejected ones included, reports its count
        if r["state"] == "rejected":
            assert int(r["trainable_params"]) > 600 and r["reason"].startswith("over budget")
        else:
            summary = json.loads((Path(r["run_dir"]) / "summary.json").read_text())
            assert summary["trainable_params"] == int(r["trainable_params"]) <= 600
            assert summary["steps"] == 2  # --trial-set applied to the trials
            assert float(r["value"]) == pytest.approx(summary["validation_accuracy"])
    # tokenized once for all trials; no model of a finished trial stays alive
    assert prepare_calls == [64]
    assert peft_after == peft_before
    text = (out / "search.md").read_text()
    assert "3 complete" in text and "budget **600**" in text
    # the best against each other complete trial, paired on the same validation rows
    from lorabudget.search.outputs import versus_best

    best_number = int((out / "best.yaml").read_text().split("#")[2].split()[0])
    versus = versus_best([{**r, "number": int(r["number"])} for r in trained], best_number)
    assert sorted(versus) == sorted(int(r["number"]) for r in trained if int(r["number"]) != best_number)
    assert all(0 <= v["p_value"] <= 1 and v["n"] == 40 for v in versus.values())
    tied = sum(v["p_value"] >= 0.05 for v in versus.values())
    assert "| vs best: McNemar p |" in text
    assert (
        f"{tied} of the 2 other complete trials are within noise of it (McNemar p >= 0.05 on the same 40 validation rows)"
        in text
    )
    assert f"# {tied} of the 2 other complete trials are within noise" in (out / "best.yaml").read_text()
    for fig in ("optimization_history.png", "pareto_front.png"):
        assert (out / "figures" / fig).is_file() and f"figures/{fig}" in text
    # each finished trial's run directory works with `compare`
    runs = [r["run_dir"] for r in trained]
    assert main(["compare", *runs, "--output", str(tmp / "compare")]) == 0


def test_best_yaml_trains(searched):
    tmp, out, *_ = searched
    best = yaml.safe_load((out / "best.yaml").read_text())
    rows = {int(r["number"]): r for r in trial_rows(out)}
    header = (out / "best.yaml").read_text().splitlines()[0]
    number = int(header.split("#")[2].split()[0])
    assert rows[number]["state"] == "complete"
    assert float(rows[number]["value"]) == max(float(r["value"]) for r in rows.values() if r["state"] == "complete")
    assert best["training"]["max_steps"] == 4  # the trial-only setting is left out
    assert "search" not in best
    # Chosen on the validation rows, it is retrained on them too.
    assert best["data"]["train_on_validation"] is True and "--set data.train_on_validation=false" in _header_text(out)
    assert main(["train", str(out / "best.yaml"), "--output", str(tmp / "best-run"), "--no-report"]) == 0
    summary = json.loads((tmp / "best-run" / "summary.json").read_text())
    assert summary["trainable_params"] == int(rows[number]["trainable_params"])
    assert (summary["train_rows"], summary["validation_trained_on"]) == (240, True)


def _header_text(out: Path) -> str:
    return "".join(line for line in (out / "best.yaml").read_text().splitlines(keepends=True) if line.startswith("#"))


def test_over_budget_space_rejects_every_sample(make_config, tmp_path, tiny_roberta, data_dir, capsys):
    # The linear head alone is 132 parameters: nothing in the space fits 100.
    cfg = search_config_file(make_config, tmp_path, budget=100)
    out = tmp_path / "out"
    rc = main(["search", str(cfg), "--trials", "2", "--output", str(out), "--max-rejections", "4"])
    assert rc == 3
    err = capsys.readouterr().err
    rows = trial_rows(out)
    # Draws that choose no module at all are invalid; every one that could be planned is over the budget.
    over = [r for r in rows if r["trainable_params"]]
    invalid = len(rows) - len(over)
    assert len(rows) == 4 and all(r["state"] == "rejected" for r in rows) and over
    assert all(int(r["trainable_params"]) > 100 and r["reason"].startswith("over budget") for r in over)
    assert all(r["reason"].startswith("invalid") for r in rows if not r["trainable_params"])
    assert "every sampled configuration was rejected before training" in err and "nothing was trained" in err
    assert f"{len(over)} over the budget of 100 trainable parameters" in err
    assert (f"{invalid} invalid" in err) == bool(invalid)
    assert not list(out.glob("trials/*/summary.json")) and not list(out.glob("trials/*/adapter"))
    assert not (out / "best.yaml").exists()


def test_pruning_stops_a_trial_and_a_crash_does_not_stop_the_search(
    make_config, tmp_path, tiny_roberta, data_dir, monkeypatch
):
    import optuna

    import lorabudget.training.loop as train_mod
    from lorabudget.api.studies import search_config, search_space
    from lorabudget.search.study import SearchSettings
    from lorabudget.search.worker import run_search

    real_train, calls = train_mod.train, []

    def crash_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom in the training loop")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train", crash_once)
    cfg = search_config_file(make_config, tmp_path, max_steps=6, eval_every=2)
    base, best_base, _ = search_config(str(cfg), None, None, {})
    space = search_space(str(cfg), None)
    # Accuracy can never reach 2.0: the pruner stops each trial at its first evaluation.
    settings = SearchSettings(
        name="prune",
        output=tmp_path / "out",
        base=base,
        best_base=best_base,
        space=space,
        trials=2,
        pruner=optuna.pruners.ThresholdPruner(lower=2.0),
    )
    before = _live_peft_models()
    summary = run_search(settings, progress=False)
    assert _live_peft_models() == before  # a pruned trial's model goes with its exception
    assert summary["pruned"] == 2 and summary["complete"] == 0 and summary["failed"] == 1
    rows = [r for r in trial_rows(tmp_path / "out") if r["state"] != "rejected"]
    assert [r["state"] for r in rows] == ["failed", "pruned", "pruned"]
    assert rows[0]["reason"] == "RuntimeError: boom in the training loop"
    assert all(r["pruned_at_step"] == "2" for r in rows[1:])  # stopped at step 2 of 6
    assert not list((tmp_path / "out" / "trials").glob("t*/adapter"))  # half runs are not kept
    log = (tmp_path / "out" / "trials" / f"t{int(rows[1]['number']):04d}.log").read_text()
    assert "step 2:" in log and "step 4:" not in log


def test_same_seed_same_trials(make_config, tmp_path, tiny_roberta, data_dir):
    cfg = search_config_file(make_config, tmp_path, max_steps=2)
    outs = []
    for i in range(2):
        out = tmp_path / f"out{i}"
        assert main(["search", str(cfg), "--trials", "2", "--output", str(out), "--seed", "11"]) == 0
        outs.append([(r["state"], r["description"], r["trainable_params"], r["value"]) for r in trial_rows(out)])
    assert outs[0] == outs[1]


def test_search_starts_from_the_base_config_and_the_models_presets(
    make_config, tmp_path, tiny_roberta, data_dir, capsys, monkeypatch
):
    # The base config is LoRA r=4 on query+value of all 3 layers: over the budget of 600 at r=4 (1,668)
    # and r=2 (900); r=1 costs 64*2*3 + 132 = 516.
    cfg = search_config_file(make_config, tmp_path, max_steps=2)
    presets = tmp_path / "presets"
    presets.mkdir()
    base = yaml.safe_load(cfg.read_text())

    def preset(name, budget=500, model=str(tiny_roberta), **extra):
        values = {
            **base,
            "name": name,
            "model": {**base["model"], "name": model},
            "adapter": {"r": 1, "alpha": 2, "modules": ["query"]},
            "training": {**base["training"], "learning_rate": 1e-2},
            "budget": {"max_trainable_params": budget},
            **extra,
        }
        (presets / f"{name}.yaml").write_text(yaml.safe_dump(values))

    preset("tiny-small")  # LoRA r=1 on query at lr 1e-2: 64*3 + 132 = 324
    preset("tiny-big", budget=10_000)  # budget above the search's
    preset("tiny-other-model", model="another/model")
    preset("tiny-distill", distill={"temperature": 2.0})
    monkeypatch.setenv("LORABUDGET_CONFIGS", str(presets))
    runs = {}
    for flag in ([], ["--no-warm-start"]):
        out = tmp_path / ("out" + "".join(flag))
        assert main(["search", str(cfg), "--trials", "6", "--output", str(out), "--seed", "3", *flag]) == 0
        runs[bool(flag)] = load_study(out, "tiny-search").trials
    first, second = runs[False][:2]
    assert first.params == {
        "module.query": True,
        "module.value": True,
        "layers": "all",
        "r": 1,
        "learning_rate": pytest.approx(2e-2),
    }
    assert first.user_attrs["origin"] == "the base config" and first.user_attrs["trainable_params"] == 516
    assert second.params == {
        "module.query": True,
        "module.value": False,
        "layers": "all",
        "r": 1,
        "learning_rate": pytest.approx(1e-2),
    }
    assert second.user_attrs["origin"] == "preset tiny-small" and second.user_attrs["trainable_params"] == 324
    assert not any("origin" in t.user_attrs for t in runs[False][2:])  # at most a third of --trials
    out = capsys.readouterr().out
    assert "search: starting trial, the base config: lora r=1 query+value all layers lr=0.02; 516 trainable" in out
    assert "search: starting trial, preset tiny-small: lora r=1 query all layers lr=0.01; 324 trainable" in out
    assert not any("origin" in t.user_attrs for t in runs[True])
    rows = trial_rows(tmp_path / "out")  # trials.csv and search.md say where a starting trial came from
    assert [r["origin"] for r in rows[:3]] == ["the base config", "preset tiny-small", ""]
    assert "(starting trial: the base config) |" in (tmp_path / "out" / "search.md").read_text()


def test_base_points_follow_the_base_config_or_say_why_not():
    from lorabudget.config import from_dict
    from lorabudget.search.space import base_points, default_space_raw, parse_space

    values = {
        "model": {"name": "x"},
        "adapter": {"method": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "modules": ["query", "value"]},
        "training": {"learning_rate": 1e-3, "head_learning_rate": 3e-3},
    }
    space = parse_space(default_space_raw(["lora", "ia3"]))
    rates = {"base_method": "lora", "base_rates": (1e-3, 3e-3)}
    points = base_points(space, from_dict(values), 4, **rates)
    assert [p["r"] for p in points] == [16, 8, 4, 2, 1]
    assert points[-1] == {
        "method": "lora",
        "module.query": True,
        "module.key": False,
        "module.value": True,
        "module.attention_output": False,
        "module.intermediate": False,
        "module.output": False,
        "layers": "all",
        "r": 1,
        "alpha_ratio": 2.0,
        "dropout": 0.0,
        "lr_scale": 1.0,
        "head_lr_scale": 1.0,
    }
    values["adapter"]["layers"] = [0, 2]
    assert {
        k: v for k, v in base_points(space, from_dict(values), 4, **rates)[0].items() if k.startswith("layers")
    } == {"layers": "subset", "layers.0": True, "layers.1": False, "layers.2": True, "layers.3": False}
    cases = [
        ({"adapter": {"method": "vera"}}, "its method 'vera' is not among the space's choices"),
        ({"adapter": {"alpha": 48}}, "its alpha/r 3.0 is not among the space's choices"),
        ({"adapter": {"dropout": 0.2}}, "its adapter.dropout 0.2 is not among the space's choices"),
        ({"adapter": {"placements": [{"modules": ["query"], "layers": [0]}]}}, "places adapters per group"),
    ]
    for change, message in cases:
        broken = {**values, "adapter": {**values["adapter"], **change["adapter"]}}
        with pytest.raises(LorabudgetError, match=re.escape(message)):
            base_points(space, from_dict(broken), 4, **rates)
    # A preset is taken at its own rank or not at all; its rates as multiples of the base config's.
    preset = {
        **values,
        "adapter": {**values["adapter"], "r": 2, "alpha": 4},
        "training": {"learning_rate": 3e-3, "head_learning_rate": 3e-3},
    }
    (point,) = base_points(space, from_dict(preset), 4, scale_down=False, **rates)
    assert (point["r"], point["lr_scale"], point["head_lr_scale"]) == (2, 3.0, 1.0)  # 3e-3 / 1e-3 on the bound
    with pytest.raises(LorabudgetError, match="the space has no rank 3$"):
        base_points(
            space,
            from_dict({**preset, "adapter": {**preset["adapter"], "r": 3, "alpha": 6}}),
            4,
            scale_down=False,
            **rates,
        )
    with pytest.raises(
        LorabudgetError, match=re.escape("lr_scale = 0.003 / 0.0005 = 6.0 is outside the space's range")
    ):
        base_points(space, from_dict(preset), 4, scale_down=False)  # against LoRA's default 5e-4
    absolute = parse_space({"learning_rate": {"low": 1e-4, "high": 5e-4}})
    with pytest.raises(LorabudgetError, match=r"its training.learning_rate 0.001 is outside the space's range"):
        base_points(absolute, from_dict(values), 4)


@pytest.mark.parametrize("multi_objective", [False, True])
def test_processes_on_one_study_draw_different_samples(tmp_path, multi_objective):
    # Two workers started with the same command (two shells, same --seed) and a resumed search each
    # open the study with a fresh sampler; seeded once per process they drew the same startup
    # configurations and trained them twice. Seeded per trial number, each trial draws its own, and a
    # sequential run with one seed still repeats itself.
    import optuna

    from lorabudget.search.study import SearchSettings, make_sampler

    settings = SearchSettings(
        name="s", output=tmp_path, base={}, best_base={}, space={}, trials=12, multi_objective=multi_objective, seed=3
    )
    directions = ["maximize", "minimize"] if multi_objective else ["maximize"]

    def draws(storage, order):
        """Ask trials from one or two processes' studies on ``storage`` in ``order``; their first draws."""
        studies = {}
        drawn = []
        for who in order:
            if who not in studies:
                studies[who] = optuna.create_study(
                    storage=storage,
                    study_name="s",
                    sampler=make_sampler(settings),
                    directions=directions,
                    load_if_exists=True,
                )
            trial = studies[who].ask()
            drawn.append(trial.suggest_float("x", 0.0, 1.0))
            studies[who].tell(trial, [drawn[-1]] * len(directions))
        return drawn

    two_workers = draws(optuna.storages.InMemoryStorage(), ["a", "b", "a", "b", "a", "b"])
    assert len(set(two_workers)) == 6
    one_worker = draws(optuna.storages.InMemoryStorage(), ["a"] * 6)
    assert one_worker == two_workers  # the draw depends on the trial's number, not on who asks
    assert draws(optuna.storages.InMemoryStorage(), ["a"] * 6) == one_worker
    resumed = draws(optuna.storages.InMemoryStorage(), ["a", "a", "a", "resumed", "resumed", "resumed"])
    assert resumed == one_worker


def _wait_for(predicate, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_search_resumes(make_config, tmp_path, tiny_roberta, data_dir):
    from lorabudget.search.study import done_count, trial_kind

    cfg = search_config_file(make_config, tmp_path, max_steps=6)
    out = tmp_path / "out"
    journal = tmp_path / "study.journal"
    args = [
        "search",
        str(cfg),
        "--trials",
        "4",
        "--output",
        str(out),
        "--storage",
        f"journal:{journal}",
        "--pruner",
        "none",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lorabudget.cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:

        def two_done():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            return journal.exists() and done_count(load_study(f"journal:{journal}", "tiny-search").get_trials()) >= 2

        _wait_for(two_done, 300, "two finished trials")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = {t.number: (trial_kind(t), t.values) for t in load_study(f"journal:{journal}", "tiny-search").get_trials()}
    finished_before = {n: v for n, v in before.items() if v[0] == "complete"}
    assert len(finished_before) >= 2

    assert main(args) == 0
    after = load_study(f"journal:{journal}", "tiny-search").get_trials()
    kinds = {t.number: trial_kind(t) for t in after}
    assert "running" not in kinds.values()
    assert done_count(after) == 4  # finished trials kept, not repeated, and no more than asked
    for number, (_, values) in finished_before.items():
        assert kinds[number] == "complete" and after[number].values == values
    for number, (kind, _) in before.items():
        if kind == "running":  # the trial the kill interrupted
            assert kinds[number] == "failed" and "died" in after[number].user_attrs["error"]
    run_dirs = [t.user_attrs["run_dir"] for t in after if trial_kind(t) == "complete"]
    assert len(set(run_dirs)) == 4 and all((Path(d) / "summary.json").is_file() for d in run_dirs)


def _check_workers(out: Path, storage: str, name: str, trials: int) -> None:
    from lorabudget.search.study import trial_kind

    all_trials = load_study(storage, name).get_trials()
    kinds = [trial_kind(t) for t in all_trials]
    assert kinds.count("complete") == trials and "running" not in kinds and "failed" not in kinds
    assert len({t.user_attrs["worker"] for t in all_trials if trial_kind(t) == "complete"}) == 2
    run_dirs = [t.user_attrs["run_dir"] for t in all_trials if trial_kind(t) == "complete"]
    assert len(set(run_dirs)) == trials and all((Path(d) / "summary.json").is_file() for d in run_dirs)
    assert len([r for r in trial_rows(out) if r["state"] == "complete"]) == trials


def test_two_workers_share_sqlite(make_config, tmp_path, tiny_roberta, data_dir):
    cfg = search_config_file(make_config, tmp_path, max_steps=2)
    out = tmp_path / "out"
    assert main(["search", str(cfg), "--trials", "4", "--workers", "2", "--output", str(out), "--pruner", "none"]) == 0
    _check_workers(out, f"sqlite:///{out / 'study.db'}", "tiny-search", 4)


@pytest.fixture
def postgres_url(postgres_server):
    return f"{postgres_server}/postgres"


def test_two_workers_share_postgresql(make_config, tmp_path, tiny_roberta, data_dir, postgres_url):
    cfg = search_config_file(make_config, tmp_path, max_steps=2)
    out = tmp_path / "out"
    assert (
        main(
            [
                "search",
                str(cfg),
                "--trials",
                "4",
                "--workers",
                "2",
                "--output",
                str(out),
                "--pruner",
                "none",
                "--storage",
                postgres_url,
                "--study",
                "pg-study",
            ]
        )
        == 0
    )
    _check_workers(out, postgres_url, "pg-study", 4)
    assert not (out / "study.db").exists()
