"""The PEFT config builders, one per method, and the training-time hooks of the methods that need them.

A builder takes ``(config, sites, head module names, total training steps)`` and returns the method's
PEFT config for exactly those sites; the registry (``registry.METHODS``) names each builder.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from lorabudget.errors import LorabudgetError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from lorabudget.config import RunConfig
    from lorabudget.model.placement import AdapterSite

# Builders: each returns a PEFT config for the given sites. Sites carry full module names, so
# PEFT's suffix matching cannot also catch ``attention.output.dense`` when ``output.dense`` is meant.


def _names(sites: list["AdapterSite"]) -> list[str]:
    return [s.name for s in sites]


def _options(cfg: "RunConfig") -> dict[str, Any]:
    return dict(cfg.adapter.options)


def build_lora(cfg, sites, heads, total_steps):
    from peft import LoraConfig

    a = cfg.adapter
    return LoraConfig(
        r=a.r,
        lora_alpha=a.alpha,
        lora_dropout=a.dropout,
        target_modules=_names(sites),
        rank_pattern={re.escape(s.name): s.r for s in sites if s.r != a.r},
        alpha_pattern={re.escape(s.name): s.alpha for s in sites if s.alpha != a.alpha},
        use_rslora=a.use_rslora,
        use_dora=a.use_dora,
        bias="none",
        modules_to_save=heads,
        **_options(cfg),
    )


def adalora_target_r(a) -> int:
    """The rank AdaLoRA's allocation ends at on average: ``options.target_r``, else half of ``r``."""
    return int(a.options.get("target_r", max(1, a.r // 2)))


def adalora_check(a) -> None:
    """PEFT's allocator fails at its first reallocation (kthvalue of an empty selection) when there is
    nothing to reallocate."""
    if a.r is not None and adalora_target_r(a) >= a.r:
        raise LorabudgetError(
            f"adapter.method 'adalora' reallocates rank from adapter.r={a.r} down to target_r="
            f"{adalora_target_r(a)}, which leaves nothing to reallocate: use r >= 2 with target_r below r"
        )


def build_adalora(cfg, sites, heads, total_steps):
    from peft import AdaLoraConfig

    a = cfg.adapter
    options = _options(cfg)
    # PEFT's schedule: init_r for tinit steps, cubic decrease to target_r until total - tfinal.
    total = max(int(total_steps), 10)
    options["target_r"] = adalora_target_r(a)
    options.setdefault("tinit", int(0.1 * total))
    options.setdefault("tfinal", int(0.3 * total))
    options.setdefault("deltaT", max(1, total // 50))
    return AdaLoraConfig(
        init_r=a.r,
        lora_alpha=a.alpha,
        lora_dropout=a.dropout,
        target_modules=_names(sites),
        total_step=total,
        modules_to_save=heads,
        **options,
    )


def build_vera(cfg, sites, heads, total_steps):
    from peft import VeraConfig

    a = cfg.adapter
    return VeraConfig(
        r=a.r, vera_dropout=a.dropout, target_modules=_names(sites), modules_to_save=heads, **_options(cfg)
    )


def _vector_length(sites: list["AdapterSite"], model_dims: list[int]) -> int:
    """The longest bank vector that divides every adapted dimension (VB-LoRA requires it)."""
    gcd = 0
    for d in model_dims:
        gcd = math.gcd(gcd, d)
    for length in (256, 128, 96, 64, 48, 32, 16, 8, 4, 2, 1):
        if gcd % length == 0:
            return length
    return 1


def build_vblora(cfg, sites, heads, total_steps):
    from peft import VBLoRAConfig

    a = cfg.adapter
    options = _options(cfg)
    options.setdefault("vector_length", _vector_length(sites, [d for s in sites for d in s.dims]))
    options.setdefault("num_vectors", 64)
    return VBLoRAConfig(r=a.r, vblora_dropout=a.dropout, target_modules=_names(sites), modules_to_save=heads, **options)


def build_tinylora(cfg, sites, heads, total_steps):
    from peft import TinyLoraConfig

    a = cfg.adapter
    options = _options(cfg)
    options.setdefault("weight_tying", 1.0)  # one trainable vector shared by every adapted module
    options.setdefault("u", 256)
    return TinyLoraConfig(
        r=a.r, tinylora_dropout=a.dropout, target_modules=_names(sites), modules_to_save=heads, **options
    )


def build_fourierft(cfg, sites, heads, total_steps):
    from peft import FourierFTConfig

    options = _options(cfg)
    options.setdefault("n_frequency", 200)
    return FourierFTConfig(target_modules=_names(sites), modules_to_save=heads, **options)


def build_ia3(cfg, sites, heads, total_steps):
    from peft import IA3Config

    # (IA)³ scales the *input* of feed-forward layers (output.dense) and the output of the others.
    feedforward = [s.name for s in sites if s.module == "output"]
    return IA3Config(
        target_modules=_names(sites), feedforward_modules=feedforward, modules_to_save=heads, **_options(cfg)
    )


def _lycoris(config_class: str):
    """LoHa and LoKr take the same rank/alpha fields and per-module patterns."""

    def build(cfg, sites, heads, total_steps):
        import peft

        a = cfg.adapter
        return getattr(peft, config_class)(
            r=a.r,
            alpha=a.alpha,
            target_modules=_names(sites),
            modules_to_save=heads,
            rank_pattern={re.escape(s.name): s.r for s in sites if s.r != a.r},
            alpha_pattern={re.escape(s.name): s.alpha for s in sites if s.alpha != a.alpha},
            **_options(cfg),
        )

    return build


build_loha, build_lokr = _lycoris("LoHaConfig"), _lycoris("LoKrConfig")


def build_bitfit(cfg, sites, heads, total_steps):
    from peft import BeftConfig

    # PEFT's BEFT adds a trainable bias offset (initialised at zero) to each adapted linear layer:
    # BitFit's bias-only tuning, placed like any other method and mergeable into the bias.
    return BeftConfig(target_modules=_names(sites), modules_to_save=heads, **_options(cfg))


def build_ln_tuning(cfg, sites, heads, total_steps):
    from peft import LNTuningConfig

    return LNTuningConfig(target_modules=_names(sites), modules_to_save=heads, **_options(cfg))


# --------------------------------------------------------------------------------------------
# Training-time hooks


def _peft_base(model: "nn.Module"):
    return getattr(model, "base_model", model)


def adalora_after_optimizer_step(model: "nn.Module", step: int) -> None:
    """AdaLoRA's rank allocation, once per optimizer step after backward and before zero_grad."""
    _peft_base(model).update_and_allocate(step)


def adalora_training_state(model: "nn.Module") -> dict[str, Any]:
    """The allocator's smoothed importance scores (they decide which ranks are masked next) and the
    rank pattern fixed so far: what a resume checkpoint must keep besides the parameters."""
    base = _peft_base(model)
    allocator = base.rankallocator
    return {
        "ipt": dict(allocator.ipt),
        "exp_avg_ipt": dict(allocator.exp_avg_ipt),
        "exp_avg_unc": dict(allocator.exp_avg_unc),
        "rank_pattern": base.peft_config[base.trainable_adapter_name].rank_pattern,
    }


def adalora_restore_training_state(model: "nn.Module", state: dict[str, Any]) -> None:
    """The inverse of :func:`adalora_training_state`."""
    base = _peft_base(model)
    allocator = base.rankallocator
    # The allocator's keys are the wrapped model's parameter names; the checkpoint was loaded on the CPU.
    devices = {name: p.device for name, p in base.model.named_parameters()}

    def placed(scores: dict) -> dict:
        return {name: t.to(devices.get(name, t.device)) for name, t in scores.items()}

    allocator.ipt, allocator.exp_avg_ipt, allocator.exp_avg_unc = (
        placed(state["ipt"]),
        placed(state["exp_avg_ipt"]),
        placed(state["exp_avg_unc"]),
    )
    base.peft_config[base.trainable_adapter_name].rank_pattern = state["rank_pattern"]


def tinylora_tensor_users(model: "nn.Module") -> dict[int, int]:
    """How many adapted modules use each TinyLoRA vector (keyed by tensor id).

    TinyLoRA keeps all its vectors in one dict every adapted module can reach; each module uses only
    the vector its ``_tinylora_v_key`` names (weight tying decides how many share one).
    """
    users: dict[int, int] = {}
    for module in model.modules():
        keys = getattr(module, "_tinylora_v_key", None)
        store = getattr(module, "tinylora_v", None)
        if not keys or store is None:
            continue
        for adapter, v_key in keys.items():
            key = id(store[adapter][v_key])
            users[key] = users.get(key, 0) + 1
    return users
