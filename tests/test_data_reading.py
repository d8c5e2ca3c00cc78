"""Reading a user's own data without silent wrong results: header rows of any names, presets on other
label sets, validation sizes that fit the file, duplicate columns, label spellings and missing labels,
files read once (pipes), and in-memory tables."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import write_csv

from lorabudget.cli import main
from lorabudget.config import AG_NEWS_LABELS, from_dict, load_config
from lorabudget.data.load import (
    Columns,
    TextData,
    default_validation_rows,
    describe_source,
    infer_labels,
    load_labelled,
    load_unlabelled,
    read_table,
    register_frame,
    resolve_labels,
    split_validation,
)
from lorabudget.errors import LorabudgetError


def _reviews(n: int = 300) -> list[tuple[str, str]]:
    return [(f"review {i} says it was {'great' if i % 2 else 'dull'}", "pos" if i % 2 else "neg") for i in range(n)]


def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- 1. a header of names the reader does not know


@pytest.mark.parametrize("sep,suffix", [(",", "csv"), ("\t", "tsv")])
def test_unknown_header_names_are_a_header_not_a_class(tmp_path, sep, suffix):
    path = tmp_path / f"reviews.{suffix}"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter=sep)
        writer.writerow(["review", "sentiment"])
        writer.writerows(_reviews())
    assert infer_labels(str(path)) == (["neg", "pos"], "name")
    data = load_labelled(str(path), ["neg", "pos"])
    assert len(data) == 300 and data.texts[0] == "review 0 says it was dull" and data.labels[:2].tolist() == [0, 1]
    train, validation = split_validation(data, None, seed=1)
    assert (len(train), len(validation)) == (240, 60)  # the default: 20% of the rows, at most 1,000
    assert load_unlabelled(str(path)).texts[0] == "review 0 says it was dull"  # predict: 300 rows, no header row


def test_unknown_header_with_the_label_column_first(tmp_path):
    rows = [(label, text) for text, label in _reviews(40)]
    path = write_csv(tmp_path / "r.csv", rows, header=["verdict", "words"])
    assert infer_labels(str(path)) == (["neg", "pos"], "name")
    data = load_labelled(str(path), ["neg", "pos"])
    assert len(data) == 40 and data.texts[1] == "review 1 says it was great" and data.labels[1] == 1
    # Without a header the same column order is still read as label, text.
    bare = write_csv(tmp_path / "bare.csv", rows)
    assert load_labelled(str(bare), ["neg", "pos"]).texts[0] == "review 0 says it was dull"


def test_unknown_header_over_integer_labels(tmp_path):
    path = write_csv(tmp_path / "s.csv", [(f"text {i}", i % 3) for i in range(30)], header=["body", "stars"])
    assert infer_labels(str(path)) == (["0", "1", "2"], "id")
    assert len(load_labelled(str(path), ["0", "1", "2"])) == 30


def test_headerless_rows_stay_data(tmp_path):
    # Row 0's label is seen again below it: a class, so row 0 is data.
    path = write_csv(tmp_path / "h.csv", _reviews(30))
    assert len(load_labelled(str(path), ["neg", "pos"])) == 30
    # A known class name in row 0 is data, even seen only once.
    rows = [("a b", "World")] + [(f"c {i}", "Sports" if i % 2 else "Business") for i in range(10)]
    path = write_csv(tmp_path / "k.csv", rows)
    assert len(load_labelled(str(path), AG_NEWS_LABELS)) == 11


def test_a_header_that_cannot_be_told_from_data_is_one_error(tmp_path):
    path = _write(tmp_path / "small.csv", "review,sentiment\ngreat film,pos\ndull film,neg\n")
    for call in (
        lambda: infer_labels(path),
        lambda: load_labelled(path, AG_NEWS_LABELS),
        lambda: load_unlabelled(path),
    ):
        with pytest.raises(LorabudgetError) as err:
            call()
        message = str(err.value)
        assert "header" in message and "--text-column" in message and "outside the class set" not in message
        assert "\n" not in message
    cfg = load_config("minilm-cpu", [f"data.train={path}"])
    with pytest.raises(LorabudgetError, match="first row .* is a header or data"):
        resolve_labels(cfg)  # the preset's labels known: still the header that is blamed
    named = Columns(text="review", label="sentiment")
    assert load_labelled(path, ["neg", "pos"], columns=named).texts == ["great film", "dull film"]


def test_forced_labels_blame_the_labels_not_the_header_row(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", _reviews(), header=["review", "sentiment"])
    cfg = load_config("minilm-cpu", [f"data.train={path}"])
    with pytest.raises(LorabudgetError) as err:
        resolve_labels(cfg)  # model.labels given (preset_labels=False): they force the class set
    message = str(err.value)
    assert "sentiment" not in message and "neg, pos are not among model.labels" in message
    assert "model.labels=null" in message


# --- 2. presets infer the data's classes unless they are the preset's


def test_preset_labels_give_way_to_the_datas_classes(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", _reviews(), header=["review", "sentiment"])
    cfg = load_config("minilm-cpu", [f"data.train={path}"])
    lines: list[str] = []
    resolve_labels(cfg, log=lines.append, preset_labels=True)
    assert cfg.model.labels == ["neg", "pos"] and cfg.model.label_format == "name"
    assert len(lines) == 1 and "using the 2 classes found in the data (neg, pos)" in lines[0]
    # The run records the columns the header named, so a one-column file to predict keeps its header out.
    assert (cfg.data.text_column, cfg.data.label_column) == ("review", "sentiment")
    new = write_csv(tmp_path / "new.csv", [("a fine film",), ("a dull film",)], header=["review"])
    assert load_unlabelled(str(new), columns=Columns.of(cfg)).texts == ["a fine film", "a dull film"]


def test_a_header_repeated_inside_the_data_is_not_a_class(tmp_path):
    rows = [("a", "pos"), ("b", "neg"), ("text", "label"), ("c", "pos")]
    path = write_csv(tmp_path / "joined.csv", rows, header=["text", "label"])
    with pytest.raises(LorabudgetError, match="row 2 repeats the header"):
        infer_labels(str(path))


@pytest.mark.parametrize(
    "name,text,fmt",
    [
        ("orig.csv", "".join(f"{i % 4 + 1},title {i},body {i}\n" for i in range(12)), "id"),
        (
            "kaggle.csv",
            "Class Index,Title,Description\n" + "".join(f"{i % 4 + 1},t {i},d {i}\n" for i in range(12)),
            "id",
        ),
        ("ids.csv", "text,label\n" + "".join(f"t {i},{i % 4}\n" for i in range(12)), "id"),
        ("names.csv", "text,label\n" + "".join(f"t {i},{AG_NEWS_LABELS[i % 4].upper()}\n" for i in range(12)), "name"),
        ("ids.jsonl", "".join(json.dumps({"text": f"t {i}", "label": i % 4}) + "\n" for i in range(12)), "id"),
    ],
)
def test_preset_keeps_ag_news_names_on_ag_news_labels(tmp_path, name, text, fmt):
    path = _write(tmp_path / name, text)
    cfg = load_config("minilm-cpu", [f"data.train={path}"])
    lines: list[str] = []
    resolve_labels(cfg, log=lines.append, preset_labels=True)
    assert cfg.model.labels == AG_NEWS_LABELS and cfg.model.label_format == fmt and lines == []


def test_preset_on_three_integer_classes_infers_three(tmp_path):
    path = _write(tmp_path / "three.csv", "text,label\n" + "".join(f"t {i},{i % 3}\n" for i in range(12)))
    cfg = load_config("minilm-cpu", [f"data.train={path}"])
    resolve_labels(cfg, log=lambda _: None, preset_labels=True)
    assert cfg.model.labels == ["0", "1", "2"]
    user = load_config("minilm-cpu", [f"data.train={path}"])
    resolve_labels(user, log=lambda _: None)  # labels the user gave (or a config of their own) force the set
    assert user.model.labels == AG_NEWS_LABELS


def test_resolve_labels_raises_the_data_errors(tmp_path):
    bad = _write(tmp_path / "bad.csv", "text,label\na,0\nb,7\n")
    cfg = from_dict({"data": {"train": bad}, "model": {"labels": AG_NEWS_LABELS}})
    with pytest.raises(LorabudgetError, match="row 1: label '7' is outside the class set"):
        resolve_labels(cfg)
    cfg = from_dict({"data": {"train": bad}, "model": {"labels": AG_NEWS_LABELS, "label_format": "id"}})
    with pytest.raises(LorabudgetError, match="row 1: label '7'"):
        resolve_labels(cfg)  # a run's recorded labels and format do not skip the check


# --- 3. validation sizes that fit the file


def test_validation_size_too_large_says_what_would_work(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", _reviews(), header=["review", "sentiment"])
    data = load_labelled(str(path), ["neg", "pos"])
    with pytest.raises(LorabudgetError) as err:
        split_validation(data, 1000, seed=42)
    message = str(err.value)
    assert "validation_size=1000" in message and "300 rows" in message
    assert "a fraction such as 0.2" in message and "at most 299" in message
    with pytest.raises(LorabudgetError, match="at least 0.0033"):
        split_validation(data, 0.001, seed=42)


def test_default_validation_size_scales_with_the_file():
    assert [default_validation_rows(n) for n in (2, 9, 300, 10_000, 120_000)] == [1, 2, 60, 1000, 1000]
    data = TextData([f"t{i}" for i in range(300)], None, pd.RangeIndex(300).to_numpy(), "x.csv")
    assert [len(part) for part in split_validation(data, None, seed=0)] == [240, 60]
    one = TextData(["only"], None, pd.RangeIndex(1).to_numpy(), "x.csv")
    with pytest.raises(LorabudgetError, match="too few to split"):
        split_validation(one, None, seed=0)


def test_a_class_too_small_for_the_split_is_named_in_one_line(tmp_path):
    rows = [(f"t {i}", "common") for i in range(40)] + [("lonely text", "rare")]
    path = write_csv(tmp_path / "r.csv", rows, header=["text", "label"])
    data = load_labelled(str(path), ["common", "rare"])
    lines: list[str] = []
    split_validation(data, 0.25, seed=0, class_names=["common", "rare"], log=lines.append)
    assert len(lines) == 1 and "'rare' (1 row) has no" in lines[0] and "common" not in lines[0]


# --- 4. rows silently lost or merged


def test_duplicate_column_names_are_one_error(tmp_path):
    rows = [(f"first {i}", f"second {i}", i % 2) for i in range(201)]
    path = str(write_csv(tmp_path / "dup.csv", rows, header=["text", "text", "label"]))
    for call in (lambda: load_unlabelled(path), lambda: load_labelled(path, ["0", "1"]), lambda: infer_labels(path)):
        with pytest.raises(LorabudgetError, match=r"duplicate column names \('text' is columns 1, 2\)"):
            call()
    frame = pd.DataFrame(rows, columns=["text", "text", "label"])
    with pytest.raises(LorabudgetError, match="duplicate column names"):
        load_unlabelled(register_frame(frame))
    table = pa.table([pa.array([r[0] for r in rows]), pa.array([r[1] for r in rows])], names=["text", "text"])
    pq.write_table(table, tmp_path / "dup.parquet")
    with pytest.raises(LorabudgetError, match="duplicate column names"):
        load_unlabelled(str(tmp_path / "dup.parquet"))
    jsonl = _write(tmp_path / "dup.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "text": "c", "label": 1}\n')
    with pytest.raises(LorabudgetError, match="line 2: the key 'text' appears twice"):
        load_unlabelled(jsonl)
    cased = write_csv(tmp_path / "cased.csv", [("a", "b", 0)], header=["Text", "text", "label"])
    with pytest.raises(LorabudgetError, match="columns 'Text' and 'text' both read as 'text'"):
        load_unlabelled(str(cased))


def test_one_number_in_different_spellings_is_one_class(tmp_path):
    lines = ['{"text": "a", "label": 1}', '{"text": "b", "label": "1"}', '{"text": "c", "label": 1.0}']
    path = _write(tmp_path / "mixed.jsonl", "\n".join(lines + ['{"text": "d", "label": 0}']) + "\n")
    assert infer_labels(path) == (["0", "1"], "id")
    assert load_labelled(path, ["0", "1"]).labels.tolist() == [1, 1, 1, 0]
    csv_path = _write(tmp_path / "mixed.csv", "text,label\na,1\nb, 1\nc,1.0\nd,0\n")
    assert infer_labels(csv_path) == (["0", "1"], "id")
    pd.DataFrame({"text": ["a", "b", "c"], "label": [1.0, 0.0, 1.0]}).to_parquet(tmp_path / "f.parquet")
    assert infer_labels(str(tmp_path / "f.parquet")) == (["0", "1"], "id")
    named = _write(tmp_path / "names.csv", "text,label\na,Pos\nb,pos\nc,pos\nd,neg\n")
    assert infer_labels(named) == (["neg", "pos"], "name")  # rows match names ignoring case: one class
    assert load_labelled(named, ["neg", "pos"]).labels.tolist() == [1, 1, 1, 0]


def test_numeric_names_among_names_match_as_names(tmp_path):
    path = _write(tmp_path / "n.csv", "text,label\na,1\nb,pos\nc,neg\nd,1\n")
    names, fmt = infer_labels(path)
    assert (names, fmt) == (["1", "neg", "pos"], "name")
    assert load_labelled(path, names).labels.tolist() == [0, 2, 1, 0]


def test_missing_labels_are_refused_with_their_row(tmp_path):
    jsonl = _write(
        tmp_path / "null.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": null}\n{"text": "c", "label": 0}\n'
    )
    empty = _write(tmp_path / "empty.csv", "text,label\na,1\nb,\nc,0\n")
    pd.DataFrame({"text": ["a", "b", "c"], "label": [1.0, float("nan"), 0.0]}).to_parquet(tmp_path / "nan.parquet")
    for path in (jsonl, empty, str(tmp_path / "nan.parquet")):
        with pytest.raises(LorabudgetError, match=r"row 1 has no label \(an empty cell or null"):
            infer_labels(path)
        with pytest.raises(LorabudgetError, match=r"row 1 has no label \(an empty cell or null"):
            load_labelled(path, ["0", "1"])


# --- 5. a file is read once


@contextlib.contextmanager
def _fifo_fed_once(path: Path, content: bytes):
    """A FIFO at ``path`` that is written ``content`` once. A reader opening it again would wait for a
    writer forever: a watchdog gives it an empty one instead (it then reads an empty file) and records
    that it happened."""
    os.mkfifo(path)
    state = {"written": False, "reopened": False, "done": False}

    def write() -> None:
        with open(path, "wb") as fh:
            fh.write(content)
        state["written"] = True

    def watch() -> None:
        while not state["written"] and not state["done"]:
            time.sleep(0.1)
        time.sleep(5)  # the first read has long finished
        while not state["done"]:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # succeeds only while a reader has it open
            except OSError:
                time.sleep(0.2)
                continue
            state["reopened"] = True
            os.close(fd)

    threads = [threading.Thread(target=write, daemon=True), threading.Thread(target=watch, daemon=True)]
    for t in threads:
        t.start()
    try:
        yield state
    finally:
        state["done"] = True


def test_labels_then_rows_read_a_fifo_once(tmp_path):
    text = "review,sentiment\n" + "".join(f"{t},{label}\n" for t, label in _reviews(50))
    path = tmp_path / "pipe.csv"
    with _fifo_fed_once(path, text.encode()) as state:
        cfg = from_dict({"data": {"train": str(path)}})
        resolve_labels(cfg)
        data = load_labelled(str(path), cfg.class_names)
        assert len(data) == 50 and cfg.model.labels == ["neg", "pos"]
        time.sleep(6)
    assert not state["reopened"]


@pytest.fixture(scope="module")
def fifo_run(tmp_path_factory, make_config, data_dir):
    """A run trained by ``train --data FIFO``; its folder, or the failure to make it."""
    base = tmp_path_factory.mktemp("fifo")
    cfg = base / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(make_config(base / "cache", training={"epochs": 1})))
    pipe = base / "train.csv"
    with _fifo_fed_once(pipe, (data_dir / "train.csv").read_bytes()) as state:
        code = main(["train", str(cfg), "--data", str(pipe), "--output", str(base / "run"), "--no-report"])
    return base / "run", code, state["reopened"]


def test_train_from_a_fifo(fifo_run):
    run, code, reopened = fifo_run
    assert code == 0 and not reopened and (run / "config.yaml").is_file()


def test_predict_refuses_duplicate_columns_instead_of_losing_rows(fifo_run, tmp_path, capsys):
    run, code, _ = fifo_run
    assert code == 0
    rows = [(f"first {i}", f"second {i}", i % 4) for i in range(201)]
    path = write_csv(tmp_path / "dup.csv", rows, header=["text", "text", "label"])
    out = tmp_path / "p.csv"
    for argv in (
        ["predict", str(run), "--input", str(path), "--output", str(out)],
        ["evaluate", str(run), "--data", str(path)],
    ):
        assert main(argv + ["--no-report"]) == 2
        assert "duplicate column names ('text' is columns 1, 2)" in capsys.readouterr().err
    assert not out.exists()


def test_a_changed_file_is_read_again(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\na,0\nb,1\n")
    assert len(read_table(str(path))[0]) == 2
    path.write_text("text,label\na,0\nb,1\nc,1\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10_000_000))
    assert len(read_table(str(path))[0]) == 3


# --- 6. in-memory tables


def test_registered_frames_read_like_files(tmp_path):
    frame = pd.DataFrame({"review": ["good one", "bad one", "fine one", "poor one"], "verdict": [1, 0, 1.0, "0"]})
    source = register_frame(frame)
    digest = hashlib.sha256(frame.to_csv(index=False).encode("utf-8")).hexdigest()[:12]
    assert source == f"memory:{digest}" and register_frame(frame.copy()) == source
    frame.loc[0, "review"] = "changed after registering"  # the registry kept its own copy
    columns = Columns(text="review", label="verdict")
    assert infer_labels(source, columns) == (["0", "1"], "id")
    data = load_labelled(source, ["0", "1"], columns=columns)
    assert data.texts[0] == "good one" and data.labels.tolist() == [1, 0, 1, 0] and data.source == source
    assert load_unlabelled(source, columns=columns).texts == ["good one", "bad one", "fine one", "poor one"]
    cfg = from_dict({"data": {"train": source, "text_column": "review", "label_column": "verdict"}})
    assert resolve_labels(cfg).model.labels == ["0", "1"]
    assert describe_source(source) == "DataFrame (4 rows)"
    assert describe_source(str(tmp_path / "sub" / "train.csv")) == "train.csv"


def test_named_frames_and_their_messages():
    kaggle = pd.DataFrame({"Class Index": [1, 4, 2], "Title": ["a", "b", "c"], "Description": ["d", "e", "f"]})
    source = register_frame(kaggle, name="kaggle")
    assert source == "memory:kaggle"
    assert load_labelled(source, AG_NEWS_LABELS).labels.tolist() == [0, 3, 1]  # as the file with that header
    register_frame(pd.DataFrame({"text": ["x", "y"], "label": ["a", None]}), name="gap")
    with pytest.raises(LorabudgetError, match=r"^DataFrame \(2 rows\): row 1 has no label"):
        load_labelled("memory:gap", ["a", "b"])
    with pytest.raises(LorabudgetError, match="in-memory data lives only in the process that registered it"):
        load_unlabelled("memory:never-registered")
