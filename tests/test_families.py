"""Every encoder family lorabudget maps (methods/sites.py) with every adapter method, table-driven on
tiny random models built in memory (conftest.make_family_model_dir): plan == live == optimizer count,
frozen weights unchanged by a step, identity at init where PEFT guarantees it, merged == unmerged,
save -> reload, plan/train/predict/export (hf, peft, onnx) through the CLI with the ONNX engine giving
the same labels, resume, distillation across families, fused modules, ALBERT's shared layers,
``adapter.target_modules`` and the built-in configs of each family's common checkpoint."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import yaml
from conftest import FAMILY_KINDS, synthetic_rows, write_csv
from method_cases import IDENTITY_AT_INIT, METHOD_SETTINGS

from lorabudget.cli import main
from lorabudget.config import from_dict
from lorabudget.errors import LorabudgetError
from lorabudget.methods import registry
from lorabudget.methods.sites import MODULE_SHORT_NAMES
from lorabudget.model.budget import breakdown
from lorabudget.model.build import build_model, merge_adapters
from lorabudget.model.layout import encoder_layers
from lorabudget.rundir.weights import load_trained_model, save_trained
from lorabudget.training.setup import param_groups

MERGEABLE = sorted(name for name, method in registry.METHODS.items() if method.mergeable)
# (family, method) pairs that cannot run, with the reason. ModernBERT's fused attn.Wqkv is adapted as
# one module (see family_settings), so every other method adapts every family.
SKIPPED: dict[tuple[str, str], str] = {
    ("modernbert", "bitfit"): "ModernBERT's Linear layers have no bias to offset: bitfit is refused there "
    "(test_bitfit_refused_where_modules_have_no_bias)",
}


def test_every_method_and_family_is_in_the_tables():
    assert set(METHOD_SETTINGS) == set(registry.METHODS)
    assert set(FAMILY_KINDS) >= {"distilbert", "deberta-v2", "modernbert", "electra", "albert", "xlm-roberta"}


def family_settings(kind: str, method: str) -> dict:
    """The method's settings; on ModernBERT, query/key/value are one fused Linear, so a placement
    naming any of them names all three."""
    settings = copy.deepcopy(METHOD_SETTINGS[method])
    modules = settings.get("modules")
    if kind == "modernbert" and modules and {"query", "key", "value"} & set(modules):
        wanted = set(modules) | {"query", "key", "value"}
        settings["modules"] = [m for m in MODULE_SHORT_NAMES if m in wanted]
    return settings


def family_cfg(path, kind, method, head="linear", pooling="mean", **extra):
    adapter = {"method": method, "dropout": 0.0, **family_settings(kind, method)}
    values = {"model": {"name": str(path)}, "head": {"type": head, "pooling": pooling}, "adapter": adapter, **extra}
    if method == "full":
        values["budget"] = {"max_trainable_params": None}
    return from_dict(values)


def _skip(kind, method):
    if (kind, method) in SKIPPED:
        pytest.skip(SKIPPED[(kind, method)])


def _perturb(model, scale=0.05, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * scale)


def _batch(seed=0, vocab=40):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    mask[3, 5:] = 0
    ids[:, 0] = 2  # the first token is the tokenizer's CLS (or <s>'s neighbour): a real token either way
    return ids, mask


@pytest.mark.parametrize("method", list(METHOD_SETTINGS))
@pytest.mark.parametrize("kind", FAMILY_KINDS)
def test_every_method_on_every_family(family_model_dir, kind, method):
    """plan (meta device) == live == optimizer == requires_grad, per site, single- and multi-label; the adapted model equals
    the base at init where PEFT guarantees it; one AdamW step changes the head and an adapter tensor
    and leaves every frozen weight as it was; merged equals unmerged. One model per case: building
    dominates the cost."""
    _skip(kind, method)
    cfg = family_cfg(family_model_dir(kind), kind, method, pooling="first")
    # Half the cases, alternating over both axes so every method and every family gets both, train
    # one step as multi-label (one sigmoid per class, binary cross-entropy on 0/1 targets).
    multi_label = (FAMILY_KINDS.index(kind) + list(METHOD_SETTINGS).index(method)) % 2 == 1
    cfg.model.problem_type = "multi_label" if multi_label else "single_label"
    planned = breakdown(build_model(cfg, weights=False).model)
    model = build_model(cfg, weights=True).model
    live = breakdown(model)
    in_optimizer = sum(p.numel() for g in param_groups(model, cfg) for p in g["params"])
    requires_grad = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert planned.total == live.total == in_optimizer == requires_grad > 0
    assert planned.sites == live.sites and planned.head == live.head > 0
    assert live.adapter_total > 0 or method == "full"
    if method == "full":
        return
    ids, mask = _batch()
    if method in IDENTITY_AT_INIT:
        model.eval()
        with torch.no_grad():
            adapted = model(input_ids=ids, attention_mask=mask).logits
            with model.disable_adapter():
                base = model(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(adapted, base, rtol=1e-5, atol=1e-6)
        model.train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(param_groups(model, cfg))
    logits = model(input_ids=ids, attention_mask=mask).logits
    if multi_label:  # rows with several classes, one class, none, all
        targets = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=logits.dtype)
        torch.nn.functional.binary_cross_entropy_with_logits(logits, targets).backward()
    else:
        torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    registry.after_optimizer_step(model, method, 1)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    changed = [n for n, p in model.named_parameters() if n in trainable and not torch.equal(p, trainable[n])]
    assert any("modules_to_save" in n for n in changed)
    assert any("modules_to_save" not in n for n in changed), "no adapter tensor moved"
    if method in MERGEABLE:
        _perturb(model)
        model.eval()
        with torch.no_grad():
            unmerged = model(input_ids=ids, attention_mask=mask).logits
            merged = merge_adapters(model)(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)


# One method per family for save -> reload, all methods covered across families.
RELOAD_CASES = {
    "bert": ("vblora", "linear"),
    "roberta": ("tinylora", "linear"),
    "xlm-roberta": ("adalora", "linear"),
    "electra": ("ln_tuning", "linear"),
    "mpnet": ("loha", "linear"),
    "distilbert": ("bitfit", "linear"),
    "deberta-v2": ("vera", "linear"),
    "modernbert": ("lokr", "linear"),
    "albert": ("ia3", "linear"),
}


# transformers' own head per family (head.type: full): DistilBERT's pre_classifier, DeBERTa's pooler,
# ModernBERT's head (dense without bias, norm without bias), ALBERT's and BERT's pooler, + classifier.
FULL_HEAD_PARAMS = {
    "bert": 32 * 32 + 32 + 32 * 4 + 4,
    "distilbert": 32 * 32 + 32 + 32 * 4 + 4,
    "deberta-v2": 32 * 32 + 32 + 32 * 4 + 4,
    "modernbert": 32 * 32 + 32 + 32 * 4 + 4,
    "albert": 32 * 32 + 32 + 32 * 4 + 4,
    "electra": 32 * 32 + 32 + 32 * 4 + 4,  # ElectraClassificationHead: dense + out_proj
}


@pytest.mark.parametrize("kind", FAMILY_KINDS)
def test_full_head_counts_and_save_reload_same_logits(family_model_dir, kind, tmp_path):
    """Each family's own head is trained in full and counted exactly; a run's adapter folder reloads
    to the same logits (with the family's own head, and with another method on the linear head)."""
    ids, mask = _batch(5)
    for method, head in (("lora", "full"), RELOAD_CASES[kind]):
        cfg = family_cfg(family_model_dir(kind), kind, method, head=head, pooling="first")
        planned = breakdown(build_model(cfg, weights=False).model)
        model = build_model(cfg).model
        assert planned.total == breakdown(model).total == sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert planned.head == breakdown(model).head > 0
        if head == "full" and kind in FULL_HEAD_PARAMS:
            assert planned.head == FULL_HEAD_PARAMS[kind]
        _perturb(model)
        model.eval()
        with torch.no_grad():
            expected = model(input_ids=ids, attention_mask=mask).logits
        save_trained(model, tmp_path / method / "adapter")
        reloaded = load_trained_model(str(tmp_path / method), cfg).eval()
        with torch.no_grad():
            got = reloaded(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=f"{kind} {method}")


# --------------------------------------------------------------------------------------------
# The issue's own check through the CLI, and the export matrix: one method per family.

EXPORT_CASES = {
    "distilbert": ("lora", "full"),
    "deberta-v2": ("lora", "full"),
    "modernbert": ("lora", "linear"),
    "electra": ("vera", "full"),
    "albert": ("lora", "full"),
    "xlm-roberta": ("loha", "linear"),
    "mpnet": ("ia3", "linear"),
    "bert": ("lokr", "full"),
    "roberta": ("fourierft", "linear"),
}
TEXTS = [t for t, _ in synthetic_rows(10, seed=9)] + ["stocks", " ".join(["president election war"] * 30)]


def _run_config(tmp_path, model_dir, kind, method, head, data_dir):
    values = {
        "name": f"tiny-{kind}",
        "model": {"name": str(model_dir), "max_length": 32},
        "head": {"type": head, "pooling": "mean" if head == "linear" else "first"},
        "adapter": {"method": method, "dropout": 0.0, **family_settings(kind, method)},
        "data": {"train": str(data_dir / "train.csv"), "validation_size": 40, "cache_dir": str(tmp_path / "cache")},
        "training": {"max_steps": 4, "batch_size": 16, "learning_rate": 1e-2, "log_every": 2, "seed": 7},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize("kind", list(EXPORT_CASES))
def test_plan_train_predict_export_onnx_same_labels(family_model_dir, kind, data_dir, tmp_path, capsys):
    method, head = EXPORT_CASES[kind]
    cfg = _run_config(tmp_path, family_model_dir(kind), kind, method, head, data_dir)
    assert main(["plan", str(cfg)]) == 0
    planned = int(capsys.readouterr().out.split("TOTAL trainable")[1].split()[0].replace(",", ""))
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--output", str(run), "--no-report"]) == 0
    assert json.loads((run / "summary.json").read_text())["trainable_params"] == planned
    texts = write_csv(tmp_path / "texts.csv", [(t,) for t in TEXTS], header=["text"])

    def predict(source, name, *extra):
        argv = ["predict", str(source), "--input", str(texts), "--output", str(tmp_path / name), "--no-report"]
        assert main(argv + ["--probabilities", *extra]) == 0
        return np.loadtxt(tmp_path / name, delimiter=",", skiprows=1)

    torch_rows = predict(run, "torch.csv", "--precision", "fp32")  # auto is bf16 on a CPU with native bf16
    for fmt in ("hf", "peft", "onnx"):
        assert main(["export", str(run), "--format", fmt, "--output", str(tmp_path / fmt)]) == 0
    onnx_rows = predict(tmp_path / "onnx", "onnx.csv", "--engine", "onnx")
    assert (onnx_rows[:, 1] == torch_rows[:, 1]).all()
    np.testing.assert_allclose(onnx_rows[:, 2:], torch_rows[:, 2:], atol=1e-4)

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lorabudget import load_run

    expected = load_run(run).logits(TEXTS)
    np.testing.assert_allclose(torch.softmax(torch.tensor(expected), -1).numpy(), torch_rows[:, 2:], atol=1e-4)
    remote = json.loads((tmp_path / "hf" / "lorabudget_export.json").read_text())["trust_remote_code"]
    hf_model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf", trust_remote_code=remote).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        hf_logits = hf_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    np.testing.assert_allclose(hf_logits.numpy(), expected, atol=1e-4)

    from peft import PeftModel

    from lorabudget.model.build import build_base
    from lorabudget.model.hub import load_model_config

    cfg_loaded = from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    base = build_base(cfg_loaded, load_model_config(cfg_loaded)[0], pretrained=True)  # the head is fresh
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    with torch.no_grad():
        peft_logits = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    np.testing.assert_allclose(peft_logits.numpy(), expected, atol=1e-4)


def test_resume_on_distilbert_matches_uninterrupted(family_model_dir, data_dir, tmp_path, monkeypatch):
    """A DistilBERT run stopped after step 6 (Ctrl-C) and continued with --resume ends as the
    uninterrupted run does."""
    from lorabudget.training.state import MetricsLog

    values = yaml.safe_load(
        _run_config(tmp_path, family_model_dir("distilbert"), "distilbert", "lora", "linear", data_dir).read_text()
    )
    values["training"].update({"max_steps": 10, "eval_every": 4, "log_every": 2})
    cfg = tmp_path / "resume.yaml"
    cfg.write_text(yaml.safe_dump(values))
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(["train", str(cfg), "--output", str(ref), "--no-report"]) == 0

    write = MetricsLog.write

    def interrupted_write(self, **record):
        write(self, **record)
        if record.get("type") == "train" and record.get("step") == 6:
            raise KeyboardInterrupt

    monkeypatch.setattr(MetricsLog, "write", interrupted_write)
    argv = ["train", str(cfg), "--output", str(run), "--no-report"]
    assert main(argv) == 130
    assert (run / "checkpoint" / "state.pt").is_file() and not (run / "summary.json").exists()
    monkeypatch.setattr(MetricsLog, "write", write)
    assert main(argv + ["--resume"]) == 0
    got, want = json.loads((run / "summary.json").read_text()), json.loads((ref / "summary.json").read_text())
    assert got["steps"] == want["steps"] == 10 and got["validation_accuracy"] == want["validation_accuracy"]
    assert (run / "adapter" / "adapter_model.safetensors").read_bytes() == (
        ref / "adapter" / "adapter_model.safetensors"
    ).read_bytes()


def test_distill_student_of_one_family_from_a_teacher_of_another(family_model_dir, data_dir, tmp_path):
    """A ModernBERT student learns from a DistilBERT teacher (each reads the texts with its own tokenizer)."""
    teacher_cfg = _run_config(tmp_path, family_model_dir("distilbert"), "distilbert", "lora", "linear", data_dir)
    teacher = tmp_path / "teacher"
    assert main(["train", str(teacher_cfg), "--output", str(teacher), "--no-report"]) == 0
    student_dir = tmp_path / "student-cfg"
    student_dir.mkdir()
    student_cfg = _run_config(student_dir, family_model_dir("modernbert"), "modernbert", "ia3", "linear", data_dir)
    values = yaml.safe_load(student_cfg.read_text())
    values["distill"] = {"alpha": 0.5, "temperature": 2.0}
    student_cfg.write_text(yaml.safe_dump(values))
    out = tmp_path / "student"
    assert main(["distill", str(student_cfg), "--teacher", str(teacher), "--output", str(out), "--no-report"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    teacher_summary = json.loads((teacher / "summary.json").read_text())
    assert summary["teacher_validation_accuracy"] == pytest.approx(teacher_summary["validation_accuracy"], abs=1e-9)
    assert summary["method"] == "ia3"


# --------------------------------------------------------------------------------------------
# Fused modules, shared layers, target_modules, built-in configs


def test_modernbert_fused_qkv_is_one_site_and_cannot_be_split(family_model_dir):
    path = family_model_dir("modernbert")
    with pytest.raises(LorabudgetError, match=r"fuses query, key and value into one Linear \(attn.Wqkv\)"):
        build_model(from_dict({"model": {"name": str(path)}, "adapter": {"r": 2, "modules": ["query", "value"]}}))
    cfg = from_dict(
        {
            "model": {"name": str(path)},
            "head": {"type": "linear"},
            "adapter": {"r": 2, "modules": ["query", "key", "value"]},
        }
    )
    built = build_model(cfg, weights=False)
    assert [s.name.rsplit(".", 2)[-2:] for s in built.sites] == [["attn", "Wqkv"]] * 3
    b = breakdown(built.model)
    assert {module for _, module in b.lora} == {"query+key+value"}
    assert b.lora[(0, "query+key+value")] == 2 * (32 + 96)
    assert any("attn.Wqkv" in note for note in built.notes)


def test_bitfit_refused_where_modules_have_no_bias(family_model_dir):
    cfg = family_cfg(family_model_dir("modernbert"), "modernbert", "bitfit")
    with pytest.raises(LorabudgetError, match="has no bias in this ModernBERT model"):
        build_model(cfg, weights=False)


def test_albert_shared_layer_counted_once_and_plan_says_so(family_model_dir, capsys, tmp_path):
    path = family_model_dir("albert")
    cfg = from_dict(
        {"model": {"name": str(path)}, "head": {"type": "linear"}, "adapter": {"r": 2, "modules": ["query"]}}
    )
    model = build_model(cfg).model
    assert len(encoder_layers(model)) == 1 and model.config.num_hidden_layers == 3
    assert breakdown(model).adapter_total == 2 * (32 + 32)  # one adapter, used by all 3 layers
    config = tmp_path / "albert.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": str(path)}, "adapter": {"modules": ["query"], "layers": [1]}}))
    assert main(["plan", str(config)]) == 2
    assert "layer 1 is out of range; this model has layers 0..0" in capsys.readouterr().err
    config.write_text(yaml.safe_dump({"model": {"name": str(path)}, "adapter": {"modules": ["query"]}}))
    assert main(["plan", str(config)]) == 0
    assert "applies 1 set(s) of layer weights 3 times" in capsys.readouterr().out


