"""Every adapter method, table-driven: plan == live == optimizer count, identity at init where the
method guarantees it, frozen weights unchanged by a step, merged equals unmerged, save -> reload in
a fresh process gives the same logits, placement errors, quantized bases (QLoRA)."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from method_cases import IDENTITY_AT_INIT, METHOD_SETTINGS

from lorabudget.config import from_dict
from lorabudget.errors import LorabudgetError
from lorabudget.methods import registry
from lorabudget.model.budget import breakdown
from lorabudget.model.build import build_model, merge_adapters
from lorabudget.rundir.weights import save_trained
from lorabudget.training.setup import param_groups

# Methods PEFT can fold into the base weights (all but full, which has nothing to merge).
MERGEABLE = sorted(name for name, method in registry.METHODS.items() if method.mergeable)


def test_every_registered_method_is_in_the_tables():
    assert set(METHOD_SETTINGS) == set(registry.METHODS)
    assert IDENTITY_AT_INIT <= set(registry.METHODS)


def method_cfg(path, method, head="full", pooling="first", **extra):
    adapter = {"method": method, "dropout": 0.0, **METHOD_SETTINGS[method]}
    values = {"model": {"name": str(path)}, "head": {"type": head, "pooling": pooling}, "adapter": adapter, **extra}
    if method == "full":
        values["budget"] = {"max_trainable_params": None}
    return from_dict(values)


def _perturb(model, scale=0.05, seed=1):
    """Make every trainable tensor non-trivial, as training would."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * scale)


@pytest.mark.parametrize("model_fixture", ["tiny_roberta", "tiny_bert"])
@pytest.mark.parametrize("head", ["full", "linear"])
@pytest.mark.parametrize("method", list(METHOD_SETTINGS))
def test_plan_equals_live_equals_optimizer(request, method, model_fixture, head):
    cfg = method_cfg(request.getfixturevalue(model_fixture), method, head)
    planned = breakdown(build_model(cfg, weights=False).model)
    model = build_model(cfg, weights=True).model
    live = breakdown(model)
    in_optimizer = sum(p.numel() for g in param_groups(model, cfg) for p in g["params"])
    requires_grad = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert planned.total == live.total == in_optimizer == requires_grad > 0
    assert planned.sites == live.sites and planned.head == live.head
    assert live.head > 0 and (live.adapter_total > 0 or method == "full")


@pytest.mark.parametrize("method", sorted(IDENTITY_AT_INIT))
@pytest.mark.parametrize("model_fixture", ["tiny_roberta", "tiny_bert"])
def test_equals_base_at_init(padded_batch, request, method, model_fixture):
    model = build_model(method_cfg(request.getfixturevalue(model_fixture), method, "linear")).model.eval()
    ids, mask = padded_batch()
    with torch.no_grad():
        adapted = model(input_ids=ids, attention_mask=mask).logits
        with model.disable_adapter():
            base = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(adapted, base, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", [m for m in METHOD_SETTINGS if m != "full"])
def test_frozen_weights_unchanged_after_a_step(padded_batch, tiny_bert, method):
    cfg = method_cfg(tiny_bert, method, "full")
    model = build_model(cfg).model
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(param_groups(model, cfg))
    ids, mask = padded_batch()
    logits = model(input_ids=ids, attention_mask=mask).logits
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    registry.after_optimizer_step(model, method, 1)
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    changed = [n for n, p in model.named_parameters() if n in trainable and not torch.equal(p, trainable[n])]
    assert any("modules_to_save" in n for n in changed)
    assert any("modules_to_save" not in n for n in changed), "no adapter tensor moved"


@pytest.mark.parametrize("method", list(METHOD_SETTINGS))
def test_multi_label_loss_trains_every_method(padded_batch, tiny_bert, method):
    """The multi-label row: binary cross-entropy on 0/1 targets [B, C] (the loss of
    ``model.problem_type: multi_label``) moves the head and an adapter tensor and no frozen weight."""
    from lorabudget.training.setup import bce_loss

    cfg = method_cfg(tiny_bert, method, "full")
    model = build_model(cfg).model
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(param_groups(model, cfg))
    ids, mask = padded_batch()
    logits = model(input_ids=ids, attention_mask=mask).logits
    targets = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 0]], dtype=torch.float32)
    bce_loss(logits, {"labels": targets}).backward()
    opt.step()
    registry.after_optimizer_step(model, method, 1)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    changed = [n for n, p in model.named_parameters() if n in trainable and not torch.equal(p, trainable[n])]
    assert changed and (method == "full" or any("modules_to_save" not in n for n in changed))


