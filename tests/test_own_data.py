"""Bring your own data: named columns, class names inferred from the data, predictions in the data's
label form, sentence pairs (training, prediction, classify, ONNX), hub names, class weights."""

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import CLASS_WORDS, FILLER, make_model_dir, write_csv

from lorabudget.cli import main
from lorabudget.config import AG_NEWS_LABELS, from_dict, load_config
from lorabudget.data.batching import PadCollator, tokenize
from lorabudget.data.load import Columns, infer_labels, load_labelled, parse_hub_name, resolve_labels
from lorabudget.errors import LorabudgetError
from lorabudget.training.setup import balanced_class_weights, cross_entropy_loss, weighted_cross_entropy_loss

SIX = ["arts", "food", "health", "politics", "science", "sport"]  # sorted: the inferred order
SIX_WORDS = {name: [f"{name}{i}" for i in range(4)] for name in SIX}


def _question_rows(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        name = SIX[i % 6]
        words = [rng.choice(FILLER) for _ in range(rng.randint(4, 12))]
        words[rng.randrange(len(words))] = rng.choice(SIX_WORDS[name])
        rows.append((" ".join(words), name))
    return rows


@pytest.fixture(scope="module")
def six_model(tmp_path_factory) -> Path:
    """A tiny RoBERTa whose word-level vocabulary also holds the six classes' keywords."""
    import conftest

    extra = [w for ws in SIX_WORDS.values() for w in ws]
    old = conftest.VOCAB_WORDS
    conftest.VOCAB_WORDS = old + extra
    try:
        return make_model_dir(tmp_path_factory.mktemp("six-model"), "roberta")
    finally:
        conftest.VOCAB_WORDS = old


def _config(tmp_path: Path, model: Path, **training) -> Path:
    values = {
        "name": "own",
        "model": {"name": str(model), "max_length": 48},
        "head": {"type": "linear", "pooling": "mean"},
        "adapter": {"r": 2, "alpha": 4, "dropout": 0.0, "modules": ["query", "value"]},
        "data": {"train": "unused.csv", "validation_size": 24, "cache_dir": str(tmp_path / "cache")},
        "training": {"epochs": 1, "batch_size": 16, "learning_rate": 1e-2, "log_every": 2, "seed": 3, **training},
    }
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_question_category_csv_infers_six_names_and_predicts_them(six_model, tmp_path, capsys):
    train = write_csv(tmp_path / "questions.csv", _question_rows(96, 1), header=["question", "category"])
    unlabelled = write_csv(tmp_path / "new.csv", [(q,) for q, _ in _question_rows(12, 2)], header=["question"])
    cfg, run = _config(tmp_path, six_model), tmp_path / "run"
    args = ["--text-column", "question", "--label-column", "category"]
    assert main(["plan", str(cfg), "--data", str(train), *args]) == 0
    assert "6 classes" in capsys.readouterr().out
    code = main(
        ["train", str(cfg), "--data", str(train), *args, "--output", str(run)]
        + ["--set", "training.class_weights=balanced", "--no-report"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "class weights (balanced): arts " in out
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["labels"] == SIX and saved["model"]["label_format"] == "name"
    assert saved["data"]["text_column"] == "question" and saved["data"]["label_column"] == "category"
    assert json.loads((run / "budget.json").read_text())["head_params"] == 32 * 6 + 6

    names = tmp_path / "names.csv"
    assert main(["predict", str(run), "--input", str(unlabelled), "--output", str(names), "--no-report"]) == 0
    rows = list(csv.reader(names.open()))
    assert rows[0] == ["ID", "Label"] and len(rows) == 13 and {r[1] for r in rows[1:]} <= set(SIX)
    ids = tmp_path / "ids.csv"
    code = main(["predict", str(run), "--input", str(unlabelled), "--output", str(ids), "--label-format", "id"])
    assert code == 0
    id_rows = list(csv.reader(ids.open()))
    assert [SIX[int(r[1])] for r in id_rows[1:]] == [r[1] for r in rows[1:]]

    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(train), "--no-report"]) == 0  # the run's own columns
    ev = json.loads((run / "eval.json").read_text())
    assert ev["class_names"] == SIX and [c["support"] for c in ev["per_class"]] == [16] * 6
    assert "macro F1" in capsys.readouterr().out
    from lorabudget.report.modelcard import write_model_card
    from lorabudget.report.run_report import write_report

    write_model_card(run)
    for text in (write_report(run).read_text(), (run / "README.md").read_text()):
        assert "| class | precision | recall | F1 | support |" in text and "| **macro** |" in text
        assert (
            sum(
                line.startswith(f"| {name} |") and line.endswith("| 16 |") for name in SIX for line in text.splitlines()
            )
            == 6
        )


def test_label_inference_rules(tmp_path):
    ints = write_csv(tmp_path / "ints.csv", [("a", 0), ("b", 2), ("c", 1)], header=["text", "label"])
    assert infer_labels(str(ints)) == (["0", "1", "2"], "id")
    names = write_csv(tmp_path / "names.csv", [("a", "pos"), ("b", "neg"), ("c", "pos")], header=["text", "label"])
    assert infer_labels(str(names)) == (["neg", "pos"], "name")
    # The original AG News layout (no header; class 1..4, title, description) numbers classes from 1.
    agnews = write_csv(tmp_path / "ag.csv", [(1, "t", "d"), (4, "t", "d"), (2, "t", "d")])
    assert infer_labels(str(agnews)) == (["0", "1", "2", "3"], "id")
    one = write_csv(tmp_path / "one.csv", [("a", "x"), ("b", "x")], header=["text", "label"])
    with pytest.raises(LorabudgetError, match="fewer than two classes"):
        infer_labels(str(one))

    import datasets

    features = datasets.Features(
        {"sentence": datasets.Value("string"), "gold": datasets.ClassLabel(names=["no", "maybe", "yes"])}
    )
    ds = datasets.Dataset.from_dict({"sentence": ["a b", "c d", "e f"], "gold": [2, 0, 2]}, features=features)
    ds.save_to_disk(str(tmp_path / "saved"))
    ds.to_parquet(str(tmp_path / "ds.parquet"))
    for source in (tmp_path / "saved", tmp_path / "ds.parquet"):
        # ClassLabel names, in id order, even though "maybe" has no row.
        assert infer_labels(str(source), Columns(label="gold")) == (["no", "maybe", "yes"], "id")
    data = load_labelled(str(tmp_path / "saved"), ["no", "maybe", "yes"], columns=Columns(label="gold"))
    assert data.texts == ["a b", "c d", "e f"] and data.labels.tolist() == [2, 0, 2]


def test_presets_keep_ag_news_names_and_labels_resolve_into_the_config(data_dir, tmp_path):
    assert load_config("minilm-cpu").model.labels == AG_NEWS_LABELS
    assert load_config("minilm-cpu", ["data.train=x.csv"]).model.labels == AG_NEWS_LABELS
    cfg = from_dict({"model": {"name": "m"}})  # the default data, the hub's ag_news: its ClassLabel names
    assert cfg.model.labels == AG_NEWS_LABELS and cfg.num_labels == 4
    cfg = from_dict({"data": {"train": str(data_dir / "train.csv")}})
    assert cfg.model.labels is None
    with pytest.raises(LorabudgetError, match="class count is unknown"):
        _ = cfg.num_labels
    resolve_labels(cfg)
    assert cfg.model.labels == ["0", "1", "2", "3"] and cfg.model.label_format == "id"
    assert from_dict({"data": {"train": "x.csv"}, "model": {"num_labels": 6}}).class_names == list("012345")
    sst2 = write_csv(tmp_path / "sst2.csv", [("good", 1), ("bad", 0)], header=["sentence", "label"])
    warned = []
    given = from_dict({"data": {"train": str(sst2)}, "model": {"labels": AG_NEWS_LABELS}})
    resolve_labels(given, log=warned.append)
    assert given.model.labels == AG_NEWS_LABELS and "model.labels=null" in warned[0]


def test_hub_names():
    assert parse_hub_name("ag_news") == ("fancyzhx/ag_news", None, "train")
    assert parse_hub_name("ag_news:test") == ("fancyzhx/ag_news", None, "test")
    assert parse_hub_name("hub:SetFit/sst5") == ("SetFit/sst5", None, "train")
    assert parse_hub_name("hub:SetFit/sst5:test") == ("SetFit/sst5", None, "test")
    assert parse_hub_name("hub:nyu-mll/glue:sst2:validation") == ("nyu-mll/glue", "sst2", "validation")
    for bad in ("hub:", "hub:a:b:c:d", "hub:glue::train"):
        with pytest.raises(LorabudgetError, match="hub:REPO:CONFIG:SPLIT"):
            parse_hub_name(bad)


def test_hub_dataset_offline_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LorabudgetError) as err:
        load_labelled("hub:no-such-org/no-such-dataset:sst2:train", ["a", "b"])
    message = str(err.value)
    assert "\n" not in message and "cannot load dataset 'hub:no-such-org/no-such-dataset:sst2:train'" in message
    assert "pass a local file" in message


