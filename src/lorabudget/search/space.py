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
``head``              ``full``, ``linear-first``, ``linear-mean`` (head.type and head.pooling)
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

from lorabudget.errors import LorabudgetError
from lorabudget.methods.registry import METHODS, get_method
from lorabudget.methods.sites import MODULE_SHORT_NAMES

# What the space samples for a method comes from the registry (methods/registry.py).
SEARCHABLE_BY_DEFAULT = tuple(name for name, m in METHODS.items() if m.searched_by_default)
LAYER_MODES = ("all", "range", "top", "bottom", "subset")
HEADS = {"full": ("full", None), "linear-first": ("linear", "first"), "linear-mean": ("linear", "mean")}
NAMED = (
    "model",
    "method",
    "modules",
    "layers",
    "r",
    "r_per_module",
    "alpha",
    "alpha_ratio",
    "dropout",
    "learning_rate",
    "head_learning_rate",
    "lr_scale",
    "head_lr_scale",
    "epochs",
    "head",
    "options",
    "set",
)
SIMPLE_PATHS = {
    "dropout": "adapter.dropout",
    "learning_rate": "training.learning_rate",
    "head_learning_rate": "training.head_learning_rate",
    "epochs": "training.epochs",
}


@dataclass(frozen=True)
class Dist:
    """One searched (or fixed) value."""

    kind: str  # fixed | categorical | int | float
    value: Any = None
    choices: tuple = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: Optional[float] = None

    def suggest(self, trial, name: str) -> Any:
        if self.kind == "fixed":
            return self.value
        if self.kind == "categorical":
            return trial.suggest_categorical(name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def values(self) -> list[Any]:
        """The values a fixed or categorical entry can take (a range: its low end)."""
        if self.kind == "fixed":
            return [self.value]
        return list(self.choices) if self.kind == "categorical" else [self.low]


_SCALARS = (str, int, float, bool, type(None))


def parse_dist(key: str, spec: Any) -> Dist:
    """A distribution from its YAML form (see the module docstring)."""
    if isinstance(spec, list):
        if not spec:
            raise LorabudgetError(f"search key '{key}': list at least one value")
        if not all(isinstance(v, _SCALARS) for v in spec):
            raise LorabudgetError(f"search key '{key}': choices must be plain values (text, numbers, true/false)")
        return Dist("categorical", choices=tuple(spec)) if len(spec) > 1 else Dist("fixed", value=spec[0])
    if isinstance(spec, dict):
        unknown = set(spec) - {"low", "high", "log", "step", "int"}
        if unknown or "low" not in spec or "high" not in spec:
            raise LorabudgetError(
                f"search key '{key}': a range is {{low, high}} with optional log, step, int; got {spec!r}"
            )
        try:
            low, high = float(spec["low"]), float(spec["high"])
        except (TypeError, ValueError):
            raise LorabudgetError(f"search key '{key}': low and high must be numbers, got {spec!r}") from None
        if not low <= high:
            raise LorabudgetError(f"search key '{key}': low {low} is above high {high}")
        log = bool(spec.get("log", False))
        if log and low <= 0:
            raise LorabudgetError(f"search key '{key}': a log range needs low > 0")
        is_int = bool(spec.get("int", False)) or (
            isinstance(spec["low"], int) and isinstance(spec["high"], int) and not isinstance(spec["low"], bool)
        )
        step = spec.get("step")
        return Dist(
            "int" if is_int else "float", low=low, high=high, log=log, step=float(step) if step is not None else None
        )
    if isinstance(spec, _SCALARS):
        return Dist("fixed", value=spec)
    raise LorabudgetError(f"search key '{key}': {spec!r} is not a value, a list of values or a {{low, high}} range")


@dataclass
class SearchSpace:
    """A parsed space. ``raw`` is what it was read from (stored with the study so workers agree)."""

    raw: dict[str, Any]
    model: Optional[Dist] = None  # base models (model.name) to choose from: the frozen base costs time, not budget
    method: Optional[Dist] = None
    modules_subsets_of: Optional[tuple[str, ...]] = None
    modules_choices: Optional[Dist] = None  # categorical over "query+value"-style keys
    layers: Optional[Dist] = None
    r: Optional[Dist] = None
    r_per_module: bool = False
    alpha: Optional[Dist] = None
    alpha_ratio: Optional[Dist] = None
    simple: dict[str, Dist] = field(default_factory=dict)  # config path -> dist
    head: Optional[Dist] = None
    options: dict[str, dict[str, Dist]] = field(default_factory=dict)
    lr_scale: Optional[Dist] = None
    head_lr_scale: Optional[Dist] = None

    def methods(self) -> list[str]:
        if self.method is None:
            return []
        return self.method.values()


def parse_space(raw: Any) -> SearchSpace:
    """Validate a ``search:`` mapping into a :class:`SearchSpace`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise LorabudgetError("the search space must be a mapping (see `lorabudget search --help`)")
    unknown = [k for k in raw if k not in NAMED]
    if unknown:
        raise LorabudgetError(f"unknown search key '{unknown[0]}'; allowed keys: " + ", ".join(NAMED))
    space = SearchSpace(raw=copy.deepcopy(raw))
    if "model" in raw:
        space.model = parse_dist("model", raw["model"])
        if space.model.kind not in ("fixed", "categorical") or not all(
            isinstance(v, str) and v for v in space.model.values()
        ):
            raise LorabudgetError("search key 'model': give a model name or a list of model names")
    if "method" in raw:
        space.method = parse_dist("method", raw["method"])
        for m in space.methods():
            if m not in METHODS:
                raise LorabudgetError(f"search key 'method': unknown method '{m}'; known: " + ", ".join(METHODS))
    if "modules" in raw:
        spec = raw["modules"]
        if isinstance(spec, dict) and set(spec) == {"subsets_of"}:
            kinds = spec["subsets_of"]
            _check_modules("modules.subsets_of", kinds)
            space.modules_subsets_of = tuple(kinds)
        elif isinstance(spec, list) and spec and all(isinstance(s, list) for s in spec):
            for i, s in enumerate(spec):
                _check_modules(f"modules[{i}]", s)
            keys = ["+".join(s) for s in spec]
            space.modules_choices = (
                Dist("categorical", choices=tuple(keys)) if len(keys) > 1 else Dist("fixed", value=keys[0])
            )
        else:
            raise LorabudgetError(
                "search key 'modules': give {subsets_of: [query, value, ...]} or a list of module lists"
            )
    if "layers" in raw:
        space.layers = parse_dist("layers", raw["layers"])
        for mode in space.layers.values():
            if mode not in LAYER_MODES:
                raise LorabudgetError(f"search key 'layers': unknown mode '{mode}'; modes: " + ", ".join(LAYER_MODES))
    if "r" in raw:
        space.r = _positive(parse_dist("r", raw["r"]), "r")
    space.r_per_module = bool(raw.get("r_per_module", False))
    if "alpha" in raw and "alpha_ratio" in raw:
        raise LorabudgetError("search keys 'alpha' and 'alpha_ratio' exclude each other; give one")
    if "alpha" in raw:
        space.alpha = _positive(parse_dist("alpha", raw["alpha"]), "alpha")
    if "alpha_ratio" in raw:
        space.alpha_ratio = _positive(parse_dist("alpha_ratio", raw["alpha_ratio"]), "alpha_ratio")
    for key, path in SIMPLE_PATHS.items():
        if key in raw:
            space.simple[path] = parse_dist(key, raw[key])
    for key in ("lr_scale", "head_lr_scale"):
        if key in raw:
            if SIMPLE_PATHS[key.replace("lr_scale", "learning_rate")] in space.simple:
                raise LorabudgetError(
                    f"search keys '{key}' and '{key.replace('lr_scale', 'learning_rate')}' exclude each other"
                )
            setattr(space, key, _positive(parse_dist(key, raw[key]), key))
    if "head" in raw:
        space.head = parse_dist("head", raw["head"])
        for h in space.head.values():
            if h not in HEADS:
                raise LorabudgetError(f"search key 'head': unknown head '{h}'; heads: " + ", ".join(HEADS))
    options = raw.get("options") or {}
    if not isinstance(options, dict):
        raise LorabudgetError("search key 'options': a mapping of method -> {option: values}")
    for method, opts in options.items():
        if method not in METHODS:
            raise LorabudgetError(f"search key 'options.{method}': unknown method; known: " + ", ".join(METHODS))
        if not isinstance(opts, dict):
            raise LorabudgetError(f"search key 'options.{method}': a mapping of option -> values")
        space.options[method] = {k: parse_dist(f"options.{method}.{k}", v) for k, v in opts.items()}
    extra = raw.get("set") or {}
    if not isinstance(extra, dict):
        raise LorabudgetError("search key 'set': a mapping of dotted config key -> values")
    for path, spec in extra.items():
        if "." not in str(path):
            raise LorabudgetError(
                f"search key 'set.{path}': give the config key with its section, e.g. training.{path}"
            )
        if str(path) == "data.train_on_validation":
            raise LorabudgetError(
                "search key 'set.data.train_on_validation': trials choose by validation rows they do not train on"
            )
        space.simple[str(path)] = parse_dist(f"set.{path}", spec)
    return space


def _check_modules(key: str, modules: Any) -> None:
    if not isinstance(modules, list) or not modules:
        raise LorabudgetError(f"search key '{key}': list at least one module")
    for m in modules:
        if m not in MODULE_SHORT_NAMES:
            raise LorabudgetError(
                f"search key '{key}': unknown module '{m}'; modules: " + ", ".join(MODULE_SHORT_NAMES)
            )


def _positive(dist: Dist, key: str) -> Dist:
    values = dist.values()
    if any(not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0 for v in values):
        raise LorabudgetError(f"search key '{key}': values must be numbers > 0")
    return dist


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


# --------------------------------------------------------------------------------------------
# Sampling


def _layers(trial, mode: str, num_layers: int) -> Optional[list[int]]:
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


def sample(
    trial,
    space: SearchSpace,
    num_layers: Union[int, Callable[[Optional[str]], int]],
    base_method: str = "lora",
    base_rates: tuple[Optional[float], Optional[float]] = (None, None),
) -> dict[str, Any]:
    """Draw one configuration; return config overrides as {dotted path: value}.

    ``base_rates``: the base config's learning rate and head learning rate (None where it leaves them
    to the method). ``lr_scale`` multiplies them for the base method: a preset's rate is better
    informed than a method-wide default (LoRA's 5e-4 is roberta-base's; MiniLM's LoRA r=2 measured
    best at 3e-3, out of reach of 5e-4 x 3).

    Raises :class:`LorabudgetError` for a draw that cannot be built (no module or layer chosen); the
    caller records it as a rejected sample.
    """
    out: dict[str, Any] = {}
    if space.model:
        out["model.name"] = space.model.suggest(trial, "model")
    if callable(num_layers):  # layers of the drawn base model (None: the config's own)
        num_layers = num_layers(out.get("model.name"))
    method = space.method.suggest(trial, "method") if space.method else base_method
    if method != base_method:
        out["adapter.method"] = method
        # The base config's method-specific values do not carry over: null takes the new method's defaults.
        out.update(
            {
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
        )
        if METHODS[method].placement == "norm" or METHODS[method].placement == "model":
            out.update({"adapter.modules": None, "adapter.placements": [], "adapter.layers": None})
    if METHODS[method].placement != "model":
        modules: Optional[list[str]] = None
        if METHODS[method].placement == "norm":
            pass
        elif space.modules_subsets_of:
            modules = [m for m in space.modules_subsets_of if trial.suggest_categorical(f"module.{m}", [True, False])]
        elif space.modules_choices:
            modules = space.modules_choices.suggest(trial, "modules").split("+")
        if modules is not None:
            if not modules:
                raise LorabudgetError("no module kind chosen")
            out["adapter.modules"] = modules
            out["adapter.placements"] = []
        if space.layers:
            layers = _layers(trial, space.layers.suggest(trial, "layers"), num_layers)
            if layers == []:
                raise LorabudgetError("no layer chosen")
            out["adapter.layers"] = layers
            out["adapter.placements"] = []
        if METHODS[method].searched_rank and space.r:
            r = space.r.suggest(trial, "r")
            out["adapter.r"] = r
            ranks: dict[str, Any] = {}
            if space.r_per_module and METHODS[method].per_module_rank:
                kinds = modules or list(MODULE_SHORT_NAMES)
                ranks = {m: space.r.suggest(trial, f"r.{m}") for m in kinds}
            out["adapter.rank_pattern"] = ranks
            if space.alpha_ratio:
                ratio = space.alpha_ratio.suggest(trial, "alpha_ratio")
                out["adapter.alpha"] = float(ratio * r)
                out["adapter.alpha_pattern"] = {m: float(ratio * v) for m, v in ranks.items()}
        if METHODS[method].searched_rank and space.alpha:
            out["adapter.alpha"] = float(space.alpha.suggest(trial, "alpha"))
    for path, dist in space.simple.items():
        if path == "adapter.dropout" and METHODS[method].placement == "model":
            continue
        out[path] = dist.suggest(trial, path.split(".", 1)[1] if path in SIMPLE_PATHS.values() else path)
    if space.lr_scale or space.head_lr_scale:
        lr_ref, head_ref = reference_rates(method, base_method, base_rates)
        if space.lr_scale:
            out["training.learning_rate"] = lr_ref * space.lr_scale.suggest(trial, "lr_scale")
        if space.head_lr_scale:
            out["training.head_learning_rate"] = head_ref * space.head_lr_scale.suggest(trial, "head_lr_scale")
    if space.head:
        head_type, pooling = HEADS[space.head.suggest(trial, "head")]
        out["head.type"] = head_type
        if pooling:
            out["head.pooling"] = pooling
    options = {k: d.suggest(trial, f"{method}.{k}") for k, d in space.options.get(method, {}).items()}
    if options:
        out["adapter.options"] = options
    return out


def reference_rates(
    method: str, base_method: str, base_rates: tuple[Optional[float], Optional[float]]
) -> tuple[float, float]:
    """The adapter and head learning rates that ``lr_scale`` and ``head_lr_scale`` multiply for ``method``:
    the base config's own for its own method, else the method's defaults."""
    spec = get_method(method)
    own_lr, own_head_lr = base_rates if method == base_method else (None, None)
    # As a null head_learning_rate resolves: the method's head default, else the adapter's rate.
    return (own_lr or spec.learning_rate, own_head_lr or spec.head_learning_rate or own_lr or spec.learning_rate)


def apply_sample(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of the config dict ``values`` with the dotted-path ``overrides`` applied."""
    result = copy.deepcopy(values)
    for path, value in overrides.items():
        node = result
        parts = path.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = copy.deepcopy(value)
    return result


