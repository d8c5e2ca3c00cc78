"""``training.cache_frozen_layers``: the hidden states entering the lowest layer k that holds a trainable
parameter, computed once per tokenized row with the frozen layers below in eval mode (no dropout),
kept in an on-disk cache (``data/prefix_store.py``) and read back by every training step, validation
pass and training-time evaluation, which then run layers k.. and the head only.

The run's saved model is the whole model as usual: only the loop's forward passes are split
(``model/prefix_forward.py``). Search trials with the same base, data and lowest adapted layer find
the same key, so they share one cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

from lorabudget.config import RunConfig
from lorabudget.data.batching import TokenizedTexts, content_sha256, inference_loader, model_inputs
from lorabudget.data.cache import human_size
from lorabudget.data.prefix_store import PREFIX_FOLDER, PrefixStore, is_warm, open_store, prefix_key, write_store
from lorabudget.errors import LorabudgetError
from lorabudget.io import default_cache_dir
from lorabudget.model.layout import encoder_layers
from lorabudget.model.precision import frozen_base_in
from lorabudget.model.prefix import frozen_prefix_depth, prefix_weights_fingerprint, split_refusal
from lorabudget.model.prefix_forward import capture, from_layer
from lorabudget.training.prototypes import reads_training_rows

BUILD_TOKENS_PER_BATCH = 4096  # eval-mode forward without gradients: bigger batches than training's


@dataclass
class PrefixInfo:
    """summary.json's ``frozen_prefix``."""

    layers: int = 0
    used: bool = False
    cache_hit: bool = False
    build_seconds: float = 0.0
    bytes: int = 0
    reason: str = ""  # why it is not used

    def summary(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("layers", "used", "cache_hit", "build_seconds", "bytes")}
        return {**out, **({"reason": self.reason} if self.reason else {})}


