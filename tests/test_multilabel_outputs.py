"""A multi-label run's output paths on tiny models: serve, export (hf pipeline with sigmoid, peft, onnx).

Runs are made without training (random adapters and head, as in test_export): what is checked is that
every path turns the run's logits into the same label sets, with the run's per-class thresholds.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_rows, write_csv

from lorabudget import load_run
from lorabudget.cli import main
from lorabudget.config import from_dict, save_config
from lorabudget.errors import LorabudgetError
from lorabudget.export.formats import export_run
from lorabudget.inference.decisions import check_threshold, label_sets, run_thresholds
from lorabudget.labelsets import names_of, sigmoid
from lorabudget.model.build import build_model
from lorabudget.model.hub import load_tokenizer
from lorabudget.rundir.layout import read_export_meta

CLASSES = ["business", "sports", "tech", "world"]
TEXTS = [t for t, _ in synthetic_rows(14, seed=11)] + ["stocks", " ".join(["president election war"] * 30)]


def make_multilabel_run(path: Path, model_dir: Path, head: str, cache: Path) -> Path:
    """A multi-label run directory as training leaves it, with random adapters and head, and per-class
    thresholds at each class's median score on TEXTS (so the label sets differ between texts)."""
    cfg = from_dict(
        {
            "name": path.name,
            "model": {"name": str(model_dir), "max_length": 32, "labels": CLASSES, "problem_type": "multi_label"},
            "head": {"type": head, "pooling": "mean" if head == "linear" else "first"},
            "adapter": {"r": 4, "alpha": 8, "modules": ["query", "value"]},
            "data": {"train": "train.csv", "cache_dir": str(cache)},
        }
    )
    torch.manual_seed(5)
    model = build_model(cfg).model
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.normal_(0, 0.3)
    path.mkdir(parents=True)
    save_config(cfg, path / "config.yaml")
    model.save_pretrained(str(path / "adapter"))
    load_tokenizer(cfg.model.name).save_pretrained(str(path / "tokenizer"))
    probs = sigmoid(load_run(path).logits(TEXTS))
    cuts = {name: float(np.median(probs[:, j])) for j, name in enumerate(CLASSES)}
    record = {"thresholds": cuts, "chosen_on": "validation", "rows": len(TEXTS)}
    (path / "thresholds.json").write_text(json.dumps(record))
    return path


@pytest.fixture(scope="module")
def ml_runs(tmp_path_factory, tiny_roberta, tiny_bert) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ml-runs")
    return {
        "roberta-full": make_multilabel_run(root / "roberta-full", tiny_roberta, "full", root / "cache"),
        "bert-linear": make_multilabel_run(root / "bert-linear", tiny_bert, "linear", root / "cache"),
    }


def expected_sets(run_dir: Path, texts=TEXTS, threshold=None) -> list[list[str]]:
    """The label sets ``predict`` gives (sigmoid of the run's logits against its thresholds)."""
    return load_run(run_dir).predict(texts, threshold=threshold).labels


def test_thresholds_are_read_and_overridden(ml_runs):
    run = ml_runs["roberta-full"]
    recorded = json.loads((run / "thresholds.json").read_text())["thresholds"]
    np.testing.assert_allclose(run_thresholds(run, CLASSES), [recorded[c] for c in CLASSES])
    np.testing.assert_allclose(run_thresholds(run, CLASSES, 0.3), [0.3] * 4)
    sets = expected_sets(run)
    assert len({tuple(s) for s in sets}) > 2  # the fixture's thresholds give varied label sets


@pytest.mark.parametrize("value", [0, 1, -0.1, 1.5, float("nan"), True])
def test_threshold_outside_0_1_is_refused(value):
    with pytest.raises(LorabudgetError, match="between 0 and 1"):
        check_threshold(value)


# ---- serve


@pytest.fixture(scope="module")
def ml_client(ml_runs):
    from fastapi.testclient import TestClient

    from lorabudget.serve.app import ServeSettings, create_app, load_for_serving

    run = load_for_serving(ml_runs["roberta-full"], precision="fp32", threads=1)
    with TestClient(create_app(run, ServeSettings(max_batch=4))) as client:
        yield client