def test_target_modules_on_an_encoder_no_family_describes(tmp_path_factory, padded_batch):
    """RoFormer is in no family: short names are refused with a pointer to adapter.target_modules,
    which (a list of suffixes or a regex, PEFT's rules) places adapters with an exact budget."""
    from conftest import make_tokenizer
    from transformers import RoFormerConfig, RoFormerModel

    path = tmp_path_factory.mktemp("roformer")
    tokenizer = make_tokenizer("bert")
    torch.manual_seed(0)
    RoFormerModel(
        RoFormerConfig(
            vocab_size=len(tokenizer),
            embedding_size=32,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=48,
            max_position_embeddings=130,
        )
    ).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    with pytest.raises(LorabudgetError, match="adapter.target_modules"):
        build_model(from_dict({"model": {"name": str(path), "max_length": 128}}), weights=False)
    for targets, sites in ((["query", "value"], 4), (r".*\.layer\.1\.attention\.self\.(query|key)", 2)):
        cfg = from_dict(
            {
                "model": {"name": str(path), "max_length": 128},
                "head": {"type": "linear"},
                "adapter": {"r": 2, "target_modules": targets},
            }
        )
        built = build_model(cfg, weights=False)
        assert len(built.sites) == sites
        model = build_model(cfg).model
        assert breakdown(built.model).total == breakdown(model).total
        assert breakdown(model).total == sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert breakdown(model).adapter_total == sites * 2 * (32 + 32)
        ids, mask = padded_batch()
        assert model(input_ids=ids, attention_mask=mask).logits.shape == (4, 4)
    with pytest.raises(LorabudgetError, match="matches no Linear module"):
        build_model(
            from_dict(
                {"model": {"name": str(path), "max_length": 128}, "adapter": {"target_modules": ["nothing_here"]}}
            ),
            weights=False,
        )
    with pytest.raises(LorabudgetError, match="trains every weight: remove adapter.target_modules"):
        from_dict(
            {
                "model": {"name": str(path)},
                "adapter": {"method": "full", "target_modules": ["query"]},
                "budget": {"max_trainable_params": None},
            }
        )
    with pytest.raises(LorabudgetError, match="replaces adapter.placements"):
        from_dict(
            {
                "model": {"name": str(path)},
                "adapter": {"target_modules": ["query"], "placements": [{"modules": ["query"]}]},
            }
        )


