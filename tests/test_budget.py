"""Exact budgeting: the starting point's published counts, and plan == live == optimizer."""

import pytest

from lorabudget.config import from_dict, load_config
from lorabudget.errors import BudgetExceededError, LorabudgetError
from lorabudget.model.budget import breakdown, check_budget, format_breakdown
from lorabudget.model.build import build_model
from lorabudget.training.setup import param_groups


@pytest.mark.parametrize(
    "preset,expected",
    [("seed-lora", 888_580), ("seed-distill-student", 925_444), ("seed-reduced", 814_852), ("seed-targeted", 796_420)],
)
def test_seed_presets_exact_counts(preset, expected):
    # roberta-base is not downloadable here: planning uses its published architecture config.
    cfg = load_config(preset)
    b = breakdown(build_model(cfg, weights=False).model)
    assert b.total == expected
    assert b.head == 593_668  # RoBERTa's own head for 4 classes
    assert b.other == {}


def test_linear_head_on_roberta_base_is_3076():
    cfg = load_config("seed-lora", ["head.type=linear"])
    b = breakdown(build_model(cfg, weights=False).model)
    assert b.head == 3_076
    assert b.total == 888_580 - 593_668 + 3_076


def test_seed_targeted_breakdown_by_site():
    cfg = load_config("seed-targeted")
    b = breakdown(build_model(cfg, weights=False).model)
    assert b.lora == {
        (0, "query"): 18_432,
        (0, "key"): 18_432,
        (0, "value"): 18_432,
        (1, "query"): 18_432,
        (5, "query"): 18_432,
        (10, "query"): 18_432,
        (10, "output"): 46_080,
        (11, "output"): 46_080,
    }


PLACEMENTS = [
    {"modules": ["query", "value"]},
    {"modules": ["query", "key", "value", "attention_output", "intermediate", "output"], "layers": [0, 2]},
    {
        "r": 3,
        "placements": [
            {"layers": [0], "modules": ["query", "key"], "r": 5},
            {"layers": [1, 2], "modules": ["output"], "alpha": 4},
        ],
    },
    {"modules": ["value", "intermediate"], "rank_pattern": {"intermediate": 2}, "alpha_pattern": {"value": 3}},
    {"modules": ["query", "value"], "use_dora": True},
    {"modules": ["key"], "use_rslora": True, "layers": [1]},
]


@pytest.mark.parametrize("head", ["full", "linear"])
@pytest.mark.parametrize("model", ["tiny_roberta", "tiny_bert"])
@pytest.mark.parametrize("adapter", PLACEMENTS, ids=range(len(PLACEMENTS)))
def test_plan_equals_live_equals_optimizer(request, model, head, adapter):
    path = request.getfixturevalue(model)
    cfg = from_dict({"model": {"name": str(path)}, "head": {"type": head}, "adapter": adapter})
    planned = breakdown(build_model(cfg, weights=False).model)
    live_model = build_model(cfg, weights=True).model
    live = breakdown(live_model)
    assert planned.total == live.total == sum(p.numel() for p in live_model.parameters() if p.requires_grad)
    assert planned.lora == live.lora and planned.head == live.head
    assert live.other == {}
    optimized = sum(p.numel() for g in param_groups(live_model, cfg) for p in g["params"])
    assert optimized == live.total


def test_rank_overrides_reach_peft(tiny_roberta):
    cfg = from_dict(
        {
            "model": {"name": str(tiny_roberta)},
            "adapter": {
                "r": 3,
                "placements": [{"layers": [0], "modules": ["query"], "r": 5}, {"layers": [1], "modules": ["query"]}],
            },
        }
    )
    model = build_model(cfg).model
    layers = model.base_model.model.roberta.encoder.layer
    assert layers[0].attention.self.query.lora_A["default"].weight.shape[0] == 5
    assert layers[1].attention.self.query.lora_A["default"].weight.shape[0] == 3
    assert not hasattr(layers[2].attention.self.query, "lora_A")
    # "output" must not also adapt attention.output.dense (PEFT suffix matching would).
    cfg = from_dict({"model": {"name": str(tiny_roberta)}, "adapter": {"modules": ["output"]}})
    layer = build_model(cfg).model.base_model.model.roberta.encoder.layer[0]
    assert hasattr(layer.output.dense, "lora_A") and not hasattr(layer.attention.output.dense, "lora_A")


def test_bad_layer_and_missing_module(tiny_roberta):
    cfg = from_dict({"model": {"name": str(tiny_roberta)}, "adapter": {"layers": [0, 3]}})
    with pytest.raises(LorabudgetError, match=r"layer 3 is out of range; this model has layers 0..2"):
        build_model(cfg, weights=False)


def test_budget_guard_and_breakdown_text(tiny_roberta):
    cfg = from_dict({"model": {"name": str(tiny_roberta)}, "budget": {"max_trainable_params": 100}})
    b = breakdown(build_model(cfg, weights=False).model)
    with pytest.raises(BudgetExceededError, match="exceed the budget of 100"):
        check_budget(b, 100)
    text = format_breakdown(b, 100)
    assert "OVER budget" in text and f"{b.total:,}" in text and "classification head" in text
    assert "WITHIN budget" in format_breakdown(b, b.total)


@pytest.mark.parametrize(
    "preset,expected,budget,head",
    [
        ("mpnet-cpu", 666_628, 10**6, 3_076),
        ("mpnet-cpu-100k", 86_020, 10**5, 3_076),
        # head.type auto: the linear head (3,076) is over a quarter of 10k, so low_rank r=3: 3·(768 + 4) + 4.
        ("mpnet-cpu-10k", 6_144 + 2_320, 10**4, 2_320),
    ],
)
def test_mpnet_presets_exact_counts_offline(preset, expected, budget, head, monkeypatch):
    # Without the [mpnet] packages `plan` counts from all-mpnet-base-v2's built-in published config;
    # with them, from the unpacked model's config.json: the same architecture, the same count.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = load_config(preset)
    b = breakdown(build_model(cfg, weights=False).model)
    assert b.total == expected and b.head == head
    assert cfg.budget.max_trainable_params == budget
    assert b.other == {}
    if preset == "mpnet-cpu-10k":  # (IA)3 vectors on key and value of the top four layers only
        assert b.lora == {(layer, module): 768 for layer in (8, 9, 10, 11) for module in ("key", "value")}
    elif preset == "mpnet-cpu-100k":  # LoRA r=1 on the six modules of the top six layers
        assert {layer for layer, _ in b.lora} == set(range(6, 12)) and len(b.lora) == 36
    else:
        assert {layer for layer, _ in b.lora} == set(range(12)) and len(b.lora) == 72