def test_serve_answers_label_sets_with_every_class_score(ml_client, ml_runs):
    response = ml_client.post("/v1/classify", json={"texts": TEXTS, "top_k": 2})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["labels"] for r in results] == expected_sets(ml_runs["roberta-full"])
    recorded = json.loads((ml_runs["roberta-full"] / "thresholds.json").read_text())["thresholds"]
    for r in results:
        assert [e["label"] for e in r["probabilities"]] == CLASSES
        assert [e["threshold"] for e in r["probabilities"]] == pytest.approx([recorded[c] for c in CLASSES])
        assert [e["label"] for e in r["probabilities"] if e["predicted"]] == r["labels"]
        assert r["label_ids"] == [CLASSES.index(n) for n in r["labels"]]
        assert len(r["top_k"]) == 2 and "label" not in r
    model = ml_client.get("/v1/model").json()
    assert model["problem_type"] == "multi_label" and model["thresholds"] == pytest.approx(recorded)


@pytest.mark.parametrize("threshold", [0.01, 0.5, 0.99])
def test_serve_threshold_option_replaces_the_run_thresholds(ml_client, ml_runs, threshold):
    response = ml_client.post("/v1/classify", json={"texts": TEXTS, "threshold": threshold})
    assert response.status_code == 200, response.text
    assert [r["labels"] for r in response.json()["results"]] == expected_sets(ml_runs["roberta-full"], TEXTS, threshold)


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"texts": ["a"], "threshold": 0}, 422, "threshold"),
        ({"texts": ["a"], "threshold": 1}, 422, "threshold"),
        ({"texts": ["a"], "threshold": "high"}, 422, "threshold"),
        ({"texts": ["fine", ""]}, 422, "text 1 is empty"),
    ],
)
def test_serve_bad_multilabel_requests(ml_client, body, status, message):
    response = ml_client.post("/v1/classify", json=body)
    assert response.status_code == status and message in response.json()["error"]


def test_serve_one_bad_text_fails_its_own_request_only(ml_runs):
    """A text the model fails on (here: a forward pass that refuses it) fails its own request; the
    other requests of the shared batch get their label sets."""
    import asyncio

    from lorabudget.serve.batcher import DynamicBatcher

    run = load_run(ml_runs["roberta-full"])

    def infer(texts):
        if "poison" in texts:
            raise ValueError("bad text")
        return run.logits(texts)

    async def scenario():
        batcher = DynamicBatcher(infer, max_batch=8, max_wait_ms=50)
        await batcher.start()
        try:
            return await asyncio.gather(
                batcher.logits(TEXTS[:3]), batcher.logits(["poison"]), batcher.logits(TEXTS[3:5]),
                return_exceptions=True,
            )  # fmt: skip
        finally:
            await batcher.stop()

    good, bad, other = asyncio.run(scenario())
    assert isinstance(bad, ValueError)
    np.testing.assert_allclose(np.vstack([good, other]), run.logits(TEXTS[:5]), atol=1e-5)


def test_serve_threshold_is_refused_for_a_single_label_run(ml_runs, tmp_path, capsys):
    import shutil

    import yaml
    from fastapi.testclient import TestClient

    from lorabudget.serve.app import ServeSettings, create_app, load_for_serving

    with pytest.raises(LorabudgetError, match="between 0 and 1"):
        ServeSettings(threshold=1.0)
    assert main(["serve", str(ml_runs["roberta-full"]), "--threshold", "1.5", "--port", "0"]) == 2
    assert "between 0 and 1" in capsys.readouterr().err
    single = tmp_path / "single"
    shutil.copytree(ml_runs["roberta-full"], single)
    values = yaml.safe_load((single / "config.yaml").read_text())
    values["model"]["problem_type"] = "single_label"
    (single / "config.yaml").write_text(yaml.safe_dump(values))
    (single / "thresholds.json").unlink()
    run = load_for_serving(single, precision="fp32", threads=1)
    with pytest.raises(LorabudgetError, match="--threshold applies to multi-label runs"):
        create_app(run, ServeSettings(threshold=0.5))
    with TestClient(create_app(run)) as client:
        response = client.post("/v1/classify", json={"texts": ["a b"], "threshold": 0.5})
        assert response.status_code == 422 and "applies to multi-label runs" in response.json()["error"]
        assert client.post("/v1/classify", json={"texts": ["a b"]}).json()["results"][0]["label"] in CLASSES


