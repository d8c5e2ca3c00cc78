"""One step from what a user gives to a complete, typed :class:`~lorabudget.runconfig.RunConfig`.

The order is fixed: the preset, file, mapping or config object; then the overrides; then the data
(its source and columns) and the class names and label format read from it; then the method's defaults
and the checks. Every command and API function that takes a config starts here, so a bad file or label
fails before any plan is printed. (A search's trials and a distillation's teacher are derived from a
config resolved here.)
"""

from __future__ import annotations

from typing import Any, Optional

from lorabudget.api.sources import as_source
from lorabudget.config import (
    ConfigSource,
    Overrides,
    apply_overrides,
    build,
    config_values,
    fill_defaults,
    known_classes,
    override_items,
    validate,
)
from lorabudget.runconfig import RunConfig


def _data_values(
    data: Any,
    validation: Any,
    text_column: Optional[str],
    text_pair_column: Optional[str],
    label_column: Optional[str],
    trust_pickle: Optional[bool],
) -> dict[str, Any]:
    """The ``data.*`` overrides that the data arguments stand for."""
    given: dict[str, Any] = {}
    for key, value in (("train", data), ("validation", validation)):
        if value is None:
            continue
        source = as_source(value, what=key if key == "validation" else "data")
        given[f"data.{key}"] = source.source
        for column in ("text_column", "text_pair_column", "label_column"):
            if getattr(source, column):
                given[f"data.{column}"] = getattr(source, column)
    columns = {"text_column": text_column, "text_pair_column": text_pair_column, "label_column": label_column}
    given.update({f"data.{key}": value for key, value in columns.items() if value})
    if trust_pickle:
        given["data.trust_pickle"] = True
    return given


def resolve_config(
    config: ConfigSource,
    overrides: Overrides = None,
    *,
    data: Any = None,
    validation: Any = None,
    text_column: Optional[str] = None,
    text_pair_column: Optional[str] = None,
    label_column: Optional[str] = None,
    trust_pickle: Optional[bool] = None,
    classes_from_data: Optional[bool] = None,
) -> RunConfig:
    """The complete config of a run.

    ``config``: a preset name, a YAML path, a dict or a :class:`RunConfig`. ``overrides``: dotted keys
    (``{"adapter.r": 4}``) or ``--set`` strings. ``data``/``validation``: a path, DataFrame,
    ``datasets.Dataset`` or list of tuples. ``classes_from_data``: read the class names and label format
    from the training data (default: when data is given, or when the config names no classes).
    """
    values, from_preset = config_values(config)
    items = override_items(overrides)
    items.update(_data_values(data, validation, text_column, text_pair_column, label_column, trust_pickle))
    cfg = known_classes(build(apply_overrides(values, items)))
    if classes_from_data is None:
        classes_from_data = data is not None or (cfg.model.labels is None and cfg.model.num_labels is None)
    if classes_from_data:
        from lorabudget.data.load import resolve_labels

        resolve_labels(cfg, preset_labels=from_preset and "model.labels" not in items)
    cfg = validate(fill_defaults(cfg))
    from lorabudget.model.build import resolve_head

    resolve_head(cfg)  # head.type auto: the concrete head, decided once (config.yaml records it)
    return cfg
