"""Heads that fit the budget: ``low_rank``, ``prototype`` and ``auto``, exact in ``plan`` on every
family, chosen by ``auto`` as the presets' budgets say, their class vectors computed from the frozen
encoder before training and carried through predict, resume, distillation and the search space."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
import torch
import yaml
from conftest import FAMILY_KINDS
from test_families import family_settings

import lorabudget as lb
from lorabudget.cli import main
from lorabudget.config import from_dict
from lorabudget.errors import LorabudgetError
from lorabudget.model.budget import breakdown
from lorabudget.model.build import build_model
from lorabudget.model.head_choice import choose_head, head_params, low_rank_params
from lorabudget.training.prototypes import (
    INIT_SCALE,
    class_means,
    head_buffers,
    linear_init,
    load_head_buffers,
    low_rank_init,
)
from lorabudget.training.setup import param_groups

CLASSES = ["World", "Sports", "Business", "Sci/Tech", "Other"]
HEADS = {"linear": {}, "low_rank": {"rank": 3}, "prototype": {}}


@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("kind", FAMILY_KINDS)
def test_head_counts_exact_on_every_family(family_model_dir, kind, head):
    """plan == live == optimizer == the formula; the prototype vectors are a buffer, never counted."""
    cfg = from_dict(
        {
            "model": {"name": str(family_model_dir(kind)), "labels": CLASSES},
            "head": {"type": head, "pooling": "mean", **HEADS[head]},
            "adapter": {"method": "lora", "dropout": 0.0, **family_settings(kind, "lora")},
        }
    )
    planned = breakdown(build_model(cfg, weights=False).model)
    model = build_model(cfg, weights=True).model
    live = breakdown(model)
    hidden = model.config.hidden_size
    expected = head_params(head, hidden, len(CLASSES), HEADS[head].get("rank"))
    assert planned.head == live.head == expected
    assert planned.total == live.total == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in param_groups(model, cfg) for p in g["params"]) == live.total
    if head == "prototype":
        assert planned.head_vectors == live.head_vectors == (len(CLASSES), hidden)
        assert planned.head_parts == {"scale": 1, "bias": len(CLASSES)}
    if head == "low_rank":
        assert live.head_parts == {"down": 3 * hidden, "out_proj": 3 * len(CLASSES) + len(CLASSES)}


def test_head_formulas():
    assert head_params("linear", 384, 77) == 29_645
    assert low_rank_params(384, 77, 12) == 12 * (384 + 77) + 77
    assert head_params("prototype", 384, 77) == 78


# (preset, classes) -> (head type, rank, total trainable) on all-MiniLM-L6-v2 (hidden 384), offline.
AUTO_CASES = [
    ("minilm-cpu-10k", 4, "linear", None, 6_148),
    ("minilm-cpu-10k", 77, "prototype", None, 4_608 + 78),
    ("minilm-cpu-10k", 150, "prototype", None, 4_608 + 151),
    ("minilm-cpu-10k", 1_500, "prototype", None, 4_608 + 1_501),
    ("minilm-cpu-100k", 4, "linear", None, 84_484),
    # 82,944 of LoRA leave 17,056: less than a quarter (25,000), so that caps the head: r <= 36, below
    # the 76 that would express a linear head for 77 classes.
    ("minilm-cpu-100k", 77, "prototype", None, 82_944 + 78),
    ("minilm-cpu-100k", 150, "prototype", None, 82_944 + 151),
    ("minilm-cpu", 4, "linear", None, 663_552 + 1_540),
    ("minilm-cpu", 77, "linear", None, 663_552 + 29_645),
    ("minilm-cpu", 150, "linear", None, 663_552 + 57_750),
]


@pytest.mark.parametrize("preset,classes,head,rank,total", AUTO_CASES)
def test_auto_head_of_the_minilm_presets(preset, classes, head, rank, total, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    plan = lb.plan(preset, **{"model.labels": [f"intent {i}" for i in range(classes)]})
    assert (plan.config.head.type, plan.config.head.rank) == (head, rank)
    assert plan.trainable == total and plan.fits
    line = next(line for line in plan.text.splitlines() if line.strip().startswith("head: "))
    assert line.strip().startswith(f"head: {head}" + (f" r={rank}" if rank else "")) and "(auto: " in line
    if (preset, classes) == ("minilm-cpu-10k", 77):
        assert (
            "(auto: linear 29,645 > 2,500 = 1/4 of the 10,000 budget, and a low_rank head within it (r<=5) is "
            "narrower than the r=76 that expresses it)" in line
        )
    if head == "prototype":
        assert (
            f"class vectors {classes}×384 = {classes * 384:,} values computed from the data, not trained" in plan.text
        )


def test_choose_head_rules():
    assert choose_head(384, 77, None).type == "linear"  # unlimited: a teacher
    assert choose_head(384, 4, 10_000).type == "linear"
    assert choose_head(384, 77, 10_000, adapters=4_608).type == "prototype"  # r=5 is far below 76
    chosen = choose_head(768, 4, 10_000)  # linear 3,076 > 2,500; r=3 = classes - 1 fits (2,320)
    assert (chosen.type, chosen.rank) == ("low_rank", 3)
    assert (choose_head(768, 4, 100_000 - 1_000).type, choose_head(768, 4, 10_000, multi_label=True).type) == (
        "linear",
        "prototype",  # one sigmoid per class needs r=4: 3,092 > 2,500
    )
    assert choose_head(384, 10, 4_000).type == "prototype"  # within 1,000: r <= 2, below the 9 it needs
    assert choose_head(384, 77, 1_000).type == "prototype"


def test_class_means_single_and_multi_label():
    emb = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [9.0, 9.0]], dtype=np.float32)
    means, counts = class_means(emb, np.array([0, 0, 1, -1]), 3)  # -1: an unlabelled row (distillation)
    np.testing.assert_allclose(means, [[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    assert counts.tolist() == [2, 1, 0]
    multi = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    means, counts = class_means(emb, multi, 3)
    np.testing.assert_allclose(means, [[2.0, 0.0], [0.5, 1.0], [9.0, 9.0]])
    assert counts.tolist() == [2, 2, 1]


def test_init_from_vectors_is_a_centred_nearest_vector_classifier():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(5, 16)).astype(np.float32)
    weight, bias = linear_init(vectors)
    logits = vectors @ weight.T + bias
    assert (logits.argmax(1) == np.arange(5)).all()  # each class vector is its own class
    # a row at its class vector scores about INIT_SCALE (1): a start that ranks, not a confident one
    assert 0.5 * INIT_SCALE < np.diag(logits).mean() < 2 * INIT_SCALE
    weight10, bias10 = linear_init(vectors, scale=10.0)
    np.testing.assert_allclose(vectors @ weight10.T + bias10, 10 * logits, rtol=1e-4, atol=1e-4)
    down, out, low_bias = low_rank_init(vectors, rank=8)  # rank >= classes: the same map exactly
    np.testing.assert_allclose(vectors @ down.T @ out.T + low_bias, logits, atol=1e-4)
    down2, out2, _ = low_rank_init(vectors, rank=2)  # lower: the best rank-2 approximation
    assert down2.shape == (2, 16) and out2.shape == (5, 2)
    assert np.linalg.matrix_rank(out2 @ down2) == 2


def _train(make_config, tmp_path, name, head, training=None, **extra):
    values = make_config(
        tmp_path / "cache",
        name=name,
        head={"pooling": "mean", **head},
        training={"max_steps": 6, "eval_every": 3, "learning_rate": 2e-2, "seed": 5, **(training or {})},
        **extra,
    )
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(values))
    run = tmp_path / name
    assert main(["train", str(cfg), "--output", str(run), "--no-report"]) == 0
    return run


def test_prototype_run_computes_saves_and_predicts(make_config, tmp_path, capsys):
    run = _train(make_config, tmp_path, "proto", {"type": "prototype"})
    out = capsys.readouterr().out
    assert "head: prototype vectors from the mean pooled embedding of each class's training rows" in out
    saved = yaml.safe_load((run / "config.yaml").read_text())["head"]
    assert saved["type"] == "prototype"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["head_params"] == 4 + 1
    budget = json.loads((run / "budget.json").read_text())
    assert budget["head_params"] == 5 and budget["head_vectors"] == [4, 32]
    from lorabudget.report.run_report import budget_table

    assert "| class vectors 4×32: computed from the data, not trained | (128, not counted) |" in "\n".join(
        budget_table(budget)
    )
    loaded = lb.load_run(run)
    names = [n for n, _ in loaded.model.named_buffers() if n.endswith("prototypes")]
    vectors = dict(loaded.model.named_buffers())[names[-1]]  # the trained copy (merged: the only one)
    assert vectors.shape == (4, 32) and float(vectors.abs().sum()) > 0  # read back from the adapter
    # The vectors are those of the frozen encoder: recomputed from a fresh build they are the same.
    from lorabudget.training.prototypes import class_vectors
    from lorabudget.training.setup import prepare_data

    cfg = loaded.cfg
    data = prepare_data(cfg, log=lambda *_: None)
    again, _ = class_vectors(cfg, build_model(cfg).model, data)
    np.testing.assert_allclose(vectors.numpy(), again, atol=1e-5)
    texts = ["the game and the team", "stocks and profit"]
    assert loaded.predict(texts).labels == [loaded.cfg.class_names[i] for i in loaded.logits(texts).argmax(1)]


@pytest.mark.parametrize(
    "head", [{"type": "linear", "init": "names"}, {"type": "low_rank", "rank": 4, "init": "prototypes"}]
)
def test_initialised_heads_train(make_config, tmp_path, capsys, head):
    run = _train(make_config, tmp_path, "init", head)
    assert f"head: {head['type']} head's starting weights from" in capsys.readouterr().out
    assert yaml.safe_load((run / "config.yaml").read_text())["head"]["init"] == head["init"]


@pytest.mark.parametrize("precision", ["bf16", "no"])
def test_the_class_vectors_pass_runs_in_the_run_s_precision(make_config, tmp_path, monkeypatch, precision):
    """A bf16 run computes its class vectors under bf16 autocast with the frozen base cast once (its
    validation passes' arrangement), not in fp32 at a quarter of the speed."""
    import lorabudget.training.prototypes as prototypes

    seen, real = [], prototypes.predict_logits

    def spy(encoder, *args, **kwargs):
        frozen = next(p for p in encoder.parameters() if not p.requires_grad)
        seen.append((torch.is_autocast_enabled("cpu"), frozen.dtype))
        return real(encoder, *args, **kwargs)

    monkeypatch.setattr(prototypes, "predict_logits", spy)
    _train(make_config, tmp_path, "p", {"type": "prototype"}, training={"max_steps": 1, "mixed_precision": precision})
    bf16 = precision == "bf16"
    assert seen == [(bf16, torch.bfloat16 if bf16 else torch.float32)] * 2  # the class names, then the rows


def test_auto_is_decided_once_and_recorded(make_config, tmp_path):
    # LoRA r=4 on one query (256) and a budget of 500: the linear head (132) is over 500 / 4 = 125.
    budget = {"max_trainable_params": 500}
    run = _train(
        make_config, tmp_path, "auto", {"type": "auto"}, budget=budget, adapter={"modules": ["query"], "layers": [0]}
    )
    head = yaml.safe_load((run / "config.yaml").read_text())["head"]
    assert (head["type"], head["rank"]) == ("low_rank", 3)  # 3·(32 + 4) + 4 = 112
    assert "chosen_because" not in head


def test_checkpoint_carries_the_prototype_vectors(make_config, tmp_path):
    cfg = from_dict(make_config(tmp_path / "cache", head={"type": "prototype"}))
    model = build_model(cfg).model
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("prototypes"):
                buffer.normal_()
    saved = head_buffers(model)
    assert saved and all(n.endswith("prototypes") for n in saved)
    fresh = build_model(cfg).model
    load_head_buffers(fresh, saved)
    for name, value in head_buffers(fresh).items():
        assert torch.equal(value, saved[name])


def test_search_space_head_axis():
    from lorabudget.search.space import parse_space, sample

    space = parse_space(
        {"head": ["low_rank", "prototype", "linear-mean"], "head_rank": [2, 4], "head_init": ["random", "names"]}
    )
    outs = [
        sample(optuna.trial.FixedTrial({"head": h, "head_rank": 4, "head_init": "names"}), space, num_layers=3)
        for h in ("low_rank", "prototype", "linear-mean")
    ]
    assert outs[0]["head.type"] == "low_rank" and outs[0]["head.rank"] == 4 and outs[0]["head.init"] == "names"
    assert outs[1]["head.type"] == "prototype" and outs[1]["head.rank"] is None
    assert (outs[2]["head.type"], outs[2]["head.pooling"]) == ("linear", "mean")
    with pytest.raises(LorabudgetError, match="'head_rank' needs 'head' with low_rank"):
        parse_space({"head": ["linear"], "head_rank": [2]})
    with pytest.raises(LorabudgetError, match="unknown 'zeros'"):
        parse_space({"head_init": ["zeros"]})


def test_multi_label_prototype_run(make_config, multilabel_dir, tmp_path, capsys):
    """A multi-label run's class vectors: the mean embedding of the rows where the class is positive."""
    values = make_config(
        tmp_path / "cache",
        model={"labels": None},
        head={"type": "prototype", "pooling": "mean"},
        training={"max_steps": 4, "eval_every": 2, "learning_rate": 2e-2},
    )
    cfg = tmp_path / "ml.yaml"
    cfg.write_text(yaml.safe_dump(values))
    argv = ["train", str(cfg), "--data", str(multilabel_dir / "train.csv"), "--label-column", "labels", "--multi-label"]
    assert main([*argv, "--output", str(tmp_path / "run"), "--no-report"]) == 0
    assert "head: prototype vectors from the mean pooled embedding" in capsys.readouterr().out
    run = lb.load_run(tmp_path / "run")
    classes = len(run.cfg.class_names)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["head_params"] == classes + 1
    assert run.logits(["the game and the market"]).shape == (1, classes)


def test_prototype_run_with_long_texts_in_windows(make_config, tmp_path):
    run = _train(
        make_config,
        tmp_path,
        "chunks",
        {"type": "prototype"},
        model={"max_length": 16},
        data={"long_text": "chunks"},
    )
    assert json.loads((run / "summary.json").read_text())["head_params"] == 5
