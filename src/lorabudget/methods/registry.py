"""The method seam: one builder per way of spending a budget, on top of PEFT's config classes.

``adapter.method`` picks a :class:`Method` from :data:`METHODS`. A method says where it can be
placed (linear layers, LayerNorms, or the whole model), which of the shared placement fields it
understands (rank, alpha, dropout, per-module ranks), its defaults (measured on MiniLM, see
docs/methods.md), and builds the PEFT config for a list of concrete sites. Nothing else in the
package needs to know which method runs: the budget breakdown reads parameter *kinds* generically
(the name part after the adapted module, e.g. ``lora_A`` or ``vera_lambda_b``), weight decay asks
:func:`no_weight_decay`, and the training loop calls :func:`after_backward` once per optimizer step.

Adding a PEFT method is one more entry in :data:`METHODS` with its builder.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from torch import nn

from lorabudget.errors import LorabudgetError

if TYPE_CHECKING:  # pragma: no cover
    from lorabudget.config import RunConfig
    from lorabudget.model.build import AdapterSite

# Where each short module name lives inside one encoder layer of BERT-family models.
LINEAR_PATHS = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attention_output": "attention.output.dense",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
}
# LayerNorms, named after the sublayer they close (ln_tuning and full fine-tuning use them).
NORM_PATHS = {
    "attention_output": "attention.output.LayerNorm",
    "output": "output.LayerNorm",
}
# Short names shown by the budget breakdown for LayerNorm sites.
NORM_SHORT = {"attention_output": "attention_norm", "output": "output_norm"}


@dataclass(frozen=True)
class Method:
    """How one adapter method spends a budget."""

    name: str
    summary: str
    build: Optional[Callable[["RunConfig", list["AdapterSite"], list[str], int], Any]]
    """(config, sites, head module names, total training steps) -> PEFT config; None for ``full``."""
    placement: str = "linear"
    """``linear``: on the six linear modules; ``norm``: on the LayerNorms; ``model``: everything."""
    default_modules: tuple[str, ...] = ("query", "value")
    uses_rank: bool = False
    default_r: Optional[int] = None
    uses_alpha: bool = False
    uses_dropout: bool = False
    per_module_rank: bool = False
    """Whether ranks/alphas may differ between sites (rank_pattern, placements[].r)."""
    learning_rate: float = 5e-4
    head_learning_rate: Optional[float] = None
    """Recommended rates, used when ``training.learning_rate`` / ``head_learning_rate`` are null."""
    no_decay_kinds: tuple[str, ...] = ()
    """Parameter kinds exempt from weight decay besides every 1-D tensor (e.g. IA3's scales start
    at 1: decay would pull them towards switching the layer off)."""
    note: str = ""
    """Said by ``plan`` (e.g. AdaLoRA: the count is the allocation at start)."""
    options_class: Optional[str] = None
    """Name of the PEFT config class whose fields ``adapter.options`` may set."""
    fixed_options: tuple[str, ...] = field(default=("target_modules", "modules_to_save", "task_type"))
    """PEFT fields lorabudget sets itself from the placement: refused in ``adapter.options``."""


# --------------------------------------------------------------------------------------------
# Builders: each returns a PEFT config for the given sites. Sites carry full module names, so
# PEFT's suffix matching cannot also catch ``attention.output.dense`` when ``output.dense`` is meant.


def _names(sites: list["AdapterSite"]) -> list[str]:
    return [s.name for s in sites]


def _options(cfg: "RunConfig") -> dict[str, Any]:
    return dict(cfg.adapter.options)


def _lora(cfg, sites, heads, total_steps):
    from peft import LoraConfig

    a = cfg.adapter
    return LoraConfig(
        r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout, target_modules=_names(sites),
        rank_pattern={re.escape(s.name): s.r for s in sites if s.r != a.r},
        alpha_pattern={re.escape(s.name): s.alpha for s in sites if s.alpha != a.alpha},
        use_rslora=a.use_rslora, use_dora=a.use_dora, bias="none", modules_to_save=heads,
        **_options(cfg),
    )


def adalora_target_r(a) -> int:
    """The rank AdaLoRA's allocation ends at on average: ``options.target_r``, else half of ``r``."""
    return int(a.options.get("target_r", max(1, a.r // 2)))


def _adalora(cfg, sites, heads, total_steps):
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
        init_r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout, target_modules=_names(sites),
        total_step=total, modules_to_save=heads, **options,
    )


def _vera(cfg, sites, heads, total_steps):
    from peft import VeraConfig

    a = cfg.adapter
    return VeraConfig(r=a.r, vera_dropout=a.dropout, target_modules=_names(sites), modules_to_save=heads, **_options(cfg))


def _vector_length(sites: list["AdapterSite"], model_dims: list[int]) -> int:
    """The longest bank vector that divides every adapted dimension (VB-LoRA requires it)."""
    gcd = 0
    for d in model_dims:
        gcd = math.gcd(gcd, d)
    for length in (256, 128, 96, 64, 48, 32, 16, 8, 4, 2, 1):
        if gcd % length == 0:
            return length
    return 1


def _vblora(cfg, sites, heads, total_steps):
    from peft import VBLoRAConfig

    a = cfg.adapter
    options = _options(cfg)
    options.setdefault("vector_length", _vector_length(sites, [d for s in sites for d in s.dims]))
    options.setdefault("num_vectors", 64)
    return VBLoRAConfig(r=a.r, vblora_dropout=a.dropout, target_modules=_names(sites), modules_to_save=heads, **options)


def _tinylora(cfg, sites, heads, total_steps):
    from peft import TinyLoraConfig

    a = cfg.adapter
    options = _options(cfg)
    options.setdefault("weight_tying", 1.0)  # one trainable vector shared by every adapted module
    options.setdefault("u", 256)
    return TinyLoraConfig(r=a.r, tinylora_dropout=a.dropout, target_modules=_names(sites), modules_to_save=heads, **options)


def _fourierft(cfg, sites, heads, total_steps):
    from peft import FourierFTConfig

    options = _options(cfg)
    options.setdefault("n_frequency", 200)
    return FourierFTConfig(target_modules=_names(sites), modules_to_save=heads, **options)


def _ia3(cfg, sites, heads, total_steps):
    from peft import IA3Config

    # (IA)³ scales the *input* of feed-forward layers (output.dense) and the output of the others.
    feedforward = [s.name for s in sites if s.module == "output"]
    return IA3Config(target_modules=_names(sites), feedforward_modules=feedforward, modules_to_save=heads, **_options(cfg))


def _lycoris(config_class: str):
    """LoHa and LoKr take the same rank/alpha fields and per-module patterns."""

    def build(cfg, sites, heads, total_steps):
        import peft

        a = cfg.adapter
        return getattr(peft, config_class)(
            r=a.r, alpha=a.alpha, target_modules=_names(sites), modules_to_save=heads,
            rank_pattern={re.escape(s.name): s.r for s in sites if s.r != a.r},
            alpha_pattern={re.escape(s.name): s.alpha for s in sites if s.alpha != a.alpha},
            **_options(cfg),
        )

    return build


_loha, _lokr = _lycoris("LoHaConfig"), _lycoris("LoKrConfig")


def _bitfit(cfg, sites, heads, total_steps):
    from peft import BeftConfig

    # PEFT's BEFT adds a trainable bias offset (initialised at zero) to each adapted linear layer:
    # BitFit's bias-only tuning, placed like any other method and mergeable into the bias.
    return BeftConfig(target_modules=_names(sites), modules_to_save=heads, **_options(cfg))


def _ln_tuning(cfg, sites, heads, total_steps):
    from peft import LNTuningConfig

    return LNTuningConfig(target_modules=_names(sites), modules_to_save=heads, **_options(cfg))


ALL_LINEAR = ("query", "key", "value", "attention_output", "intermediate", "output")

METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("lora", "low-rank update B·A per module (rsLoRA and DoRA switches)", _lora,
               uses_rank=True, default_r=8, uses_alpha=True, uses_dropout=True, per_module_rank=True,
               learning_rate=5e-4, no_decay_kinds=("lora_magnitude_vector",), options_class="LoraConfig",
               fixed_options=("target_modules", "modules_to_save", "task_type", "r", "lora_alpha", "lora_dropout",
                              "rank_pattern", "alpha_pattern", "use_rslora", "use_dora")),
        Method("adalora", "LoRA in SVD form whose ranks are reallocated during training (budgeted)", _adalora,
               uses_rank=True, default_r=12, uses_alpha=True, uses_dropout=True, learning_rate=1e-3,
               options_class="AdaLoraConfig",
               note="AdaLoRA: the count is the allocation at the start (init_r = adapter.r on every site); "
                    "training masks ranks down to target_r on average, so the live count never grows",
               fixed_options=("target_modules", "modules_to_save", "task_type", "init_r", "lora_alpha",
                              "lora_dropout", "total_step")),
        Method("vera", "frozen random projections shared by all layers; trains two scaling vectors per module",
               _vera, uses_rank=True, default_r=256, uses_dropout=True, learning_rate=1e-2, head_learning_rate=3e-3,
               options_class="VeraConfig", fixed_options=("target_modules", "modules_to_save", "task_type", "r",
                                                          "vera_dropout")),
        Method("vblora", "one vector bank shared by every adapted module; modules learn top-k mixing logits",
               _vblora, uses_rank=True, default_r=4, uses_dropout=True, learning_rate=1e-2, head_learning_rate=3e-3,
               options_class="VBLoRAConfig", fixed_options=("target_modules", "modules_to_save", "task_type", "r",
                                                            "vblora_dropout")),
        Method("tinylora", "SVD of the frozen weights steered by a tiny trainable vector, tied across layers",
               _tinylora, uses_rank=True, default_r=2, uses_dropout=True, learning_rate=1e-2, head_learning_rate=3e-3,
               options_class="TinyLoraConfig", fixed_options=("target_modules", "modules_to_save", "task_type", "r",
                                                              "tinylora_dropout")),
        Method("fourierft", "a few trainable spectral coefficients per module (inverse DFT to a weight update)",
               _fourierft, learning_rate=5e-2, head_learning_rate=3e-3, options_class="FourierFTConfig"),
        Method("ia3", "learned rescaling of keys, values and feed-forward activations", _ia3,
               default_modules=("key", "value", "output"), learning_rate=1e-2, head_learning_rate=3e-3,
               no_decay_kinds=("ia3_l",), options_class="IA3Config",
               fixed_options=("target_modules", "modules_to_save", "task_type", "feedforward_modules")),
        Method("loha", "low-rank Hadamard product update (LyCORIS)", _loha, uses_rank=True, default_r=4,
               uses_alpha=True, per_module_rank=True, learning_rate=1e-3, options_class="LoHaConfig",
               fixed_options=("target_modules", "modules_to_save", "task_type", "r", "alpha", "rank_pattern",
                              "alpha_pattern")),
        Method("lokr", "Kronecker-product update with a low-rank factor (LyCORIS)", _lokr, uses_rank=True,
               default_r=4, uses_alpha=True, per_module_rank=True, learning_rate=1e-3, options_class="LoKrConfig",
               fixed_options=("target_modules", "modules_to_save", "task_type", "r", "alpha", "rank_pattern",
                              "alpha_pattern")),
        Method("bitfit", "bias offsets only (PEFT BEFT on the placed linear modules)", _bitfit,
               default_modules=ALL_LINEAR, learning_rate=3e-3, head_learning_rate=3e-3, options_class="BeftConfig"),
        Method("ln_tuning", "LayerNorm weights and biases only (copies trained, originals kept)", _ln_tuning,
               placement="norm", default_modules=("attention_output", "output"), learning_rate=3e-3,
               head_learning_rate=3e-3, options_class="LNTuningConfig"),
        Method("full", "every weight trained: a teacher, allowed only with an unlimited budget", None,
               placement="model", default_modules=(), learning_rate=5e-5, head_learning_rate=1e-3),
    ]
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise LorabudgetError(f"unknown adapter.method '{name}'; methods: " + ", ".join(METHODS)) from None


# --------------------------------------------------------------------------------------------
# Config: per-method defaults and what each method refuses.


def resolve_defaults(cfg: "RunConfig") -> None:
    """Fill the null fields a method decides (rank, alpha, modules, learning rates) in place."""
    a, t = cfg.adapter, cfg.training
    method = get_method(a.method)
    if a.r is None:
        a.r = method.default_r or 8
    if a.alpha is None:
        a.alpha = float(2 * a.r)
    if a.modules is None:
        a.modules = list(method.default_modules)
    if t.learning_rate is None:
        t.learning_rate = method.learning_rate
    if t.head_learning_rate is None and method.head_learning_rate is not None:
        t.head_learning_rate = method.head_learning_rate


def check_config(cfg: "RunConfig") -> None:
    """Refuse settings the chosen method cannot honour, naming the key."""
    a = cfg.adapter
    method = get_method(a.method)
    name = method.name
    if method.placement == "model":
        if a.placements or a.layers is not None or (a.modules and list(a.modules) != list(method.default_modules)):
            raise LorabudgetError(f"adapter.method '{name}' trains every weight: remove adapter.modules/layers/placements")
        if cfg.budget.max_trainable_params is not None:
            raise LorabudgetError(
                f"adapter.method '{name}' trains every weight and is for teachers only: set "
                "budget.max_trainable_params: null (unlimited) to use it"
            )
    if method.placement == "norm":
        groups = a.placements or [a]
        for group in groups:
            bad = [m for m in (group.modules or []) if m not in NORM_PATHS]
            if bad:
                raise LorabudgetError(
                    f"adapter.method '{name}' tunes LayerNorms, which close the attention_output and output "
                    f"sublayers; '{bad[0]}' has none: use modules from " + ", ".join(NORM_PATHS)
                )
    if not method.per_module_rank:
        varied = [f"placements[{i}].{k}" for i, p in enumerate(a.placements) for k in ("r", "alpha") if getattr(p, k) is not None]
        varied += [k for k in ("rank_pattern", "alpha_pattern") if getattr(a, k)]
        if varied:
            raise LorabudgetError(
                f"adapter.method '{name}' cannot give modules different ranks or alphas; remove adapter.{varied[0]}"
            )
    if name != "lora" and (a.use_rslora or a.use_dora):
        raise LorabudgetError(f"adapter.use_rslora/use_dora are LoRA switches; adapter.method is '{name}'")
    if name == "adalora" and a.r is not None and adalora_target_r(a) >= a.r:
        # PEFT's allocator fails at its first reallocation then (kthvalue of an empty selection).
        raise LorabudgetError(
            f"adapter.method 'adalora' reallocates rank from adapter.r={a.r} down to target_r="
            f"{adalora_target_r(a)}, which leaves nothing to reallocate: use r >= 2 with target_r below r"
        )
    if a.options:
        if method.options_class is None:
            raise LorabudgetError(f"adapter.method '{name}' takes no adapter.options")
        import peft

        fields = {f.name for f in dataclasses.fields(getattr(peft, method.options_class))}
        for key in a.options:
            if key in method.fixed_options:
                raise LorabudgetError(
                    f"config key 'adapter.options.{key}' is set by lorabudget from the placement and "
                    f"adapter fields; remove it"
                )
            if key not in fields:
                allowed = sorted(fields - set(method.fixed_options) - {"peft_type", "auto_mapping", "revision",
                                                                       "base_model_name_or_path", "inference_mode"})
                raise LorabudgetError(
                    f"unknown config key 'adapter.options.{key}' for method '{name}' (PEFT {method.options_class}); "
                    "allowed: " + ", ".join(allowed)
                )


# --------------------------------------------------------------------------------------------
# Training-time hooks, generic over methods.


def no_weight_decay(method_name: str, param_name: str, param: nn.Parameter) -> bool:
    """Biases, norms and other 1-D tensors, plus each method's scale-like kinds, get no weight decay."""
    if param.ndim < 2:
        return True
    return any(f".{kind}." in param_name or param_name.endswith(f".{kind}") for kind in get_method(method_name).no_decay_kinds)


def after_backward(model: nn.Module, method_name: str, step: int) -> None:
    """Once per optimizer step, after backward and before zero_grad (AdaLoRA's rank allocation)."""
    if method_name == "adalora":
        base = getattr(model, "base_model", model)
        base.update_and_allocate(step)


def training_state(model: nn.Module, method_name: str) -> dict[str, Any]:
    """What a method keeps outside its parameters while training, for a resume checkpoint.

    AdaLoRA: the allocator's smoothed importance scores (they decide which ranks are masked next) and
    the rank pattern fixed so far. Other methods keep nothing.
    """
    if method_name != "adalora":
        return {}
    base = getattr(model, "base_model", model)
    allocator = base.rankallocator
    return {
        "ipt": dict(allocator.ipt), "exp_avg_ipt": dict(allocator.exp_avg_ipt),
        "exp_avg_unc": dict(allocator.exp_avg_unc),
        "rank_pattern": base.peft_config[base.trainable_adapter_name].rank_pattern,
    }


def restore_training_state(model: nn.Module, method_name: str, state: dict[str, Any]) -> None:
    """The inverse of :func:`training_state`."""
    if method_name != "adalora" or not state:
        return
    base = getattr(model, "base_model", model)
    allocator = base.rankallocator
    # The allocator's keys are the wrapped model's parameter names; the checkpoint was loaded on the CPU.
    devices = {name: p.device for name, p in base.model.named_parameters()}

    def placed(scores: dict) -> dict:
        return {name: t.to(devices.get(name, t.device)) for name, t in scores.items()}

    allocator.ipt, allocator.exp_avg_ipt, allocator.exp_avg_unc = (
        placed(state["ipt"]), placed(state["exp_avg_ipt"]), placed(state["exp_avg_unc"]))
    base.peft_config[base.trainable_adapter_name].rank_pattern = state["rank_pattern"]


def can_merge(method_name: str, quantized: bool) -> bool:
    """Whether adapters may be folded into the base weights for inference.

    A quantized base would be re-quantized by a merge (outputs change), so it runs unmerged.
    ``full`` has nothing to merge.
    """
    return not quantized and method_name != "full"
