"""The Python API on tiny models: the names the docs promise, data as a path, DataFrame, datasets.Dataset or
list of tuples, results that render in Jupyter, errors raised (never SystemExit), and one config
resolution shared with the command line."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from conftest import synthetic_rows

import lorabudget as lb
from lorabudget.errors import BudgetExceededError, LorabudgetError

NAMES = ["World", "Sports", "Business", "Sci/Tech"]


def frame(n: int, seed: int) -> pd.DataFrame:
    return pd.DataFrame([(t, NAMES[y]) for t, y in synthetic_rows(n, seed)], columns=["text", "label"])


@pytest.fixture(scope="module")
def api_run(make_config, tmp_path_factory):
    """One finished run trained through ``lb.train`` on a DataFrame of 300 rows."""
    out = tmp_path_factory.mktemp("api")
    config = make_config(out / "cache")
    run = lb.train(
        config,
        data=frame(300, seed=11),
        output=out / "run",
        overrides={"training.max_steps": 3, "data.validation_size": 60},
    )
    return run


def test_import_does_not_load_torch():
    code = "import sys, lorabudget; print('torch' in sys.modules, callable(lorabudget.plan))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]


def test_plan_counts_the_preset_exactly_and_renders():
    plan = lb.plan("minilm-cpu-10k")
    assert plan.trainable == 6148 and plan.budget == 10_000 and plan.fits
    assert sum(row["params"] for row in plan.by_site) == plan.trainable
    assert "TOTAL trainable" in str(plan) and "6,148" in plan._repr_html_()
    assert list(plan.to_frame().columns) == ["layer", "module", "kind", "params"]


def test_plan_overrides_as_keywords_or_mapping_agree():
    by_keyword = lb.plan("minilm-cpu-10k", **{"adapter.modules": ["key"]})
    by_mapping = lb.plan("minilm-cpu-10k", overrides={"adapter.modules": ["key"]})
    assert by_keyword.trainable == by_mapping.trainable < 6148
    with pytest.raises(TypeError, match="dotted keys"):
        lb.plan("minilm-cpu-10k", r=4)


def test_plan_over_budget_is_a_plan_not_an_error():
    plan = lb.plan("minilm-cpu-10k", **{"budget.max_trainable_params": 100})
    assert not plan.fits and "OVER BUDGET" in plan._repr_html_()


def test_train_on_a_dataframe_writes_a_finished_run(api_run):
    assert isinstance(api_run, lb.Run)
    assert api_run.files.finished()
    assert api_run.summary["train_rows"] == 240 and api_run.summary["validation_rows"] == 60
    assert api_run.config.data.train.startswith("memory:")  # the config names the table by its digest
    html = api_run._repr_html_()
    assert html.startswith("<p><b>run</b>") and "<img src='data:image/png;base64," in html


def test_evaluate_gives_numbers_and_frames(api_run):
    evaluation = api_run.evaluate(frame(50, seed=12), record=False)
    assert 0.0 <= evaluation.accuracy <= 1.0 and evaluation.rows == 50
    low, high = evaluation.interval
    assert low <= evaluation.accuracy <= high
    assert list(evaluation.per_class.index) == NAMES
    assert evaluation.confusion.to_numpy().sum() == 50
    assert "accuracy" in evaluation._repr_html_()


@pytest.mark.parametrize(
    "texts, expected",
    [
        ("Stocks fell sharply", 1),  # one string is one text, never its characters
        (["a", "b"], 2),
        (("a", "b", "c"), 3),
        (pd.Series(["market shares", "team score"]), 2),
        (frame(7, seed=13).drop(columns="label"), 7),
        ([], 0),
    ],
)
def test_predict_takes_strings_lists_series_and_frames(api_run, texts, expected):
    predictions = api_run.predict(texts)
    assert len(predictions.labels) == expected == len(predictions.to_frame())
    assert all(label in NAMES for label in predictions.labels)


@pytest.mark.parametrize("texts, named", [(5, "int"), ({"text": "a"}, "dict"), (["a", 3], r"texts\[1\] is int")])
def test_predict_refuses_what_is_not_text(api_run, texts, named):
    with pytest.raises(TypeError, match=named):
        api_run.predict(texts)


def test_load_run_returns_the_same_type_and_agrees(api_run):
    loaded = lb.load_run(api_run.path)
    assert isinstance(loaded, lb.Run)
    assert loaded.predict(["market shares"]).labels == api_run.predict("market shares").labels


def test_train_takes_tuples_and_datasets(make_config, tmp_path):
    import datasets

    rows = [(t, NAMES[y]) for t, y in synthetic_rows(120, seed=5)]
    overrides = {"training.max_steps": 1, "data.validation_size": 20}
    config = make_config(tmp_path / "cache")
    by_tuples = lb.train(config, data=rows, output=tmp_path / "tuples", overrides=overrides, report=False)
    dataset = datasets.Dataset.from_pandas(pd.DataFrame(rows, columns=["text", "label"]))
    by_dataset = lb.train(config, data=dataset, output=tmp_path / "dataset", overrides=overrides, report=False)
    # The same rows give the same digest, so the two configs name the same data.
    assert by_tuples.config.data.train == by_dataset.config.data.train
    assert by_tuples.summary["train_rows"] == by_dataset.summary["train_rows"] == 100


def test_errors_are_raised_not_exits(api_run, make_config, tmp_path):
    with pytest.raises(LorabudgetError, match="exists; pass --overwrite"):
        lb.train(make_config(tmp_path), data=frame(50, 1), output=api_run.path)
    with pytest.raises(BudgetExceededError):
        lb.train(
            make_config(tmp_path),
            data=frame(50, 1),
            output=tmp_path / "over",
            overrides={"budget.max_trainable_params": 10},
        )
    assert not (tmp_path / "over").exists()
    with pytest.raises(TypeError, match="not int"):
        lb.train(make_config(tmp_path), data=3, output=tmp_path / "bad")
    with pytest.raises(LorabudgetError, match="neither a file nor a preset"):
        lb.plan("no-such-preset")


def test_compare_and_export(api_run, make_config, tmp_path):
    other = lb.train(
        make_config(tmp_path / "cache"),
        data=frame(120, seed=3),
        output=tmp_path / "other",
        overrides={"training.max_steps": 1, "data.validation_size": 20},
    )
    comparison = lb.compare([api_run.path, other.path], output=tmp_path / "compare")
    assert len(comparison.table) == 2 and "<table" in comparison._repr_html_()
    assert comparison.figure is None or comparison.figure.is_file()
    exported = api_run.export("peft", tmp_path / "peft")
    assert (exported / "README.md").is_file()


def test_resolve_config_is_complete_and_typed(make_config, tmp_path):
    cfg = lb.resolve_config(make_config(tmp_path), {"adapter.r": 2}, data=frame(40, 2))
    assert isinstance(cfg, lb.RunConfig)
    assert cfg.adapter.r == 2 and cfg.model.labels == NAMES and cfg.model.label_format == "name"
    assert cfg.training.learning_rate is not None  # method defaults filled
