"""Sizes of the pooled heads, and ``head.type: auto`` resolved into a concrete head.

``auto`` takes the ``linear`` head when it costs at most a quarter of the budget; otherwise the largest
``low_rank`` head that does, provided its rank reaches what a linear head can express (classes - 1 for
single-label: softmax ignores a shift shared by every class; classes for multi-label); otherwise
``prototype``. A narrower low-rank head loses to the prototype head by far: on Banking77 (77 intents,
1,500 held-out rows, MiniLM at 10k) low_rank r=5 scored 43.7% against the prototype head's 87.1%, and
at 100k low_rank r=36 88.6% against 89.7% with 16,595 fewer parameters (docs/heads-measured.md).

The quarter is also capped by what the adapters
leave of the budget, so that a preset's adapters plus its head always fit (MiniLM's 100k preset spends
82,944 on LoRA: a head of a quarter, 25,000, would take the run over). An unlimited budget takes
``linear``. ``low_rank`` without a rank takes the largest rank by the same rule.

The choice is made once, when the config is resolved (``model.build.resolve_head``, which counts the
adapters on the meta device), and written into the run's ``config.yaml`` as
the concrete type and rank, so ``predict`` and ``export`` never decide again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from lorabudget.config import RunConfig

HEAD_SHARE = 4  # the head may take at most 1/HEAD_SHARE of the budget


def linear_params(hidden: int, classes: int) -> int:
    return hidden * classes + classes


def low_rank_params(hidden: int, classes: int, rank: int) -> int:
    """hidden -> rank without bias, rank -> classes with bias."""
    return rank * (hidden + classes) + classes


def prototype_params(classes: int) -> int:
    """A temperature and one bias per class; the class vectors are not trained."""
    return classes + 1


def head_params(head_type: str, hidden: int, classes: int, rank: Optional[int] = None) -> int:
    if head_type == "linear":
        return linear_params(hidden, classes)
    if head_type == "low_rank":
        return low_rank_params(hidden, classes, int(rank or 0))
    if head_type == "prototype":
        return prototype_params(classes)
    raise ValueError(f"no formula for head type {head_type!r}")


@dataclass
class HeadChoice:
    type: str
    rank: Optional[int]
    reason: str


def largest_rank(hidden: int, classes: int, limit: int) -> int:
    """The largest r with r·(hidden + classes) + classes <= limit (0 when none)."""
    return max(0, (limit - classes) // (hidden + classes))


def head_limit(budget: int, adapters: int = 0) -> tuple[int, str]:
    """What a head may cost: a quarter of the budget, or what the adapters leave when that is less;
    and the words saying which."""
    quarter = budget // HEAD_SHARE
    left = budget - adapters
    if quarter <= left:
        return quarter, f"{quarter:,} = 1/{HEAD_SHARE} of the {budget:,} budget"
    return (
        left,
        f"{max(left, 0):,} = what the adapters' {adapters:,} leave of the {budget:,} budget (under 1/{HEAD_SHARE})",
    )


def full_rank(classes: int, multi_label: bool = False) -> int:
    """The rank at which a low-rank head expresses every linear head: classes - 1 under softmax (a shift
    shared by every class changes nothing), classes with one sigmoid per class."""
    return classes if multi_label else max(1, classes - 1)


def choose_head(
    hidden: int, classes: int, budget: Optional[int], adapters: int = 0, multi_label: bool = False
) -> HeadChoice:
    """``auto``'s rule (module docstring). ``adapters``: what the rest of the model trains."""
    linear = linear_params(hidden, classes)
    if budget is None:
        return HeadChoice("linear", None, f"auto: unlimited budget, linear {linear:,}")
    limit, why = head_limit(budget, adapters)
    if linear <= limit:
        return HeadChoice("linear", None, f"auto: linear {linear:,} <= {why}")
    rank = largest_rank(hidden, classes, limit)
    needed = full_rank(classes, multi_label)
    if rank >= needed:  # never more: a wider head than classes - 1 would not fit where linear does not
        rank = needed
        return HeadChoice("low_rank", rank, f"auto: linear {linear:,} > {why}; low_rank r={rank} expresses it")
    return HeadChoice(
        "prototype",
        None,
        f"auto: linear {linear:,} > {why}, and a low_rank head within it (r<={rank}) is narrower than "
        f"the r={needed} that expresses it",
    )


def describe_head(cfg: RunConfig, hidden: Optional[int]) -> str:
    """``plan``'s one line on the head: its type, size, and why (auto) or where it was set."""
    head = cfg.head
    why = getattr(head, "chosen_because", None) or "head.type in the config"
    if head.type == "full":
        return f"head: full (the model's own classification head; {why})"
    if hidden is None:
        return f"head: {head.type} ({why})"
    classes = cfg.num_labels
    rank = f" r={head.rank}" if head.type == "low_rank" else ""
    count = head_params(head.type, hidden, classes, head.rank)
    extra = (
        f"; class vectors {classes}×{hidden} = {classes * hidden:,} values computed from the data, not trained"
        if head.type == "prototype"
        else ""
    )
    return f"head: {head.type}{rank}, {count:,} trainable ({why}){extra}"
