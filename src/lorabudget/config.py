"""Run configurations from YAML presets and files, overrides (``--set`` strings or dotted-key mappings),
the method registry's defaults, and checks.

A config file has up to seven sections (``model``, ``head``, ``adapter``, ``data``, ``training``,
``budget``, ``distill``) plus ``name``; ``lorabudget search`` also reads a ``search:`` space. Every field
is documented on its dataclass in :mod:`lorabudget.runconfig`. Unknown keys and bad values raise
:class:`~lorabudget.errors.LorabudgetError` naming the key and what is allowed. The classes a run reads
from its data are filled above this module (:func:`lorabudget.api.resolve_config`).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.resources
import math
import os
import reprlib
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Sequence, Union

import yaml

from lorabudget.errors import LorabudgetError
from lorabudget.io import atomic_write_text
from lorabudget.labelsets import check_label_settings
from lorabudget.methods.registry import METHODS, check_config, resolve_defaults
from lorabudget.methods.sites import check_module_names
from lorabudget.runconfig import (
    AG_NEWS_LABELS,
    AG_NEWS_SOURCES,
    AdapterConfig,
    BudgetConfig,
    DataConfig,
    DistillConfig,
    HeadConfig,
    ModelConfig,
    PlacementConfig,
    RunConfig,
    TrainingConfig,
)

__all__ = [
    "AG_NEWS_LABELS",
    "AG_NEWS_SOURCES",
    "AdapterConfig",
    "BudgetConfig",
    "DataConfig",
    "DistillConfig",
    "HeadConfig",
    "ModelConfig",
    "PlacementConfig",
    "RunConfig",
    "TrainingConfig",
]


# --------------------------------------------------------------------------------------------
# Building dataclasses from plain dicts, with errors that name the key.


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, dict):
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 4, 4, 60, 60


def _shown(value: Any) -> str:
    """A bounded ``repr`` for error messages: a YAML alias bomb or a huge value is never expanded."""
    text = _REPR.repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it converted (int -> float etc.)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = LorabudgetError(f"config key '{key}': {_shown(value)} is not {_type_name(tp)}")
    if tp is Any:
        return value
    if origin is Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except LorabudgetError as err:
                errors.append(err)
        if len(errors) == 1:  # Optional[X]: X's own message (e.g. "not a finite number") says more
            raise errors[0]
        raise bad
    if origin is Literal:
        word = "yes" if value else "no"
        if isinstance(value, bool) and word in args:
            value = word  # YAML 1.1 reads an unquoted no/yes as a boolean
        if value not in args:
            raise LorabudgetError(
                f"config key '{key}': {_shown(value)} is not allowed; allowed values: "
                + ", ".join(repr(a) for a in args)
            )
        return value
    if origin is list:
        if not isinstance(value, list):
            raise bad
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return {str(k): _convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads "3e-4" (no dot) as a string; accept what Python reads as a number.
            try:
                number = float(value)
            except ValueError:
                raise bad from None
            if not math.isfinite(number):
                raise LorabudgetError(f"config key '{key}': {_shown(value)} is not a finite number")
            return number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if not math.isfinite(value):
            raise LorabudgetError(f"config key '{key}': {_shown(value)} is not a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a bug in this module


def _build(cls: type, values: Any, prefix: str) -> Any:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise LorabudgetError(f"config key '{prefix}' must be a mapping, got {_shown(values)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise LorabudgetError(
                f"unknown config key '{full}'; allowed keys"
                + (f" in '{prefix}'" if prefix else "")
                + ": "
                + ", ".join(names)
            )
        kwargs[key] = _convert(value, hints[key], full)
    return cls(**kwargs)


def _check_positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise LorabudgetError(f"config key '{key}': must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _check_modules(key: str, modules: list[str]) -> None:
    check_module_names(f"config key '{key}'", modules)


def known_classes(cfg: RunConfig) -> RunConfig:
    """The hub's AG News names its four classes: a config with no classes that trains on it gets them
    without reading the data (so ``plan`` works offline)."""
    if cfg.model.labels is None and cfg.model.num_labels is None and cfg.data.train.split(":")[0] in AG_NEWS_SOURCES:
        cfg.model.labels, cfg.model.label_format = list(AG_NEWS_LABELS), "id"
    return cfg


def fill_defaults(cfg: RunConfig) -> RunConfig:
    """Fill what the user left null from the method registry: rank, modules, learning rates."""
    if cfg.adapter.method not in METHODS:
        raise LorabudgetError(
            f"config key 'adapter.method': {cfg.adapter.method!r} is not allowed; allowed values: "
            + ", ".join(repr(m) for m in METHODS)
        )
    resolve_defaults(cfg)
    return cfg


def validate(cfg: RunConfig) -> RunConfig:
    """Check value ranges and cross-field rules that types alone do not express; changes nothing."""
    _check_model(cfg)
    _check_adapter(cfg)
    _check_data(cfg)
    _check_training(cfg)
    _check_distill(cfg)
    return cfg


def _check_model(cfg: RunConfig) -> None:
    m = cfg.model
    if m.labels is not None and len(m.labels) < 2:
        raise LorabudgetError("config key 'model.labels': list at least two class names")
    if m.labels is not None and len(set(m.labels)) != len(m.labels):
        raise LorabudgetError("config key 'model.labels': class names must be distinct")
    if m.num_labels is not None and m.num_labels < 2:
        raise LorabudgetError(f"config key 'model.num_labels': must be >= 2, got {m.num_labels}")
    _check_positive("model.max_length", m.max_length)
    if not cfg.name or cfg.name in (".", "..") or any(c in cfg.name for c in "/\\\0") or cfg.name.strip() != cfg.name:
        raise LorabudgetError(
            f"config key 'name': {_shown(cfg.name)} is not a plain folder name (no path separators, no '..', "
            "no surrounding spaces); runs go to runs/<name> (choose the folder with --output)"
        )
    if cfg.budget.max_trainable_params is not None:
        _check_positive("budget.max_trainable_params", cfg.budget.max_trainable_params)


def _check_adapter(cfg: RunConfig) -> None:
    a = cfg.adapter
    _check_positive("adapter.r", a.r)
    _check_positive("adapter.alpha", a.alpha)
    if not 0 <= a.dropout < 1:
        raise LorabudgetError(f"config key 'adapter.dropout': must be in [0, 1), got {a.dropout}")
    if a.target_modules is not None:
        if not a.target_modules:
            raise LorabudgetError("config key 'adapter.target_modules': name at least one module")
        if METHODS[a.method].placement == "model":
            raise LorabudgetError(f"adapter.method '{a.method}' trains every weight: remove adapter.target_modules")
        varied = [k for k in ("placements", "rank_pattern", "alpha_pattern") if getattr(a, k)]
        if varied:
            raise LorabudgetError(f"config key 'adapter.target_modules' replaces adapter.{varied[0]}: remove one")
    if a.placements:
        for i, p in enumerate(a.placements):
            _check_modules(f"adapter.placements[{i}].modules", p.modules)
            if p.r is not None:
                _check_positive(f"adapter.placements[{i}].r", p.r)
            if p.alpha is not None:
                _check_positive(f"adapter.placements[{i}].alpha", p.alpha)
    elif METHODS[a.method].placement != "model":
        _check_modules("adapter.modules", a.modules)
    for key, pattern in (("adapter.rank_pattern", a.rank_pattern), ("adapter.alpha_pattern", a.alpha_pattern)):
        _check_modules(key, list(pattern) or ["query"])
        for module, value in pattern.items():
            _check_positive(f"{key}.{module}", value)
    check_config(cfg)
    if cfg.model.quantization != "none" and METHODS[a.method].placement == "model":
        raise LorabudgetError("model.quantization: a quantized base cannot be fully fine-tuned; use an adapter method")


def _check_data(cfg: RunConfig) -> None:
    d = cfg.data
    vs = d.validation_size
    if vs is not None and isinstance(vs, float) and not 0 < vs < 1:
        raise LorabudgetError(f"config key 'data.validation_size': a fraction must be in (0, 1), got {vs}")
    if vs is not None and isinstance(vs, int) and vs < 1:
        raise LorabudgetError(f"config key 'data.validation_size': a row count must be >= 1, got {vs}")
    if d.max_train_rows is not None:
        _check_positive("data.max_train_rows", d.max_train_rows)
    if d.train_on_validation and d.validation:
        raise LorabudgetError(
            "config key 'data.train_on_validation' trains on the rows split off data.train; with a separate "
            "data.validation file, add its rows to the training file instead"
        )
    if d.train_on_validation and d.max_train_rows is not None:
        raise LorabudgetError(
            "config key 'data.train_on_validation' trains on every row of data.train; data.max_train_rows would cap "
            "them in file order, validation rows included: cap the training file instead"
        )
    check_label_settings(d.label_separator, d.label_columns, cfg.model.problem_type)
    if d.train_on_validation and cfg.training.early_stopping_patience:
        raise LorabudgetError(
            "config key 'data.train_on_validation': early stopping needs validation rows the run does not train "
            "on; set training.early_stopping_patience=0"
        )
    _check_long_text(cfg)


def _check_long_text(cfg: RunConfig) -> None:
    """``data.chunk_stride``: tokens shared by consecutive windows, so at least 0 and below a window
    (the exact bound, the window's text tokens beside its special tokens, is checked at tokenizing)."""
    d = cfg.data
    if d.chunk_stride is not None and not 0 <= d.chunk_stride < cfg.model.max_length:
        raise LorabudgetError(
            f"config key 'data.chunk_stride': tokens shared by consecutive windows must be >= 0 and below "
            f"model.max_length ({cfg.model.max_length}), got {_shown(d.chunk_stride)}"
        )
    if d.long_text != "truncate" and d.text_pair_column:
        raise LorabudgetError(
            f"config key 'data.long_text': {d.long_text} takes single texts, not sentence pairs "
            "(data.text_pair_column); use truncate"
        )


def _check_training(cfg: RunConfig) -> None:
    t = cfg.training
    _check_positive("training.epochs", t.epochs)
    for key, seed in (("training.seed", t.seed), ("data.split_seed", cfg.data.split_seed)):
        if not 0 <= seed <= 2**32 - 1:  # NumPy's seeds
            raise LorabudgetError(f"config key '{key}': must be in 0 .. 4294967295 (2**32 - 1), got {_shown(seed)}")
    if t.max_steps is not None:
        _check_positive("training.max_steps", t.max_steps)
    for key in ("batch_size", "gradient_accumulation", "eval_batch_size", "log_every"):
        _check_positive(f"training.{key}", getattr(t, key))
    _check_positive("training.learning_rate", t.learning_rate)
    if t.head_learning_rate is not None:
        _check_positive("training.head_learning_rate", t.head_learning_rate)
    for key in ("weight_decay", "max_grad_norm", "eval_every", "early_stopping_patience", "num_workers"):
        _check_positive(f"training.{key}", getattr(t, key), allow_zero=True)
    _check_positive("training.checkpoint_every", t.checkpoint_every, allow_zero=True)
    if not 0 <= t.warmup_ratio < 1:
        raise LorabudgetError(f"config key 'training.warmup_ratio': must be in [0, 1), got {t.warmup_ratio}")
    if t.threads is not None:
        _check_positive("training.threads", t.threads)
    if t.max_batch_positions is not None:
        _check_positive("training.max_batch_positions", t.max_batch_positions, allow_zero=True)


def _check_distill(cfg: RunConfig) -> None:
    d = cfg.distill
    _check_positive("distill.temperature", d.temperature)
    if not 0 <= d.alpha <= 1:
        raise LorabudgetError(f"config key 'distill.alpha': must be in [0, 1], got {d.alpha}")
    if not 0 <= d.transfer_fraction < 1:
        raise LorabudgetError(f"config key 'distill.transfer_fraction': must be in [0, 1), got {d.transfer_fraction}")
    if not 0 <= d.min_teacher_confidence <= 1:
        raise LorabudgetError(
            f"config key 'distill.min_teacher_confidence': must be in [0, 1], got {d.min_teacher_confidence}"
        )


def build(values: dict[str, Any]) -> RunConfig:
    """A :class:`RunConfig` of a plain (YAML-loaded) dict, every key and type checked, nothing filled."""
    return _build(RunConfig, values, "")


def from_dict(values: dict[str, Any]) -> RunConfig:
    """Build, complete and validate a :class:`RunConfig` from a plain (YAML-loaded) dict."""
    return validate(fill_defaults(known_classes(build(values))))


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise LorabudgetError(f"--set expects KEY=VALUE (for example training.learning_rate=3e-4), got '{item}'")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise LorabudgetError(f"--set expects KEY=VALUE, got '{item}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` strings as ``{dotted key: value}``, each value read as YAML (``3e-4`` a number,
    ``null`` None, ``[a, b]`` a list); a key given twice keeps its last value."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, value = _parse_override(item)
        parsed.pop(key, None)  # the last one given wins and keeps its place in the order
        parsed[key] = value
    return parsed


Overrides = Union[Mapping[str, Any], Sequence[str], None]


def override_items(overrides: Overrides) -> dict[str, Any]:
    """Overrides as ``{dotted key: value}``: a mapping is taken as it is, strings are ``--set`` items."""
    if overrides is None:
        return {}
    if isinstance(overrides, Mapping):
        for key in overrides:
            if not isinstance(key, str) or not key.strip() or any(not part for part in key.split(".")):
                raise LorabudgetError(f"override key {key!r} is not a dotted config key such as 'adapter.r'")
        return dict(overrides)
    if isinstance(overrides, str):
        raise TypeError("overrides must be a mapping of dotted keys or a list of 'key=value' strings, not one string")
    return parse_set(list(overrides))


def apply_overrides(values: dict[str, Any], overrides: Overrides) -> dict[str, Any]:
    """Apply overrides (``{"training.learning_rate": 3e-4}``, or ``--set`` strings) to a config dict in place."""
    for key, value in override_items(overrides).items():
        path = key.split(".")
        node = values
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise LorabudgetError(f"override {key}: '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return values


def load_yaml(path: Union[str, Path]) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise LorabudgetError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            values = yaml.safe_load(fh)
    except yaml.YAMLError as err:
        raise LorabudgetError(f"config file {path} is not valid YAML: {err}".splitlines()[0]) from err
    except UnicodeDecodeError as err:
        raise LorabudgetError(
            f"config file {path} is not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8"
        ) from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise LorabudgetError(f"config file {path} must hold a mapping of sections")
    return values


def presets_dir() -> Path:
    """The presets shipped inside the package (``lorabudget/presets/*.yaml``, package data)."""
    return Path(str(importlib.resources.files("lorabudget") / "presets"))


def preset_files() -> dict[str, Path]:
    """Preset name -> YAML file: the shipped presets, then every folder in ``$LORABUDGET_CONFIGS``
    (separated by ``os.pathsep``), whose files add presets or replace shipped ones of the same name."""
    folders = [presets_dir()]
    folders += [Path(f).expanduser() for f in os.environ.get("LORABUDGET_CONFIGS", "").split(os.pathsep) if f]
    found: dict[str, Path] = {}
    for folder in folders:
        for path in sorted(folder.glob("*.yaml")):
            found[path.stem] = path
    return dict(sorted(found.items()))


def resolve_config_path(name_or_path: str) -> Path:
    """A path to a YAML file, or a preset name such as ``seed-lora`` (see ``preset_files``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    presets = preset_files()
    if name_or_path in presets:
        return presets[name_or_path]
    raise LorabudgetError(f"config '{name_or_path}' is neither a file nor a preset; presets: " + ", ".join(presets))


def load_config(name_or_path: Optional[str], overrides: Overrides = ()) -> RunConfig:
    """Load a preset or YAML file (or defaults when ``None``), apply overrides, validate."""
    values = load_yaml(resolve_config_path(name_or_path)) if name_or_path else {}
    values.pop("search", None)  # a search space (lorabudget search) rides along in the same file
    if name_or_path and "name" not in values:
        values["name"] = Path(name_or_path).stem
    return from_dict(apply_overrides(values, overrides))


ConfigSource = Union[str, Path, Mapping[str, Any], RunConfig]


def config_values(config: ConfigSource) -> tuple[dict[str, Any], bool]:
    """The plain values of a preset name, YAML path, mapping or :class:`RunConfig` (a deep copy; a file's
    ``search:`` section left out) and whether they came from a preset shipped in the package."""
    if isinstance(config, RunConfig):
        return config.to_dict(), False
    if isinstance(config, Mapping):
        values = copy.deepcopy(dict(config))
        values.pop("search", None)
        return values, False
    if not isinstance(config, (str, Path)):
        raise TypeError(
            f"config must be a preset name, a YAML path, a dict or a RunConfig, not {type(config).__name__}"
        )
    path = resolve_config_path(str(config))
    values = load_yaml(path)
    values.pop("search", None)
    values.setdefault("name", Path(str(config)).stem)
    return values, path.parent == presets_dir()


def dump_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML, exactly as ``save_config`` writes it."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def save_config(cfg: RunConfig, path: Union[str, Path]) -> None:
    """Write the resolved config as a YAML file (a config to start from, such as a search's ``best.yaml``)."""
    atomic_write_text(path, dump_yaml(cfg))
