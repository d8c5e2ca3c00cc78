"""One searched (or fixed) value of a search space: its YAML form, its Optuna draw, and whether a given
value is one it can draw."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from lorabudget.errors import LorabudgetError

_SCALARS = (str, int, float, bool, type(None))


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

    def record(self, params: dict[str, Any], name: str, value: Any, what: str) -> None:
        """Record ``value`` as trial parameter ``name``; raise saying why when this entry cannot draw it."""
        if self.kind == "fixed":
            if self.value != value:
                raise LorabudgetError(f"{what} is {value!r}, the space fixes {self.value!r}")
            return  # a fixed entry is not a trial parameter
        if self.kind == "categorical":
            if value not in self.choices:
                raise LorabudgetError(f"{what} {value!r} is not among the space's choices {list(self.choices)}")
        elif not isinstance(value, (int, float)) or isinstance(value, bool) or not self.low <= value <= self.high:
            raise LorabudgetError(f"{what} {value!r} is outside the space's range [{self.low:g}, {self.high:g}]")
        params[name] = value


def parse_dist(key: str, spec: Any) -> Dist:
    """A distribution from its YAML form (see search/space.py's docstring)."""
    if isinstance(spec, list):
        if not spec:
            raise LorabudgetError(f"search key '{key}': list at least one value")
        if not all(isinstance(v, _SCALARS) for v in spec):
            raise LorabudgetError(f"search key '{key}': choices must be plain values (text, numbers, true/false)")
        return Dist("categorical", choices=tuple(spec)) if len(spec) > 1 else Dist("fixed", value=spec[0])
    if isinstance(spec, dict):
        return _parse_range(key, spec)
    if isinstance(spec, _SCALARS):
        return Dist("fixed", value=spec)
    raise LorabudgetError(f"search key '{key}': {spec!r} is not a value, a list of values or a {{low, high}} range")


def _parse_range(key: str, spec: dict[str, Any]) -> Dist:
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


def positive(dist: Dist, key: str) -> Dist:
    values = dist.values()
    if any(not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0 for v in values):
        raise LorabudgetError(f"search key '{key}': values must be numbers > 0")
    return dist