@dataclass
class PrefixRun:
    """The cached states of the training and validation rows and the split forward over them."""

    model: Any  # the unwrapped model, whose layer list is split
    depth: int
    train: PrefixStore
    validation: PrefixStore
    info: PrefixInfo = field(default_factory=PrefixInfo)

    def logits(self, model: Any, batch: dict[str, torch.Tensor], store: PrefixStore, device=None) -> torch.Tensor:
        """``model``'s logits for ``batch`` (which carries each row's ``index`` into ``store``)."""
        inputs = model_inputs(batch, device)
        hidden = store.padded(batch["index"], inputs["input_ids"].shape[1], inputs["input_ids"].device)
        with from_layer(self.model, self.depth, hidden):
            return model(**inputs).logits

    def train_logits(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.logits(model, batch, self.train)

    def validation_forward(self, model: Any, device) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
        return lambda batch: self.logits(model, batch, self.validation, device)

    def train_rows_forward(self, model: Any, device) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
        """An inference pass over the training rows (the head's class vectors are computed so)."""
        return lambda batch: self.logits(model, batch, self.train, device)


def unusable(cfg: RunConfig, model: Any) -> tuple[int, Optional[str]]:
    """(k, why the cache cannot be used or None)."""
    t = cfg.training
    if cfg.model.quantization != "none":
        return 0, (
            f"model.quantization {cfg.model.quantization}: bitsandbytes runs the quantized layers through "
            "another kernel in eval mode than in training, so cached states would not be the training forward's"
        )
    if t.compile:
        return 0, "training.compile traces the whole model, and the split forward changes its layer list"
    layers = len(encoder_layers(model))
    depth = min(frozen_prefix_depth(model), layers - 1)  # the last layer always runs: something to inject into
    if depth <= 0:
        return 0, (
            f"adapter.method '{cfg.adapter.method}' trains parameters in layer 0, the embeddings or shared by "
            "every layer: no frozen layer lies below them"
        )
    why = split_refusal(model, depth)
    return (depth, f"{why}: its layers cannot be split") if why else (depth, None)


def refuse_prefix_cache(cfg: RunConfig, model: Any) -> None:
    """``training.cache_frozen_layers: true`` on a model it cannot work on: a :class:`LorabudgetError`."""
    if cfg.training.cache_frozen_layers is True:
        why = unusable(cfg, model)[1]
        if why is not None:
            raise LorabudgetError(f"training.cache_frozen_layers: true cannot be used here: {why}")


def passes(cfg: RunConfig, total_steps: int, num_epochs: int) -> tuple[int, int]:
    """How often a run goes over the training rows (its epochs, and the pass computing the head's class
    vectors before training) and over the validation rows. A resumed run counts the same as its start,
    so it decides as its start did."""
    every = cfg.training.eval_every
    evaluations = (total_steps // every + (1 if total_steps % every else 0)) if every else num_epochs
    return num_epochs + int(reads_training_rows(cfg)), max(1, evaluations)


def store_key(model: Any, depth: int, tokens: TokenizedTexts, precision: str, fingerprint: str) -> str:
    content = (tokens.ids, tokens.offsets) if tokens.type_ids is None else (tokens.ids, tokens.offsets, tokens.type_ids)
    config = model.config
    return prefix_key(
        {
            "model_type": getattr(config, "model_type", None),
            "hidden_size": config.hidden_size,
            "weights": fingerprint,
            "layer": depth,
            # The token rows themselves: they follow from tokenizer, max_length, texts and long-text settings.
            "rows": content_sha256(*content),
            "precision": precision,
            "storage": "float32",
        }
    )


def build_states(model: Any, depth: int, tokens: TokenizedTexts, pad_id: int, device):
    """``fill`` for ``write_store``: the states entering layer ``depth`` of every row, in eval mode
    (the unwrapped model: only the main process builds, so no wrapper may synchronise processes)."""

    def fill(states: np.ndarray) -> Optional[str]:
        loader = inference_loader(tokens, pad_id, 64, max_tokens=BUILD_TOKENS_PER_BATCH)
        # Its own generator: a loader draws a seed when iterated, and a cold cache must leave the run's
        # random stream (dropout in the upper layers) as a warm one does.
        loader.generator = torch.Generator().manual_seed(0)
        was_training, dtype = model.training, None
        model.eval()
        try:
            with torch.no_grad():
                for batch in loader:
                    hidden = capture(model, depth, model_inputs(batch, device))
                    dtype = str(hidden.dtype).removeprefix("torch.")
                    hidden = hidden.float().cpu().numpy()
                    for j, i in enumerate(batch["index"].tolist()):
                        start, end = int(tokens.offsets[i]), int(tokens.offsets[i + 1])
                        states[start:end] = hidden[j, : end - start]
        finally:
            model.train(was_training)
        return dtype

    return fill


def _agree(accelerator, value: Any) -> Any:
    """The main process's ``value``, on every process."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def start_prefix(cfg: RunConfig, accelerator, unwrapped, data, total_steps: int, num_epochs: int, log):
    """Decide, build or reuse the cache: ``(PrefixRun or None, PrefixInfo)``; one log line says what
    and why. ``true`` where it cannot work raises :class:`LorabudgetError`."""
    setting = cfg.training.cache_frozen_layers
    info = PrefixInfo()
    if setting is False:
        info.reason = "training.cache_frozen_layers: false"
        return None, info
    depth, why = unusable(cfg, unwrapped)
    info.layers = depth
    keys = _keys(accelerator, unwrapped, data, depth) if why is None else []
    if why is None and setting == "auto":
        why = _does_not_pay(cfg, accelerator, keys[0], depth, total_steps, num_epochs)
    if why is not None:
        if setting is True:
            raise LorabudgetError(f"training.cache_frozen_layers: true cannot be used here: {why}")
        info.reason = why
        log(f"frozen-prefix cache: not used: {why}")
        return None, info
    start = time.perf_counter()
    stores, hit, failed = _stores(cfg, accelerator, unwrapped, data, depth, keys)
    if failed is not None:  # a full disk or a read-only cache folder: the run goes on without it
        why = f"the cache could not be written ({failed})"
        if setting is True:
            raise LorabudgetError(f"training.cache_frozen_layers: true cannot be used here: {why}")
        info.reason = why
        log(f"frozen-prefix cache: not used: {why}")
        return None, info
    info.used, info.cache_hit = True, hit
    info.build_seconds = round(time.perf_counter() - start, 3)
    info.bytes = sum(s.bytes for s in stores)
    total = len(encoder_layers(unwrapped))
    log(
        f"frozen-prefix cache: layers 0-{depth - 1} of {total} run once per row "
        f"({'reused' if hit else 'built'} in {info.build_seconds:.1f}s, {human_size(info.bytes)} under "
        f"{default_cache_dir(cfg.data.cache_dir) / PREFIX_FOLDER}); training runs layers {depth}-{total - 1} "
        "and the head (no dropout in the cached layers)"
    )
    return PrefixRun(unwrapped, depth, stores[0], stores[1], info), info


def warm_for(cfg: RunConfig, accelerator, model, data) -> bool:
    """Whether this run's training and validation states are on disk already (what the start-of-run
    time estimate needs: a warm cache is not filled). False where the cache cannot or will not be used."""
    if cfg.training.cache_frozen_layers is False:
        return False
    depth, why = unusable(cfg, model)
    if why is not None:
        return False
    root = default_cache_dir(cfg.data.cache_dir)
    return all(is_warm(root, key) for key in _keys(accelerator, model, data, depth))


def _keys(accelerator, unwrapped, data, depth: int) -> list[str]:
    """The keys of the training rows' and the validation rows' stores."""
    fingerprint = prefix_weights_fingerprint(unwrapped, depth)
    precision = accelerator.mixed_precision
    return [store_key(unwrapped, depth, t, precision, fingerprint) for t in (data.train_tokens, data.validation_tokens)]


def _does_not_pay(cfg, accelerator, key: str, depth, total_steps, num_epochs) -> Optional[str]:
    train_passes, validation_passes = passes(cfg, total_steps, num_epochs)
    if train_passes > 1 or validation_passes > 1:
        return None
    if _agree(
        accelerator, is_warm(default_cache_dir(cfg.data.cache_dir), key) if accelerator.is_main_process else None
    ):
        return None
    return (
        "one pass over the training rows and one over the validation rows, and no warm cache: running "
        f"layers 0-{depth - 1} once to cache them costs what it saves (true turns it on)"
    )


def _stores(
    cfg: RunConfig, accelerator, unwrapped, data, depth: int, keys: list[str]
) -> tuple[list[PrefixStore], bool, Optional[str]]:
    """The training and validation rows' stores, opened or built by the main process first; then every
    other process opens them (and checks them) too. Also whether both were on disk already, and why
    they could not be written (None when they were)."""
    root = default_cache_dir(cfg.data.cache_dir)
    rows = (data.train_tokens, data.validation_tokens)
    hidden = unwrapped.config.hidden_size
    stores: list[Optional[PrefixStore]] = [None, None]
    hit, failed = True, None
    if accelerator.is_main_process:
        for n, (tokens, key) in enumerate(zip(rows, keys)):
            stores[n] = open_store(root, key, tokens.offsets, hidden)
            if stores[n] is None:
                hit = False
                # The run's precision, as its training loop has it: autocast, and a bf16 run's frozen base in bf16.
                bf16 = torch.bfloat16 if accelerator.mixed_precision == "bf16" else None
                try:
                    with accelerator.autocast(), frozen_base_in(unwrapped, bf16):
                        fill = build_states(unwrapped, depth, tokens, data.pad_id, accelerator.device)
                        stores[n] = write_store(root, key, tokens.offsets, hidden, fill)
                except OSError as err:
                    failed = f"{type(err).__name__}: {err.strerror or err}"
                    break
    accelerator.wait_for_everyone()
    failed = _agree(accelerator, failed)
    if failed is not None:
        return [], False, failed
    if not accelerator.is_main_process:
        stores = [open_store(root, key, tokens.offsets, hidden) for tokens, key in zip(rows, keys)]
        if any(s is None for s in stores):
            raise RuntimeError("the main process's prefix cache could not be read by another process")
    return [s for s in stores if s is not None], bool(_agree(accelerator, hit)), None
