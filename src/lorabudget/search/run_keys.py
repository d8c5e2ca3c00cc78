"""Search-space keys of the run around the adapter: base model, plain config values, learning-rate scales, head."""

from __future__ import annotations

import math
from typing import Optional

from lorabudget.errors import LorabudgetError
from lorabudget.methods.registry import METHODS
from lorabudget.search.dist import Dist, parse_dist, positive
from lorabudget.search.keys import (
    HEAD_INITS,
    HEADS,
    SIMPLE_PATHS,
    SpaceKey,
    reference_rates,
)


class ModelKey(SpaceKey):
    names = ("model",)

    def __init__(self, dist: Dist):
        self.dist = dist

    @classmethod
    def parse(cls, raw):
        if "model" not in raw:
            return []
        dist = parse_dist("model", raw["model"])
        if dist.kind not in ("fixed", "categorical") or not all(isinstance(v, str) and v for v in dist.values()):
            raise LorabudgetError("search key 'model': give a model name or a list of model names")
        return [cls(dist)]

    def sample(self, d):
        d.out["model.name"] = self.dist.suggest(d.trial, "model")


class SettingKey(SpaceKey):
    """A config value drawn as it is: ``dropout``, ``learning_rate``, ``head_learning_rate``, ``epochs``,
    and each dotted path under ``set``."""

    names = (*SIMPLE_PATHS, "set")

    def __init__(self, path: str, dist: Dist):
        self.path, self.dist = path, dist
        # The named ones are trial parameters by their key, those under ``set`` by their path.
        self.param = path.split(".", 1)[1] if path in SIMPLE_PATHS.values() else path

    @property
    def name(self) -> str:
        return self.path

    @classmethod
    def parse(cls, raw):
        keys = [cls(path, parse_dist(key, raw[key])) for key, path in SIMPLE_PATHS.items() if key in raw]
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
            keys.append(cls(str(path), parse_dist(f"set.{path}", spec)))
        return keys

    def _applies(self, method: str) -> bool:
        return not (self.path == "adapter.dropout" and METHODS[method].placement == "model")

    def sample(self, d):
        if self._applies(d.method):
            d.out[self.path] = self.dist.suggest(d.trial, self.param)

    def invert(self, p):
        if self._applies(p.method):
            value = p.cfg
            for part in self.path.split("."):
                value = getattr(value, part)
            self.dist.record(p.params, self.param, value, "its " + self.path)


class LrScaleKey(SpaceKey):
    """``lr_scale`` / ``head_lr_scale``: multipliers of the reference rate (:func:`reference_rates`)."""

    names = ("lr_scale", "head_lr_scale")
    summarised = ("training.learning_rate", "training.head_learning_rate")

    def __init__(self, key: str, dist: Dist):
        self.key, self.dist = key, dist
        self.index = self.names.index(key)
        self.path = self.summarised[self.index]

    @property
    def name(self) -> str:
        return self.key

    @classmethod
    def parse(cls, raw):
        keys = []
        for key, absolute in zip(cls.names, ("learning_rate", "head_learning_rate")):
            if key in raw:
                if absolute in raw:
                    raise LorabudgetError(f"search keys '{key}' and '{absolute}' exclude each other")
                keys.append(cls(key, positive(parse_dist(key, raw[key]), key)))
        return keys

    def sample(self, d):
        ref = reference_rates(d.method, d.base_method, d.base_rates)[self.index]
        d.out[self.path] = ref * self.dist.suggest(d.trial, self.key)

    def invert(self, p):
        ref = reference_rates(p.method, p.base_method, p.base_rates)[self.index]
        t = p.cfg.training
        rate = (t.learning_rate, t.head_learning_rate or t.learning_rate)[self.index]
        scale = rate / ref
        if self.dist.kind in ("float", "int"):  # 3e-3 / 1e-3 is 2.9999999999999996: a rounding off a bound is on it
            clamped = min(max(scale, self.dist.low), self.dist.high)
            scale = clamped if math.isclose(scale, clamped, rel_tol=1e-9) else scale
        self.dist.record(p.params, self.key, scale, f"{self.key} = {rate:g} / {ref:g} =")

    @classmethod
    def describe(cls, overrides, base_method):
        # A null rate is the method's default: not shown.
        return [
            f"{path.split('.')[1].replace('learning_rate', 'lr')}={overrides[path]:.2g}"
            for path in cls.summarised
            if overrides.get(path) is not None
        ]


class HeadKey(SpaceKey):
    """``head`` (the head's type and pooling by name, :data:`HEADS`), ``head_rank`` (a ``low_rank``
    head's rank: drawn only when that head is; absent, the largest rank that fits is taken) and
    ``head_init`` (``random``, ``names``, ``prototypes``: drawn for every head but ``full``)."""

    names = ("head", "head_rank", "head_init")

    def __init__(self, dist: Optional[Dist], rank: Optional[Dist], init: Optional[Dist]):
        self.dist, self.rank, self.init = dist, rank, init

    @classmethod
    def parse(cls, raw):
        if not any(k in raw for k in cls.names):
            return []
        dist = parse_dist("head", raw["head"]) if "head" in raw else None
        for h in dist.values() if dist else []:
            if h not in HEADS:
                raise LorabudgetError(f"search key 'head': unknown head '{h}'; heads: " + ", ".join(HEADS))
        rank = positive(parse_dist("head_rank", raw["head_rank"]), "head_rank") if "head_rank" in raw else None
        if rank is not None and (dist is None or "low_rank" not in dist.values()):
            raise LorabudgetError("search key 'head_rank' needs 'head' with low_rank among its heads")
        init = parse_dist("head_init", raw["head_init"]) if "head_init" in raw else None
        for value in init.values() if init else []:
            if value not in HEAD_INITS:
                raise LorabudgetError(f"search key 'head_init': unknown '{value}'; allowed: " + ", ".join(HEAD_INITS))
        return [cls(dist, rank, init)]

    def sample(self, d):
        head_type = None
        if self.dist is not None:
            head_type, pooling = HEADS[self.dist.suggest(d.trial, "head")]
            d.out["head.type"] = head_type
            if pooling:
                d.out["head.pooling"] = pooling
            # A rank belongs to low_rank alone (the base config's may be a resolved low_rank's).
            d.out["head.rank"] = (
                self.rank.suggest(d.trial, "head_rank") if head_type == "low_rank" and self.rank else None
            )
        if self.init is not None:
            d.out["head.init"] = "random" if head_type == "full" else self.init.suggest(d.trial, "head_init")

    def invert(self, p):
        head = p.cfg.head
        if self.dist is not None:
            names = [k for k, (t, pooling) in HEADS.items() if t == head.type and pooling in (None, head.pooling)]
            names = [n for n in names if n in self.dist.values()] or names
            if not names:
                raise LorabudgetError(f"its head {head.type}/{head.pooling} is not among the space's heads")
            self.dist.record(p.params, "head", names[0], "its head")
            if head.type == "low_rank" and self.rank is not None:
                self.rank.record(p.params, "head_rank", head.rank, "its head.rank")
        if self.init is not None and head.type != "full":
            self.init.record(p.params, "head_init", head.init, "its head.init")
