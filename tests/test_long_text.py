"""data.long_text: truncate | head_tail | chunks, on the word-level tokenizers (one token a word, so
lengths are exact), and a chunks run from training to predict, evaluate, serve and ONNX."""

from __future__ import annotations

import contextlib
import csv
import io
import json

import numpy as np
import pytest
import torch
import yaml
from conftest import FILLER, make_tokenizer

from lorabudget.config import from_dict
from lorabudget.data import windows
from lorabudget.data.batching import TOKENS_FOLDER, tokenize
from lorabudget.errors import LorabudgetError

WORDS = FILLER * 5  # 70 distinct-position words, known tokens of the word-level vocabulary


def _text(n: int) -> str:
    return " ".join(WORDS[:n])


def _content(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_truncate_is_the_tokenizers_own_cut_and_counts_what_it_cut(kind, tmp_path):
    tok = make_tokenizer(kind)
    texts = [_text(30), _text(5), ""]
    # Uncached (predict, serve): no second, uncut pass, so nothing counted.
    assert tokenize(tok, texts, 12).stats(12) is None
    tokens = tokenize(tok, texts, 12, cache_dir=tmp_path)  # training's cached pass counts what it cut
    expected = tok(texts, truncation=True, max_length=12)["input_ids"]
    assert [tokens.row(i).tolist() for i in range(3)] == expected
    stats = tokens.stats(12)
    assert (stats.rows, stats.longer, stats.tokens_cut, stats.windows) == (3, 1, 30 + 2 - 12, 3)
    assert tokens.row_of_window is None and tokens.per_row(np.ones((3, 2))).shape == (3, 2)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("length", [1, 9, 10, 11, 40])
def test_head_tail_keeps_exactly_the_first_and_last_tokens(kind, length):
    tok = make_tokenizer(kind)
    text = _text(length)
    tokens = tokenize(tok, [text], 12, long_text="head_tail")
    content = _content(tok, text)
    budget = 12 - 2  # [CLS] … [SEP] / <s> … </s>
    head, tail = windows.head_split(budget)
    kept = content if len(content) <= budget else content[:head] + content[-tail:]
    assert tokens.row(0).tolist() == [tok.cls_token_id, *kept, tok.sep_token_id]
    stats = tokens.stats(12)
    assert (stats.longer, stats.tokens_cut) == (int(length > budget), max(0, length - budget))


def test_head_tail_split_is_sun_et_al_at_512():
    assert windows.head_split(510) == (128, 382)
    assert windows.head_split(126) == (31, 95)  # max_length 128 with two special tokens


@pytest.mark.parametrize(
    "length, budget, stride, starts",
    [
        (0, 10, 2, [0]),  # an empty row is one window
        (10, 10, 2, [0]),  # a row that fits is one window
        (11, 10, 2, [0, 1]),  # the last window ends at the row's end
        (26, 10, 2, [0, 8, 16]),
        (30, 10, 2, [0, 8, 16, 20]),
        (30, 10, 0, [0, 10, 20]),
    ],
)
def test_window_starts(length, budget, stride, starts):
    assert windows.window_starts(length, budget, stride) == starts


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("length, stride", [(40, 3), (40, 0), (13, 5), (10, 4), (3, 2), (0, 1)])
def test_chunks_cover_every_token_with_the_stated_overlap(kind, length, stride):
    tok = make_tokenizer(kind)
    texts = [_text(length), _text(4)]
    tokens = tokenize(tok, texts, 12, long_text="chunks", stride=stride)
    budget = 10
    content = _content(tok, texts[0])
    mine = np.flatnonzero(tokens.row_of_window == 0)
    assert tokens.row_of_window.dtype == np.int64 and tokens.row_of_window.tolist() == [0] * len(mine) + [1]
    starts = windows.window_starts(len(content), budget, stride)
    covered = np.zeros(len(content), dtype=int)
    for w, start in zip(mine, starts):
        row = tokens.row(int(w)).tolist()
        assert row[0] == tok.cls_token_id and row[-1] == tok.sep_token_id and len(row) <= 12
        assert row[1:-1] == content[start : start + budget]
        covered[start : start + len(row) - 2] += 1
    assert len(mine) == len(starts) and (covered >= 1).all()
    ends = [s + budget for s in starts]
    shared = [ends[i] - starts[i + 1] for i in range(len(starts) - 1)]
    assert all(s == stride for s in shared[:-1]) and all(s >= stride for s in shared[-1:])
    stats = tokens.stats(12)
    assert (stats.rows, stats.longer, stats.tokens_cut, stats.windows) == (2, int(length > budget), 0, len(tokens))


def test_default_stride_is_a_quarter_of_max_length():
    tok = make_tokenizer("bert")
    tokens = tokenize(tok, [_text(40)], 16, long_text="chunks")
    assert [s for s in windows.window_starts(40, 14, 4)] == [0, 10, 20, 26]
    assert len(tokens) == 4 and windows.default_stride(16) == 4


LOGITS = np.array([[1.0, -2.0], [3.0, 0.0], [-1.0, 5.0], [0.5, 0.5], [2.0, 2.0]], dtype=np.float32)
OWNERS = np.array([0, 0, 0, 1, 2], dtype=np.int64)


@pytest.mark.parametrize(
    "pooling, expected",
    [
        ("mean", [[1.0, 1.0], [0.5, 0.5], [2.0, 2.0]]),  # (1+3-1)/3, (-2+0+5)/3
        ("max", [[3.0, 5.0], [0.5, 0.5], [2.0, 2.0]]),
    ],
)
def test_pooling_equals_a_hand_computation(pooling, expected):
    np.testing.assert_allclose(windows.pool_windows(LOGITS, OWNERS, pooling), expected, rtol=1e-6)
    assert windows.pool_windows(LOGITS, None, pooling) is LOGITS  # one window per row: unchanged


def test_cache_key_differs_per_setting_and_entries_read_back(tmp_path):
    tok = make_tokenizer("bert")
    texts = [_text(40), _text(3)]
    settings = [
        dict(long_text="truncate"),
        dict(long_text="head_tail"),
        dict(long_text="chunks", stride=2),
        dict(long_text="chunks", stride=3),
    ]
    made = [tokenize(tok, texts, 12, cache_dir=tmp_path, **s) for s in settings]
    assert len(list((tmp_path / TOKENS_FOLDER).glob("*.npz"))) == 4
    for setting, first in zip(settings, made):
        again = tokenize(tok, texts, 12, cache_dir=tmp_path, pooling="max", **setting)  # pooling: not in the key
        assert np.array_equal(again.ids, first.ids) and np.array_equal(again.offsets, first.offsets)
        assert np.array_equal(again.source_lengths, first.source_lengths)
        if first.row_of_window is None:
            assert again.row_of_window is None
        else:
            assert np.array_equal(again.row_of_window, first.row_of_window) and again.pooling == "max"
    assert len(list((tmp_path / TOKENS_FOLDER).glob("*.npz"))) == 4


@pytest.mark.parametrize(
    "data, match",
    [
        ({"chunk_stride": -1}, "'data.chunk_stride': .* got -1"),
        ({"chunk_stride": 64}, "'data.chunk_stride': .*below model.max_length \\(64\\), got 64"),
        ({"chunk_stride": "x"}, "'data.chunk_stride'"),
        ({"long_text": "middle"}, "'data.long_text': 'middle' is not allowed"),
        ({"chunk_pooling": "sum"}, "'data.chunk_pooling': 'sum' is not allowed"),
        ({"long_text": "chunks", "text_pair_column": "b"}, "'data.long_text': chunks takes single texts"),
        ({"long_text": "head_tail", "text_pair_column": "b"}, "'data.long_text': head_tail takes single texts"),
    ],
)
def test_bad_long_text_config(data, match):
    with pytest.raises(LorabudgetError, match=match) as err:
        from_dict({"model": {"max_length": 64}, "data": data})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "call, match",
    [
        (dict(max_length=12, long_text="chunks", stride=10), "'data.chunk_stride': .*below the 10 text tokens.*got 10"),
        (dict(max_length=2, long_text="chunks", stride=0), "leaves no room for text"),
        (dict(max_length=12, long_text="chunks", pairs=["x", "y"]), "takes single texts"),
        (dict(max_length=12, long_text="head_tail", pairs=["x", "y"]), "takes single texts"),
    ],
)
def test_bad_long_text_tokenizing(call, match):
    with pytest.raises(LorabudgetError, match=match) as err:
        tokenize(make_tokenizer("bert"), [_text(30), _text(2)], **call)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------
