"""Export (hf, peft, onnx), the ONNX Runtime engine, the Python API and model cards, on tiny models.

Runs are made without training (adapters and head set to random values, so merging matters): what
is checked is that every format reproduces the run's own logits, not that the model is good.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import synthetic_rows, write_csv

from lorabudget import load_run
from lorabudget.cli import main
from lorabudget.config import from_dict, save_config
from lorabudget.export.formats import export_run
from lorabudget.model.build import build_model
from lorabudget.model.hub import load_tokenizer
from lorabudget.report.modelcard import parse_model_card, write_model_card
from lorabudget.rundir.layout import read_export_meta

TEXTS = [t for t, _ in synthetic_rows(12, seed=9)] + [
    "stocks",
    # Longer than max_length (32 tokens below): every format must cut it where lorabudget does.
    " ".join(["president election war"] * 30 + ["game team score"] * 20),
]
# (model fixture, head type, pooling): both heads, both poolings, BERT's pooler-based full head.
KINDS = {
    "roberta-full": ("tiny_roberta", "full", "first"),
    "bert-full": ("tiny_bert", "full", "first"),
    "roberta-linear-first": ("tiny_roberta", "linear", "first"),
    "bert-linear-mean": ("tiny_bert", "linear", "mean"),
    # The small heads: two Linear layers; fixed class vectors in a buffer.
    "bert-low_rank-mean": ("tiny_bert", "low_rank", "mean"),
    "roberta-prototype-first": ("tiny_roberta", "prototype", "first"),
}
SMALL_HEADS = ["bert-low_rank-mean", "roberta-prototype-first"]


def make_run(path: Path, model_dir: Path, head: str, pooling: str, cache: Path) -> Path:
    """A run directory as training leaves it (config, adapter with head, tokenizer), with random
    non-zero adapters so that the exported weights differ from the base model's."""
    cfg = from_dict(
        {
            "name": path.name,
            "model": {"name": str(model_dir), "max_length": 32, "labels": ["World", "Sports", "Business", "Sci/Tech"]},
            "head": {"type": head, "pooling": pooling, **({"rank": 3} if head == "low_rank" else {})},
            "adapter": {"r": 4, "alpha": 8, "modules": ["query", "value"]},
            "data": {"train": "train.csv", "cache_dir": str(cache)},
        }
    )
    torch.manual_seed(3)
    model = build_model(cfg).model
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.normal_(0, 0.3)
        for name, buffer in model.named_buffers():
            if name.endswith("prototypes"):  # as training computes them: saved with the adapter
                buffer.normal_(0, 1.0)
    path.mkdir(parents=True)
    save_config(cfg, path / "config.yaml")
    model.save_pretrained(str(path / "adapter"))
    load_tokenizer(cfg.model.name).save_pretrained(str(path / "tokenizer"))
    return path


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export-runs")
    return {
        name: make_run(root / name, request.getfixturevalue(fixture), head, pooling, root / "cache")
        for name, (fixture, head, pooling) in KINDS.items()
    }


# Run by a fresh interpreter: -I drops PYTHONPATH (this checkout's src/) and the sys.modules entry
# blocks the editable install, so only torch and transformers are there to load the exports.
PLAIN_TRANSFORMERS = r"""
import json, sys
sys.modules["lorabudget"] = None
try:
    import lorabudget
    raise SystemExit("lorabudget is importable")
except ImportError:
    pass
import torch
from transformers import pipeline
texts = json.loads(sys.argv[1])
for folder in sys.argv[2:]:
    remote = json.load(open(folder + "/lorabudget_export.json"))["trust_remote_code"]
    # The shipped pipeline truncates by itself; the standard one is told to, as the model card says.
    extra = {} if remote else {"truncation": True}
    classify = pipeline("text-classification", model=folder, trust_remote_code=remote, **extra)
    labels = [r["label"] for r in classify(texts)]
    # The pipeline loads the model with AutoModelForSequenceClassification: its model gives the logits.
    batch = classify.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        logits = classify.model(**batch).logits
    print(json.dumps({"folder": folder, "logits": logits.tolist(), "labels": labels,
                      "pipeline": type(classify).__name__, "model": type(classify.model).__name__}))
"""