def test_balanced_class_weights_change_the_loss_as_expected():
    labels = np.array([0, 0, 0, 1, -1])  # -1: a row without a gold label (distillation) is not counted
    weights = balanced_class_weights(labels, 3)
    np.testing.assert_allclose(weights, [4 / (2 * 3), 4 / (2 * 1), 0.0])  # class 2 has no rows
    torch.manual_seed(0)
    logits = torch.randn(6, 2)
    batch = {"labels": torch.tensor([0, 0, 0, 1, 1, 0])}
    plain = cross_entropy_loss(logits, batch)
    assert torch.allclose(weighted_cross_entropy_loss(np.ones(2, np.float32))(logits, batch), plain)
    rows = torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none")
    w = torch.tensor([0.5, 3.0])
    weighted = weighted_cross_entropy_loss(w.numpy())(logits, batch)
    assert torch.allclose(weighted, (rows * w[batch["labels"]]).mean())
    assert not torch.allclose(weighted, plain)
    # Chunks of a batch add up to the whole batch's loss (the loop's memory cap splits batches).
    halves = [{"labels": batch["labels"][:2]}, {"labels": batch["labels"][2:]}]
    parts = [weighted_cross_entropy_loss(w.numpy())(lg, b) for lg, b in zip((logits[:2], logits[2:]), halves)]
    assert torch.allclose(parts[0] * 2 / 6 + parts[1] * 4 / 6, weighted)


