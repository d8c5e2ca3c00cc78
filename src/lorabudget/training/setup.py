"""What a training run is built from before its first step: the Accelerator (precision, trackers), the
plan checked against the budget, the data (split and tokenized), AdamW's parameter groups and the
learning-rate schedule, and the run's ``budget.json`` record."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from lorabudget.config import RunConfig
from lorabudget.console import warn
from lorabudget.data import windows
from lorabudget.data.batching import TokenizedTexts, position_cap, tokenize
from lorabudget.data.load import Columns, TextData, load_labelled, resolve_labels, split_validation
from lorabudget.data.multilabel import warn_empty_classes
from lorabudget.io import default_cache_dir
from lorabudget.methods import registry
from lorabudget.model import budget as budget_mod
from lorabudget.model.build import build_model
from lorabudget.model.hub import load_model_config, load_tokenizer
from lorabudget.rundir.layout import RunDir
from lorabudget.rundir.rows import text_digests
from lorabudget.training.tracking import accelerator_kwargs

# A loss on one batch: (student logits [B, C], batch dict) -> scalar. Distillation plugs in here.
LossFn = Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]


def cross_entropy_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(logits.float(), batch["labels"])


def balanced_class_weights(labels: np.ndarray, num_labels: int) -> np.ndarray:
    """scikit-learn's "balanced" weights, n_rows / (n_classes · n_rows_of_class), over the labelled rows
    (rows labelled -1 have no gold label); a class without rows gets weight 0 (it never appears)."""
    gold = labels[labels >= 0]
    counts = np.bincount(gold, minlength=num_labels).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_labels, dtype=np.float64)
    weights[present] = len(gold) / (present.sum() * counts[present])
    return weights.astype(np.float32)


def weighted_cross_entropy_loss(weights: np.ndarray) -> LossFn:
    """Cross-entropy with a weight per class: the mean over the batch's rows of weight[gold] · CE.

    Divided by the row count, not by the sum of the weights (torch's weighted mean), so that chunks
    of a batch (``split_rows``) add up exactly to the whole batch's loss; balanced weights average 1
    over the training rows, so the loss keeps its usual scale.
    """
    table = {"weights": torch.as_tensor(weights, dtype=torch.float32)}

    def loss(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if table["weights"].device != logits.device:
            table["weights"] = table["weights"].to(logits.device)
        labels = batch["labels"]
        rows = F.cross_entropy(logits.float(), labels, reduction="none")
        return (rows * table["weights"][labels]).mean()

    return loss


def class_weights_for(cfg: RunConfig, labels: np.ndarray) -> Optional[np.ndarray]:
    """Per-class loss weights for ``training.class_weights`` (None: unweighted); for multi-label
    targets, :func:`balanced_pos_weight`."""
    if cfg.training.class_weights == "balanced":
        if labels.ndim == 2:
            return balanced_pos_weight(labels)
        return balanced_class_weights(labels, cfg.num_labels)
    return None


MAX_POS_WEIGHT = 100.0  # a class with one positive in 10,000 rows would otherwise swamp the loss


def balanced_pos_weight(targets: np.ndarray) -> np.ndarray:
    """Multi-label ``pos_weight`` per class: negatives / positives among the rows, so each class's
    positive and negative rows weigh the same in the loss; clipped to [1/100, 100]. A class with no
    positive row gets 1 (its positive term never appears)."""
    positives = targets.sum(axis=0).astype(np.float64)
    negatives = len(targets) - positives
    weights = np.ones(targets.shape[1], dtype=np.float64)
    has = positives > 0
    weights[has] = np.clip(negatives[has] / positives[has], 1 / MAX_POS_WEIGHT, MAX_POS_WEIGHT)
    return weights.astype(np.float32)


def bce_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Multi-label loss: binary cross-entropy of each class's sigmoid, the mean over rows and classes
    (so row chunks of a batch add up exactly, as for cross-entropy)."""
    return F.binary_cross_entropy_with_logits(logits.float(), batch["labels"].float())


def weighted_bce_loss(pos_weight: np.ndarray) -> LossFn:
    """:func:`bce_loss` with ``pos_weight`` [C] weighting each class's positive term."""
    table = {"pos_weight": torch.as_tensor(pos_weight, dtype=torch.float32)}

    def loss(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if table["pos_weight"].device != logits.device:
            table["pos_weight"] = table["pos_weight"].to(logits.device)
        return F.binary_cross_entropy_with_logits(
            logits.float(), batch["labels"].float(), pos_weight=table["pos_weight"]
        )

    return loss


def training_loss(cfg: RunConfig, loss_fn: LossFn, labels: np.ndarray, log: Callable[[str], None]) -> LossFn:
    """The loss the loop trains with: ``loss_fn`` as given, except that the plain cross-entropy
    default becomes the weighted one (``training.class_weights``) or, for a multi-label run, binary
    cross-entropy (with ``pos_weight`` when balanced). Distillation passes its own loss, kept."""
    if loss_fn is not cross_entropy_loss:
        return loss_fn
    weights = class_weights_for(cfg, labels)
    names = cfg.class_names
    if labels.ndim == 2:
        if weights is None:
            return bce_loss
        log("positive-class weights (balanced): " + ", ".join(f"{n} {w:.3f}" for n, w in zip(names, weights)))
        return weighted_bce_loss(weights)
    if weights is None:
        return loss_fn
    log("class weights (balanced): " + ", ".join(f"{n} {w:.3f}" for n, w in zip(names, weights)))
    return weighted_cross_entropy_loss(weights)


def make_accelerator(
    cfg: RunConfig,
    run_dir: Optional[Path] = None,
    log: Callable[[str], None] = print,
    started_in: Optional[str] = None,
):
    """The Accelerator, with the precision chosen for this hardware (one log line says which and why)
    and the run's experiment trackers. ``started_in``: the Accelerate precision a resumed run started
    in (``no`` or ``bf16``), which ``auto`` then keeps.

    bf16 is Accelerate's autocast (on CPUs too): trained weights, gradients and optimizer state stay
    fp32 (the frozen base is held in bf16 during the loop: ``precision.frozen_base_in``)."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import broadcast_object_list

    from lorabudget.model.precision import Precision
    from lorabudget.model.precision import resolve as resolve_precision

    # The processes (and their CPU threads) are set up first; the main process decides, and every
    # process trains in its choice (on a CPU, `auto` measures: precision.resolve).
    state = PartialState(cpu=not torch.cuda.is_available())
    if started_in is not None and cfg.training.mixed_precision == "auto":
        name = "fp32" if started_in == "no" else started_in
        precision = Precision(name, "auto: as this run started, before it was resumed")
    elif state.is_main_process:
        precision = resolve_precision(
            cfg.training.mixed_precision,
            workload=lambda: training_workload(cfg),
            threads=cfg.training.threads or torch.get_num_threads(),
            cache_dir=default_cache_dir(cfg.data.cache_dir),
        )
    else:
        precision = None
    if state.num_processes > 1:
        precision = broadcast_object_list([precision])[0]
    else:
        # One process may train several runs (a teacher then its student, a search's trials), and `auto`
        # may measure differently for each; Accelerate keeps one process-wide state that refuses a second
        # precision, so a single process starts each run's state afresh (launched processes share theirs).
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state()
    kwargs: dict[str, Any] = {}
    if cfg.training.compile:
        from accelerate.utils import TorchDynamoPlugin

        # The whole model, wrapped once: unwrap_model() then saves adapters under their plain names
        # (Accelerate's regional compilation wraps inner modules and leaked "_orig_mod" into them).
        kwargs["dynamo_plugin"] = TorchDynamoPlugin(backend="inductor")
    # cpu=True on machines without a GPU: it is what makes Accelerate pick gloo for multi-process CPU runs.
    accelerator = Accelerator(
        mixed_precision=precision.accelerate_name,
        cpu=not torch.cuda.is_available(),
        **kwargs,
        **accelerator_kwargs(cfg, run_dir),
    )
    if accelerator.is_main_process:
        log(precision.line("training"))
    return accelerator


def training_workload(cfg: RunConfig):
    """What the precision probe times for this config: the model's layer shapes on the row chunks a
    CPU run trains on (batch rows × max_length, within the bf16 position cap)."""
    from lorabudget.model.probe import workload_from_config

    cap = position_cap(cfg.training.max_batch_positions, "cpu", bf16=True)
    rows = cfg.training.batch_size * cfg.model.max_length
    return workload_from_config(load_model_config(cfg, allow_builtin=True)[0], min(rows, cap or rows), training=True)


def make_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups`, with the kernel chosen by ``training.adamw_impl``."""
    impl = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[cfg.training.adamw_impl]
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.training.learning_rate, **impl)


def seed_everything(seed: int) -> None:
    from accelerate.utils import set_seed

    set_seed(seed)


@dataclass
class PreparedData:
    train: TextData
    validation: TextData
    train_tokens: TokenizedTexts
    validation_tokens: TokenizedTexts
    pad_id: int
    tokenizer: Any = field(repr=False)
    # data.long_text's record for summary.json: rows longer than max_length, tokens cut or windows made.
    long_text: Optional[dict[str, Any]] = None


def prepare_data(cfg: RunConfig, log: Callable[[str], None] = print) -> PreparedData:
    """Load, split and tokenize the configured training and validation data."""
    resolve_labels(cfg)
    tokenizer = load_tokenizer(cfg.model.name)
    names = cfg.class_names
    trust = cfg.data.trust_pickle
    columns = Columns.of(cfg)
    full = load_labelled(cfg.data.train, names, trust_pickle=trust, columns=columns)
    if cfg.data.validation:
        train, validation = full, load_labelled(cfg.data.validation, names, trust_pickle=trust, columns=columns)
    else:
        train, validation = split_validation(full, cfg.data.validation_size, cfg.data.split_seed, class_names=names)
        if cfg.data.train_on_validation:
            train = full  # the split-off rows still show progress, but they are trained on too
    if cfg.data.max_train_rows is not None and cfg.data.max_train_rows < len(train):
        train = train.subset(range(cfg.data.max_train_rows))
    if train.labels is not None and train.labels.ndim == 2:
        empty = warn_empty_classes(train.labels, names, "training rows")
        if empty:
            warn(empty)
    train_tokens, validation_tokens, long_text = tokenize_long(cfg, tokenizer, train, validation, log)
    if train_tokens.row_of_window is not None:
        # Every window trains as a row with its row's target (1-D class ids or 2-D multi-label rows alike).
        train, train_tokens = train.subset(train_tokens.row_of_window), train_tokens.as_rows()
    lengths = train_tokens.lengths
    log(
        f"data: {long_text['train']['rows']:,} training rows, {len(validation):,} validation rows"
        + (" (sentence pairs)" if train.pairs is not None else "")
        + (" (trained on too: data.train_on_validation)" if cfg.data.train_on_validation else "")
        + f"; tokens per row mean "
        f"{lengths.mean():.1f}, p99 {np.percentile(lengths, 99):.0f}, max {lengths.max()} "
        f"(max_length {cfg.model.max_length})"
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return PreparedData(train, validation, train_tokens, validation_tokens, pad_id, tokenizer, long_text)


def tokenize_long(cfg: RunConfig, tokenizer, train: TextData, validation: TextData, log):
    """The training and validation rows tokenized as ``data.long_text`` says (validation windows are
    pooled back to rows at evaluation), and summary.json's ``long_text`` record; one log line says how
    many rows were longer than ``max_length`` and what became of them (tokens cut, or windows made)."""
    d, cache, max_length = cfg.data, default_cache_dir(cfg.data.cache_dir), cfg.model.max_length
    how = dict(long_text=d.long_text, stride=d.chunk_stride, pooling=d.chunk_pooling)
    train_tokens = tokenize(tokenizer, train.texts, max_length, cache, pairs=train.pairs, **how)
    validation_tokens = tokenize(tokenizer, validation.texts, max_length, cache, pairs=validation.pairs, **how)
    record: dict[str, Any] = {"mode": d.long_text, "max_length": max_length}
    if d.long_text == "chunks":
        record.update(stride=windows.default_stride(max_length) if d.chunk_stride is None else d.chunk_stride)
        record.update(pooling=d.chunk_pooling)
    said = []
    for part, tokens in (("training", train_tokens), ("validation", validation_tokens)):
        stats = tokens.stats(max_length)
        record["train" if part == "training" else part] = stats.to_dict()
        said.append(f"{part} {stats.text()}")
    log(f"long texts (data.long_text: {d.long_text}, {windows.KEPT[d.long_text]}): " + "; ".join(said))
    return train_tokens, validation_tokens, record


def record_rows(run_dir: Path, data: PreparedData) -> None:
    """Record a digest of every training and validation text in the run (``rundir.rows``), so that an
    evaluation can say how many of its rows the run had already seen. The training rows are the ones
    trained on (after ``data.max_train_rows``; with distillation, the unlabelled texts too)."""
    RunDir(run_dir).write_row_digests(
        text_digests(data.train.texts, data.train.pairs), text_digests(data.validation.texts, data.validation.pairs)
    )


def plan_or_refuse(cfg: RunConfig, log: Callable[[str], None] = print) -> budget_mod.Breakdown:
    """Count trainable parameters from the config alone; raise before any weights load if over budget.

    Class names not given (``model.labels: null``) are read from the training data's labels first:
    the head's size depends on them."""
    resolve_labels(cfg)
    planned = budget_mod.breakdown(build_model(cfg, weights=False).model)
    if not budget_mod.within_budget(planned, cfg.budget.max_trainable_params):
        log(
            budget_mod.format_breakdown(
                planned, cfg.budget.max_trainable_params, f"plan for {cfg.name}:", cfg.adapter.method
            )
        )
    budget_mod.check_budget(planned, cfg.budget.max_trainable_params)
    return planned


def param_groups(model: torch.nn.Module, cfg: RunConfig) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on 1-D tensors and the method's scale-like kinds (DoRA
    magnitudes, IA3 scales); the head may have its own LR."""
    from lorabudget.model.heads import head_module_names

    t = cfg.training
    # A fully fine-tuned model has no PEFT wrapper: its head is found by module name.
    head_prefixes = () if hasattr(model, "peft_config") else tuple(n + "." for n in head_module_names(model))
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = registry.no_weight_decay(cfg.adapter.method, name, param)
        is_head = ".modules_to_save." in name or bool(head_prefixes and name.startswith(head_prefixes))
        groups.setdefault((is_head, no_decay), []).append(param)
    return [
        {
            "params": params,
            "lr": (t.head_learning_rate or t.learning_rate) if is_head else t.learning_rate,
            "weight_decay": 0.0 if no_decay else t.weight_decay,
        }
        for (is_head, no_decay), params in groups.items()
    ]


def label_distribution(labels: np.ndarray, num_labels: int) -> list[float]:
    """Share of each class among the labelled rows (rows labelled -1 have no gold label); for
    multi-label targets, each class's positive rate."""
    if labels.ndim == 2:
        gold = labels[(labels >= 0).all(axis=1)]  # a distilled row without gold labels holds -1
        return gold.mean(axis=0).astype(np.float64).tolist() if len(gold) else [0.0] * num_labels
    gold = labels[labels >= 0]
    return (np.bincount(gold, minlength=num_labels) / max(len(gold), 1)).tolist()


def make_scheduler(optimizer, name: str, warmup: int, total: int):
    from transformers import get_scheduler

    kind = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[name]
    return get_scheduler(kind, optimizer, num_warmup_steps=warmup, num_training_steps=total)


def budget_json(b: budget_mod.Breakdown, cfg: RunConfig) -> dict[str, Any]:
    return {
        "method": cfg.adapter.method,
        "trainable_params": b.total,
        "adapter_params": b.adapter_total,
        "head_params": b.head,
        "other_params": b.other,
        "budget": cfg.budget.max_trainable_params,  # null: unlimited (a teacher)
        "within_budget": budget_mod.within_budget(b, cfg.budget.max_trainable_params),
        "by_site": [
            {"layer": layer, "module": module, "kind": kind, "params": n}
            for (layer, module, kind), n in b.sites.items()
        ],
        "shared": [
            {"kind": kind, "params": s.params, "modules": s.sites, "unshared_equivalent": s.unshared_equivalent}
            for kind, s in b.shared.items()
        ],
        "frozen_shared": [
            {"kind": kind, "values": s.params, "modules": s.sites} for kind, s in b.frozen_shared.items()
        ],
    }