# ---- export


PIPELINE_SIGMOID = r"""
import json, sys
sys.modules["lorabudget"] = None
from transformers import AutoConfig, pipeline
texts = json.loads(sys.argv[1])
for folder in sys.argv[2:]:
    remote = json.load(open(folder + "/lorabudget_export.json"))["trust_remote_code"]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=remote)
    classify = pipeline("text-classification", model=folder, top_k=None, function_to_apply="sigmoid",
                        trust_remote_code=remote, truncation=True)
    cuts = config.lorabudget_thresholds
    sets = [sorted((d["label"] for d in row if d["score"] >= cuts[d["label"]])) for row in classify(texts)]
    print(json.dumps({"problem_type": config.problem_type, "sets": sets}))
"""


def test_hf_export_pipeline_with_sigmoid_agrees_with_predict(ml_runs, tmp_path):
    folders = [export_run(run, tmp_path / f"{name}-hf", "hf") for name, run in ml_runs.items()]
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(
        [sys.executable, "-I", "-c", PIPELINE_SIGMOID, json.dumps(TEXTS), *map(str, folders)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(folders)
    for (name, run), folder, result in zip(ml_runs.items(), folders, results):
        assert result["problem_type"] == "multi_label_classification", name
        assert result["sets"] == [sorted(s) for s in expected_sets(run)], name
        meta = read_export_meta(folder)
        assert meta["problem_type"] == "multi_label" and set(meta["thresholds"]) == set(CLASSES)
        assert json.loads((folder / "thresholds.json").read_text())["thresholds"] == meta["thresholds"]
        card = (folder / "README.md").read_text()
        assert "lorabudget_thresholds" in card and 'function_to_apply="sigmoid"' in card


def test_peft_export_carries_the_thresholds_and_reproduces_the_sets(ml_runs, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    run = ml_runs["roberta-full"]
    folder = export_run(run, tmp_path / "peft", "peft")
    cfg = load_run(run).cfg
    base = AutoModelForSequenceClassification.from_pretrained(
        cfg.model.name, num_labels=len(CLASSES), problem_type="multi_label_classification"
    )
    model = PeftModel.from_pretrained(base, str(folder)).eval()
    tokenizer = load_tokenizer(str(folder))
    batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.numpy()
    cuts = json.loads((folder / "thresholds.json").read_text())["thresholds"]
    _, decisions = label_sets(logits, np.array([cuts[c] for c in CLASSES]))
    assert names_of(decisions, CLASSES) == expected_sets(run)
    assert read_export_meta(folder)["thresholds"] == cuts


def test_onnx_export_folder_decides_as_the_run(ml_runs, tmp_path):
    pytest.importorskip("onnxruntime")
    run = ml_runs["bert-linear"]
    folder = export_run(run, tmp_path / "onnx", "onnx")
    onnx_run = load_run(folder)  # an export folder runs on ONNX Runtime
    assert onnx_run.loaded.engine == "onnx" and onnx_run.cfg.model.problem_type == "multi_label"
    assert onnx_run.predict(TEXTS).labels == expected_sets(run)
    # `predict` on the export folder, as a user runs it: `|`-joined names, the run's own sets
    texts = write_csv(tmp_path / "texts.csv", [(t,) for t in TEXTS], header=["text"])
    out = tmp_path / "pred.csv"
    assert main(["predict", str(folder), "--input", str(texts), "--output", str(out), "--no-report",
                 "--label-format", "name"]) == 0  # fmt: skip
    with open(out, newline="") as fh:
        cells = [row["Label"] for row in csv.DictReader(fh)]
    assert cells == ["|".join(s) for s in expected_sets(run)]
    # and `--engine onnx` on the run directory (RUN/onnx/ made on the way)
    assert load_run(run, engine="onnx").predict(TEXTS, threshold=0.4).labels == expected_sets(run, TEXTS, 0.4)


def test_run_onnx_export_follows_a_changed_thresholds_file(ml_runs, tmp_path):
    """RUN/onnx/ carries a copy of thresholds.json: when the run's file changes and the weights do not,
    the copy is no longer current, and RUN/onnx/ (used on its own too) decides by the run's present one."""
    pytest.importorskip("onnxruntime")
    run = tmp_path / "run"
    shutil.copytree(ml_runs["bert-linear"], run, ignore=shutil.ignore_patterns("onnx"))
    before = expected_sets(run)
    assert load_run(run, engine="onnx").predict(TEXTS).labels == before  # RUN/onnx/ made now
    probs = sigmoid(load_run(run).logits(TEXTS))
    record = {
        "thresholds": {name: float(np.quantile(probs[:, j], 0.25)) for j, name in enumerate(CLASSES)},
        "chosen_on": "validation",
        "rows": len(TEXTS),
    }
    (run / "thresholds.json").write_text(json.dumps(record))
    after = expected_sets(run)
    assert after != before
    assert load_run(run, engine="onnx").predict(TEXTS).labels == after
    assert json.loads((run / "onnx" / "thresholds.json").read_text()) == record
    assert read_export_meta(run / "onnx")["thresholds"] == record["thresholds"]
    assert load_run(run / "onnx").predict(TEXTS).labels == after  # the export folder on its own


# ---- compare, on runs evaluated through the command line


def test_compare_ranks_evaluated_multilabel_runs_by_micro_f1(ml_runs, multilabel_dir, tmp_path, capsys):
    data = str(multilabel_dir / "test.csv")
    for run in ml_runs.values():
        assert main(["evaluate", str(run), "--data", data, "--label-column", "labels", "--no-report"]) == 0
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, ml_runs.values()), "--output", str(out)]) == 0
    capsys.readouterr()
    text = (out / "compare.md").read_text()
    assert "Ranked by **test micro F1 on test.csv (80 rows)**" in text
    with open(out / "compare.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    evals = {r.name: json.loads((r / "eval.json").read_text()) for r in ml_runs.values()}
    ranked = sorted(evals, key=lambda name: -evals[name]["micro_f1"])
    assert [r["name"] for r in rows] == ranked
    for r in rows:
        assert float(r["score"]) == pytest.approx(evals[r["name"]]["micro_f1"])
        assert float(r["score_ci_low"]) == pytest.approx(evals[r["name"]]["micro_f1_ci95"][0])
    # a paired McNemar test on exact label sets: both runs were evaluated on the same rows
    assert "McNemar exact" in text and "got right exactly (label set)" in text


def test_model_info_and_page_show_micro_f1_for_a_multilabel_evaluation():
    from lorabudget.serve.app import _evaluation
    from lorabudget.serve.page import _facts

    record = {
        "kind": "validation",
        "data": "/x/val.csv",
        "accuracy": 0.3,
        "micro_f1": 0.71,
        "micro_f1_ci95": [0.6, 0.8],
        "n": 40,
    }
    shown = _evaluation(record)
    assert shown["micro_f1"] == 0.71 and shown["micro_f1_ci95"] == [0.6, 0.8] and shown["data"] == "val.csv"
    facts = dict(_facts({"method": "lora", "validation": shown, "engine": "torch", "precision": "fp32"}))
    assert facts["validation micro F1"].startswith("71.0% (95% CI 60.0–80.0%, n=40)")
    assert "micro_f1" not in _evaluation({"kind": "validation", "accuracy": 0.9})
