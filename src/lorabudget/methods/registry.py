"""The method registry: one entry per way of spending a budget, on top of PEFT's config classes.

``adapter.method`` picks a :class:`Method` from :data:`METHODS`. Everything else derives from this
table: config validation and defaults (:func:`resolve_defaults`, :func:`check_config`), the search
space's method lists (placement, ranks, default options), mergeability, weight decay, and a method's
own training-time behaviour (AdaLoRA's rank allocator) through the hooks the training loop calls
(:func:`after_optimizer_step`, :func:`training_state`). The budget breakdown reads parameter *kinds*
generically (the name part after the adapted module, e.g. ``lora_A`` or ``vera_lambda_b``).

Adding a PEFT method is its builder in ``builders.py`` and one :class:`Method` entry below (plus docs).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from lorabudget.errors import LorabudgetError
from lorabudget.methods import builders
from lorabudget.methods.sites import MODULE_SHORT_NAMES, NORM_SHORT

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from lorabudget.methods.sites import AdapterSite
    from lorabudget.runconfig import RunConfig


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
    needs_bias: bool = False
    """Whether each placed Linear must have a bias (BitFit's offsets merge into it; ModernBERT has none)."""
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
    lora_switches: bool = False
    """Whether ``adapter.use_rslora``/``use_dora`` apply."""
    check: Optional[Callable[[Any], None]] = None
    """Refuses adapter settings (``cfg.adapter``) only this method cannot honour, with one error line."""
    mergeable: bool = True
    """Whether the trained update folds into the base weights for inference."""
    searched_by_default: bool = True
    """Whether the built-in search space samples this method."""
    searched_rank: bool = False
    """Whether the search samples ``adapter.r``/``alpha`` for it (on the LoRA-like 1..16 scale)."""
    search_options: dict[str, list[Any]] = field(default_factory=dict)
    """``adapter.options`` values the built-in search space samples (e.g. fourierft's n_frequency)."""
    after_optimizer_step: Optional[Callable[["nn.Module", int], None]] = None
    """Called once per optimizer step, after backward and before zero_grad (AdaLoRA's allocator)."""
    save_training_state: Optional[Callable[["nn.Module"], dict[str, Any]]] = None
    """What the method keeps outside its parameters while training, saved in a resume checkpoint."""
    load_training_state: Optional[Callable[["nn.Module", dict[str, Any]], None]] = None
    """The inverse of ``save_training_state``."""
    tensor_users: Optional[Callable[["nn.Module"], dict[int, int]]] = None
    """For shared trainable tensors, how many adapted modules use each (by tensor id): the budget's
    "one copy each" figure, where the modules can reach more tensors than they use (TinyLoRA)."""


ALL_LINEAR = MODULE_SHORT_NAMES

# In the order the built-in search space lists them (sampling order is part of a seeded search).
METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method(
            "lora",
            "low-rank update B·A per module (rsLoRA and DoRA switches)",
            builders.build_lora,
            uses_rank=True,
            default_r=8,
            uses_alpha=True,
            uses_dropout=True,
            per_module_rank=True,
            learning_rate=5e-4,
            no_decay_kinds=("lora_magnitude_vector",),
            options_class="LoraConfig",
            searched_rank=True,
            lora_switches=True,
            fixed_options=(
                "target_modules",
                "modules_to_save",
                "task_type",
                "r",
                "lora_alpha",
                "lora_dropout",
                "rank_pattern",
                "alpha_pattern",
                "use_rslora",
                "use_dora",
            ),
        ),
        Method(
            "vera",
            "frozen random projections shared by all layers; trains two scaling vectors per module",
            builders.build_vera,
            uses_rank=True,
            default_r=256,
            uses_dropout=True,
            learning_rate=1e-2,
            head_learning_rate=3e-3,
            options_class="VeraConfig",
            fixed_options=("target_modules", "modules_to_save", "task_type", "r", "vera_dropout"),
        ),
        Method(
            "ia3",
            "learned rescaling of keys, values and feed-forward activations",
            builders.build_ia3,
            default_modules=("key", "value", "output"),
            learning_rate=1e-2,
            head_learning_rate=3e-3,
            no_decay_kinds=("ia3_l",),
            options_class="IA3Config",
            fixed_options=("target_modules", "modules_to_save", "task_type", "feedforward_modules"),
        ),
        Method(
            "loha",
            "low-rank Hadamard product update (LyCORIS)",
            builders.build_loha,
            uses_rank=True,
            default_r=4,
            uses_alpha=True,
            per_module_rank=True,
            learning_rate=1e-3,
            options_class="LoHaConfig",
            searched_rank=True,
            fixed_options=(
                "target_modules",
                "modules_to_save",
                "task_type",
                "r",
                "alpha",
                "rank_pattern",
                "alpha_pattern",
            ),
        ),
        Method(
            "lokr",
            "Kronecker-product update with a low-rank factor (LyCORIS)",
            builders.build_lokr,
            uses_rank=True,
            default_r=4,
            uses_alpha=True,
            per_module_rank=True,
            learning_rate=1e-3,
            options_class="LoKrConfig",
            searched_rank=True,
            fixed_options=(
                "target_modules",
                "modules_to_save",
                "task_type",
                "r",
                "alpha",
                "rank_pattern",
                "alpha_pattern",
            ),
        ),
        Method(
            "fourierft",
            "a few trainable spectral coefficients per module (inverse DFT to a weight update)",
            builders.build_fourierft,
            learning_rate=5e-2,
            head_learning_rate=3e-3,
            options_class="FourierFTConfig",
            search_options={"n_frequency": [200, 500, 1000]},
        ),
        Method(
            "vblora",
            "one vector bank shared by every adapted module; modules learn top-k mixing logits",
            builders.build_vblora,
            uses_rank=True,
            default_r=4,
            uses_dropout=True,
            learning_rate=1e-2,
            head_learning_rate=3e-3,
            options_class="VBLoRAConfig",
            search_options={"num_vectors": [64, 128, 256]},
            fixed_options=("target_modules", "modules_to_save", "task_type", "r", "vblora_dropout"),
        ),
        Method(
            "bitfit",
            "bias offsets only (PEFT BEFT on the placed linear modules)",
            builders.build_bitfit,
            default_modules=ALL_LINEAR,
            needs_bias=True,
            learning_rate=3e-3,
            head_learning_rate=3e-3,
            options_class="BeftConfig",
        ),
        Method(
            "ln_tuning",
            "LayerNorm weights and biases only (copies trained, originals kept)",
            builders.build_ln_tuning,
            placement="norm",
            default_modules=("attention_output", "output"),
            learning_rate=3e-3,
            head_learning_rate=3e-3,
            options_class="LNTuningConfig",
        ),
        Method(
            "adalora",
            "LoRA in SVD form whose ranks are reallocated during training (budgeted)",
            builders.build_adalora,
            uses_rank=True,
            default_r=12,
            uses_alpha=True,
            uses_dropout=True,
            learning_rate=1e-3,
            options_class="AdaLoraConfig",
            searched_by_default=False,
            searched_rank=True,
            check=builders.adalora_check,
            after_optimizer_step=builders.adalora_after_optimizer_step,
            save_training_state=builders.adalora_training_state,
            load_training_state=builders.adalora_restore_training_state,
            note="AdaLoRA: the count is the allocation at the start (init_r = adapter.r on every site); "
            "training masks ranks down to target_r on average, so the live count never grows",
            fixed_options=(
                "target_modules",
                "modules_to_save",
                "task_type",
                "init_r",
                "lora_alpha",
                "lora_dropout",
                "total_step",
            ),
        ),
        Method(
            "tinylora",
            "SVD of the frozen weights steered by a tiny trainable vector, tied across layers",
            builders.build_tinylora,
            uses_rank=True,
            default_r=2,
            uses_dropout=True,
            learning_rate=1e-2,
            head_learning_rate=3e-3,
            options_class="TinyLoraConfig",
            searched_by_default=False,
            tensor_users=builders.tinylora_tensor_users,
            fixed_options=("target_modules", "modules_to_save", "task_type", "r", "tinylora_dropout"),
        ),
        Method(
            "full",
            "every weight trained: a teacher, allowed only with an unlimited budget",
            None,
            placement="model",
            default_modules=(),
            learning_rate=5e-5,
            head_learning_rate=1e-3,
            mergeable=False,
            searched_by_default=False,
        ),
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
            raise LorabudgetError(
                f"adapter.method '{name}' trains every weight: remove adapter.modules/layers/placements"
            )
        if cfg.budget.max_trainable_params is not None:
            raise LorabudgetError(
                f"adapter.method '{name}' trains every weight and is for teachers only: set "
                "budget.max_trainable_params: null (unlimited) to use it"
            )
    if method.placement == "norm":
        groups = a.placements or [a]
        for group in groups:
            bad = [m for m in (group.modules or []) if m not in NORM_SHORT]
            if bad:
                raise LorabudgetError(
                    f"adapter.method '{name}' tunes LayerNorms, which close the attention_output and output "
                    f"sublayers; '{bad[0]}' has none: use modules from " + ", ".join(NORM_SHORT)
                )
    if not method.per_module_rank:
        varied = [
            f"placements[{i}].{k}"
            for i, p in enumerate(a.placements)
            for k in ("r", "alpha")
            if getattr(p, k) is not None
        ]
        varied += [k for k in ("rank_pattern", "alpha_pattern") if getattr(a, k)]
        if varied:
            raise LorabudgetError(
                f"adapter.method '{name}' cannot give modules different ranks or alphas; remove adapter.{varied[0]}"
            )
    if not method.lora_switches and (a.use_rslora or a.use_dora):
        raise LorabudgetError(f"adapter.use_rslora/use_dora are LoRA switches; adapter.method is '{name}'")
    if method.check is not None:
        method.check(a)
    from lorabudget.runconfig import cache_refusal

    if why := cache_refusal(cfg, method.placement == "model"):  # the built model decides the rest
        raise LorabudgetError(f"config key 'training.cache_frozen_layers': true cannot be used: {why}")
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
                allowed = sorted(
                    fields
                    - set(method.fixed_options)
                    - {"peft_type", "auto_mapping", "revision", "base_model_name_or_path", "inference_mode"}
                )
                raise LorabudgetError(
                    f"unknown config key 'adapter.options.{key}' for method '{name}' (PEFT {method.options_class}); "
                    "allowed: " + ", ".join(allowed)
                )


# --------------------------------------------------------------------------------------------
# What the rest of lorabudget asks of a method, generic over methods.


def no_weight_decay(method_name: str, param_name: str, param: "nn.Parameter") -> bool:
    """Biases, norms and other 1-D tensors, plus each method's scale-like kinds, get no weight decay."""
    if param.ndim < 2:
        return True
    return any(
        f".{kind}." in param_name or param_name.endswith(f".{kind}") for kind in get_method(method_name).no_decay_kinds
    )


def after_optimizer_step(model: "nn.Module", method_name: str, step: int) -> None:
    """The method's once-per-step hook, after backward and before zero_grad (AdaLoRA's rank allocation)."""
    hook = get_method(method_name).after_optimizer_step
    if hook is not None:
        hook(model, step)


def training_state(model: "nn.Module", method_name: str) -> dict[str, Any]:
    """What a method keeps outside its parameters while training, for a resume checkpoint (may be empty)."""
    hook = get_method(method_name).save_training_state
    return hook(model) if hook is not None else {}


def restore_training_state(model: "nn.Module", method_name: str, state: dict[str, Any]) -> None:
    """The inverse of :func:`training_state`."""
    hook = get_method(method_name).load_training_state
    if hook is not None and state:
        hook(model, state)


def tensor_users(model: "nn.Module") -> dict[int, int]:
    """How many adapted modules use each shared trainable tensor, where a method says (by tensor id)."""
    users: dict[int, int] = {}
    for method in METHODS.values():
        if method.tensor_users is not None:
            users.update(method.tensor_users(model))
    return users


def can_merge(method_name: str, quantized: bool) -> bool:
    """Whether adapters may be folded into the base weights for inference.

    A quantized base would be re-quantized by a merge (outputs change), so it runs unmerged.
    """
    return not quantized and get_method(method_name).mergeable