# A chunks run end to end


@pytest.fixture(scope="module")
def chunks_run(make_config, tmp_path_factory):
    from lorabudget.cli import main

    root = tmp_path_factory.mktemp("chunks")
    values = make_config(
        root / "cache",
        model={"max_length": 16},
        data={"long_text": "chunks", "chunk_stride": 4},
        training={"epochs": 1},
    )
    cfg = root / "chunks.yaml"
    cfg.write_text(yaml.safe_dump(values))
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        assert main(["train", str(cfg), "--output", str(root / "run"), "--no-report"]) == 0
    (root / "train.log").write_text(log.getvalue())  # what training said
    return root / "run"


def _window_logits_by_hand(loaded, text: str, pooling: str) -> np.ndarray:
    """Each window of ``text`` through the model alone, pooled: what a chunks run predicts for it."""
    tok = loaded.tokenizer
    content = _content(tok, text)
    rows = []
    for start in windows.window_starts(len(content), 14, 4):
        ids = torch.tensor([[tok.cls_token_id, *content[start : start + 14], tok.sep_token_id]])
        with torch.no_grad():
            rows.append(loaded.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].numpy())
    return np.mean(rows, axis=0) if pooling == "mean" else np.max(rows, axis=0)


def test_chunks_run_trains_predicts_evaluates_and_serves_pooled_rows(chunks_run, data_dir, tmp_path, capsys):
    from lorabudget.cli import main
    from lorabudget.inference.runs import evaluate_run, load_run

    summary = json.loads((chunks_run / "summary.json").read_text())
    record = summary["long_text"]
    assert record["mode"] == "chunks" and record["stride"] == 4 and record["pooling"] == "mean"
    train_texts = [r[0] for r in csv.reader((data_dir / "train.csv").open())]
    assert record["train"]["rows"] == summary["train_rows"] == len(train_texts) - 40
    assert summary["validation_rows"] == record["validation"]["rows"] == 40
    assert record["train"]["windows"] > record["train"]["rows"] and record["train"]["longer_than_max_length"] > 0
    saved = yaml.safe_load((chunks_run / "config.yaml").read_text())["data"]
    assert (saved["long_text"], saved["chunk_stride"], saved["chunk_pooling"]) == ("chunks", 4, "mean")
    assert json.loads((chunks_run / "eval.json").read_text())["n"] == 40  # rows, not windows
    said = (chunks_run.parent / "train.log").read_text()
    t = record["train"]
    v = record["validation"]
    assert (
        f"long texts (data.long_text: chunks, windows pooled): training {t['longer_than_max_length']:,} of "
        f"{t['rows']:,} rows longer than max_length ({t['windows']:,} windows); validation "
        f"{v['longer_than_max_length']} of 40 rows longer than max_length ({v['windows']} windows)\n"
    ) in said
    assert f"data: {t['rows']:,} training rows, 40 validation rows" in said

    test = [(t, int(y)) for t, y in csv.reader((data_dir / "test.csv").open())]
    texts = [t for t, _ in test]
    loaded = load_run(chunks_run)
    logits = loaded.logits(texts)
    assert logits.shape == (len(texts), 4)
    long_rows = [i for i, t in enumerate(texts) if len(t.split()) > 14]
    assert long_rows
    for i in long_rows[:3] + [next(i for i, t in enumerate(texts) if len(t.split()) <= 14)]:
        np.testing.assert_allclose(logits[i], _window_logits_by_hand(loaded, texts[i], "mean"), atol=1e-4)

    out = tmp_path / "pred.csv"
    args = ["predict", str(chunks_run), "--input", str(data_dir / "unlabelled.csv"), "--output", str(out)]
    assert main([*args, "--no-report"]) == 0
    predicted = [int(r[1]) for r in list(csv.reader(out.open()))[1:]]
    assert predicted == logits.argmax(axis=1).tolist()

    metrics = evaluate_run(loaded, str(data_dir / "test.csv"))
    labels = np.array([y for _, y in test])
    assert metrics["n"] == len(test) and metrics["accuracy"] == pytest.approx((logits.argmax(1) == labels).mean())

    from fastapi.testclient import TestClient

    from lorabudget.serve.app import create_app

    with TestClient(create_app(loaded)) as client:
        answer = client.post("/v1/classify", json={"texts": texts[:8]})
        assert answer.status_code == 200, answer.text
        names = loaded.cfg.class_names
        assert [r["label"] for r in answer.json()["results"]] == [names[i] for i in predicted[:8]]

    loaded.cfg.data.chunk_pooling = "max"
    maxed = loaded.logits([texts[long_rows[0]]])
    np.testing.assert_allclose(maxed[0], _window_logits_by_hand(loaded, texts[long_rows[0]], "max"), atol=1e-4)


