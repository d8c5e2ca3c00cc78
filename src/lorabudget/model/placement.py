"""Adapter placement: the adapter config expanded into concrete modules of a built model."""

from __future__ import annotations

from types import SimpleNamespace

from torch import nn

from lorabudget.config import AdapterConfig, PlacementConfig
from lorabudget.errors import LorabudgetError
from lorabudget.methods import registry
from lorabudget.methods.sites import MODULE_SHORT_NAMES, AdapterSite, supported_families
from lorabudget.model.heads import head_module_names
from lorabudget.model.layout import encoder_layers, model_family


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
    method = registry.get_method(adapter.method)
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
    method = registry.get_method(adapter.method)
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