def describe(overrides: dict[str, Any], base_method: str = "lora") -> str:
    """A one-line summary of a sample, for logs: method, rank, modules, layers."""
    parts = [overrides.get("adapter.method", base_method)]
    # A null rank, alpha, module list or learning rate is the method's default (other methods reset the
    # base's): not shown.
    if overrides.get("adapter.r") is not None:
        ranks = overrides.get("adapter.rank_pattern") or {}
        parts.append(f"r={overrides['adapter.r']}" if not ranks else "r=" + "/".join(str(v) for v in ranks.values()))
    if overrides.get("adapter.alpha") is not None:
        parts.append(f"alpha={overrides['adapter.alpha']:g}")
    if overrides.get("adapter.modules") is not None:
        parts.append("+".join(overrides["adapter.modules"]))
    if "adapter.layers" in overrides:
        layers = overrides["adapter.layers"]
        parts.append("all layers" if layers is None else "layers " + ",".join(map(str, layers)))
    for path in ("training.learning_rate", "training.head_learning_rate"):
        if overrides.get(path) is not None:
            parts.append(f"{path.split('.')[1].replace('learning_rate', 'lr')}={overrides[path]:.2g}")
    for path, value in overrides.items():
        # Off switches and empty options are what a method change resets (use_rslora, options): not news.
        if value is None or value is False or (isinstance(value, (dict, list)) and not value):
            continue
        if path not in {
            "adapter.method",
            "adapter.r",
            "adapter.rank_pattern",
            "adapter.alpha",
            "adapter.alpha_pattern",
            "adapter.modules",
            "adapter.layers",
            "adapter.placements",
            "training.learning_rate",
            "training.head_learning_rate",
        }:
            parts.append(
                f"{path.split('.')[-1]}={value:.3g}"
                if isinstance(value, float) and not math.isnan(value)
                else f"{path.split('.')[-1]}={value}"
            )
    return " ".join(parts)


