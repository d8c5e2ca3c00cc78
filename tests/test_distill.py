"""Distillation: the KD loss, the teacher-logits cache, pairing under shuffling, and the CLI."""

import json
import math

import numpy as np
import pytest
import torch
import yaml

from lorabudget.cli import main
from lorabudget.config import from_dict
from lorabudget.data.batching import tokenize, train_loader
from lorabudget.inference.runs import load_run
from lorabudget.training.distill import TeacherLogitsCache, kd_loss, teacher_fingerprint, teacher_logits


def test_kd_loss_matches_hand_computation():
    s = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    t = torch.tensor([[1.0, 1.0, 0.0], [-2.0, 0.5, 2.5]])
    y = torch.tensor([0, 2])
    T, lam = 2.0, 0.3

    def softmax(v):
        e = [math.exp(x) for x in v]
        return [x / sum(e) for x in e]

    ce = sum(-math.log(softmax(row.tolist())[label]) for row, label in zip(s, y)) / 2
    kl = 0.0
    for srow, trow in zip(s, t):
        p = softmax((trow / T).tolist())
        q = softmax((srow / T).tolist())
        kl += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    kl /= 2
    expected = (1 - lam) * ce + lam * T * T * kl
    assert kd_loss(s, t, y, T, lam).item() == pytest.approx(expected, rel=1e-6)
    # rows without gold labels (-1) contribute only the KL term
    y2 = torch.tensor([0, -1])
    ce0 = -math.log(softmax(s[0].tolist())[0])
    assert kd_loss(s, t, y2, T, lam).item() == pytest.approx((1 - lam) * ce0 + lam * T * T * kl, rel=1e-6)
    # a batch with no gold labels at all: only the KL term, and no NaN
    none = kd_loss(s, t, torch.tensor([-1, -1]), T, lam)
    assert none.item() == pytest.approx(lam * T * T * kl, rel=1e-6)
    # lambda = 0 is exactly cross-entropy
    assert torch.equal(kd_loss(s, t, y, T, 0.0), torch.nn.functional.cross_entropy(s, y))


def _write(tmp_path, name, values):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, make_config):
    tmp = tmp_path_factory.mktemp("teacher")
    values = make_config(
        tmp / "cache",
        name="teacher",
        model={"labels": None},
        head={"type": "linear", "pooling": "mean"},
        adapter={"r": 8, "alpha": 16, "modules": ["query", "key", "value", "output"]},
        training={"epochs": 4, "learning_rate": 2e-2, "log_every": 5, "seed": 42},
        budget={"max_trainable_params": 10_000_000},
    )
    cfg = _write(tmp, "teacher", values)
    assert main(["train", str(cfg), "--output", str(tmp / "teacher"), "--no-report"]) == 0
    return tmp / "teacher"


def _teacher_config(model_dir, epochs: int) -> dict:
    """A teacher config for `distill --teacher CONFIG`: no data section, it trains on the student's data."""
    return {
        "name": "tiny-teacher",
        "model": {"name": str(model_dir), "max_length": 64},
        "head": {"type": "linear", "pooling": "mean"},
        "adapter": {"r": 8, "alpha": 16, "dropout": 0.0, "modules": ["query", "value", "output"]},
        "training": {"epochs": epochs, "batch_size": 16, "learning_rate": 2e-2},
        "budget": {"max_trainable_params": 10_000_000},
    }


def _student(make_config, cache, model_dir=None, **distill):
    model = {"labels": None, **({"name": str(model_dir)} if model_dir else {})}
    return make_config(
        cache,
        name="student",
        model=model,
        head={"type": "linear", "pooling": "mean"},
        adapter={"r": 2, "alpha": 4},
        training={"learning_rate": 2e-2, "eval_every": 6, "seed": 3},
        distill=distill,
    )


def test_cached_logits_equal_live_teacher_under_shuffling(teacher_run, data_dir, tmp_path):
    from lorabudget.data.load import load_labelled

    data = load_labelled(str(data_dir / "train.csv"), ["World", "Sports", "Business", "Sci/Tech"])
    cache = TeacherLogitsCache(tmp_path)
    logs = []
    table = teacher_logits(teacher_run, data.texts, cache, logs.append)
    assert "computed once" in logs[-1]
    again = teacher_logits(teacher_run, data.texts, cache, logs.append)
    assert "from cache" in logs[-1] and np.array_equal(table, again)

    run = load_run(teacher_run)
    tokens = tokenize(run.tokenizer, data.texts, run.cfg.model.max_length)
    loader = train_loader(tokens, data.labels, run.pad_id, batch_size=16, seed=5, length_grouping=True)
    loader.batch_sampler.set_epoch(1)
    with torch.no_grad():
        for batch in loader:
            live = run.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            torch.testing.assert_close(torch.from_numpy(table[batch["index"].numpy()]), live, rtol=1e-4, atol=1e-5)