# ------------------------------------------------------------------------------------------------
# Sentence pairs


def _pair_tokenizer():
    """The conftest BERT word-level tokenizer with a pair template: [CLS] A [SEP] B [SEP], B typed 1."""
    from conftest import make_tokenizer
    from tokenizers import processors

    tok = make_tokenizer("bert")
    vocab = tok.get_vocab()
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]  # as BertTokenizer's
    return tok


@pytest.fixture(scope="module")
def pair_model(tmp_path_factory) -> Path:
    path = make_model_dir(tmp_path_factory.mktemp("pair-bert"), "bert")
    _pair_tokenizer().save_pretrained(str(path))
    config = json.loads((path / "tokenizer_config.json").read_text())  # BertTokenizer's inputs, kept on reload
    config["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def _pair_rows(n: int, seed: int) -> list[tuple[str, str, str]]:
    """Entailment-like rows: the hypothesis shares the premise's topic (entailment) or not."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = rng.randrange(4)
        same = i % 2 == 0
        other = topic if same else (topic + 1 + rng.randrange(3)) % 4
        premise = " ".join(rng.choice(CLASS_WORDS[topic] + FILLER) for _ in range(8))
        hypothesis = " ".join(rng.choice(CLASS_WORDS[other]) for _ in range(3))
        rows.append((premise, hypothesis, "entailment" if same else "contradiction"))
    return rows


def test_pairs_tokenize_as_the_tokenizers_own_pair_encoding(tmp_path):
    tok = _pair_tokenizer()
    rows = _pair_rows(6, 0)
    firsts, seconds = [r[0] for r in rows], [r[1] for r in rows]
    tokens = tokenize(tok, firsts, 10, tmp_path, pairs=seconds)  # 10 tokens: truncation cuts the pairs
    for i, (a, b) in enumerate(zip(firsts, seconds)):
        own = tok(a, b, truncation=True, max_length=10)
        assert tokens.row(i).tolist() == own["input_ids"]
        assert tokens.type_row(i).tolist() == own["token_type_ids"] and 1 in own["token_type_ids"]
    again = tokenize(tok, firsts, 10, tmp_path, pairs=seconds)  # from the cache, type ids included
    assert again.ids.tolist() == tokens.ids.tolist() and again.type_ids.tolist() == tokens.type_ids.tolist()
    single = tokenize(tok, firsts, 10, tmp_path)
    assert single.type_ids is None and single.ids.tolist() != tokens.ids.tolist()  # another cache entry
    batch = PadCollator(tokens, 0)([0, 1])
    assert batch["token_type_ids"].shape == batch["input_ids"].shape
    assert batch["token_type_ids"][0, : len(tokens.row(0))].tolist() == tokens.type_row(0).tolist()


def test_pair_task_trains_predicts_classifies_and_exports(pair_model, tmp_path, capsys):
    from lorabudget.export.formats import export_run
    from lorabudget.inference.runs import load_run

    header = ["premise", "hypothesis", "gold"]
    train = write_csv(tmp_path / "pairs.csv", _pair_rows(96, 1), header=header)
    test_rows = _pair_rows(10, 2)
    unlabelled = write_csv(tmp_path / "new.csv", [r[:2] for r in test_rows], header=header[:2])
    cfg, run = _config(tmp_path, pair_model, epochs=2), tmp_path / "run"
    columns = ["--text-column", "premise", "--text-pair-column", "hypothesis", "--label-column", "gold"]
    assert main(["train", str(cfg), "--data", str(train), *columns, "--output", str(run), "--no-report"]) == 0
    assert "(sentence pairs)" in capsys.readouterr().out
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["labels"] == ["contradiction", "entailment"]

    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), "--input", str(unlabelled), "--output", str(out), "--no-report"]) == 0
    predicted = [r[1] for r in list(csv.reader(out.open()))[1:]]
    assert len(predicted) == 10 and set(predicted) <= {"contradiction", "entailment"}

    loaded = load_run(run)
    firsts, seconds = [r[0] for r in test_rows], [r[1] for r in test_rows]
    torch_logits = loaded.logits(firsts, pairs=seconds)
    assert loaded.predict(firsts, pairs=seconds).labels == predicted
    with pytest.raises(LorabudgetError, match="sentence pairs"):
        loaded.logits(firsts)  # a pair run never silently reads single texts
    # The segment ids matter: the same pair with every token typed 0 gives other logits.
    tokens = tokenize(loaded.tokenizer, firsts, 48, pairs=seconds)
    tokens.type_ids = None
    from lorabudget.inference.batched import predict_logits

    assert not np.allclose(predict_logits(loaded.model, tokens, loaded.pad_id, 8), torch_logits, atol=1e-4)

    capsys.readouterr()
    assert main(["classify", str(run), f"{firsts[0]}\t{seconds[0]}", f"{firsts[1]}\t{seconds[1]}"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == predicted[:2]
    assert main(["classify", str(run), "only one text"]) == 2
    assert "FIRST<TAB>SECOND" in capsys.readouterr().err

    # `serve` takes the pairs as [[first, second], ...] and gives predict's labels (in process: no socket).
    from fastapi.testclient import TestClient

    from lorabudget.serve.app import create_app

    with TestClient(create_app(loaded)) as client:
        answer = client.post("/v1/classify", json={"pairs": [[a, b] for a, b in zip(firsts, seconds)]})
        assert answer.status_code == 200, answer.text
        assert [r["label"] for r in answer.json()["results"]] == predicted
        refused = client.post("/v1/classify", json={"texts": firsts})
        assert refused.status_code == 422 and "trained on text pairs" in refused.json()["error"]

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    hf = export_run(run, tmp_path / "hf", "hf")  # the linear head ships as code: it must take the segment ids
    model = AutoModelForSequenceClassification.from_pretrained(str(hf), trust_remote_code=True).eval()
    encoded = AutoTokenizer.from_pretrained(str(hf))(firsts, seconds, padding=True, return_tensors="pt")
    assert "token_type_ids" in encoded
    with torch.no_grad():
        np.testing.assert_allclose(model(**encoded).logits.numpy(), torch_logits, atol=1e-4)

    folder = export_run(run, tmp_path / "onnx", "onnx")
    onnx_run = load_run(folder)
    assert "token_type_ids" in {i.name for i in onnx_run.model.get_inputs()}
    np.testing.assert_allclose(onnx_run.logits(firsts, pairs=seconds), torch_logits, atol=1e-4)