def test_hf_export_loads_in_plain_transformers(runs, tmp_path):
    folders = {}
    for name, run in runs.items():
        folders[name] = export_run(run, tmp_path / f"{name}-hf", "hf")
    assert not (folders["roberta-full"] / "modeling_lorabudget.py").exists()
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(
        [sys.executable, "-I", "-c", PLAIN_TRANSFORMERS, json.dumps(TEXTS), *map(str, folders.values())],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(runs)
    for (name, run), result in zip(runs.items(), results):
        loaded = load_run(run)
        expected = loaded.logits(TEXTS)
        np.testing.assert_allclose(np.array(result["logits"]), expected, atol=1e-4, err_msg=name)
        assert result["labels"] == loaded.predict(TEXTS).labels, name
        if "full" in name:  # the architecture's own class: no custom code
            assert (result["pipeline"], result["model"]) == (
                "TextClassificationPipeline",
                f"{name.split('-')[0].title()}ForSequenceClassification",
            )
        else:
            assert (result["pipeline"], result["model"]) == (
                "LorabudgetTextClassificationPipeline",
                "LorabudgetForSequenceClassification",
            )


def _card_code(card: str, heading: str) -> str:
    """The first Python block under ``heading`` in a model card."""
    section = card[card.index(heading) :]
    return section[section.index("```python\n") + 10 : section.index("\n```", section.index("```python"))]


def test_peft_export_loads_on_the_base_model(runs, tmp_path, monkeypatch):
    """The PEFT loading code of the model card, run as written (the base model is the local tiny model)."""
    monkeypatch.chdir(tmp_path)  # the card names the folder relative to where it is
    for name in ("roberta-full", "bert-linear-mean", *SMALL_HEADS):
        folder = export_run(runs[name], tmp_path / f"{name}-peft", "peft")
        card = (folder / "README.md").read_text()
        assert parse_model_card(card)[0]["library_name"] == "peft"
        scope: dict = {}
        exec(_card_code(card, "### PEFT adapter"), scope)  # defines model and tokenizer
        batch = scope["tokenizer"](TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")
        with torch.no_grad():
            logits = scope["model"](input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        np.testing.assert_allclose(logits.numpy(), load_run(runs[name]).logits(TEXTS), atol=1e-4, err_msg=name)


@pytest.mark.parametrize("name", ["roberta-full", "bert-linear-mean", *SMALL_HEADS])
def test_onnx_engine_equals_torch(runs, name):
    run = runs[name]
    torch_logits = load_run(run).logits(TEXTS)
    onnx_run = load_run(run, engine="onnx")  # exported once into RUN/onnx/
    assert onnx_run.engine == "onnx" and (run / "onnx" / "model.onnx").is_file()
    import onnx

    graph = onnx.load(str(run / "onnx" / "model.onnx")).graph  # dynamo export: batch and sequence stay symbolic
    assert [[bool(d.dim_param) for d in i.type.tensor_type.shape.dim] for i in graph.input] == [[True, True]] * 2
    np.testing.assert_allclose(onnx_run.logits(TEXTS), torch_logits, atol=1e-4)
    mtime = (run / "onnx" / "model.onnx").stat().st_mtime_ns
    load_run(run, engine="onnx")
    assert (run / "onnx" / "model.onnx").stat().st_mtime_ns == mtime  # reused while the weights are unchanged


def test_cli_export_onnx_int8_and_predict(runs, tmp_path, capsys):
    run = runs["bert-linear-mean"]
    data = write_csv(tmp_path / "texts.csv", [(t,) for t in TEXTS], header=["text"])
    out = tmp_path / "onnx-int8"
    assert main(["export", str(run), "--format", "onnx", "--quantize", "int8", "--output", str(out)]) == 0
    meta = read_export_meta(out)
    assert meta["onnx_file"] == "model_int8.onnx" and meta["quantize"] == "int8"
    assert (out / "model_int8.onnx").stat().st_size < (out / "model.onnx").stat().st_size
    assert (
        main(["predict", str(out), "--input", str(data), "--output", str(tmp_path / "int8.csv"), "--probabilities"])
        == 0
    )
    assert (
        main(["predict", str(run), "--input", str(data), "--output", str(tmp_path / "torch.csv"), "--probabilities"])
        == 0
    )
    assert (
        main(["predict", str(run), "--engine", "onnx", "--input", str(data), "--output", str(tmp_path / "onnx.csv")])
        == 0
    )
    capsys.readouterr()
    read = lambda f: np.loadtxt(tmp_path / f, delimiter=",", skiprows=1)  # noqa: E731
    torch_rows, int8_rows, onnx_rows = read("torch.csv"), read("int8.csv"), read("onnx.csv")
    assert len(int8_rows) == len(TEXTS) and (int8_rows[:, 0] == np.arange(len(TEXTS))).all()
    assert (onnx_rows[:, 1] == torch_rows[:, 1]).all()
    # int8 weights move probabilities a little; far from a broken graph (which gives unrelated outputs).
    assert np.abs(int8_rows[:, 2:] - torch_rows[:, 2:]).max() < 0.1


def _files_and_times(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.rglob("*"))}


def test_predict_onnx_elsewhere_leaves_the_run_as_it_was(runs, tmp_path, capsys):
    """`predict --engine onnx --output ELSEWHERE` on a run without a current RUN/onnx/ exports into a
    temporary folder (one line says so) and writes nothing into the run; a predict that records into the
    run keeps its export in RUN/onnx/, which a later predict elsewhere then runs as it is."""
    pytest.importorskip("onnxruntime")
    run = tmp_path / "run"
    shutil.copytree(runs["bert-linear-mean"], run, ignore=shutil.ignore_patterns("onnx"))
    data = write_csv(tmp_path / "texts.csv", [(t,) for t in TEXTS], header=["text"])
    argv = ["predict", str(run), "--engine", "onnx", "--input", str(data), "--probabilities"]
    before = _files_and_times(run)
    assert main([*argv, "--output", str(tmp_path / "elsewhere.csv")]) == 0
    assert _files_and_times(run) == before
    assert "temporary folder" in capsys.readouterr().err
    assert main([*argv, "--no-report"]) == 0  # into the run: recorded there, the export kept in RUN/onnx/
    assert (run / "onnx" / "model.onnx").is_file()
    assert (run / "predictions.csv").read_text() == (tmp_path / "elsewhere.csv").read_text()
    capsys.readouterr()
    before = _files_and_times(run)
    assert main([*argv, "--output", str(tmp_path / "again.csv")]) == 0
    assert "temporary folder" not in capsys.readouterr().err
    assert _files_and_times(run) == before
    assert (tmp_path / "again.csv").read_text() == (tmp_path / "elsewhere.csv").read_text()


def test_export_errors(runs, tmp_path, capsys):
    run = str(runs["roberta-full"])
    assert main(["export", run, "--format", "hf", "--quantize", "int8", "--output", str(tmp_path / "x")]) == 2
    assert "--quantize applies to --format onnx only" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    assert main(["export", run, "--format", "hf", "--output", str(tmp_path / "full")]) == 2
    assert "not empty" in capsys.readouterr().err
    hf = export_run(runs["roberta-full"], tmp_path / "hf", "hf")
    assert main(["predict", str(hf), "--input", "x.csv"]) == 2
    assert "'hf' export" in capsys.readouterr().err


def test_python_api_predict(runs):
    run = load_run(runs["roberta-linear-first"])
    result = run.predict(TEXTS)
    logits = run.logits(TEXTS)
    assert result.labels == [run.cfg.model.labels[i] for i in logits.argmax(axis=1)]
    assert (result.label_ids == logits.argmax(axis=1)).all()
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, rtol=1e-6)
    assert result.class_names == run.cfg.model.labels


def _card_run(tmp_path: Path, with_ci: bool) -> Path:
    """A finished-looking run directory (files only) on a hub model and the hub data set, written as runs
    from before the method seam wrote them (``lora_*`` keys)."""
    run = tmp_path / ("ci" if with_ci else "plain")
    run.mkdir()
    save_config(
        from_dict({"name": "card-test", "model": {"name": "roberta-base"}, "head": {"type": "linear"}}),
        run / "config.yaml",
    )
    (run / "budget.json").write_text(
        json.dumps(
            {
                "trainable_params": 150_000,
                "lora_params": 146_924,
                "head_params": 3_076,
                "other_params": {},
                "budget": 1_000_000,
                "within_budget": True,
                "lora_by_site": [
                    {"layer": i, "module": m, "params": 6_120} for i in range(12) for m in ("query", "value")
                ],
            }
        )
    )
    (run / "summary.json").write_text(
        json.dumps(
            {
                "name": "card-test",
                "train_rows": 4700,
                "validation_rows": 300,
                "best_step": 300,
                "steps": 441,
                "train_time_s": 451.0,
                "samples_per_s": 32.9,
                "device": "cpu",
                "processes": 1,
                "mixed_precision": "no",
                "train_label_distribution": [0.25, 0.25, 0.25, 0.25],
            }
        )
    )
    record = {"data": "validation", "kind": "validation", "rows": 300, "accuracy": 0.9033, "macro_f1": 0.9021}
    if with_ci:
        record["accuracy_ci95"] = [0.8648, 0.9318]
    (run / "eval.json").write_text(json.dumps(record))
    return run


def test_model_card_parses(tmp_path):
    run = _card_run(tmp_path, with_ci=True)
    meta, _ = parse_model_card(write_model_card(run).read_text())
    assert "model-index" not in meta  # the validation score chose the checkpoint: no held-out figure
    (run / "evals").mkdir()
    (run / "evals" / "validation.json").write_text((run / "eval.json").read_text())
    held_out = {"data": "test.csv", "kind": "evaluate", "rows": 7600, "accuracy": 0.9049, "macro_f1": 0.9041}
    held_out.update(held_out=True, overlap={"rows": 7600, "training_rows": 0, "validation_rows": 0})
    (run / "evals" / "test.csv-1.json").write_text(json.dumps({**held_out, "time": "2026-01-02T00:00:00"}))
    card_path = write_model_card(run)
    meta, body = parse_model_card(card_path.read_text())
    assert meta["base_model"] == "roberta-base"
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-classification"
    assert meta["datasets"] == ["ag_news"] and meta["metrics"] == ["accuracy", "f1"]
    assert "lorabudget" in meta["tags"] and "lora" in meta["tags"]  # method defaults to lora for older runs
    # The measured figures, as the Hub reads them (model-index, written by huggingface_hub's ModelCardData).
    [entry] = meta["model-index"]
    assert entry["name"] == "ci"  # the run folder's name
    [result] = entry["results"]
    assert result["task"]["type"] == "text-classification"
    assert result["dataset"] == {"type": "test.csv", "name": "test.csv", "split": "test"}
    assert {m["type"]: m["value"] for m in result["metrics"]} == {"accuracy": 0.9049, "f1": 0.9041}
    from huggingface_hub import ModelCard

    hub_card = ModelCard(card_path.read_text())  # the Hub's own parser reads the values back
    assert [(r.metric_type, r.metric_value) for r in hub_card.data.eval_results] == [
        ("accuracy", 0.9049),
        ("f1", 0.9041),
    ]
    headings = [line for line in body.splitlines() if line.startswith("## ")]
    assert headings == [
        "## Trainable-parameter budget",
        "## Method",
        "## Data",
        "## Results",
        "## Training",
        "## Intended use and limits",
        "## How to load",
    ]
    assert "| **total trainable** | **150,000** |" in body and "1,000,000 (within, 15.0% used)" in body
    assert "| lora on query (layers 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11; lora) | 73,440 |" in body
    assert "[0.8648, 0.9318]" in body and "451.0 s" in body
    plain_meta, plain_body = parse_model_card(write_model_card(_card_run(tmp_path, with_ci=False)).read_text())
    assert "95% interval" not in plain_body and "0.9033" in plain_body


def test_model_card_lists_micro_then_macro_f1_of_a_multilabel_evaluation(tmp_path):
    from lorabudget.report.modelcard import eval_results

    run = _card_run(tmp_path, with_ci=False)
    (run / "evals").mkdir()
    record = {"data": "test.csv", "kind": "evaluate", "rows": 80, "held_out": True}
    record.update(accuracy=0.41234, micro_f1=0.71234, macro_f1=0.65432)
    (run / "evals" / "test.csv-1.json").write_text(json.dumps(record))
    listed = [(r.metric_name, r.metric_args, r.metric_value) for r in eval_results(None, run, {})]
    assert listed == [
        (None, None, 0.4123),
        ("micro F1", {"average": "micro"}, 0.7123),
        ("macro F1", {"average": "macro"}, 0.6543),
    ]


def test_model_card_leaves_out_validation_rows_the_run_trained_on(tmp_path):
    run = _card_run(tmp_path, with_ci=False)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "validation_trained_on": True}))
    meta, _ = parse_model_card(write_model_card(run).read_text())
    assert "model-index" not in meta and meta["metrics"] == ["accuracy", "f1"]


