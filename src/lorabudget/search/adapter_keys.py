"""Search-space keys of the adapter: method, placement (modules, layers), rank, alpha, method options."""

from __future__ import annotations

from typing import Optional

from lorabudget.errors import LorabudgetError
from lorabudget.methods.registry import METHODS
from lorabudget.methods.sites import MODULE_SHORT_NAMES, check_module_names
from lorabudget.search.dist import Dist, parse_dist, positive
from lorabudget.search.keys import (
    LAYER_MODES,
    SpaceKey,
    rank_searched,
)

# What a method change resets: the base config's method-specific values do not carry over, and
# null takes the new method's defaults.
_METHOD_RESETS = {
    "adapter.r": None,
    "adapter.alpha": None,
    "adapter.rank_pattern": {},
    "adapter.alpha_pattern": {},
    "adapter.options": {},
    "adapter.use_rslora": False,
    "adapter.use_dora": False,
    "training.learning_rate": None,
    "training.head_learning_rate": None,
}


class MethodKey(SpaceKey):
    names = ("method",)
    summarised = ("adapter.method",)

    def __init__(self, dist: Dist):
        self.dist = dist

    @classmethod
    def parse(cls, raw):
        if "method" not in raw:
            return []
        dist = parse_dist("method", raw["method"])
        for m in dist.values():
            if m not in METHODS:
                raise LorabudgetError(f"search key 'method': unknown method '{m}'; known: " + ", ".join(METHODS))
        return [cls(dist)]

    def sample(self, d):
        d.method = self.dist.suggest(d.trial, "method")
        if d.method != d.base_method:
            d.out["adapter.method"] = d.method
            d.out.update(_METHOD_RESETS)
            if d.placement in ("norm", "model"):
                d.out.update({"adapter.modules": None, "adapter.placements": [], "adapter.layers": None})

    def invert(self, p):
        self.dist.record(p.params, "method", p.method, "its method")

    @classmethod
    def describe(cls, overrides, base_method):
        return [overrides.get("adapter.method", base_method)]


class ModulesKey(SpaceKey):
    """``{subsets_of: [...]}`` (each module kind in or out) or a list of module lists (one is chosen)."""

    names = ("modules",)
    summarised = ("adapter.modules",)

    def __init__(self, subsets_of: Optional[tuple[str, ...]], choices: Optional[Dist]):
        self.subsets_of, self.choices = subsets_of, choices

    @classmethod
    def parse(cls, raw):
        if "modules" not in raw:
            return []
        spec = raw["modules"]
        if isinstance(spec, dict) and set(spec) == {"subsets_of"}:
            check_module_names("search key 'modules.subsets_of'", spec["subsets_of"])
            return [cls(tuple(spec["subsets_of"]), None)]
        if isinstance(spec, list) and spec and all(isinstance(s, list) for s in spec):
            for i, s in enumerate(spec):
                check_module_names(f"search key 'modules[{i}]'", s)
            keys = ["+".join(s) for s in spec]
            return [
                cls(None, Dist("categorical", choices=tuple(keys)) if len(keys) > 1 else Dist("fixed", value=keys[0]))
            ]
        raise LorabudgetError("search key 'modules': give {subsets_of: [query, value, ...]} or a list of module lists")

    def sample(self, d):
        if d.placement in ("norm", "model"):
            return
        if self.subsets_of:
            modules = [m for m in self.subsets_of if d.trial.suggest_categorical(f"module.{m}", [True, False])]
        else:
            modules = self.choices.suggest(d.trial, "modules").split("+")
        if not modules:
            raise LorabudgetError("no module kind chosen")
        d.modules = modules
        d.out["adapter.modules"] = modules
        d.out["adapter.placements"] = []

    def invert(self, p):
        if METHODS[p.method].placement in ("norm", "model"):
            return
        modules = list(p.cfg.adapter.modules or [])
        if self.subsets_of:
            if not set(modules) <= set(self.subsets_of):
                raise LorabudgetError(f"its modules {modules} are not a subset of {list(self.subsets_of)}")
            p.params.update({f"module.{m}": m in modules for m in self.subsets_of})
        else:
            self.choices.record(p.params, "modules", "+".join(modules), "its module list")

    @classmethod
    def describe(cls, overrides, base_method):
        modules = overrides.get("adapter.modules")
        return ["+".join(modules)] if modules is not None else []


