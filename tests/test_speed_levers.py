"""The CPU training levers: cheap dropout masks and a bf16 frozen base under autocast."""

import pytest
import torch

from lorabudget.config import from_dict
from lorabudget.model.build import build_model
from lorabudget.model.dropout import FastDropout, keep_mask, use_fast_dropout
from lorabudget.model.precision import frozen_base_in


def _model(path, dropout=0.1, head="linear"):
    cfg = from_dict(
        {
            "model": {"name": str(path)},
            "head": {"type": head},
            "adapter": {"r": 4, "alpha": 8, "dropout": dropout, "modules": ["query", "value", "output"]},
        }
    )
    return build_model(cfg).model


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_fast_dropout_drops_at_the_rate_and_keeps_the_expectation(p):
    torch.manual_seed(0)
    x = torch.rand(1000, 1000) + 0.5
    y = FastDropout(p).train()(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 5 * (p * (1 - p) / x.numel()) ** 0.5 + 1 / 32768  # 5 standard errors
    kept = y != 0
    # kept elements are scaled by one over the exact keep rate of the quantised probability
    cut = round(p * 32768)
    torch.testing.assert_close(y[kept], x[kept] * 32768 / (32768 - cut))
    assert abs(y.mean().item() / x.mean().item() - 1) < 0.01
    # neighbouring elements (the two halves of one random draw) are not correlated
    a, b = kept.flatten()[: x.numel() // 2].float(), kept.flatten()[x.numel() // 2 :].float()
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 0.01


def test_fast_dropout_is_seeded_by_torch_and_differentiable():
    x = torch.randn(7, 33, requires_grad=True)  # odd sizes: the last draw is half used
    torch.manual_seed(3)
    y1 = FastDropout(0.2)(x)
    torch.manual_seed(3)
    y2 = FastDropout(0.2)(x)
    assert torch.equal(y1, y2)
    y1.sum().backward()
    torch.testing.assert_close(x.grad, torch.where(y1 != 0, y1 / x, torch.zeros_like(x)))  # the mask × scale
    # eval mode and p=0 are the identity; the mask has the input's shape
    assert torch.equal(FastDropout(0.2).eval()(x), x) and torch.equal(FastDropout(0.0)(x), x)
    assert keep_mask(torch.Size([3, 5, 7]), 0.1)[0].shape == (3, 5, 7)


def test_use_fast_dropout_replaces_every_dropout_and_changes_no_state(tiny_bert):
    model = _model(tiny_bert)
    keys = set(model.state_dict())
    plain = [m for m in model.modules() if type(m) is torch.nn.Dropout]
    assert plain and any("lora_dropout" in n for n, m in model.named_modules() if type(m) is torch.nn.Dropout)
    assert use_fast_dropout(model) == len(plain)
    assert not [m for m in model.modules() if type(m) is torch.nn.Dropout]
    assert set(model.state_dict()) == keys
    ids = torch.randint(5, 40, (3, 9))
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    model.train()
    torch.manual_seed(0)
    train_out = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert torch.isfinite(train_out).all() and not torch.equal(train_out, out)  # dropout is on in training


@pytest.mark.parametrize("model_fixture", ["tiny_roberta", "tiny_bert"])
def test_frozen_base_in_bf16_stays_close_to_autocast_and_is_restored(request, model_fixture):
    model = _model(request.getfixturevalue(model_fixture), dropout=0.0, head="full").eval()
    for p in model.parameters():
        if p.requires_grad:  # non-zero adapters, so the adapter path counts in the comparison
            torch.nn.init.normal_(p, std=0.05)
    before = {n: p for n, p in model.named_parameters()}
    frozen = [n for n, p in before.items() if not p.requires_grad]
    input_casts = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")]
    assert input_casts and all(m.cast_input_dtype_enabled for m in input_casts)
    ids = torch.randint(5, 40, (3, 9))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        reference = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        with frozen_base_in(model, torch.bfloat16) as cast:
            inside = dict(model.named_parameters())
            assert cast == len(frozen) > 0  # embeddings, LayerNorms and biases too, not only linear weights
            assert any("LayerNorm" in n or "embeddings" in n for n in frozen)
            assert all(inside[n].dtype == torch.bfloat16 for n in frozen)
            assert all(p.dtype == torch.float32 for p in inside.values() if p.requires_grad)
            assert not any(m.cast_input_dtype_enabled for m in input_casts)  # autocast would undo PEFT's cast
            cached = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    # A bf16 residual stream (LayerNorms, embeddings) rounds more than autocast alone: close, not equal.
    assert not torch.equal(cached, reference)
    torch.testing.assert_close(cached.float(), reference.float(), rtol=0.05, atol=0.02)
    after = dict(model.named_parameters())
    assert all(after[n] is p and p.dtype == torch.float32 for n, p in before.items())  # the same tensors back
    assert all(m.cast_input_dtype_enabled for m in input_casts)
    with frozen_base_in(model, None) as cast:
        assert cast == 0


@pytest.mark.parametrize("model_fixture", ["tiny_roberta", "tiny_bert"])
def test_fast_attention_dropout_is_the_math_path_with_cheaper_masks_and_is_restored(
    request, model_fixture, monkeypatch
):
    from lorabudget.model import dropout
    from lorabudget.model.dropout import FAST_DROPOUT_ATTENTION, fast_attention_dropout

    masks = []
    monkeypatch.setattr(dropout, "keep_mask", lambda shape, p: masks.append(shape) or keep_mask(shape, p))

    model = _model(request.getfixturevalue(model_fixture), dropout=0.0)
    encoder_config = next(
        m.config for m in model.modules() if hasattr(m, "config") and hasattr(m.config, "_attn_implementation")
    )
    assert encoder_config._attn_implementation == "sdpa"
    ids = torch.randint(5, 40, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0  # padded keys: the bool mask path

    attention = [
        m
        for m in model.modules()
        if hasattr(m, "is_causal") and isinstance(getattr(m, "dropout", None), torch.nn.Dropout)
    ]
    assert attention and all(m.dropout.p > 0 for m in attention)
    for m in model.modules():  # only the attention probabilities drop: the rest is deterministic
        if isinstance(m, torch.nn.Dropout) and not any(m is a.dropout for a in attention):
            m.p = 0.0

    def logits(train: bool, seed: int = 0):
        model.train(train)
        torch.manual_seed(seed)
        return model(input_ids=ids, attention_mask=mask).logits

    reference_eval = logits(False)
    with fast_attention_dropout(model) as switched:
        assert switched >= 1 and encoder_config._attn_implementation == FAST_DROPOUT_ATTENTION
        assert torch.equal(logits(False), reference_eval)  # evaluation: transformers' SDPA itself
        assert not masks
        first, again, other = logits(True, 0), logits(True, 0), logits(True, 1)
        assert len(masks) == 3 * len(attention) and all(len(shape) == 4 for shape in masks)  # [B, heads, T, T]
        saved_p = [m.dropout.p for m in attention]
        for m in attention:
            m.dropout.p = 1e-9  # rounds to no drop: the math path alone
        no_drop = logits(True)
        for m, p in zip(attention, saved_p):
            m.dropout.p = p
    assert torch.equal(first, again) and not torch.equal(first, other)  # seeded by torch, and it drops
    torch.testing.assert_close(no_drop, reference_eval, rtol=1e-5, atol=1e-5)  # same attention as SDPA's
    assert encoder_config._attn_implementation == "sdpa"


@pytest.mark.parametrize("mask_kind", ["bool", "additive_fp32", "none"])
def test_fast_attention_keeps_bf16_inputs_in_bf16_and_stays_close_to_fp32(mask_kind):
    from lorabudget.model.dropout import fast_dropout_attention

    module = torch.nn.Module().train()
    module.is_causal = False
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8) for _ in range(3))
    keep = torch.ones(2, 1, 7, 7, dtype=torch.bool)
    keep[1, ..., 5:] = False  # padded keys
    mask = {
        "bool": keep,
        "additive_fp32": torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min),
        "none": None,
    }[mask_kind]
    fp32, _ = fast_dropout_attention(module, q, k, v, mask, dropout=1e-9)  # rounds to no drop: the math path alone
    bf16, _ = fast_dropout_attention(module, q.bfloat16(), k.bfloat16(), v.bfloat16(), mask, dropout=1e-9)
    assert fp32.dtype == torch.float32 and bf16.dtype == torch.bfloat16 and fp32.shape == (2, 7, 3, 8)
    assert torch.isfinite(bf16).all()
    torch.testing.assert_close(bf16.float(), fp32, rtol=0.05, atol=0.05)
    assert not torch.equal(bf16.float(), fp32)  # the bf16 products really ran in bf16
