"""Exact trainable-parameter accounting, for every adapter method: a breakdown by layer, module and
parameter kind, parameters shared across layers (counted once, with what sharing saved), the head,
and the verdict against the budget.

A parameter's *kind* is the first name part after the adapted module (``lora_A``, ``vera_lambda_b``,
``hada_w1_a``, ``ln_tuning_layers``, or ``weight``/``bias`` for a fully trained module), so the
breakdown needs no per-method table.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

from torch import nn

from lorabudget.errors import BudgetExceededError
from lorabudget.methods.registry import tensor_users
from lorabudget.methods.sites import MODULE_SHORT_NAMES, NORM_SHORT

# The breakdown's column order: the six short names, the two norms, then other adapted paths, "other".
SHORT_ORDER = MODULE_SHORT_NAMES + tuple(NORM_SHORT.values()) + ("other",)


def module_order(module: str) -> tuple[int, int, str]:
    """Sort key of a breakdown column: short names in layer order (a fused site by its first name),
    then modules named by path (``adapter.target_modules``), then "other"."""
    first = module.split("+")[0]
    if module == "other":
        return (2, 0, "")
    if first in SHORT_ORDER:
        return (0, SHORT_ORDER.index(first), module)
    return (1, 0, module)


class _Locator:
    """Maps a parameter name to ``(layer, module label, kind)``: the layer from the encoder's layer
    list discovered on the model, the module from the family table (its short name) or, for modules
    PEFT adapted that the table does not name, the module's path inside the layer."""

    def __init__(self, model: nn.Module):
        from lorabudget.model.layout import encoder_layers, model_family

        try:
            layers = encoder_layers(model)
        except Exception:  # a model without a layer list: everything is "other"
            layers = []
        self.layers = {name: i for i, name in enumerate(layers)}
        self.layer_re = (
            re.compile("(" + "|".join(re.escape(n) for n in sorted(layers, key=len, reverse=True)) + r")\.(.+)")
            if layers
            else None
        )
        family = model_family(model)
        self.labels: dict[str, str] = family.labels() if family else {}
        from peft.tuners.tuners_utils import BaseTunerLayer

        for name, module in model.named_modules():
            if isinstance(module, BaseTunerLayer):
                located = self._split(name)
                if located:
                    self.labels.setdefault(located[1], located[1])
        self.paths = sorted(self.labels, key=len, reverse=True)

    def _split(self, name: str) -> Optional[tuple[int, str]]:
        match = self.layer_re.search(name) if self.layer_re else None
        if match and match.group(1) in self.layers:
            return self.layers[match.group(1)], match.group(2)
        return None

    def site(self, name: str) -> Optional[tuple[int, str, str]]:
        located = self._split(name)
        if not located:
            return None
        layer, rest = located
        for path in self.paths:
            if rest.startswith(path + "."):
                tail = rest[len(path) + 1 :]
                tail = tail[len("base_layer.") :] if tail.startswith("base_layer.") else tail
                return layer, self.labels[path], tail.split(".")[0]
        return None

    def layer(self, name: str) -> Optional[int]:
        located = self._split(name)
        return located[0] if located else None


@dataclass
class Shared:
    """A trainable tensor used by several adapted modules: counted once."""

    params: int
    sites: int  # how many adapted modules use it
    unshared_equivalent: int  # what one copy per user would cost