def test_model_card_of_a_trained_run_shows_its_budget(tiny_config, tmp_path):
    """Train a tiny run, export it, read the card: each adapted module with its layers and parameters,
    as the run's own budget.json records them."""
    from lorabudget.rundir.layout import RunDir

    config = tmp_path / "tiny.yaml"
    values = tiny_config(adapter={"modules": ["query", "value", "output"], "layers": [0, 2]}, training={"max_steps": 2})
    config.write_text(yaml.safe_dump(values))
    assert main(["train", str(config), "--output", str(tmp_path / "run"), "--no-report"]) == 0
    assert main(["export", str(tmp_path / "run"), "--format", "hf", "--output", str(tmp_path / "hf")]) == 0
    _, body = parse_model_card((tmp_path / "hf" / "README.md").read_text())
    budget = RunDir(tmp_path / "run").read_budget()
    for module in ("query", "value", "output"):
        params = sum(s["params"] for s in budget["by_site"] if s["module"] == module)
        assert params > 0 and f"| lora on {module} (layers 0, 2; lora_A, lora_B) | {params:,} |" in body
    assert f"| **total trainable** | **{budget['trainable_params']:,}** |" in body


def test_every_export_and_run_gets_a_card(runs, tmp_path, capsys, monkeypatch):
    folder = export_run(runs["bert-full"], tmp_path / "onnx", "onnx")
    meta, body = parse_model_card((folder / "README.md").read_text())
    assert meta["library_name"] == "onnx" and "base_model" not in meta  # a local folder is no hub name
    assert body.index("### ONNX Runtime") < body.index("### transformers")  # this folder's format first
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(_card_code(body, "### ONNX Runtime"), scope)  # the card's ONNX Runtime code, as written
    expected = load_run(runs["bert-full"]).logits(["Stocks rallied after the earnings report."])
    np.testing.assert_allclose(scope["logits"], expected, atol=1e-4)
    data = write_csv(tmp_path / "t.csv", [(t,) for t in TEXTS[:3]], header=["text"])
    assert main(["predict", str(runs["bert-full"]), "--input", str(data), "--no-report"]) == 0
    meta, _ = parse_model_card((runs["bert-full"] / "README.md").read_text())
    assert meta["library_name"] == "peft"  # the run directory holds a PEFT adapter
