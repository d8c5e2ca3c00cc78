"""PEFT-style invariants of the built model: identity at init, frozen base, merge equivalence."""

import pytest
import torch

from lorabudget.config import from_dict
from lorabudget.model.build import build_model


def _cfg(path, head="full", **adapter):
    adapter = {"r": 4, "alpha": 8, "dropout": 0.0, "modules": ["query", "value", "output"], **adapter}
    return from_dict({"model": {"name": str(path)}, "head": {"type": head}, "adapter": adapter})


@pytest.mark.parametrize("model_fixture", ["tiny_roberta", "tiny_bert"])
@pytest.mark.parametrize("head", ["full", "linear"])
def test_lora_equals_base_at_init(padded_batch, request, model_fixture, head):
    model = build_model(_cfg(request.getfixturevalue(model_fixture), head)).model.eval()
    ids, mask = padded_batch()
    with torch.no_grad():
        with_lora = model(input_ids=ids, attention_mask=mask).logits
        with model.disable_adapter():
            base = model(input_ids=ids, attention_mask=mask).logits
    # lora_B starts at zero, so the adapted model computes exactly what the base computes.
    assert torch.equal(with_lora, base)


def test_dora_equals_base_at_init(padded_batch, tiny_roberta):
    model = build_model(_cfg(tiny_roberta, use_dora=True)).model.eval()
    ids, mask = padded_batch()
    with torch.no_grad():
        with_lora = model(input_ids=ids, attention_mask=mask).logits
        with model.disable_adapter():
            base = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(with_lora, base, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("head", ["full", "linear"])
def test_frozen_weights_unchanged_after_a_step(padded_batch, tiny_bert, head):
    model = build_model(_cfg(tiny_bert, head)).model
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert frozen and trainable
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids, mask = padded_batch()
    loss = torch.nn.functional.cross_entropy(
        model(input_ids=ids, attention_mask=mask).logits, torch.tensor([0, 1, 2, 3])
    )
    loss.backward()
    opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    changed = [n for n, p in model.named_parameters() if n in trainable and not torch.equal(p, trainable[n])]
    assert any("lora_B" in n for n in changed) and any("modules_to_save" in n for n in changed)


@pytest.mark.parametrize("model_fixture", ["tiny_roberta", "tiny_bert"])
@pytest.mark.parametrize("head", ["full", "linear"])
def test_merged_equals_unmerged(padded_batch, request, model_fixture, head):
    model = build_model(_cfg(request.getfixturevalue(model_fixture), head, rank_pattern={"output": 2})).model
    torch.manual_seed(1)
    with torch.no_grad():  # make the adapters and head non-trivial
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    ids, mask = padded_batch(3)
    with torch.no_grad():
        unmerged = model(input_ids=ids, attention_mask=mask).logits
        merged_model = model.merge_and_unload()
        merged = merged_model(input_ids=ids, attention_mask=mask).logits
    assert not any("lora_" in n for n, _ in merged_model.named_parameters())
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-5)
