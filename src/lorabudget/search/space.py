"""What ``lorabudget search`` varies: a search space read from YAML, sampled through an Optuna trial.

A space is a mapping (the ``search:`` section of a config, or a ``--space`` file). Every entry is
optional; what the space leaves out keeps the base config's value. A value is a *distribution*:

- a scalar: fixed (not searched);
- a list: one of these values (categorical);
- ``{low, high}`` with optional ``log: true``, ``step`` and ``int: true``: a number in that range
  (an integer when ``int: true`` or both bounds are integers).

Named entries:

``model``             base models (``model.name``) to choose from; each trial records its base and frozen size
``method``            PEFT method (``adapter.method``): lora, vera, ia3, loha, lokr, fourierft, vblora, ...
``modules``           module kinds: ``{subsets_of: [query, value, ...]}`` (each kind in or out) or a
                      list of module lists (one list is chosen)
``layers``            how layers are chosen, any of: ``all``, ``range`` (a contiguous block),
                      ``top`` (the last k), ``bottom`` (the first k), ``subset`` (each layer in or out)
``r``                 rank; ``r_per_module: true`` draws one rank per chosen module kind (rank_pattern)
``alpha_ratio``       alpha = ratio x rank (per module kind when ranks are); or ``alpha`` itself
``dropout``, ``learning_rate``, ``head_learning_rate``, ``epochs``   the matching config values
``lr_scale``, ``head_lr_scale``   multipliers of a reference learning rate, used instead of absolute
                      rates by the built-in space: the base config's own rate when the sampled method
                      is the base config's method, else the sampled method's default (methods need
                      very different rates: VeRA's default is 20x LoRA's)
``head``              ``full``, ``linear-first``, ``linear-mean`` (head.type and head.pooling), or
                      ``linear``, ``low_rank``, ``prototype``, ``auto`` (the base config's pooling)
``head_rank``         a ``low_rank`` head's rank (drawn when that head is; absent: the largest that fits)
``head_init``         ``random``, ``names``, ``prototypes`` (how a head other than ``full`` starts)
``options``           per method, a mapping of keyword -> distribution that goes into ``adapter.options``
``set``               any other config key by its dotted path, e.g. ``training.warmup_ratio: [0.0, 0.06]``

Entries that do not apply to the sampled method (a rank for ``ia3``, placement for ``bitfit``) are not
sampled for it, so the sampler never spends trials on settings that change nothing.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from lorabudget.config import apply_overrides
from lorabudget.errors import LorabudgetError
from lorabudget.methods.registry import METHODS
from lorabudget.methods.sites import MODULE_SHORT_NAMES
from lorabudget.search.adapter_keys import (
    AlphaKey,
    AlphaRatioKey,
    LayersKey,
    MethodKey,
    ModulesKey,
    OptionsKey,
    RankKey,
)
from lorabudget.search.dist import Dist, parse_dist
from lorabudget.search.keys import LAYER_MODES, Draw, Point, Rates, SpaceKey, reference_rates
from lorabudget.search.run_keys import HeadKey, LrScaleKey, ModelKey, SettingKey

__all__ = [
    "Dist",
    "SearchSpace",
    "apply_sample",
    "available_methods",
    "base_points",
    "default_space_raw",
    "describe",
    "parse_dist",
    "parse_space",
    "reference_rates",
    "sample",
]

# What the space samples for a method comes from the registry (methods/registry.py).
SEARCHABLE_BY_DEFAULT = tuple(name for name, m in METHODS.items() if m.searched_by_default)
# The order keys draw in (a later key reads what an earlier one drew: the rank reads the modules,
# alpha_ratio the rank, lr_scale the method).
KEYS: tuple[type[SpaceKey], ...] = (
    ModelKey,
    MethodKey,
    ModulesKey,
    LayersKey,
    RankKey,
    AlphaRatioKey,
    AlphaKey,
    SettingKey,
    LrScaleKey,
    HeadKey,
    OptionsKey,
)
# The order a trial's description shows them in.
DESCRIBED: tuple[type[SpaceKey], ...] = (MethodKey, RankKey, AlphaKey, ModulesKey, LayersKey, LrScaleKey)
NAMED = tuple(name for key in KEYS for name in key.names)


@dataclass
class SearchSpace:
    """A parsed space: its keys in drawing order. ``raw`` is what it was read from (stored with the
    study so workers agree)."""

    raw: dict[str, Any]
    keys: list[SpaceKey] = field(default_factory=list)

    def key(self, name: str) -> Optional[SpaceKey]:
        return next((k for k in self.keys if k.name == name), None)

    def methods(self) -> list[str]:
        method = self.key("method")
        return method.dist.values() if method else []


def parse_space(raw: Any) -> SearchSpace:
    """Validate a ``search:`` mapping into a :class:`SearchSpace`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise LorabudgetError("the search space must be a mapping (see `lorabudget search --help`)")
    unknown = [k for k in raw if k not in NAMED]
    if unknown:
        raise LorabudgetError(f"unknown search key '{unknown[0]}'; allowed keys: " + ", ".join(NAMED))
    return SearchSpace(raw=copy.deepcopy(raw), keys=[key for cls in KEYS for key in cls.parse(raw)])