# (hub name, LoRA r=8 on query+value of every layer with the linear head: expected total, from the
# published architecture: 2·r·(hidden + hidden) per module, + the head hidden·4 + 4)
BUILTIN_PLANS = {
    "distilbert-base-uncased": (6, 768),
    "microsoft/deberta-v3-base": (12, 768),
    "answerdotai/ModernBERT-base": (22, 768),
    "google/electra-base-discriminator": (12, 768),
    "albert-base-v2": (1, 768),
    "xlm-roberta-base": (12, 768),
}


@pytest.mark.parametrize("name", list(BUILTIN_PLANS))
def test_plan_offline_from_builtin_config_is_exact(name, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))  # not in any cache: the built-in config
    layers, hidden = BUILTIN_PLANS[name]
    modules = ["query", "key", "value"] if "ModernBERT" in name else ["query", "value"]
    config = tmp_path / "plan.yaml"
    config.write_text(
        yaml.safe_dump({"model": {"name": name}, "head": {"type": "linear"}, "adapter": {"r": 8, "modules": modules}})
    )
    assert main(["plan", str(config)]) == 0
    out = capsys.readouterr().out
    assert "built-in published config" in out
    total = int(out.split("TOTAL trainable")[1].split()[0].replace(",", ""))
    per_layer = 8 * (hidden + 3 * hidden) if "ModernBERT" in name else 2 * 8 * (hidden + hidden)
    assert total == layers * per_layer + hidden * 4 + 4
