"""The common base of the search space's keys, and what they share while drawing or inverting.

Each key is one class: it reads its YAML entry, draws its config overrides from an Optuna trial,
finds the trial parameters that give back a config (a base point), and shows its overrides in a
trial's one-line description.

A new key is one subclass of :class:`SpaceKey` (adapter_keys.py, run_keys.py) added to
``space.KEYS``; search/space.py runs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional, Union

from lorabudget.methods.registry import METHODS, get_method

LAYER_MODES = ("all", "range", "top", "bottom", "subset")
# Search-space head names -> (head.type, head.pooling); None keeps the base config's pooling.
HEADS = {
    "full": ("full", None),
    "linear-first": ("linear", "first"),
    "linear-mean": ("linear", "mean"),
    "linear": ("linear", None),
    "low_rank": ("low_rank", None),
    "prototype": ("prototype", None),
    "auto": ("auto", None),
}
HEAD_INITS = ("random", "names", "prototypes")
SIMPLE_PATHS = {
    "dropout": "adapter.dropout",
    "learning_rate": "training.learning_rate",
    "head_learning_rate": "training.head_learning_rate",
    "epochs": "training.epochs",
}
Rates = tuple[Optional[float], Optional[float]]


def reference_rates(method: str, base_method: str, base_rates: Rates) -> tuple[float, float]:
    """The adapter and head learning rates that ``lr_scale`` and ``head_lr_scale`` multiply for ``method``:
    the base config's own for its own method, else the method's defaults."""
    spec = get_method(method)
    own_lr, own_head_lr = base_rates if method == base_method else (None, None)
    # As a null head_learning_rate resolves: the method's head default, else the adapter's rate.
    return (own_lr or spec.learning_rate, own_head_lr or spec.head_learning_rate or own_lr or spec.learning_rate)


@dataclass
class Draw:
    """One sample in the making: the trial, the overrides so far, and what later keys depend on."""

    trial: Any
    num_layers: Union[int, Callable[[Optional[str]], int]]
    method: str
    base_method: str
    base_rates: Rates
    out: dict[str, Any] = field(default_factory=dict)
    modules: Optional[list[str]] = None
    r: Any = None  # the drawn rank, when one was
    ranks: dict[str, Any] = field(default_factory=dict)

    def layers(self) -> int:
        """Encoder layers of the drawn base model (a callable is asked once, with the drawn model name)."""
        if callable(self.num_layers):
            self.num_layers = self.num_layers(self.out.get("model.name"))
        return self.num_layers

    @property
    def placement(self) -> str:
        return METHODS[self.method].placement


@dataclass
class Point:
    """A typed config being turned into trial parameters (a base point)."""

    cfg: Any
    num_layers: int
    base_method: str
    base_rates: Rates
    scale_down: bool
    keys: dict[str, "SpaceKey"]  # the space's keys by name, for rules that span two keys
    params: dict[str, Any] = field(default_factory=dict)
    ranks: list[Any] = field(default_factory=lambda: [None])

    @property
    def method(self) -> str:
        return self.cfg.adapter.method


class SpaceKey:
    """One entry of a search space. ``names``: the YAML keys it reads (the first one names it);
    ``summarised``: the override paths its :meth:`describe` shows (others are shown as ``key=value``)."""

    names: ClassVar[tuple[str, ...]] = ()
    summarised: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> list["SpaceKey"]:
        """The keys this class makes of the raw space (none when its entry is absent)."""
        raise NotImplementedError

    @property
    def name(self) -> str:
        return self.names[0]

    def sample(self, d: Draw) -> None:
        """Draw this key's overrides into ``d.out``."""

    def invert(self, p: Point) -> None:
        """Add the trial parameters that draw ``p.cfg``'s value; raise saying why when none do."""

    @classmethod
    def describe(cls, overrides: dict[str, Any], base_method: str) -> list[str]:
        return []


def rank_searched(method: str) -> bool:
    return METHODS[method].searched_rank
