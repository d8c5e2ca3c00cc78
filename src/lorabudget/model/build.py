"""Building the classifier: resolving the base model, the head, and LoRA placement with PEFT.

The same function builds the model for ``plan`` (on the meta device, from the config alone, no
weights read) and for ``train`` (real weights), so the planned trainable-parameter count is the
live count by construction; ``tests/test_budget.py`` checks it anyway.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import socket
import warnings
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Optional
from urllib.parse import urlparse

import torch
from torch import nn

from lorabudget.config import AdapterConfig, HeadConfig, PlacementConfig, RunConfig
from lorabudget.errors import LorabudgetError
from lorabudget.methods import registry as adapters
from lorabudget.methods.sites import (
    MODULE_SHORT_NAMES,
    AdapterSite,
    Family,
    LayerSharing,
    family_of,
    supported_families,
)

# The head's one definition: the file is also shipped, standalone, as an export's remote code.
from lorabudget.model.hf_classifier import PooledLinearHead
from lorabudget.model.packaged import packaged_model, packaged_model_folder

# Architecture configs of common encoders, used by ``plan`` only when the real config cannot be
# fetched (offline): parameter counts depend on nothing else. Values are the published configs.
_ROBERTA_COMMON = dict(
    model_type="roberta",
    vocab_size=50265,
    max_position_embeddings=514,
    type_vocab_size=1,
    layer_norm_eps=1e-5,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    hidden_act="gelu",
)
BUILTIN_CONFIGS: dict[str, dict[str, Any]] = {
    "roberta-base": dict(
        _ROBERTA_COMMON, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072
    ),
    "roberta-large": dict(
        _ROBERTA_COMMON,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        layer_norm_eps=1e-5,
    ),
    "bert-base-uncased": dict(
        model_type="bert",
        vocab_size=30522,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
        type_vocab_size=2,
        pad_token_id=0,
    ),
    # the mpnet-cpu-teacher preset's model
    "sentence-transformers/all-mpnet-base-v2": dict(
        model_type="mpnet",
        vocab_size=30527,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=514,
        relative_attention_num_buckets=32,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        hidden_act="gelu",
    ),
}
# One common checkpoint per family. distilbert-base-uncased and ModernBERT-base are the config classes'
# defaults; the others are their published config.json values (the transformers defaults are other sizes).
BUILTIN_CONFIGS.update(
    {
        "xlm-roberta-base": dict(
            _ROBERTA_COMMON,
            model_type="xlm-roberta",
            vocab_size=250002,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
        ),
        "google/electra-base-discriminator": dict(
            model_type="electra",
            vocab_size=30522,
            embedding_size=768,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            max_position_embeddings=512,
            type_vocab_size=2,
            pad_token_id=0,
        ),
        "distilbert-base-uncased": dict(
            model_type="distilbert",
            vocab_size=30522,
            dim=768,
            n_layers=6,
            n_heads=12,
            hidden_dim=3072,
            max_position_embeddings=512,
            pad_token_id=0,
        ),
        "microsoft/deberta-v3-base": dict(
            model_type="deberta-v2",
            vocab_size=128100,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            max_position_embeddings=512,
            type_vocab_size=0,
            layer_norm_eps=1e-7,
            relative_attention=True,
            max_relative_positions=-1,
            position_buckets=256,
            norm_rel_ebd="layer_norm",
            share_att_key=True,
            pos_att_type=["p2c", "c2p"],
            position_biased_input=False,
            pad_token_id=0,
            pooler_hidden_size=768,
            pooler_dropout=0.0,
            pooler_hidden_act="gelu",
        ),
        "answerdotai/ModernBERT-base": dict(
            model_type="modernbert",
            vocab_size=50368,
            hidden_size=768,
            intermediate_size=1152,
            num_hidden_layers=22,
            num_attention_heads=12,
            max_position_embeddings=8192,
            global_attn_every_n_layers=3,
            local_attention=128,
            pad_token_id=50283,
            bos_token_id=50281,
            eos_token_id=50282,
            cls_token_id=50281,
            sep_token_id=50282,
        ),
        "albert-base-v2": dict(
            model_type="albert",
            vocab_size=30000,
            embedding_size=128,
            hidden_size=768,
            num_hidden_layers=12,
            num_hidden_groups=1,
            inner_group_num=1,
            num_attention_heads=12,
            intermediate_size=3072,
            hidden_act="gelu_new",
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            max_position_embeddings=512,
            type_vocab_size=2,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
        ),
    }
)
for _short, _hub in (
    ("xlm-roberta-base", "FacebookAI/xlm-roberta-base"),
    ("distilbert-base-uncased", "distilbert/distilbert-base-uncased"),
    ("albert-base-v2", "albert/albert-base-v2"),
):
    BUILTIN_CONFIGS[_hub] = BUILTIN_CONFIGS[_short]
BUILTIN_CONFIGS["FacebookAI/roberta-base"] = BUILTIN_CONFIGS["roberta-base"]
BUILTIN_CONFIGS["FacebookAI/roberta-large"] = BUILTIN_CONFIGS["roberta-large"]
BUILTIN_CONFIGS["google-bert/bert-base-uncased"] = BUILTIN_CONFIGS["bert-base-uncased"]
BUILTIN_CONFIGS["all-mpnet-base-v2"] = BUILTIN_CONFIGS["sentence-transformers/all-mpnet-base-v2"]  # the short name


def resolve_model_source(name: str) -> str:
    """Map a model name to what ``from_pretrained`` should load: a local folder or a hub name."""
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return expanded
    packaged = packaged_model(name)
    if packaged:
        return packaged_model_folder(name) or packaged.hub_name
    return name


def _offline_hint(name: str, what: str, err: Exception) -> LorabudgetError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    packaged = packaged_model(name)
    extra = f"; or {packaged.install_hint}: its packages ship this model" if packaged else ""
    return LorabudgetError(
        f"cannot load the {what} of model '{name}': it is not a local folder and the Hugging Face hub "
        f"could not provide it ({first}). When offline, download the model elsewhere and pass its "
        f"folder: --set model.name=/path/to/model{extra}"
    )


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' 'newly initialized weights' notices; lorabudget reports the head itself."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all (a quick TCP check, so offline use fails fast
    instead of waiting through huggingface_hub's retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def from_pretrained(loader: Callable[..., Any], name: str, what: str, **kwargs: Any) -> Any:
    """Call ``loader.from_pretrained`` on the resolved model source, offline-first.

    A local folder loads directly; a hub name is tried from the local Hugging Face cache first and
    fetched only when the hub is reachable. Failures become one clear :class:`LorabudgetError`.
    """
    source = resolve_model_source(name)
    with _quiet_transformers():
        try:
            if os.path.isdir(source):
                return loader.from_pretrained(source, **kwargs)
            try:
                return loader.from_pretrained(source, local_files_only=True, **kwargs)
            except (OSError, ValueError):
                if not hub_reachable():
                    raise
                return loader.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as err:
            raise _offline_hint(name, what, err) from err


def load_model_config(cfg: RunConfig, allow_builtin: bool = False) -> tuple[Any, str]:
    """Return ``(transformers config, where it came from)`` for the configured model.

    With ``allow_builtin`` (planning only), a well-known architecture that is neither a local folder
    nor in the Hugging Face cache uses its built-in published config instead of the network.
    """
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    name = cfg.model.name
    label_kwargs = dict(
        num_labels=cfg.num_labels,
        id2label=dict(enumerate(cfg.class_names)),
        label2id={label: i for i, label in enumerate(cfg.class_names)},
    )
    source = resolve_model_source(name)
    if allow_builtin and name in BUILTIN_CONFIGS and not os.path.isdir(source):
        try:
            with _quiet_transformers():
                return AutoConfig.from_pretrained(source, local_files_only=True, **label_kwargs), source
        except (OSError, ValueError):
            values = dict(BUILTIN_CONFIGS[name])
            config_cls = CONFIG_MAPPING[values.pop("model_type")]
            return config_cls(**values, **label_kwargs), f"built-in published config of {name}"
    return from_pretrained(AutoConfig, name, "config", **label_kwargs), source


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    return from_pretrained(AutoTokenizer, name_or_path, "tokenizer")


# --------------------------------------------------------------------------------------------
# Heads


@dataclass
class ClassifierOutput:
    logits: torch.Tensor  # [batch, num_labels]


class EncoderWithLinearHead(nn.Module):
    """A bare encoder (no pooler) followed by :class:`PooledLinearHead`."""

    def __init__(self, backbone: nn.Module, head: PooledLinearHead):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.config = backbone.config

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: Optional[torch.Tensor] = None,
        **_: Any,
    ) -> ClassifierOutput:
        # token_type_ids: the segments of a sentence pair (BERT); absent for single texts (all zeros).
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return ClassifierOutput(logits=self.head(hidden, attention_mask))


def head_module_names(model: nn.Module) -> list[str]:
    """Names of the modules that make up the classification head (trained in full).

    transformers' own head (``head.type: full``) is every module of the sequence-classification model
    beside its base model that holds parameters (DistilBERT's pre_classifier, DeBERTa's pooler,
    ModernBERT's head ...), and the base model's pooler where the classifier reads it (BERT, ALBERT).
    """
    if isinstance(model, EncoderWithLinearHead):
        return ["head"]
    prefix = getattr(model, "base_model_prefix", "")  # absent on a bare module: then no pooler either
    family = model_family(model)
    names = list(family.head_modules) if family else ["classifier"]
    for name, child in model.named_children():
        if name != prefix and name not in names and any(True for _ in child.parameters()):
            names.append(name)
    names = [n for n in names if getattr(model, n, None) is not None]
    base = getattr(model, prefix, None) if prefix else None
    if getattr(base, "pooler", None) is not None:
        # BERT's classifier reads the pooler's output; a fresh task needs it trained too.
        names.append(f"{prefix}.pooler")
    return names


def quantization_config(cfg: RunConfig, head_modules: list[str]):
    """bitsandbytes settings for ``model.quantization`` (None for ``none``); the head stays in full precision."""
    kind = cfg.model.quantization
    if kind == "none":
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise LorabudgetError(
            f"model.quantization: {kind} needs bitsandbytes: pip install 'lorabudget[quant]' "
            "(or pip install bitsandbytes)"
        )
    from transformers import BitsAndBytesConfig

    skip = list(head_modules) + ["pooler", "classifier"]
    if kind == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.float32,
            llm_int8_skip_modules=skip,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


def keep_4bit_layout_for_training(model: nn.Module) -> int:
    """Stop bitsandbytes from repacking ``model``'s 4-bit weights for its CPU inference kernel.

    bitsandbytes (0.50) repacks a ``Linear4bit`` weight into an AVX512-BF16 layout the first time the
    layer runs in eval mode without gradients, and keeps that layout; the kernel it then uses has no
    backward, so training after a validation pass failed ("a view of a leaf Variable that requires
    grad is being used in an in-place operation"; the nf4 main job died in its second epoch). The
    training model's validation passes take the trainable path instead. Inference models (``predict``)
    keep the fast layout. Returns how many layers were set.
    """
    layers = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def build_base(cfg: RunConfig, model_config: Any, pretrained: bool) -> nn.Module:
    """The model before adapters; ``pretrained=False`` builds from the config with random weights."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    head: HeadConfig = cfg.head
    # Planning (pretrained=False) never quantizes: trainable counts do not depend on it.
    quant = quantization_config(cfg, ["head"]) if pretrained else None
    extra = {"quantization_config": quant} if quant is not None else {}
    with _quiet_transformers(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bitsandbytes' notes on CPU kernels and dtype casts
        if head.type == "full":
            if not pretrained:
                return AutoModelForSequenceClassification.from_config(model_config)
            return from_pretrained(
                AutoModelForSequenceClassification, cfg.model.name, "weights", config=model_config, **extra
            )
        if not pretrained:
            backbone = AutoModel.from_config(model_config)
        else:
            backbone = from_pretrained(AutoModel, cfg.model.name, "weights", config=model_config, **extra)
    if getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None  # unused by the linear head; dropping it keeps it out of every count
    dropout = getattr(model_config, "hidden_dropout_prob", 0.1)
    linear = PooledLinearHead(model_config.hidden_size, cfg.num_labels, head.pooling, dropout)
    if quant is not None:
        linear.to(next(backbone.parameters()).device)
    return EncoderWithLinearHead(backbone, linear)


# --------------------------------------------------------------------------------------------
# Adapter placement


def model_family(model: nn.Module) -> Optional[Family]:
    """The encoder family (methods/sites.py) of a model, PEFT-wrapped or not; None when no family has it."""
    return family_of(getattr(getattr(model, "config", None), "model_type", None))


def _holds_linear(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Linear) for m in module.modules())


def encoder_layers(model: nn.Module) -> list[str]:
    """Full names of the encoder's layers, in order, discovered from the model.

    The layers are the items of the innermost ModuleLists whose every item holds a Linear
    (``encoder.layer`` in BERT, ``transformer.layer`` in DistilBERT, ``layers`` in ModernBERT, each
    ``albert_layer_groups.G.albert_layers`` in ALBERT): no path is assumed.
    """
    lists = [
        (name, len(module))
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) and all(_holds_linear(m) for m in module)
    ]
    inner = [(name, n) for name, n in lists if not any(other.startswith(name + ".") for other, _ in lists)]
    if not inner:
        raise LorabudgetError(
            f"model type '{getattr(getattr(model, 'config', None), 'model_type', '?')}' is not supported: "
            "lorabudget found no list of encoder layers in it (a ModuleList of layers holding Linear modules)"
        )
    return [f"{name}.{i}" for name, n in inner for i in range(n)]


def encoder_layer_prefix(model: nn.Module) -> tuple[str, int]:
    """``(name of the encoder's layer list, number of layers)``; for models with one layer list."""
    layers = encoder_layers(model)
    return layers[0].rpartition(".")[0], len(layers)


def layer_sharing(model: nn.Module) -> Optional[LayerSharing]:
    """How often the layers' weights are applied, where a model reuses them (ALBERT); else None."""
    applied = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    distinct = len(encoder_layers(model))
    if isinstance(applied, int) and applied > distinct:
        return LayerSharing(distinct, applied)
    return None


def model_notes(model: nn.Module) -> list[str]:
    """What ``plan`` says about the model's layout: fused modules, shared layers."""
    notes = []
    family = model_family(model)
    if family and family.fused:
        notes.append(family.fused)
    sharing = layer_sharing(model)
    if sharing:
        notes.append(sharing.note())
    return notes


def _dims(module: nn.Module) -> tuple[int, ...]:
    if hasattr(module, "in_features"):
        return (int(module.in_features), int(module.out_features))
    shape = getattr(module, "normalized_shape", None)
    return tuple(int(d) for d in shape) if shape else ()


def _site_order(site: "AdapterSite") -> tuple[int, int, str]:
    known = MODULE_SHORT_NAMES.index(site.module) if site.module in MODULE_SHORT_NAMES else len(MODULE_SHORT_NAMES)
    return site.layer, known, site.name


def _target_module_sites(model: nn.Module, adapter: AdapterConfig, layers: list[str]) -> list[AdapterSite]:
    """Sites named by ``adapter.target_modules``, matched by PEFT's own target-module rules (a list:
    exact names or name suffixes; a string: a regex matched against the full name)."""
    from peft.tuners.tuners_utils import _ExcludedModule, check_target_module_exists

    matcher = SimpleNamespace(
        target_modules=adapter.target_modules,
        target_parameters=None,
        exclude_modules=None,
        modules_to_save=head_module_names(model),
        layers_to_transform=None,
        layers_pattern=None,
    )
    method = adapters.get_method(adapter.method)
    kind = nn.LayerNorm if method.placement == "norm" else nn.Linear
    sites = []
    for name, module in model.named_modules():
        if not name or not isinstance(module, kind):
            continue
        found = check_target_module_exists(matcher, name)
        if not found or isinstance(found, _ExcludedModule):  # the head's modules are never adapter targets
            continue
        layer = next((i for i, prefix in enumerate(layers) if name.startswith(prefix + ".")), -1)
        if adapter.layers is not None and layer not in adapter.layers:
            continue
        if method.needs_bias and module.bias is None:
            raise LorabudgetError(
                f"adapter.target_modules: adapter.method '{method.name}' offsets biases; {name} has none"
            )
        path = name[len(layers[layer]) + 1 :] if layer >= 0 else name
        sites.append(AdapterSite(layer, path, name, int(adapter.r), float(adapter.alpha), _dims(module)))
    if not sites:
        raise LorabudgetError(
            f"adapter.target_modules: {adapter.target_modules!r} matches no {kind.__name__} module of this model"
        )
    return sorted(sites, key=_site_order)


def plan_sites(model: nn.Module, adapter: AdapterConfig) -> list[AdapterSite]:
    """Expand the adapter config into concrete modules, checking layers and module names."""
    method = adapters.get_method(adapter.method)
    layers = encoder_layers(model)
    num_layers = len(layers)
    if method.placement == "model":
        return []
    if adapter.target_modules is not None:
        return _target_module_sites(model, adapter, layers)
    family = model_family(model)
    if family is None:
        raise LorabudgetError(
            f"model type '{getattr(model.config, 'model_type', '?')}' is in no encoder family lorabudget maps "
            f"short module names for ({supported_families()}): name its modules with adapter.target_modules "
            "(PEFT-style names or a regex)"
        )
    paths = family.norms if method.placement == "norm" else family.linear
    fused = family.fused_groups() if method.placement != "norm" else {}
    modules = dict(model.named_modules())
    groups = adapter.placements or [PlacementConfig(modules=adapter.modules, layers=adapter.layers)]
    sites: dict[str, AdapterSite] = {}
    for index, group in enumerate(groups):
        where = f"adapter.placements[{index}]" if adapter.placements else "adapter"
        chosen = list(range(num_layers)) if group.layers is None else list(group.layers)
        for layer in chosen:
            if not 0 <= layer < num_layers:
                raise LorabudgetError(
                    f"{where}.layers: layer {layer} is out of range; this model has layers 0..{num_layers - 1}"
                )
        for names in fused.values():
            picked = [m for m in group.modules if m in names]
            if picked and len(picked) != len(names):
                raise LorabudgetError(f"{where}.modules: {family.fused}")
        for module in group.modules:
            if module not in paths:
                raise LorabudgetError(
                    f"{where}.modules: unknown module '{module}' for method '{method.name}'; this model has: "
                    + ", ".join(paths)
                )
            short = fused.get(paths[module], (module,))[0]  # a fused Linear is one site, named by its first
            for layer in chosen:
                full = f"{layers[layer]}.{paths[module]}"
                if full not in modules:
                    present = [m for m, path in paths.items() if f"{layers[0]}.{path}" in modules]
                    raise LorabudgetError(
                        f"{where}.modules: module '{module}' does not exist in this {family.name} model; it has: "
                        + ", ".join(present)
                    )
                if not any(True for _ in modules[full].parameters()):
                    continue  # an identity in place of a norm (ModernBERT's first layer): nothing to tune
                if method.needs_bias and getattr(modules[full], "bias", True) is None:
                    raise LorabudgetError(
                        f"{where}.modules: adapter.method '{method.name}' offsets biases, and '{module}' "
                        f"({paths[module]}) has no bias in this {family.name} model"
                    )
                r = group.r or adapter.rank_pattern.get(short, adapter.r)
                alpha = group.alpha or adapter.alpha_pattern.get(short, adapter.alpha)
                sites[full] = AdapterSite(layer, short, full, int(r), float(alpha), _dims(modules[full]))
    return sorted(sites.values(), key=_site_order)


@dataclass
class BuiltModel:
    model: nn.Module  # a peft.PeftModel, or the plain model for method ``full``
    sites: list[AdapterSite]
    config_source: str
    notes: list[str] = dataclasses.field(default_factory=list)
    """What ``plan`` says about the model's layout (fused modules, ALBERT's shared layers)."""


# Stands in for the training length when only counting: no method's count depends on it.
PLANNING_STEPS = 1000


def build_model(cfg: RunConfig, weights: bool = True, total_steps: Optional[int] = None) -> BuiltModel:
    """Build the classifier with the configured adapter method.

    ``weights=False`` builds on the meta device from the architecture config alone (no weights are
    read or allocated); that is what ``plan`` uses. Trainable parameters are identical either way.
    ``total_steps`` is the training length (AdaLoRA's rank schedule needs it).
    """
    from peft import get_peft_model

    method = adapters.get_method(cfg.adapter.method)
    model_config, config_source = load_model_config(cfg, allow_builtin=not weights)
    if weights:
        base = build_base(cfg, model_config, pretrained=True)
    else:
        with torch.device("meta"):
            base = build_base(cfg, model_config, pretrained=False)
    sites = plan_sites(base, cfg.adapter)
    heads = head_module_names(base)
    if method.build is None:  # full fine-tuning: every weight trains, nothing wraps the model
        for param in base.parameters():
            param.requires_grad_(True)
        return BuiltModel(base, sites, config_source, model_notes(base))
    if weights and cfg.model.quantization != "none":
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    try:
        peft_cfg = method.build(cfg, sites, heads, total_steps or PLANNING_STEPS)
    except (TypeError, ValueError) as err:  # PEFT's own checks of adapter.options values; its text is unbounded
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise LorabudgetError(
            f"adapter.options rejected by PEFT for method '{cfg.adapter.method}': "
            + (text if len(text) <= 200 else text[:197] + "...")
        ) from None
    with torch.device("meta") if not weights else contextlib.nullcontext(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT's notes on meta tensors and frozen heads; not the user's concern
        try:
            peft_model = get_peft_model(base, peft_cfg)
        except (ValueError, TypeError) as err:  # PEFT's own refusals of a placement or an option
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise LorabudgetError(
                f"adapter.method '{method.name}' cannot be built with these settings: {first}"
            ) from err
    return BuiltModel(peft_model, sites, config_source, model_notes(base))


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold the adapters into the base weights and return the plain model with its trained head.

    The trained head copies are put in place first: PEFT's generic unload (every method but LoRA)
    assumes a wrapped head is a single Linear and fails on RoBERTa's head, BERT's pooler or ours.
    """
    from peft.utils.other import ModulesToSaveWrapper

    for name, module in list(model.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            parent_name, _, child_name = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child_name, module.modules_to_save[module.active_adapters[0]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.merge_and_unload()