@pytest.mark.parametrize("method", list(METHOD_SETTINGS))
def test_bf16_frozen_base_trains_every_method(padded_batch, tiny_roberta, method):
    """bf16 training holds the frozen base in bf16 (precision.frozen_base_in) under autocast: every
    method's forward and backward run on it, trained weights and their gradients stay fp32, and the
    logits stay close to fp32's."""
    from lorabudget.model.precision import frozen_base_in

    cfg = method_cfg(tiny_roberta, method, "full")
    model = build_model(cfg).model
    _perturb(model)
    ids, mask = padded_batch()
    with torch.no_grad():
        fp32 = model(input_ids=ids, attention_mask=mask).logits
    with frozen_base_in(model, torch.bfloat16), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(input_ids=ids, attention_mask=mask).logits
        torch.nn.functional.cross_entropy(logits.float(), torch.tensor([0, 1, 2, 3])).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32 for _, p in trainable)
    assert all(torch.isfinite(p.grad).all() for _, p in trainable)
    assert any(p.grad.abs().sum() > 0 for n, p in trainable if "modules_to_save" not in n) or method == "full"
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the fp32 base is back
    torch.testing.assert_close(logits.float(), fp32, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("method", list(METHOD_SETTINGS))
def test_bf16_inference_casts_every_weight_once_for_every_method(tiny_roberta, method):
    """bf16 predict holds every weight in bf16 for the call (precision.inference_weights_in), so
    autocast has nothing left to cast per batch: every method's unmerged adapter runs on it, its
    logits stay close to fp32's, and the model's fp32 tensors are back afterwards."""
    import numpy as np

    from lorabudget.data.batching import TokenizedTexts
    from lorabudget.inference.batched import predict_logits
    from lorabudget.model.precision import inference_weights_in

    model = build_model(method_cfg(tiny_roberta, method, "full")).model
    _perturb(model)
    before = dict(model.named_parameters())
    rows = [np.arange(5, 5 + n, dtype=np.int32) % 40 + 5 for n in (3, 9, 6, 12, 7)]
    tokens = TokenizedTexts(np.concatenate(rows), np.cumsum([0] + [len(r) for r in rows]))
    fp32 = predict_logits(model, tokens, pad_id=1, batch_size=2)
    bf16 = predict_logits(model, tokens, pad_id=1, batch_size=2, precision="bf16")
    assert not np.array_equal(bf16, fp32)  # bf16 really ran
    np.testing.assert_allclose(bf16, fp32, rtol=0.05, atol=0.05)
    after = dict(model.named_parameters())
    assert all(after[n] is p and p.dtype == torch.float32 for n, p in before.items())
    with torch.no_grad(), inference_weights_in(model, torch.bfloat16) as cast:
        assert cast == len(before)  # trained tensors too: nothing trains during inference
        assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_adalora_allocator_state_survives_a_checkpoint(padded_batch, tiny_bert):
    # A resumed AdaLoRA run must mask the ranks the uninterrupted one would: its importance scores
    # (smoothed over all steps so far) travel in the checkpoint with the weights.
    from lorabudget.training.state import load_weights, trainable_weights

    cfg = method_cfg(tiny_bert, "adalora", "full")

    def built():
        torch.manual_seed(0)
        model = build_model(cfg, total_steps=20).model.eval()  # no dropout: the same step on every copy
        return model, torch.optim.AdamW(param_groups(model, cfg), lr=1e-2)

    def step(model, opt, at):
        ids, mask = padded_batch()
        logits = model(input_ids=ids, attention_mask=mask).logits
        torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
        opt.step()
        registry.after_optimizer_step(model, "adalora", at)
        opt.zero_grad()

    first, opt = built()
    for at in range(1, 6):
        step(first, opt, at)
    state = registry.training_state(first, "adalora")
    assert state["exp_avg_ipt"] and all(t.abs().sum() > 0 for t in state["exp_avg_ipt"].values())

    # Copies, as a checkpoint on disk would give (load_state_dict would share the optimizer's tensors).
    resumed, resumed_opt = built()
    load_weights(resumed, trainable_weights(first))
    resumed_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    registry.restore_training_state(resumed, "adalora", copy.deepcopy(state))
    forgetful, forgetful_opt = built()  # the same weights, but its allocator starts from nothing
    load_weights(forgetful, trainable_weights(first))
    forgetful_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    for model, optimizer in ((first, opt), (resumed, resumed_opt), (forgetful, forgetful_opt)):
        step(model, optimizer, 6)

    def scores(model):
        return model.base_model.rankallocator.exp_avg_ipt

    # The scores are tiny (|weight x gradient| of a small random model), so compare them relatively.
    for name, value in scores(first).items():
        torch.testing.assert_close(scores(resumed)[name], value, rtol=1e-5, atol=0)
    assert any(not torch.allclose(scores(forgetful)[n], v, rtol=1e-3, atol=0) for n, v in scores(first).items())
    assert registry.training_state(first, "lora") == {}


@pytest.mark.parametrize("method", sorted(MERGEABLE))
@pytest.mark.parametrize("head", ["full", "linear"])
def test_merged_equals_unmerged(padded_batch, tiny_roberta, method, head):
    assert registry.can_merge(method, quantized=False)
    model = build_model(method_cfg(tiny_roberta, method, head)).model
    _perturb(model)
    model.eval()
    ids, mask = padded_batch(3)
    with torch.no_grad():
        unmerged = model(input_ids=ids, attention_mask=mask).logits
        merged = merge_adapters(model)(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)


_RELOAD = """
import json, sys, torch
from lorabudget.config import from_dict
from lorabudget.rundir.weights import load_trained_model
cases = json.loads(sys.argv[1])
ids = torch.tensor(cases["ids"]); mask = torch.tensor(cases["mask"])
out = {}
for name, case in cases["runs"].items():
    model = load_trained_model(case["dir"], from_dict(case["cfg"])).eval()
    with torch.no_grad():
        out[name] = model(input_ids=ids, attention_mask=mask).logits.tolist()
print(json.dumps(out))
"""


def test_save_reload_in_fresh_process_same_logits(padded_batch, tiny_bert, tmp_path):
    """Each method's trained state, saved as a run's adapter folder, reloads in a new process
    (one process for all methods: imports dominate the cost) to the same logits."""
    ids, mask = padded_batch(5)
    runs, expected = {}, {}
    for method in METHOD_SETTINGS:
        for head, pooling in (("full", "first"), ("linear", "mean")):
            cfg = method_cfg(tiny_bert, method, head, pooling)
            model = build_model(cfg).model
            _perturb(model)
            model.eval()
            with torch.no_grad():
                expected[f"{method}-{head}"] = model(input_ids=ids, attention_mask=mask).logits
            run_dir = tmp_path / f"{method}-{head}"
            save_trained(model, run_dir / "adapter")
            runs[f"{method}-{head}"] = {"dir": str(run_dir), "cfg": cfg.to_dict()}
    payload = json.dumps({"ids": ids.tolist(), "mask": mask.tolist(), "runs": runs})
    src = Path(__file__).resolve().parents[1] / "src"
    result = subprocess.run(
        [sys.executable, "-c", _RELOAD, payload],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    reloaded = json.loads(result.stdout.strip().splitlines()[-1])
    for name, logits in expected.items():
        torch.testing.assert_close(torch.tensor(reloaded[name]), logits, rtol=1e-5, atol=1e-5, msg=name)


def test_shared_parameters_counted_once_with_saving(tiny_roberta):
    b = breakdown(build_model(method_cfg(tiny_roberta, "vblora"), weights=False).model)
    bank = b.shared["vblora_vector_bank"]
    assert bank.params == 8 * 16 and bank.sites == 6  # query+value on 3 layers
    assert bank.unshared_equivalent == 6 * bank.params
    assert b.adapter_total == bank.params + sum(b.sites.values())
    tied = breakdown(build_model(method_cfg(tiny_roberta, "tinylora"), weights=False).model)
    vectors = tied.shared["tinylora_v"]
    # weight_tying 0.5 over 6 modules: 3 vectors of u=8, each used by 2 modules.
    assert vectors.params == 3 * 8 and vectors.unshared_equivalent == 6 * 8
    vera = breakdown(build_model(method_cfg(tiny_roberta, "vera"), weights=False).model)
    assert not vera.shared and set(vera.frozen_shared) == {"vera_A", "vera_B"}
    assert vera.frozen_shared["vera_A"].sites == 9  # query, value, intermediate on 3 layers


@pytest.mark.parametrize(
    "adapter, budget, message",
    [
        ({"method": "full"}, 1_000_000, "set budget.max_trainable_params: null"),
        ({"method": "vera", "rank_pattern": {"query": 4}}, 1_000_000, "cannot give modules different ranks"),
        ({"method": "ln_tuning", "modules": ["query"]}, 1_000_000, "tunes LayerNorms"),
        ({"method": "fourierft", "options": {"bogus": 1}}, 1_000_000, "unknown config key 'adapter.options.bogus'"),
        ({"method": "vera", "options": {"target_modules": ["x"]}}, 1_000_000, "set by lorabudget"),
        ({"method": "ia3", "use_dora": True}, 1_000_000, "LoRA switches"),
        ({"method": "lora", "options": {"r": 3}}, 1_000_000, "set by lorabudget"),
        ({"method": "sparse"}, 1_000_000, "'sparse' is not allowed"),
        ({"method": "adalora", "r": 1}, 1_000_000, "leaves nothing to reallocate"),  # PEFT's allocator crashed
        ({"method": "adalora", "r": 4, "options": {"target_r": 4}}, 1_000_000, "target_r below r"),
    ],
)
def test_placement_and_option_errors(tiny_roberta, adapter, budget, message):
    with pytest.raises(LorabudgetError, match=message):
        from_dict(
            {"model": {"name": str(tiny_roberta)}, "adapter": adapter, "budget": {"max_trainable_params": budget}}
        )


def test_method_defaults_fill_nulls(tiny_roberta):
    cfg = from_dict({"model": {"name": str(tiny_roberta)}, "adapter": {"method": "vera"}})
    assert cfg.adapter.r == 256 and cfg.training.learning_rate == registry.METHODS["vera"].learning_rate
    cfg = from_dict({"model": {"name": str(tiny_roberta)}, "adapter": {"method": "ia3"}})
    assert cfg.adapter.modules == ["key", "value", "output"]
    cfg = from_dict({"model": {"name": str(tiny_roberta)}})
    assert (cfg.adapter.method, cfg.adapter.r, cfg.adapter.alpha, cfg.training.learning_rate) == ("lora", 8, 16.0, 5e-4)


def test_ia3_scales_get_no_weight_decay(tiny_roberta):
    cfg = method_cfg(tiny_roberta, "ia3")
    model = build_model(cfg).model
    decayed = {id(p) for g in param_groups(model, cfg) if g["weight_decay"] > 0 for p in g["params"]}
    ia3 = [p for n, p in model.named_parameters() if "ia3_l" in n]
    assert ia3 and not any(id(p) in decayed for p in ia3)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_quantized_base_trains_with_falling_loss(padded_batch, tmp_path_factory, quantization):
    import warnings

    from transformers import BertConfig, BertModel

    warnings.simplefilter("ignore")
    # bitsandbytes quantizes in blocks of 64 values: the shared tiny models (hidden 32) are too small.
    model_dir = tmp_path_factory.mktemp("bert64")
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=64,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=64,
        )
    ).save_pretrained(str(model_dir))
    cfg = from_dict(
        {
            "model": {"name": str(model_dir), "quantization": quantization, "max_length": 64},
            "head": {"type": "linear"},
            "adapter": {"r": 4, "dropout": 0.0, "modules": ["query", "value", "intermediate"]},
        }
    )
    planned = breakdown(build_model(cfg, weights=False).model).total
    model = build_model(cfg).model
    assert breakdown(model).total == planned
    kinds = {type(m).__name__ for m in model.modules()}
    assert ("Linear4bit" if quantization == "nf4" else "Linear8bitLt") in kinds
    opt = torch.optim.AdamW(param_groups(model, cfg), lr=2e-2)
    ids, mask = padded_batch(7)
    labels = torch.tensor([0, 1, 2, 3])
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, labels)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
    assert not registry.can_merge("lora", quantized=True)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
