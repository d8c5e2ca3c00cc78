"""Where adapters go: the six short module names a placement uses, and the model-family table that
maps them to each encoder family's own modules (inside one layer of its encoder).

This is the one table of module paths; placement (``model/placement.py``), the budget breakdown, FLOPs
and the method registry read it. A model whose ``model_type`` is in no family is still adapted
through ``adapter.target_modules`` (PEFT-style names or a regex); its layers are found the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from lorabudget.errors import LorabudgetError

# Short names of the linear layers an adapter can be placed on, in layer order.
MODULE_SHORT_NAMES = ("query", "key", "value", "attention_output", "intermediate", "output")
# Short names shown by the budget breakdown for LayerNorm sites.
NORM_SHORT = {"attention_output": "attention_norm", "output": "output_norm"}


@dataclass(frozen=True)
class Family:
    """One encoder family: where each short name lives inside one of its layers."""

    name: str
    model_types: tuple[str, ...]
    linear: dict[str, str]
    """Short name -> path of the Linear inside one layer. Fused modules: several names, one path."""
    norms: dict[str, str]
    """``attention_output``/``output`` -> the LayerNorm of that sublayer (ln_tuning, the breakdown)."""
    fused: str = ""
    """One line: which short names share one fused Linear and what cannot be targeted alone."""
    head_modules: tuple[str, ...] = ("classifier",)
    """Modules of transformers' sequence-classification model (besides the base model's pooler,
    found on the model) that make up its own head (``head.type: full``)."""

    def fused_groups(self) -> dict[str, tuple[str, ...]]:
        """Path -> the short names that share it, for paths more than one name maps to."""
        groups: dict[str, list[str]] = {}
        for short, path in self.linear.items():
            groups.setdefault(path, []).append(short)
        return {path: tuple(names) for path, names in groups.items() if len(names) > 1}

    def labels(self) -> dict[str, str]:
        """Path inside a layer -> the name the budget breakdown shows for it."""
        result = {path: "+".join(names) for path, names in self.fused_groups().items()}
        for short, path in self.linear.items():
            result.setdefault(path, short)
        result.update({path: NORM_SHORT[short] for short, path in self.norms.items()})
        return result


_BERT_LINEAR = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attention_output": "attention.output.dense",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
}
_BERT_NORMS = {"attention_output": "attention.output.LayerNorm", "output": "output.LayerNorm"}

# The model-family table. Adapters are targeted by full module names, so `output` never also
# catches `attention.output.dense`.
FAMILIES: tuple[Family, ...] = (
    Family("BERT", ("bert", "roberta", "xlm-roberta", "electra", "camembert"), _BERT_LINEAR, _BERT_NORMS),
    Family(
        "MPNet",
        ("mpnet",),
        {
            "query": "attention.attn.q",
            "key": "attention.attn.k",
            "value": "attention.attn.v",
            "attention_output": "attention.attn.o",
            "intermediate": "intermediate.dense",
            "output": "output.dense",
        },
        {"attention_output": "attention.LayerNorm", "output": "output.LayerNorm"},
    ),
    Family(
        "DistilBERT",
        ("distilbert",),
        {
            "query": "attention.q_lin",
            "key": "attention.k_lin",
            "value": "attention.v_lin",
            "attention_output": "attention.out_lin",
            "intermediate": "ffn.lin1",
            "output": "ffn.lin2",
        },
        {"attention_output": "sa_layer_norm", "output": "output_layer_norm"},
        head_modules=("pre_classifier", "classifier"),
    ),
    Family(
        "DeBERTa-v2/v3",
        ("deberta-v2",),
        dict(
            _BERT_LINEAR,
            query="attention.self.query_proj",
            key="attention.self.key_proj",
            value="attention.self.value_proj",
        ),
        _BERT_NORMS,
        head_modules=("pooler", "classifier"),
    ),
    Family(
        "ModernBERT",
        ("modernbert",),
        {
            "query": "attn.Wqkv",
            "key": "attn.Wqkv",
            "value": "attn.Wqkv",
            "attention_output": "attn.Wo",
            "intermediate": "mlp.Wi",
            "output": "mlp.Wo",
        },
        # Pre-norm: the norms open their sublayers (layer 0's attention norm is an identity: skipped).
        {"attention_output": "attn_norm", "output": "mlp_norm"},
        fused="ModernBERT fuses query, key and value into one Linear (attn.Wqkv): adapt them together "
        "([query, key, value]), none alone; intermediate is mlp.Wi, the GLU's input and gate fused, "
        "adapted together",
        head_modules=("head", "classifier"),
    ),
    Family(
        "ALBERT",
        ("albert",),
        {
            "query": "attention.query",
            "key": "attention.key",
            "value": "attention.value",
            "attention_output": "attention.dense",
            "intermediate": "ffn",
            "output": "ffn_output",
        },
        {"attention_output": "attention.LayerNorm", "output": "full_layer_layer_norm"},
    ),
)


def check_module_names(what: str, modules: Any) -> None:
    """Refuse an empty or non-list module list, or a name not in :data:`MODULE_SHORT_NAMES`; ``what``
    starts the message (``search key 'modules[0]'``)."""
    if not isinstance(modules, list) or not modules:
        raise LorabudgetError(f"{what}: list at least one module")
    for module in modules:
        if module not in MODULE_SHORT_NAMES:
            raise LorabudgetError(f"{what}: unknown module '{module}'; modules: " + ", ".join(MODULE_SHORT_NAMES))


def family_of(model_type: Optional[str]) -> Optional[Family]:
    """The family of a transformers ``model_type``, or None for an encoder no family describes."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    return None


def supported_families() -> str:
    """One line naming the families and their model types, for error messages."""
    return "; ".join(f"{f.name} ({', '.join(f.model_types)})" for f in FAMILIES)


@dataclass(frozen=True)
class LayerSharing:
    """A model that applies the same layer weights several times (ALBERT)."""

    distinct: int
    applied: int

    def note(self) -> str:
        return (
            f"this model applies {self.distinct} set(s) of layer weights {self.applied} times (ALBERT shares "
            f"layers): an adapter on a shared module is counted once and acts at every layer that uses it; "
            f"adapter.layers indexes the {self.distinct} distinct layer(s)"
        )


@dataclass(frozen=True)
class AdapterSite:
    """One adapted module of a built model: where it is and the rank and alpha it gets."""

    layer: int
    module: str  # short name
    name: str  # full module name inside the base model
    r: int
    alpha: float
    dims: tuple[int, ...] = ()  # (in_features, out_features) of a linear module, (width,) of a LayerNorm