@dataclass
class Breakdown:
    """Trainable parameters of a model, grouped the way a budget is reasoned about."""

    sites: dict[tuple[int, str, str], int] = field(default_factory=dict)  # (layer, module, kind) -> params
    shared: dict[str, Shared] = field(default_factory=dict)  # kind -> the shared tensors of that kind
    frozen_shared: dict[str, Shared] = field(default_factory=dict)  # e.g. VeRA's projections: not counted
    head: int = 0
    other: dict[str, int] = field(default_factory=dict)  # parameter name -> params
    head_parts: dict[str, int] = field(default_factory=dict)  # a pooled head's parts (down, out_proj, scale, bias)
    head_vectors: Optional[tuple[int, int]] = None  # a prototype head's class vectors: computed, not trained

    @property
    def lora(self) -> dict[tuple[int, str], int]:
        """Per-site parameters (kinds summed), keyed (layer, module) in layer order."""
        by_site: dict[tuple[int, str], int] = defaultdict(int)
        for (layer, module, _), n in self.sites.items():
            by_site[(layer, module)] += n
        return dict(by_site)

    @property
    def adapter_total(self) -> int:
        return sum(self.sites.values()) + sum(s.params for s in self.shared.values())

    @property
    def total(self) -> int:
        return self.adapter_total + self.head + sum(self.other.values())

    @property
    def kinds(self) -> list[str]:
        return sorted({k for _, _, k in self.sites})


def _head_prefixes(model: nn.Module) -> tuple[str, ...]:
    if hasattr(model, "peft_config"):
        return ()  # PEFT wraps the head as modules_to_save: matched by name below
    from lorabudget.model.heads import head_module_names

    return tuple(name + "." for name in head_module_names(model))


# The part of a pooled head a parameter belongs to: head.down.weight, head.modules_to_save.default.bias ...
_HEAD_PART = re.compile(r"(?:^|\.)head\.(?:modules_to_save\.[^.]+\.)?([^.]+)")


def _pooled_head(model: nn.Module) -> Optional[nn.Module]:
    """lorabudget's pooled head (linear, low_rank, prototype) of ``model``, None for transformers' own."""
    from lorabudget.model.heads import pooled_encoder

    return getattr(pooled_encoder(model), "head", None)


def breakdown(model: nn.Module) -> Breakdown:
    """Group every trainable parameter: per (layer, module, kind), shared across sites, head, other."""
    heads = _head_prefixes(model)
    locate = _Locator(model)
    pooled = _pooled_head(model)
    # Every name under which each trainable tensor is reachable: a tensor reachable from several
    # adapted modules (VB-LoRA's bank, TinyLoRA's tied vectors) is shared and counted once.
    names: dict[int, list[str]] = defaultdict(list)
    tensors: dict[int, nn.Parameter] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if param.requires_grad:
            names[id(param)].append(name)
            tensors[id(param)] = param
    users = tensor_users(model)
    sites: dict[tuple[int, str, str], int] = defaultdict(int)
    result = Breakdown()
    for key, param in tensors.items():
        first = names[key][0]
        located = {s for s in map(locate.site, names[key]) if s}
        n = param.numel()
        if ".modules_to_save." in first or (heads and first.startswith(heads)):
            result.head += n
            part = _HEAD_PART.search(first) if pooled else None
            if part:
                result.head_parts[part.group(1)] = result.head_parts.get(part.group(1), 0) + n
        elif len({(layer, module) for layer, module, _ in located}) > 1:
            kind = next(iter(located))[2]
            entry = result.shared.setdefault(kind, Shared(0, 0, 0))
            entry.params += n
            entry.sites = max(entry.sites, len(located))
            entry.unshared_equivalent += n * users.get(key, len(located))
        elif located:
            sites[next(iter(located))] += n
        else:
            layer = locate.layer(first)
            if layer is not None:  # the rest of a layer no adapted path names (e.g. under ``full``)
                sites[(layer, "other", "weight")] += n
            else:
                result.other[first] = n
    result.frozen_shared = _frozen_shared(model, locate)
    vectors = getattr(pooled, "prototypes", None)
    if vectors is not None:
        result.head_vectors = (int(vectors.shape[0]), int(vectors.shape[1]))
    result.sites = dict(sorted(sites.items(), key=lambda kv: (kv[0][0], module_order(kv[0][1]), kv[0][2])))
    return result