def test_importing_peft_through_lorabudget_prints_no_optional_kernels_hint():
    done = subprocess.run(
        [sys.executable, "-c", "import lorabudget, peft, bitsandbytes"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "kernels-community" not in done.stderr + done.stdout


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
def test_quantized_run_trains_across_validation_passes_and_predicts(tmp_path, data_dir):
    """On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights for inference in eval mode; training
    after a validation pass then failed. Several validation passes interleave the steps here."""
    import yaml
    from conftest import make_model_dir

    from lorabudget.cli import main

    # bitsandbytes quantizes in blocks of 64 values: the shared tiny models (hidden 32) are too small.
    model_dir = make_model_dir(tmp_path / "bert64", "bert", hidden_size=64, intermediate_size=128)
    values = {
        "name": "tiny-nf4",
        "model": {"name": str(model_dir), "max_length": 64, "quantization": "nf4"},
        "head": {"type": "linear", "pooling": "mean"},
        "adapter": {"r": 4, "dropout": 0.0, "modules": ["query", "value"]},
        "data": {"train": str(data_dir / "train.csv"), "validation_size": 40, "cache_dir": str(tmp_path / "cache")},
        "training": {"epochs": 2, "batch_size": 16, "eval_every": 3, "seed": 7},
    }
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(values))
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--output", str(run), "--no-report"]) == 0
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["type"] == "eval" for r in evals) >= 4
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), "--input", str(data_dir / "test.csv"), "--output", str(out), "--no-report"]) == 0
    assert len(out.read_text().splitlines()) == 81  # header + 80 rows