class LayersKey(SpaceKey):
    names = ("layers",)
    summarised = ("adapter.layers", "adapter.placements")

    def __init__(self, dist: Dist):
        self.dist = dist

    @classmethod
    def parse(cls, raw):
        if "layers" not in raw:
            return []
        dist = parse_dist("layers", raw["layers"])
        for mode in dist.values():
            if mode not in LAYER_MODES:
                raise LorabudgetError(f"search key 'layers': unknown mode '{mode}'; modes: " + ", ".join(LAYER_MODES))
        return [cls(dist)]

    def sample(self, d):
        if d.placement == "model":
            return
        layers = _draw_layers(d.trial, self.dist.suggest(d.trial, "layers"), d.layers())
        if layers == []:
            raise LorabudgetError("no layer chosen")
        d.out["adapter.layers"] = layers
        d.out["adapter.placements"] = []

    def invert(self, p):
        if METHODS[p.method].placement == "model":
            return
        layers = p.cfg.adapter.layers
        if layers is None or sorted(layers) == list(range(p.num_layers)):
            self.dist.record(p.params, "layers", "all", "its layer mode")
        else:
            self.dist.record(p.params, "layers", "subset", "its layer mode for layers " + str(layers))
            p.params.update({f"layers.{i}": i in layers for i in range(p.num_layers)})

    @classmethod
    def describe(cls, overrides, base_method):
        if "adapter.layers" not in overrides:
            return []
        layers = overrides["adapter.layers"]
        return ["all layers" if layers is None else "layers " + ",".join(map(str, layers))]


def _draw_layers(trial, mode: str, num_layers: int) -> Optional[list[int]]:
    if mode == "all":
        return None
    if mode == "range":
        # Fixed ranges (not depending on another draw) keep the sampler's model of each value simple.
        first = trial.suggest_int("layers.first", 0, num_layers - 1)
        count = trial.suggest_int("layers.count", 1, num_layers)
        return list(range(first, min(num_layers, first + count)))
    if mode in ("top", "bottom"):
        k = trial.suggest_int("layers.k", 1, num_layers)
        return list(range(num_layers - k, num_layers)) if mode == "top" else list(range(k))
    return [i for i in range(num_layers) if trial.suggest_categorical(f"layers.{i}", [True, False])]


class RankKey(SpaceKey):
    """``r``; with ``r_per_module: true`` one rank per chosen module kind (rank_pattern)."""

    names = ("r", "r_per_module")
    summarised = ("adapter.r", "adapter.rank_pattern")

    def __init__(self, dist: Dist, per_module: bool):
        self.dist, self.per_module = dist, per_module

    @classmethod
    def parse(cls, raw):
        if "r" not in raw:
            return []
        return [cls(positive(parse_dist("r", raw["r"]), "r"), bool(raw.get("r_per_module", False)))]

    def sample(self, d):
        if d.placement == "model" or not rank_searched(d.method):
            return
        d.r = self.dist.suggest(d.trial, "r")
        d.out["adapter.r"] = d.r
        if self.per_module and METHODS[d.method].per_module_rank:
            kinds = d.modules or list(MODULE_SHORT_NAMES)
            d.ranks = {m: self.dist.suggest(d.trial, f"r.{m}") for m in kinds}
        d.out["adapter.rank_pattern"] = d.ranks

    def invert(self, p):
        if not rank_searched(p.method):
            return
        if self.per_module or "alpha" in p.keys:
            raise LorabudgetError("the space draws per-module ranks or absolute alphas")
        if self.dist.kind not in ("fixed", "categorical"):
            raise LorabudgetError("the space draws ranks from a range")
        r = p.cfg.adapter.r
        ranks = sorted((v for v in self.dist.values() if v <= r), reverse=True)
        if not p.scale_down:
            ranks = ranks[:1] if ranks and ranks[0] == r else []
        if not ranks:
            raise LorabudgetError(f"the space has no rank {'at or below ' if p.scale_down else ''}{r}")
        # One point per rank, highest first; a fixed rank is no trial parameter.
        p.ranks = ranks if self.dist.kind == "categorical" else [None]

    @classmethod
    def describe(cls, overrides, base_method):
        # A null rank is the method's default (a method change resets the base's): not shown.
        if overrides.get("adapter.r") is None:
            return []
        ranks = overrides.get("adapter.rank_pattern") or {}
        return [f"r={overrides['adapter.r']}" if not ranks else "r=" + "/".join(str(v) for v in ranks.values())]