def _frozen_shared(model: nn.Module, locate: _Locator) -> dict[str, Shared]:
    """Frozen tensors (buffers or non-trainable parameters) used by several adapted modules, such as
    VeRA's random projections: they cost no budget, and one copy per module would cost memory."""
    located: dict[int, set] = defaultdict(set)
    sizes: dict[int, tuple[str, int]] = {}
    tensors = list(model.named_buffers(remove_duplicate=False))
    tensors += [(n, p) for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad]
    for name, tensor in tensors:
        site = locate.site(name)
        if site:
            located[id(tensor)].add(site[:2])
            sizes[id(tensor)] = (site[2], tensor.numel())
    result: dict[str, Shared] = {}
    for key, users in located.items():
        if len(users) > 1:
            kind, n = sizes[key]
            entry = result.setdefault(kind, Shared(0, 0, 0))
            entry.params += n
            entry.sites = max(entry.sites, len(users))
            entry.unshared_equivalent += n * len(users)
    return result


def format_budget(budget: Optional[int]) -> str:
    return "unlimited (teacher)" if budget is None else f"{budget:,}"


def format_breakdown(b: Breakdown, budget: Optional[int], title: str = "", method: str = "lora") -> str:
    """A human-readable table: adapter parameters per layer and module (by kind), shared tensors,
    head, total, budget, verdict."""
    lines = [title] if title else []
    by_site = b.lora
    modules = sorted({k[1] for k in by_site}, key=module_order)
    layers = sorted({k[0] for k in by_site})
    if modules:
        widths = [max(10, len(m) + 2) for m in modules]
        lines.append(f"{method} parameters by layer and module (kinds: {', '.join(b.kinds)}):")
        lines.append("  layer" + "".join(f"{m:>{w}}" for m, w in zip(modules, widths)) + f"{'layer total':>13}")
        for layer in layers:
            cells = [by_site.get((layer, m)) for m in modules]
            row = "".join(f"{(f'{c:,}' if c else '-'):>{w}}" for c, w in zip(cells, widths))
            lines.append(f"  {layer:>5}{row}{sum(c or 0 for c in cells):>13,}")
    elif not b.shared:
        lines.append(f"{method} parameters: none per layer")
    for kind, s in b.shared.items():
        lines.append(
            f"  shared across layers: {kind}, {s.params:,} parameters counted once, used by {s.sites} modules "
            f"(one copy each would cost {s.unshared_equivalent:,}: sharing saves {s.unshared_equivalent - s.params:,})"
        )
    for kind, s in b.frozen_shared.items():
        lines.append(
            f"  frozen, shared across layers: {kind}, {s.params:,} values used by {s.sites} modules (not trained, "
            f"not counted; one copy each would hold {s.unshared_equivalent:,})"
        )
    lines.append(f"  {method + ' total':<28}{b.adapter_total:>12,}")
    lines.append(f"  {'classification head':<28}{b.head:>12,}")
    if len(b.head_parts) > 1:
        lines += [f"  {'  head: ' + part:<28}{n:>12,}" for part, n in b.head_parts.items()]
    if b.head_vectors:
        classes, hidden = b.head_vectors
        lines.append(
            f"    head: class vectors {classes}×{hidden} = {classes * hidden:,} values computed from the data, "
            "not trained (not counted)"
        )
    for name, n in b.other.items():
        lines.append(f"  {('other: ' + name)[:60]:<28}{n:>12,}")
    lines.append(f"  {'TOTAL trainable':<28}{b.total:>12,}")
    lines.append(f"  {'budget':<28}{format_budget(budget):>12}")
    if budget is None:
        lines.append("  verdict: no limit (a teacher's budget is never counted)")
    elif b.total <= budget:
        lines.append(f"  verdict: WITHIN budget ({budget - b.total:,} to spare, {b.total / budget:.1%} used)")
    else:
        lines.append(f"  verdict: OVER budget by {b.total - budget:,} parameters")
    return "\n".join(lines)


def check_budget(b: Breakdown, budget: Optional[int]) -> None:
    if budget is not None and b.total > budget:
        raise BudgetExceededError(
            f"{b.total:,} trainable parameters exceed the budget of {budget:,} by {b.total - budget:,}; "
            "lower adapter ranks, adapt fewer modules or layers, or use `head: linear`"
        )


def within_budget(b: Breakdown, budget: Optional[int]) -> bool:
    return budget is None or b.total <= budget