# --------------------------------------------------------------------------------------------
# The base config as a point of the space


def _param(params: dict[str, Any], dist: Dist, name: str, value: Any, what: str) -> None:
    """Record ``value`` as trial parameter ``name`` of ``dist``; raise if the space cannot draw it."""
    if dist.kind == "fixed":
        if dist.value != value:
            raise LorabudgetError(f"{what} is {value!r}, the space fixes {dist.value!r}")
        return  # a fixed entry is not a trial parameter
    if dist.kind == "categorical":
        if value not in dist.choices:
            raise LorabudgetError(f"{what} {value!r} is not among the space's choices {list(dist.choices)}")
    elif not isinstance(value, (int, float)) or isinstance(value, bool) or not dist.low <= value <= dist.high:
        raise LorabudgetError(f"{what} {value!r} is outside the space's range [{dist.low:g}, {dist.high:g}]")
    params[name] = value


def _at(cfg: Any, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def base_points(
    space: SearchSpace,
    cfg: Any,
    num_layers: int,
    base_method: str = "lora",
    base_rates: tuple[Optional[float], Optional[float]] = (None, None),
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
    a, method = cfg.adapter, cfg.adapter.method
    params: dict[str, Any] = {}
    if space.method:
        _param(params, space.method, "method", method, "its method")
    if METHODS[method].placement != "model":
        if a.placements or a.rank_pattern or a.alpha_pattern:
            raise LorabudgetError("it places adapters per group or per module kind")
        if METHODS[method].placement != "norm" and (space.modules_subsets_of or space.modules_choices):
            modules = list(a.modules or [])
            if space.modules_subsets_of:
                if not set(modules) <= set(space.modules_subsets_of):
                    raise LorabudgetError(f"its modules {modules} are not a subset of {list(space.modules_subsets_of)}")
                params.update({f"module.{m}": m in modules for m in space.modules_subsets_of})
            else:
                _param(params, space.modules_choices, "modules", "+".join(modules), "its module list")
        if space.layers:
            layers = a.layers
            if layers is None or sorted(layers) == list(range(num_layers)):
                _param(params, space.layers, "layers", "all", "its layer mode")
            else:
                _param(params, space.layers, "layers", "subset", "its layer mode for layers " + str(layers))
                params.update({f"layers.{i}": i in layers for i in range(num_layers)})
    ranks: list[Any] = [None]
    if METHODS[method].searched_rank and space.r:
        if space.r_per_module or space.alpha:
            raise LorabudgetError("the space draws per-module ranks or absolute alphas")
        if space.r.kind not in ("fixed", "categorical"):
            raise LorabudgetError("the space draws ranks from a range")
        ranks = sorted((v for v in space.r.values() if v <= a.r), reverse=True)
        if not scale_down:
            ranks = ranks[:1] if ranks and ranks[0] == a.r else []
        if not ranks:
            raise LorabudgetError(f"the space has no rank {'at or below ' if scale_down else ''}{a.r}")
        if space.alpha_ratio:
            _param(params, space.alpha_ratio, "alpha_ratio", a.alpha / a.r, "its alpha/r")
    for path, dist in space.simple.items():
        if path == "adapter.dropout" and METHODS[method].placement == "model":
            continue
        _param(
            params,
            dist,
            path.split(".", 1)[1] if path in SIMPLE_PATHS.values() else path,
            _at(cfg, path),
            "its " + path,
        )
    refs = reference_rates(method, base_method, base_rates)
    rates = (cfg.training.learning_rate, cfg.training.head_learning_rate or cfg.training.learning_rate)
    for key, rate, ref in zip(("lr_scale", "head_lr_scale"), rates, refs):
        dist = getattr(space, key)
        if dist:
            scale = rate / ref
            if dist.kind in ("float", "int"):  # 3e-3 / 1e-3 is 2.9999999999999996: a rounding off a bound is on it
                clamped = min(max(scale, dist.low), dist.high)
                scale = clamped if math.isclose(scale, clamped, rel_tol=1e-9) else scale
            _param(params, dist, key, scale, f"{key} = {rate:g} / {ref:g} =")
    if space.head:
        heads = [k for k, (t, p) in HEADS.items() if t == cfg.head.type and p in (None, cfg.head.pooling)]
        if not heads:
            raise LorabudgetError(f"its head {cfg.head.type}/{cfg.head.pooling} is not among the space's heads")
        _param(params, space.head, "head", heads[0], "its head")
    for key, dist in space.options.get(method, {}).items():
        if key not in (a.options or {}):
            raise LorabudgetError(f"it leaves adapter.options.{key} to the method")
        _param(params, dist, f"{method}.{key}", a.options[key], f"its adapter.options.{key}")
    points = []
    for r in ranks:
        point = dict(params)
        if r is not None and space.r.kind == "categorical":
            point["r"] = r
        points.append(point)
    return points