@pytest.mark.parametrize(
    "method, adapter, budget",
    [
        ("adalora", {"r": 4, "modules": ["query", "value"]}, 1_000_000),  # the rank-allocation hook runs in the loop
        ("vera", {"r": 32, "modules": ["query", "value"]}, 1_000_000),
        ("ln_tuning", {}, 1_000_000),
        ("full", {}, None),  # a teacher: unlimited budget, every weight saved and reloaded
    ],
)
def test_train_predict_end_to_end(tmp_path, tiny_roberta, data_dir, method, adapter, budget):
    import yaml

    from lorabudget.cli import main

    values = {
        "name": f"tiny-{method}",
        "model": {"name": str(tiny_roberta), "max_length": 64},
        "head": {"type": "linear", "pooling": "mean"},
        "adapter": {"method": method, "dropout": 0.0, **adapter},
        "data": {"train": str(data_dir / "train.csv"), "validation_size": 40, "cache_dir": str(tmp_path / "cache")},
        "training": {"epochs": 2, "batch_size": 16, "log_every": 2, "seed": 7},
        "budget": {"max_trainable_params": budget},
    }
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(values))
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--output", str(run), "--no-report"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    budget_json = json.loads((run / "budget.json").read_text())
    assert summary["method"] == budget_json["method"] == method
    assert summary["trainable_params"] == budget_json["trainable_params"]
    assert budget_json["budget"] == budget
    out = tmp_path / "pred.csv"
    assert (
        main(["predict", str(run), "--input", str(data_dir / "unlabelled.csv"), "--output", str(out), "--no-report"])
        == 0
    )
    assert len(out.read_text().splitlines()) == 81
    assert main(["report", str(run)]) == 0
    assert f"method {method}" in (run / "report.md").read_text()
