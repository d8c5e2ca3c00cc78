"""Reading multi-label data: every input form (a `|`, `,` or `;`-joined cell, a JSON list, one 0/1
column per class, a DataFrame of lists), rows with no class, the class set, and the bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lorabudget.config import from_dict
from lorabudget.data.load import Columns, load_labelled, register_frame, resolve_labels, split_validation
from lorabudget.data.multilabel import several_labels_row
from lorabudget.errors import LorabudgetError
from lorabudget.labelsets import best_thresholds, multi_hot, split_cell

EXPECTED = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]], dtype=np.float32)
CLASSES = ["anger", "fear", "joy"]


def _cfg(train: str, **data) -> object:
    return from_dict({"data": {"train": train, **data}, "model": {"problem_type": "multi_label"}})


def _csv(tmp_path, sep: str) -> str:
    cells = [f"joy{sep}anger", "", "fear", f"anger{sep}fear{sep}joy"]
    frame = pd.DataFrame({"text": ["a", "b", "c", "d"], "labels": cells})
    path = tmp_path / f"data{ord(sep)}.csv"
    frame.to_csv(path, index=False)
    return str(path)


def _jsonl(tmp_path) -> str:
    path = tmp_path / "data.jsonl"
    rows = [["joy", "anger"], [], ["fear"], ["anger", "fear", "joy"]]
    path.write_text("".join(json.dumps({"text": t, "labels": r}) + "\n" for t, r in zip("abcd", rows)))
    return str(path)


def _columns_csv(tmp_path) -> str:
    path = tmp_path / "columns.csv"
    path.write_text("text,anger,fear,joy\na,1,0,1\nb,0,0,0\nc,0,1,0\nd,1,1,1\n")
    return str(path)


FORMS = {
    "pipe": (lambda p: _csv(p, "|"), {}),
    "comma": (lambda p: _csv(p, ","), {"label_separator": ","}),
    "semicolon": (lambda p: _csv(p, ";"), {"label_separator": ";"}),
    "json-list": (_jsonl, {}),
    "label-columns": (_columns_csv, {"label_columns": ["anger", "fear", "joy"]}),
}


@pytest.mark.parametrize("form", FORMS)
def test_every_input_form_reads_the_same_targets(tmp_path, form):
    make, data = FORMS[form]
    cfg = resolve_labels(_cfg(make(tmp_path), **data))
    assert cfg.model.labels == CLASSES
    got = load_labelled(cfg.data.train, cfg.class_names, columns=Columns.of(cfg))
    assert got.labels.dtype == np.float32 and got.labels.shape == (4, 3)
    np.testing.assert_array_equal(got.labels, EXPECTED)


def test_a_dataframe_of_lists(tmp_path):
    frame = pd.DataFrame({"text": ["a", "b", "c", "d"], "labels": [["joy", "anger"], [], ["fear"], CLASSES]})
    cfg = resolve_labels(_cfg(register_frame(frame)))
    got = load_labelled(cfg.data.train, cfg.class_names, columns=Columns.of(cfg))
    np.testing.assert_array_equal(got.labels, EXPECTED)


def test_split_is_seeded_and_keeps_2d_targets(tmp_path):
    cfg = resolve_labels(_cfg(_csv(tmp_path, "|")))
    data = load_labelled(cfg.data.train, cfg.class_names, columns=Columns.of(cfg))
    a, b = split_validation(data, 1, 3, cfg.class_names, log=lambda _: None)
    c, d = split_validation(data, 1, 3, cfg.class_names, log=lambda _: None)
    assert a.labels.shape == (3, 3) and b.labels.shape == (1, 3)
    np.testing.assert_array_equal(a.rows, c.rows)


BAD = [
    # (file text, data settings, message)
    ("text,labels\na,joy|anger\nb,joy\n", {"label_separator": "/"}, "'data.label_separator': must be one of"),
    ("text,a|b,c\nx,1,0\ny,0,1\n", {"label_columns": ["a|b", "c"]}, "contains the label separator"),
    ("text,a,b\nx,1,0\ny,2,1\n", {"label_columns": ["a", "b"]}, "row 1: column 'a' holds '2'"),
    ("text,labels\nx,joy\ny,joy\n", {}, "fewer than two classes"),
]


@pytest.mark.parametrize("text,data,message", BAD)
def test_bad_multi_label_data(tmp_path, text, data, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(LorabudgetError, match=message):
        cfg = _cfg(str(path), **data)
        resolve_labels(cfg)


def test_a_json_list_name_with_the_separator_names_its_row(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a", "labels": ["x"]}\n{"text": "b", "labels": ["x", "y|z"]}\n')
    with pytest.raises(LorabudgetError, match=r"row 1: class name 'y\|z'"):
        resolve_labels(_cfg(str(path)))


def test_an_unknown_class_at_evaluation_names_its_row(tmp_path):
    path = tmp_path / "eval.csv"
    path.write_text("text,labels\na,joy\nb,joy|love\n")
    with pytest.raises(LorabudgetError, match=r"row 1: label 'love' is outside the class set"):
        load_labelled(str(path), CLASSES, columns=Columns(multi_label=True))


SEVERAL = [
    (["joy", "anger|joy", "fear"], 1),  # a joined cell of names that occur alone
    (["a|b", "b|c", "a|c", "a|b|c"], 0),  # few names combined in many ways
    (["Arts|Crafts", "Music", "Film"], None),  # one class whose name holds a |
    (["1", "2", "3"], None),
]


@pytest.mark.parametrize("keys,row", SEVERAL)
def test_several_labels_rule(keys, row):
    assert several_labels_row(keys, "|") == row


def test_single_label_run_on_multi_label_data_says_pass_multi_label(tmp_path):
    path = tmp_path / "multi.csv"
    path.write_text("text,label\na,joy\nb,anger|joy\nc,fear\n")
    cfg = from_dict({"data": {"train": str(path)}})
    with pytest.raises(LorabudgetError, match=r"row 1 has several labels .*; pass --multi-label$"):
        resolve_labels(cfg)


def test_labelsets_helpers():
    assert split_cell(" a | b |", "|") == ["a", "b"] and split_cell(float("nan")) == [] and split_cell([]) == []
    np.testing.assert_array_equal(multi_hot([["b"], []], ["a", "b"]), [[0, 1], [0, 0]])
    probs = np.array([[0.9, 0.2], [0.6, 0.1], [0.4, 0.3], [0.1, 0.05]])
    truth = np.array([[1, 0], [1, 0], [0, 0], [0, 0]])
    got = best_thresholds(probs, truth)
    assert 0.4 < got[0] <= 0.6 and got[1] == 0.5  # the class with no positive keeps 0.5


def test_a_json_list_in_a_single_label_run_says_pass_multi_label(tmp_path):
    path = tmp_path / "lists.jsonl"
    path.write_text('{"text": "a", "label": ["x"]}\n{"text": "b", "label": ["x", "y"]}\n')
    with pytest.raises(LorabudgetError, match=r"row 0 holds a list of labels \(\['x'\] in column 'label'\); pass"):
        resolve_labels(from_dict({"data": {"train": str(path)}}))
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": ["x", "y"]}\n')
    with pytest.raises(LorabudgetError, match=r"row 1 has several labels \(\['x', 'y'\]"):
        resolve_labels(from_dict({"data": {"train": str(path)}}))


def test_integer_class_ids_sort_as_numbers(tmp_path):
    path = tmp_path / "ids.jsonl"
    path.write_text('{"text": "a", "labels": [10, 2]}\n{"text": "b", "labels": [1]}\n{"text": "c", "labels": []}\n')
    cfg = resolve_labels(_cfg(str(path)))
    assert cfg.model.labels == ["1", "2", "10"]
    got = load_labelled(str(path), cfg.class_names, columns=Columns.of(cfg))
    np.testing.assert_array_equal(got.labels, [[0, 1, 1], [1, 0, 0], [0, 0, 0]])