def test_chunks_run_onnx_export_pools_as_torch_does(chunks_run, data_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from lorabudget.export.formats import export_run
    from lorabudget.inference.runs import load_run

    texts = [t for t, _ in csv.reader((data_dir / "test.csv").open())][:12]
    torch_logits = load_run(chunks_run).logits(texts)
    onnx_run = load_run(export_run(chunks_run, tmp_path / "onnx", "onnx"))
    np.testing.assert_allclose(onnx_run.logits(texts), torch_logits, atol=1e-4)


def test_chunks_run_hf_model_card_says_the_pipeline_truncates(chunks_run, tmp_path):
    from lorabudget.export.formats import export_run

    folder = export_run(chunks_run, tmp_path / "hf", "hf")
    card = (folder / "README.md").read_text()
    assert "the pipeline truncates instead" in card


@pytest.mark.parametrize("mode", ["truncate", "head_tail", "chunks"])
def test_prepared_data_counts_long_rows_and_cut_tokens(tiny_config, mode):
    from lorabudget.training.setup import prepare_data

    cfg = from_dict(tiny_config(model={"max_length": 16}, data={"long_text": mode}))
    said: list[str] = []
    data = prepare_data(cfg, said.append)
    record = data.long_text
    assert record["mode"] == mode and record["max_length"] == 16
    texts = list(dict.fromkeys(data.train.texts))  # chunks repeats a row's text per window
    full = np.array([len(t.split()) + 2 for t in texts])  # one token a word, <s> and </s>
    t = record["train"]
    assert (t["rows"], t["longer_than_max_length"]) == (len(texts), int((full > 16).sum()))
    if mode == "chunks":
        windows_ = sum(len(windows.window_starts(n - 2, 14, 4)) for n in full)
        assert t["tokens_cut"] == 0 and t["windows"] == windows_ == len(data.train) == len(data.train_tokens)
        assert record["stride"] == 4 and record["pooling"] == "mean"
        assert data.train_tokens.row_of_window is None and data.validation_tokens.row_of_window is not None
        assert (
            f"training {t['longer_than_max_length']} of {t['rows']} rows longer than max_length ({t['windows']:,} windows); "
            in said[0]
        )
    else:
        assert t["tokens_cut"] == int((full - 16).clip(min=0).sum()) and t["windows"] == len(texts)
        assert (
            f"training {t['longer_than_max_length']} of {t['rows']} rows longer than max_length ({t['tokens_cut']:,} tokens cut); "
            in said[0]
        )
    assert record["validation"]["rows"] == len(data.validation) == 40


def test_distill_of_a_chunks_student_trains_windows_of_labelled_and_unlabelled_rows(
    make_config, tiny_roberta, data_dir, tmp_path, capsys
):
    from lorabudget.cli import main

    teacher = {
        "name": "tiny-teacher",
        "model": {"name": str(tiny_roberta), "max_length": 16},
        "adapter": {"r": 2, "alpha": 4, "dropout": 0.0, "modules": ["query", "value"]},
        "training": {"epochs": 1, "batch_size": 16, "learning_rate": 2e-2},
        "budget": {"max_trainable_params": 10_000_000},
    }
    student = make_config(
        tmp_path / "cache",
        name="student",
        model={"max_length": 16},
        data={"long_text": "chunks"},
        training={"epochs": 1},
        distill={"alpha": 0.5},
    )
    paths = []
    for name, values in (("teacher", teacher), ("student", student)):
        paths.append(tmp_path / f"{name}.yaml")
        paths[-1].write_text(yaml.safe_dump(values))
    argv = ["distill", str(paths[1]), "--teacher", str(paths[0]), "--unlabelled", str(data_dir / "unlabelled.csv")]
    assert main([*argv, "--output", str(tmp_path / "runs" / "student"), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "adding 80 unlabelled texts" in out and "long texts (data.long_text: chunks, windows pooled)" in out
    summary = json.loads((tmp_path / "runs" / "student" / "summary.json").read_text())
    unlabelled = [r[0] for r in list(csv.reader((data_dir / "unlabelled.csv").open()))[1:]]
    extra_windows = sum(len(windows.window_starts(len(t.split()), 14, 4)) for t in unlabelled)
    assert summary["unlabelled_rows"] == extra_windows  # distillation's row counts count windows
    assert summary["long_text"]["train"]["rows"] == 200
    assert summary["steps"] == -(-(summary["long_text"]["train"]["windows"] + extra_windows) // 16)