def available_methods() -> list[str]:
    """The methods the built-in space samples."""
    return list(SEARCHABLE_BY_DEFAULT)


def default_space_raw(methods: Optional[list[str]] = None) -> dict[str, Any]:
    """The built-in space: method, placement, rank and alpha, dropout and learning rates."""
    methods = methods if methods is not None else available_methods()
    raw: dict[str, Any] = {
        "method": methods if len(methods) > 1 else methods[0],
        "modules": {"subsets_of": list(MODULE_SHORT_NAMES)},
        "layers": list(LAYER_MODES),
        "r": [1, 2, 4, 8, 16],
        "alpha_ratio": [1, 2, 4],
        "dropout": [0.0, 0.05, 0.1],
        "lr_scale": {"low": 0.3, "high": 3.0, "log": True},
        "head_lr_scale": {"low": 0.3, "high": 3.0, "log": True},
    }
    options = {m: METHODS[m].search_options for m in methods if METHODS[m].search_options}
    if options:
        raw["options"] = copy.deepcopy(options)
    return raw


def sample(
    trial,
    space: SearchSpace,
    num_layers: Union[int, Callable[[Optional[str]], int]],
    base_method: str = "lora",
    base_rates: Rates = (None, None),
) -> dict[str, Any]:
    """Draw one configuration; return config overrides as {dotted path: value}.

    ``num_layers``: the base model's encoder layers, or a function of the drawn model name (None: the
    config's own). ``base_rates``: the base config's learning rate and head learning rate (None where
    it leaves them to the method). ``lr_scale`` multiplies them for the base method: a preset's rate
    is better informed than a method-wide default (LoRA's 5e-4 is roberta-base's; MiniLM's LoRA r=2
    measured best at 3e-3, out of reach of 5e-4 x 3).

    Raises :class:`LorabudgetError` for a draw that cannot be built (no module or layer chosen); the
    caller records it as a rejected sample.
    """
    draw = Draw(trial, num_layers, base_method, base_method, base_rates)
    for key in space.keys:
        key.sample(draw)
    return draw.out


def apply_sample(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of the config dict ``values`` with the dotted-path ``overrides`` applied."""
    return apply_overrides(copy.deepcopy(values), copy.deepcopy(overrides))


def describe(overrides: dict[str, Any], base_method: str = "lora") -> str:
    """A one-line summary of a sample, for logs: method, rank, modules, layers, then what else was drawn."""
    parts = [part for key in DESCRIBED for part in key.describe(overrides, base_method)]
    summarised = {path for key in KEYS for path in key.summarised}
    for path, value in overrides.items():
        # Off switches and empty options are what a method change resets (use_rslora, options): not news.
        if value is None or value is False or (isinstance(value, (dict, list)) and not value) or path in summarised:
            continue
        name = path.split(".")[-1]
        parts.append(f"{name}={value:.3g}" if isinstance(value, float) and not math.isnan(value) else f"{name}={value}")
    return " ".join(parts)


def base_points(
    space: SearchSpace,
    cfg: Any,
    num_layers: int,
    base_method: str = "lora",
    base_rates: Rates = (None, None),
    scale_down: bool = True,
) -> list[dict[str, Any]]:
    """The typed config ``cfg`` as trial parameters of ``space``, one dict per rank.

    A search starts from the user's own configuration and from the measured presets for its model
    (Optuna's enqueued trials), so its best is never a configuration the user would have beaten on
    validation by training one of those unchanged. ``base_method`` and ``base_rates`` are the search's
    base config's, as :func:`sample` takes them (``lr_scale`` is the ratio of ``cfg``'s rate to the
    reference rate). With ``scale_down`` a config over the budget is scaled down the way a person
    would: the same method, modules, layers and rates at a lower rank. Dicts come highest rank first
    (only ranks the space draws, at most the config's); the caller plans each on the meta device and
    enqueues the first that fits.

    Raises :class:`LorabudgetError` saying why when the config is not a point of the space (finer
    placements, a rank pattern, a value the space cannot draw).
    """
    point = Point(cfg, num_layers, base_method, base_rates, scale_down, {k.name: k for k in space.keys})
    method_key = space.key("method")
    if method_key:
        method_key.invert(point)
    a = cfg.adapter
    if METHODS[a.method].placement != "model" and (a.placements or a.rank_pattern or a.alpha_pattern):
        raise LorabudgetError("it places adapters per group or per module kind")
    for key in space.keys:
        if not isinstance(key, (ModelKey, MethodKey)):
            key.invert(point)
    return [point.params if r is None else {**point.params, "r": r} for r in point.ranks]
