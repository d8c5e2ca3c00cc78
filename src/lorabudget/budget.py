"""Exact trainable-parameter accounting: a breakdown by layer and module, the head, and the verdict."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

from torch import nn

from .config import MODULE_SHORT_NAMES
from .errors import BudgetExceededError
from .modeling import MODULE_PATHS

_SITE_RE = re.compile(
    r"layer\.(\d+)\.(" + "|".join(re.escape(p) for p in MODULE_PATHS.values()) + r")\.(?:base_layer\.)?lora_"
)
_PATH_TO_SHORT = {path: short for short, path in MODULE_PATHS.items()}


@dataclass
class Breakdown:
    """Trainable parameters of a model, grouped the way a budget is reasoned about."""

    lora: dict[tuple[int, str], int] = field(default_factory=dict)  # (layer, short module) -> params
    head: int = 0
    other: dict[str, int] = field(default_factory=dict)  # parameter name -> params

    @property
    def lora_total(self) -> int:
        return sum(self.lora.values())

    @property
    def total(self) -> int:
        return self.lora_total + self.head + sum(self.other.values())


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def breakdown(model: nn.Module) -> Breakdown:
    """Group every trainable parameter of a PEFT model: LoRA per (layer, module), head, other."""
    lora: dict[tuple[int, str], int] = defaultdict(int)
    result = Breakdown()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        match = _SITE_RE.search(name)
        if match:
            lora[(int(match.group(1)), _PATH_TO_SHORT[match.group(2)])] += param.numel()
        elif ".modules_to_save." in name:
            result.head += param.numel()
        else:
            result.other[name] = param.numel()
    result.lora = dict(sorted(lora.items(), key=lambda kv: (kv[0][0], MODULE_SHORT_NAMES.index(kv[0][1]))))
    return result


def format_breakdown(b: Breakdown, budget: int, title: str = "") -> str:
    """A human-readable table: LoRA parameters per layer and module, head, total, budget, verdict."""
    lines = [title] if title else []
    modules = [m for m in MODULE_SHORT_NAMES if any(k[1] == m for k in b.lora)]
    layers = sorted({k[0] for k in b.lora})
    if modules:
        widths = [max(10, len(m) + 2) for m in modules]
        lines.append("LoRA parameters by layer and module:")
        lines.append("  layer" + "".join(f"{m:>{w}}" for m, w in zip(modules, widths)) + f"{'layer total':>13}")
        for layer in layers:
            cells = [b.lora.get((layer, m)) for m in modules]
            row = "".join(f"{(f'{c:,}' if c else '-'):>{w}}" for c, w in zip(cells, widths))
            lines.append(f"  {layer:>5}{row}{sum(c or 0 for c in cells):>13,}")
    else:
        lines.append("LoRA parameters: none")
    lines.append(f"  {'LoRA total':<28}{b.lora_total:>12,}")
    lines.append(f"  {'classification head':<28}{b.head:>12,}")
    for name, n in b.other.items():
        lines.append(f"  {('other: ' + name)[:60]:<28}{n:>12,}")
    lines.append(f"  {'TOTAL trainable':<28}{b.total:>12,}")
    lines.append(f"  {'budget':<28}{budget:>12,}")
    if b.total <= budget:
        lines.append(f"  verdict: WITHIN budget ({budget - b.total:,} to spare, {b.total / budget:.1%} used)")
    else:
        lines.append(f"  verdict: OVER budget by {b.total - budget:,} parameters")
    return "\n".join(lines)


def check_budget(b: Breakdown, budget: int) -> None:
    if b.total > budget:
        raise BudgetExceededError(
            f"{b.total:,} trainable parameters exceed the budget of {budget:,} by {b.total - budget:,}; "
            "lower adapter ranks, adapt fewer modules or layers, or use `head: linear`"
        )