def test_cache_invalidation_and_truncation(teacher_run, tmp_path):
    texts = ["the team won the game", "stocks fell"]
    cache = TeacherLogitsCache(tmp_path)
    fp = teacher_fingerprint(teacher_run)
    key = cache.key(fp, texts)
    teacher_logits(teacher_run, texts, cache, print)
    assert cache.load(key, 2) is not None
    # other data: other key; another teacher (changed adapter weights): other fingerprint
    assert cache.key(fp, texts + ["x"]) != key and cache.key(fp, texts[::-1]) != key
    other = tmp_path / "other-teacher"
    import shutil

    shutil.copytree(teacher_run, other)
    weights = other / "adapter" / "adapter_model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    assert teacher_fingerprint(other) != fp
    # a truncated file is detected and rebuilt
    path = cache.path(key)
    path.write_bytes(path.read_bytes()[:40])
    assert cache.load(key, 2) is None
    logs = []
    teacher_logits(teacher_run, texts, cache, logs.append)
    assert any("rebuilding" in l for l in logs) and cache.load(key, 2) is not None
    # a file holding another key's logits is not trusted
    shutil.copy(path, cache.path("a-b"))
    assert cache.load("a-b", 2) is None


def test_lambda_zero_reproduces_plain_training(make_config, teacher_run, tiny_roberta, data_dir, tmp_path):
    plain = _write(tmp_path, "plain", _student(make_config, tmp_path / "cache"))
    kd0 = _write(tmp_path, "kd0", _student(make_config, tmp_path / "cache", alpha=0.0, temperature=3.0))
    assert main(["train", str(plain), "--output", str(tmp_path / "plain"), "--no-report"]) == 0
    assert (
        main(["distill", str(kd0), "--teacher", str(teacher_run), "--output", str(tmp_path / "kd0"), "--no-report"])
        == 0
    )

    def read(name):
        lines = [json.loads(l) for l in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [(l["step"], l.get("loss"), l.get("accuracy")) for l in lines]

    assert read("plain") == read("kd0")


def test_distill_end_to_end_with_config_teacher_and_unlabelled(
    make_config, tiny_roberta, data_dir, tmp_path, monkeypatch, capsys
):
    teacher_cfg = _write(
        tmp_path,
        "tcfg",
        _teacher_config(tiny_roberta, epochs=3),
    )
    student = _write(tmp_path, "student", _student(make_config, tmp_path / "cache", alpha=0.5, temperature=2.0))
    runs = tmp_path / "runs"
    argv = [
        "distill",
        str(student),
        "--teacher",
        str(teacher_cfg),
        "--unlabelled",
        str(data_dir / "unlabelled.csv"),
        "--output",
        str(runs / "student"),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "teacher validation accuracy" in out and "teacher: training config" in out
    assert "adding 80 unlabelled texts" in out
    summary = json.loads((runs / "student" / "summary.json").read_text())
    assert summary["unlabelled_rows"] == 80 and summary["train_rows"] == 200 + 80
    assert summary["method"] == "lora" and summary["distill"] == "T=2, λ=0.5"  # the adapter method stays the method
    assert 0 <= summary["teacher_validation_accuracy"] <= 1
    # The teacher trained on the student's data settings: same training rows, same validation rows.
    teacher_summary = json.loads((runs / "tiny-teacher" / "summary.json").read_text())
    assert teacher_summary["train_rows"] == 200 and teacher_summary["validation_rows"] == 40
    assert (runs / "student" / "report.md").is_file()

    # Second student on the same data: teacher reused, logits from the cache, teacher never loaded.
    import lorabudget.inference.runs

    def no_load(*a, **k):
        raise AssertionError("the teacher must not be loaded when its logits are cached")

    monkeypatch.setattr(lorabudget.inference.runs, "load_run", no_load)
    assert main(argv[:-1] + [str(runs / "student2")]) == 0
    out = capsys.readouterr().out
    assert "reusing the trained run" in out and out.count("from cache") == 2


def test_distill_errors(make_config, tiny_roberta, data_dir, tmp_path, capsys):
    student = _write(tmp_path, "s", _student(make_config, tmp_path / "cache"))
    assert main(["distill", str(student), "--output", str(tmp_path / "o")]) == 2
    assert "needs a teacher" in capsys.readouterr().err
    assert main(["distill", str(student), "--teacher", str(tmp_path), "--output", str(tmp_path / "o2")]) == 2
    assert "not a finished lorabudget run directory" in capsys.readouterr().err
    with pytest.raises(Exception, match="distill.alpha"):
        from_dict({"distill": {"alpha": 1.5}})
    zero = _write(tmp_path, "z", _student(make_config, tmp_path / "cache", alpha=0.0))
    assert (
        main(
            [
                "distill",
                str(zero),
                "--teacher",
                str(tmp_path),
                "--unlabelled",
                str(data_dir / "unlabelled.csv"),
                "--output",
                str(tmp_path / "o3"),
            ]
        )
        == 2
    )
    assert "unlabelled texts would teach nothing" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Ensembles, transfer texts, confidence filtering


def _fake_teacher(path, seed):
    """A finished-looking run directory whose logits are put in the cache by the test (never loaded)."""
    (path / "adapter").mkdir(parents=True)
    (path / "config.yaml").write_text(f"name: t{seed}\n")
    (path / "summary.json").write_text("{}")
    (path / "adapter" / "adapter_model.safetensors").write_bytes(bytes([seed]) * 64)
    (path / "tokenizer").mkdir()
    (path / "tokenizer" / "tokenizer.json").write_text("{}")
    return path


def test_ensemble_logits_are_the_mean_of_member_probabilities(tmp_path, monkeypatch):
    import lorabudget.inference.runs
    from lorabudget.metrics import softmax
    from lorabudget.training.distill import ensemble_fingerprint

    def no_load(*a, **k):
        raise AssertionError("members' logits are cached: no teacher is loaded")

    monkeypatch.setattr(lorabudget.inference.runs, "load_run", no_load)
    texts = ["a", "b", "c"]
    cache = TeacherLogitsCache(tmp_path / "cache")
    t1, t2 = _fake_teacher(tmp_path / "t1", 1), _fake_teacher(tmp_path / "t2", 2)
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=(3, 4)).astype(np.float32), 3 * rng.normal(size=(3, 4)).astype(np.float32)
    cache.save(cache.key(teacher_fingerprint(t1), texts), m1)
    cache.save(cache.key(teacher_fingerprint(t2), texts), m2)
    logs = []
    ens = teacher_logits([t1, t2], texts, cache, logs.append)
    np.testing.assert_allclose(softmax(ens), (softmax(m1) + softmax(m2)) / 2, rtol=1e-5, atol=1e-7)
    assert "ensemble of 2 teachers" in logs[-1]
    # cached like one teacher, under a key of all members: the members' files are not needed again
    key = cache.key(ensemble_fingerprint([t1, t2]), texts)
    assert ensemble_fingerprint([t2, t1]) == ensemble_fingerprint([t1, t2])
    for m in (t1, t2):
        cache.path(cache.key(teacher_fingerprint(m), texts)).unlink()
    assert np.array_equal(teacher_logits([t2, t1], texts, cache, logs.append), ens) and "from cache" in logs[-1]
    # any member changes: another key (members: config or weights)
    (t2 / "adapter" / "adapter_model.safetensors").write_bytes(bytes([9]) * 64)
    assert cache.key(ensemble_fingerprint([t1, t2]), texts) != key
    (t2 / "adapter" / "adapter_model.safetensors").write_bytes(bytes([2]) * 64)
    assert cache.key(ensemble_fingerprint([t1, t2]), texts) == key
    (t1 / "config.yaml").write_text("name: t1-changed\n")
    assert cache.key(ensemble_fingerprint([t1, t2]), texts) != key
    # a one-member ensemble is keyed exactly like that teacher
    assert ensemble_fingerprint([t2]) == teacher_fingerprint(t2)


def test_fingerprint_covers_any_method_weights_not_tokenizer(tmp_path):
    run = _fake_teacher(tmp_path / "full", 3)
    (run / "adapter" / "adapter_model.safetensors").unlink()
    (run / "model").mkdir()
    (run / "model" / "model.safetensors").write_bytes(b"full fine-tune weights")
    (run / "model" / "config.json").write_text("{}")
    fp = teacher_fingerprint(run)
    (run / "tokenizer" / "tokenizer.json").write_text('{"changed": 1}')
    assert teacher_fingerprint(run) == fp
    (run / "model" / "config.json").write_text('{"changed": 1}')
    assert teacher_fingerprint(run) != fp
    empty = tmp_path / "empty"
    (empty / "adapter").mkdir(parents=True)
    (empty / "config.yaml").write_text("name: e\n")
    with pytest.raises(Exception, match="no trained weights"):
        teacher_fingerprint(empty)


def test_transfer_rows_are_seeded_and_tokens_follow():
    from lorabudget.data.batching import TokenizedTexts
    from lorabudget.training.distill import take_tokens, transfer_indices

    a = transfer_indices(200, 0.25, 42)
    assert len(a) == 50 and np.array_equal(a, transfer_indices(200, 0.25, 42)) and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, transfer_indices(200, 0.25, 43))
    assert len(transfer_indices(200, 0.0, 42)) == 0
    with pytest.raises(Exception, match="leaves no"):
        transfer_indices(3, 0.01, 0)
    tokens = TokenizedTexts(np.arange(10, dtype=np.int32), np.array([0, 2, 5, 6, 10]))
    taken = take_tokens(tokens, [3, 1])
    assert [taken.row(0).tolist(), taken.row(1).tolist()] == [[6, 7, 8, 9], [2, 3, 4]]


