"""The frozen-prefix cache (``training.cache_frozen_layers``): the split forward equals the full model on
every family, the depth is right for every method, a run with the cache trains the same weights as one
without, the warm cache is reused, broken cache files are rebuilt, ``true`` is refused where it cannot
work, ``cache info|clear`` list it and search trials share it."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILY_KINDS
from method_cases import METHOD_SETTINGS
from test_families import _batch, family_cfg

from lorabudget.model.build import build_model
from lorabudget.model.prefix import frozen_prefix_depth, split_refusal
from lorabudget.model.prefix_forward import capture, from_layer

SPLITTABLE = [k for k in FAMILY_KINDS if k != "albert"]  # ALBERT applies one set of weights in every layer


@pytest.mark.parametrize("head", ["linear", "full"])
@pytest.mark.parametrize("kind", SPLITTABLE)
def test_split_forward_equals_the_full_model(family_model_dir, kind, head):
    """Cached states entering layer k + layers k.. and the head == the whole model, in eval mode."""
    cfg = family_cfg(family_model_dir(kind), kind, "lora", head=head, pooling="mean")
    cfg.adapter.modules, cfg.adapter.layers = ["attention_output"], [2]
    model = build_model(cfg, weights=True).model.eval()
    depth = frozen_prefix_depth(model)
    assert depth == 2 and split_refusal(model, depth) is None
    ids, mask = _batch()
    with torch.no_grad():
        whole = model(input_ids=ids, attention_mask=mask).logits
        for k in (1, 2):
            hidden = capture(model, k, {"input_ids": ids, "attention_mask": mask})
            hidden = hidden * mask[..., None]  # the cache holds each row at its own length: zeros after it
            with from_layer(model, k, hidden):
                split = model(input_ids=ids, attention_mask=mask).logits
            torch.testing.assert_close(split, whole, rtol=0, atol=1e-5)
        again = model(input_ids=ids, attention_mask=mask).logits  # the layer list is whole again
    torch.testing.assert_close(again, whole, rtol=0, atol=0)


@pytest.mark.parametrize("method", list(METHOD_SETTINGS))
def test_depth_of_every_method(tiny_roberta, method):
    """Adapters on the top layer only: k = 2 of 3 for every method (shared banks count where their users
    are; bitfit and ln_tuning placements sit inside the layer); ``full`` trains the embeddings: 0."""
    cfg = family_cfg(tiny_roberta, "roberta", method)
    if method != "full":
        cfg.adapter.layers = [2]
    assert frozen_prefix_depth(build_model(cfg, weights=False).model) == (0 if method == "full" else 2)
    if method != "full":
        cfg.adapter.layers = [0, 2]
        assert frozen_prefix_depth(build_model(cfg, weights=False).model) == 0


def test_a_trainable_final_norm_sits_above_the_layers(family_model_dir):
    cfg = family_cfg(family_model_dir("modernbert"), "modernbert", "lora")
    cfg.adapter.layers = [1]
    model = build_model(cfg, weights=False).model
    model.base_model.model.backbone.final_norm.weight.requires_grad_(True)
    assert frozen_prefix_depth(model) == 1
    model.base_model.model.backbone.embeddings.norm.weight.requires_grad_(True)
    assert frozen_prefix_depth(model) == 0
