import json
import pickle

import pandas as pd
import pytest
from conftest import write_csv

from lorabudget.data.load import load_labelled, load_unlabelled, split_validation
from lorabudget.errors import LorabudgetError

NAMES = ["World", "Sports", "Business", "Sci/Tech"]


def test_original_corpus_layout(tmp_path):
    p = write_csv(
        tmp_path / "orig.csv", [("3", "Wall St. Bears", "Short-sellers are back."), ("1", "Talks", "Peace talks.")]
    )
    d = load_labelled(str(p), NAMES)
    assert d.texts == ["Wall St. Bears Short-sellers are back.", "Talks Peace talks."]
    assert d.labels.tolist() == [2, 0]


def test_kaggle_layout(tmp_path):
    p = write_csv(
        tmp_path / "k.csv",
        [("4", "Chip", "New chip."), ("2", "Game", "Team won.")],
        header=["Class Index", "Title", "Description"],
    )
    d = load_labelled(str(p), NAMES)
    assert d.texts == ["Chip New chip.", "Game Team won."] and d.labels.tolist() == [3, 1]


@pytest.mark.parametrize("header", [None, ["text", "label"]])
def test_text_label_layout(tmp_path, header):
    p = write_csv(tmp_path / "t.csv", [("hello world", "0"), ("stocks up", "2")], header=header)
    d = load_labelled(str(p), NAMES)
    assert d.texts == ["hello world", "stocks up"] and d.labels.tolist() == [0, 2]


def test_label_names_accepted(tmp_path):
    p = write_csv(tmp_path / "t.csv", [("a b", "sports"), ("c d", "Sci/Tech")], header=["text", "label"])
    assert load_labelled(str(p), NAMES).labels.tolist() == [1, 3]


def test_jsonl_parquet_pickle(tmp_path):
    rows = [{"text": "one two", "label": 1}, {"text": "three", "label": 3}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.parquet"):
        d = load_labelled(str(tmp_path / name), NAMES)
        assert d.texts == ["one two", "three"] and d.labels.tolist() == [1, 3]
    import datasets

    with open(tmp_path / "u.pkl", "wb") as fh:
        pickle.dump(datasets.Dataset.from_dict({"text": ["x y", "z"]}), fh)
    with open(tmp_path / "f.pkl", "wb") as fh:
        pickle.dump(pd.DataFrame({"text": ["x y", "z"]}), fh)
    for name in ("u.pkl", "f.pkl"):
        assert load_unlabelled(str(tmp_path / name), trust_pickle=True).texts == ["x y", "z"]
        with pytest.raises(LorabudgetError, match="--trust-pickle"):
            load_unlabelled(str(tmp_path / name))


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(LorabudgetError, match="data file not found"):
        load_labelled(str(tmp_path / "nope.csv"), NAMES)
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(LorabudgetError, match="unknown data format '.xlsx'"):
        load_labelled(str(tmp_path / "d.xlsx"), NAMES)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(LorabudgetError, match="empty"):
        load_labelled(str(tmp_path / "empty.csv"), NAMES)
    (tmp_path / "bad.pkl").write_bytes(b"not a pickle")
    with pytest.raises(LorabudgetError, match="not a readable pickle"):
        load_unlabelled(str(tmp_path / "bad.pkl"), trust_pickle=True)


def test_missing_columns(tmp_path):
    p = write_csv(tmp_path / "m.csv", [("x", "0")], header=["body", "label"])
    with pytest.raises(LorabudgetError, match="no text column.*found: body, label"):
        load_labelled(str(p), NAMES)
    p = write_csv(tmp_path / "n.csv", [("x",)], header=["text"])
    with pytest.raises(LorabudgetError, match="no label column"):
        load_labelled(str(p), NAMES)


def test_labels_outside_class_set(tmp_path):
    p = write_csv(tmp_path / "l.csv", [("a", "0"), ("b", "4")])
    with pytest.raises(LorabudgetError, match=r"row 1: label '4' is outside the class set \(this layout uses 0..3"):
        load_labelled(str(p), NAMES)
    p = write_csv(tmp_path / "o.csv", [("0", "t", "d")])
    with pytest.raises(LorabudgetError, match="1..4"):
        load_labelled(str(p), NAMES)


def test_empty_rows_dropped_for_training_kept_for_prediction(tmp_path, capsys):
    p = write_csv(
        tmp_path / "e.csv", [("good text", "0"), ("   ", "1"), ("", "2"), ("more", "3")], header=["text", "label"]
    )
    d = load_labelled(str(p), NAMES)
    assert d.texts == ["good text", "more"] and d.rows.tolist() == [0, 3]
    assert "dropped 2 empty or non-text rows (rows 1, 2)" in capsys.readouterr().err
    u = load_unlabelled(str(p))
    assert u.texts == ["good text", "", "", "more"]
    assert "predicted from an empty text" in capsys.readouterr().err


def test_all_empty_is_an_error(tmp_path):
    p = write_csv(tmp_path / "e.csv", [("", "0")], header=["text", "label"])
    with pytest.raises(LorabudgetError, match="no rows with text"):
        load_labelled(str(p), NAMES)


def test_split_is_deterministic_and_disjoint(data_dir):
    d = load_labelled(str(data_dir / "train.csv"), NAMES)
    a_train, a_val = split_validation(d, 40, seed=3)
    b_train, b_val = split_validation(d, 40, seed=3)
    assert a_val.rows.tolist() == b_val.rows.tolist() and len(a_val) == 40
    assert set(a_train.rows) | set(a_val.rows) == set(range(len(d)))
    assert not set(a_train.rows) & set(a_val.rows)
    assert split_validation(d, 0.25, seed=3)[1].rows.size == 60
    with pytest.raises(LorabudgetError, match="validation_size"):
        split_validation(d, len(d), seed=3)


def test_hub_dataset_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LorabudgetError, match="cannot load dataset 'ag_news'.*pass a local file"):
        load_labelled("ag_news", NAMES)