def test_distill_with_transfer_fraction_and_confidence_filter(make_config, tiny_roberta, data_dir, tmp_path, capsys):
    teacher_cfg = _write(
        tmp_path,
        "tcfg",
        _teacher_config(tiny_roberta, epochs=2),
    )
    values = _student(make_config, tmp_path / "cache", alpha=0.5, temperature=2.0, min_teacher_confidence=0.4)
    values["training"].update(epochs=1)
    student = _write(tmp_path, "student", values)
    runs = tmp_path / "runs"
    argv = [
        "distill",
        str(student),
        "--teacher",
        str(teacher_cfg),
        "--transfer-from-train-fraction",
        "0.5",
        "--output",
        str(runs / "student"),
        "--no-report",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "100 of 200 labelled training rows (50%, seed 42) used as transfer texts" in out
    # the teacher trained here never saw the transfer rows' labels
    teacher = json.loads((runs / "tiny-teacher-without-transfer-0.5" / "summary.json").read_text())
    assert teacher["train_rows"] == 100 and teacher["transfer_rows_excluded"] == {"fraction": 0.5, "seed": 42}
    assert "rows without labels whose teacher confidence is >= 0.4" in out
    summary = json.loads((runs / "student" / "summary.json").read_text())
    kept = summary["transfer_rows"]
    assert f"kept {kept:,} of 100 rows without labels" in out
    assert summary["train_rows"] == 100 + kept and summary["dropped_unconfident_rows"] == 100 - kept
    assert summary["unlabelled_rows"] == 0 and summary["transfer_fraction"] == 0.5


def test_teacher_of_another_architecture_reads_texts_with_its_own_tokenizer(
    make_config, teacher_run, tiny_bert, data_dir, tmp_path
):
    """A BERT student taught by a RoBERTa teacher (another vocabulary and special tokens): the teacher
    scores the student's validation rows exactly as it scored them when it was trained (same rows,
    its own tokenizer), which would not hold if it were fed the student's token ids."""
    student = _write(
        tmp_path, "bert-student", _student(make_config, tmp_path / "cache", tiny_bert, alpha=0.5, temperature=2.0)
    )
    assert (
        main(["distill", str(student), "--teacher", str(teacher_run), "--output", str(tmp_path / "s"), "--no-report"])
        == 0
    )
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    teacher_summary = json.loads((teacher_run / "summary.json").read_text())
    assert summary["validation_rows"] == teacher_summary["validation_rows"]
    assert summary["teacher_validation_accuracy"] == pytest.approx(teacher_summary["validation_accuracy"], abs=1e-9)
    assert load_run(tmp_path / "s").tokenizer.get_vocab() != load_run(teacher_run).tokenizer.get_vocab()


@pytest.mark.parametrize("head", [{"type": "low_rank", "rank": 3}, {"type": "prototype"}])
def test_distill_into_a_small_head_student(make_config, teacher_run, tmp_path, capsys, head):
    """A low_rank or prototype student: its class vectors come from its own frozen encoder on its own
    training rows (the unlabelled ones, with no gold class, are left out of the means)."""
    values = _student(make_config, tmp_path / "cache", alpha=0.5, temperature=2.0)
    values["head"] = {"pooling": "mean", **head}
    values["training"]["max_steps"] = 6
    student = _write(tmp_path, "small-head", values)
    assert (
        main(["distill", str(student), "--teacher", str(teacher_run), "--output", str(tmp_path / "s"), "--no-report"])
        == 0
    )
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    expected = 3 * (32 + 4) + 4 if head["type"] == "low_rank" else 4 + 1
    assert summary["head_params"] == expected
    if head["type"] == "prototype":
        assert "head: prototype vectors from the mean pooled embedding" in capsys.readouterr().out