class AlphaRatioKey(SpaceKey):
    """alpha = ratio x rank (per module kind when ranks are); drawn only with a rank."""

    names = ("alpha_ratio",)

    def __init__(self, dist: Dist):
        self.dist = dist

    @classmethod
    def parse(cls, raw):
        if "alpha_ratio" not in raw:
            return []
        if "alpha" in raw:
            raise LorabudgetError("search keys 'alpha' and 'alpha_ratio' exclude each other; give one")
        return [cls(positive(parse_dist("alpha_ratio", raw["alpha_ratio"]), "alpha_ratio"))]

    def sample(self, d):
        if d.r is None:
            return
        ratio = self.dist.suggest(d.trial, "alpha_ratio")
        d.out["adapter.alpha"] = float(ratio * d.r)
        d.out["adapter.alpha_pattern"] = {m: float(ratio * v) for m, v in d.ranks.items()}

    def invert(self, p):
        if rank_searched(p.method) and "r" in p.keys:
            a = p.cfg.adapter
            self.dist.record(p.params, "alpha_ratio", a.alpha / a.r, "its alpha/r")


class AlphaKey(SpaceKey):
    names = ("alpha",)
    summarised = ("adapter.alpha", "adapter.alpha_pattern")

    def __init__(self, dist: Dist):
        self.dist = dist

    @classmethod
    def parse(cls, raw):
        return [cls(positive(parse_dist("alpha", raw["alpha"]), "alpha"))] if "alpha" in raw else []

    def sample(self, d):
        if d.placement != "model" and rank_searched(d.method):
            d.out["adapter.alpha"] = float(self.dist.suggest(d.trial, "alpha"))

    # invert: RankKey refuses a space with absolute alphas (a base point cannot carry one)

    @classmethod
    def describe(cls, overrides, base_method):
        alpha = overrides.get("adapter.alpha")
        return [f"alpha={alpha:g}"] if alpha is not None else []


class OptionsKey(SpaceKey):
    """Per method, a mapping of keyword -> distribution that goes into ``adapter.options``."""

    names = ("options",)

    def __init__(self, options: dict[str, dict[str, Dist]]):
        self.options = options

    @classmethod
    def parse(cls, raw):
        options = raw.get("options") or {}
        if not isinstance(options, dict):
            raise LorabudgetError("search key 'options': a mapping of method -> {option: values}")
        for method, opts in options.items():
            if method not in METHODS:
                raise LorabudgetError(f"search key 'options.{method}': unknown method; known: " + ", ".join(METHODS))
            if not isinstance(opts, dict):
                raise LorabudgetError(f"search key 'options.{method}': a mapping of option -> values")
        parsed = {
            method: {k: parse_dist(f"options.{method}.{k}", v) for k, v in opts.items()}
            for method, opts in options.items()
        }
        return [cls(parsed)] if parsed else []

    def sample(self, d):
        drawn = {k: dist.suggest(d.trial, f"{d.method}.{k}") for k, dist in self.options.get(d.method, {}).items()}
        if drawn:
            d.out["adapter.options"] = drawn

    def invert(self, p):
        given = p.cfg.adapter.options or {}
        for key, dist in self.options.get(p.method, {}).items():
            if key not in given:
                raise LorabudgetError(f"it leaves adapter.options.{key} to the method")
            dist.record(p.params, f"{p.method}.{key}", given[key], f"its adapter.options.{key}")
