"""``plan``: the exact trainable-parameter count of a config, before any weight is read, and with
data the estimated training time and peak memory (:mod:`lorabudget.training.costs`)."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any, Optional

from lorabudget.api.resolve import resolve_config
from lorabudget.config import ConfigSource, Overrides, override_items
from lorabudget.runconfig import RunConfig


@dataclass
class Plan:
    """What a config trains, counted exactly on the meta device (no weights loaded).

    ``trainable`` is the total (head included), ``budget`` the limit (``None``: unlimited), ``fits``
    whether the total is within it, ``by_site`` one row per counted group (layer, module, kind, params),
    ``config`` the resolved config. ``str(plan)`` is the table ``lorabudget plan`` prints.
    """

    config: RunConfig
    trainable: int
    budget: Optional[int]
    fits: bool
    by_site: list[dict[str, Any]]
    head: int
    text: str
    notes: list[str] = field(default_factory=list)
    estimate: Any = None

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        budget = "unlimited" if self.budget is None else f"{self.budget:,}"
        verdict = "fits" if self.fits else "over budget"
        return f"Plan({self.config.name}: {self.trainable:,} trainable of {budget}, {verdict})"

    def to_frame(self):
        """``by_site`` as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.by_site, columns=["layer", "module", "kind", "params"])

    def _repr_html_(self) -> str:
        budget = "unlimited" if self.budget is None else f"{self.budget:,}"
        colour = "green" if self.fits else "crimson"
        verdict = "within budget" if self.fits else "OVER BUDGET"
        head = (
            f"<p><b>{html.escape(self.config.name)}</b>: {self.trainable:,} trainable parameters of {budget} "
            f"(<span style='color:{colour}'>{verdict}</span>), head {self.head:,}</p>"
        )
        return head + f"<pre>{html.escape(self.text)}</pre>"


def _rows(b) -> list[dict[str, Any]]:
    rows = [
        {"layer": layer, "module": module, "kind": kind, "params": n} for (layer, module, kind), n in b.sites.items()
    ]
    rows += [{"layer": None, "module": "shared", "kind": kind, "params": s.params} for kind, s in b.shared.items()]
    rows += [{"layer": None, "module": "other", "kind": name, "params": n} for name, n in b.other.items()]
    if b.head:
        rows.append({"layer": None, "module": "head", "kind": "head", "params": b.head})
    return rows


def plan_config(cfg: RunConfig) -> Plan:
    """The :class:`Plan` of a resolved config."""
    from lorabudget.methods.registry import get_method
    from lorabudget.model.budget import breakdown, format_breakdown, within_budget
    from lorabudget.model.build import build_model
    from lorabudget.model.head_choice import describe_head

    built = build_model(cfg, weights=False)
    b = breakdown(built.model)
    method = get_method(cfg.adapter.method)
    where = "every weight" if method.placement == "model" else f"{len(built.sites)} adapted modules"
    lines = [
        f"plan for {cfg.name}: model {cfg.model.name} ({built.config_source}), head {cfg.head.type}, "
        f"method {method.name}, {where}, {cfg.num_labels} classes"
    ]
    lines.append("  " + describe_head(cfg, getattr(getattr(built.model, "config", None), "hidden_size", None)))
    if cfg.model.quantization != "none":
        lines.append(
            f"  base quantized to {cfg.model.quantization} (bitsandbytes) for training: frozen weights only, "
            "the trainable count is unchanged"
        )
    notes = ([method.note] if method.note else []) + list(built.notes)
    lines += [f"  note: {note}" for note in notes]
    budget = cfg.budget.max_trainable_params
    lines.append(format_breakdown(b, budget, method=method.name))
    return Plan(cfg, b.total, budget, within_budget(b, budget), _rows(b), b.head, "\n".join(lines), notes)


NO_DATA = "time and memory: --data needed for a time estimate (the training data's lengths decide the work)"


def with_estimate(result: Plan, cfg: RunConfig, has_data: bool) -> Plan:
    """``result`` with the estimated training time and peak memory of ``cfg`` on its data added
    (``has_data`` False: the line saying data is needed)."""
    from lorabudget.errors import LorabudgetError
    from lorabudget.training.costs import estimate_run
    from lorabudget.training.setup import prepare_data

    if not has_data:
        result.text += "\n" + NO_DATA
        return result
    data = prepare_data(cfg, log=lambda _: None)  # a problem with the data is the user's to see
    try:
        result.estimate = estimate_run(cfg, data)
    except LorabudgetError as err:
        result.text += f"\ntime and memory: no estimate ({err})"
        return result
    except (KeyError, AttributeError, TypeError, ValueError, RuntimeError) as err:  # an encoder it cannot time
        result.text += f"\ntime and memory: no estimate for this encoder ({type(err).__name__}: {err})"
        return result
    result.text += "\n" + "\n".join(result.estimate.lines()) + f"\n  basis: {result.estimate.basis}"
    return result


def _local_data(cfg: RunConfig) -> bool:
    from pathlib import Path

    train = cfg.data.train
    return isinstance(train, str) and Path(train).is_file()


def dotted_overrides(overrides: Overrides, dotted: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` joined with overrides passed as keyword arguments (``**{"adapter.r": 4}``)."""
    for key in dotted:
        if "." not in key:
            raise TypeError(
                f"unexpected keyword argument '{key}': config overrides are dotted keys such as 'adapter.r' "
                "(plan('minilm-cpu', **{'adapter.r': 4}) or overrides={'adapter.r': 4})"
            )
    return {**override_items(overrides), **dotted}


def plan(
    config: ConfigSource,
    *,
    data: Any = None,
    overrides: Overrides = None,
    text_column: Optional[str] = None,
    text_pair_column: Optional[str] = None,
    label_column: Optional[str] = None,
    estimate: Optional[bool] = None,
    **dotted: Any,
) -> Plan:
    """Count the trainable parameters of ``config`` exactly (meta device: no weights read).

    ``config``: a preset name, a YAML path, a dict or a :class:`~lorabudget.runconfig.RunConfig`.
    Overrides are dotted config keys, as keyword arguments (``plan("minilm-cpu", **{"adapter.r": 4})``)
    or a mapping (``overrides={"adapter.r": 4}``). ``data`` (a path, DataFrame, ``datasets.Dataset`` or
    list of tuples) gives the class count when the config names no classes, and the lengths the time
    estimate needs. ``estimate`` (default: when ``data`` is given or the config's training data is a
    local file): add ``Plan.estimate``, the training time and peak memory on this machine (it
    tokenizes the data and times one encoder layer once per machine; see
    :mod:`lorabudget.model.estimate` for what it counts).

    >>> import lorabudget as lb
    >>> lb.plan("minilm-cpu-10k").trainable
    6148
    """
    cfg = resolve_config(
        config,
        dotted_overrides(overrides, dotted),
        data=data,
        text_column=text_column,
        text_pair_column=text_pair_column,
        label_column=label_column,
    )
    result = plan_config(cfg)
    if estimate is False:
        return result
    return with_estimate(result, cfg, data is not None or _local_data(cfg))
