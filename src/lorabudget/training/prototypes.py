"""Class vectors from the frozen encoder, computed once before training: the prototype head's fixed
vectors, and the ``head.init: names|prototypes`` starting weights of the ``linear`` and ``low_rank`` heads.

A class's vector is the mean pooled embedding (``head.pooling``) of its training rows (for a multi-label
run, of the rows where the class is positive), or with ``head.init: names`` the pooled embedding of the
class name. The encoder runs as it was before training: adapters switched off, eval mode, no gradients,
in the batches inference uses (each process a share, gathered), in the run's precision; where the run
uses the frozen-prefix cache, the training rows start from their cached states, so only the layers
above it run. A class without training rows takes its name's embedding.

The prototype vectors are a persistent buffer of the head: saved with the run's weights (PEFT's
``modules_to_save`` state, or the full-weights file), exported with it, and carried in checkpoints, so a
resumed run reads them back instead of computing them again.
"""

from __future__ import annotations

import contextlib
import time
from types import SimpleNamespace
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from lorabudget.config import RunConfig
from lorabudget.data.batching import TokenizedTexts, tokenize
from lorabudget.inference.batched import predict_logits
from lorabudget.model.heads import pooled_encoder
from lorabudget.model.hf_classifier import LowRankHead, PooledLinearHead, PrototypeHead, pool
from lorabudget.model.precision import frozen_base_in


class _PooledEncoder(nn.Module):
    """The encoder and the head's pooling, answering ``.logits`` = pooled states (what predict_logits reads)."""

    def __init__(self, backbone: nn.Module, pooling: str):
        super().__init__()
        self.backbone, self.pooling = backbone, pooling
        self.train(backbone.training)  # predict_logits restores this mode afterwards

    def forward(self, input_ids, attention_mask, token_type_ids=None, **_: Any):
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return SimpleNamespace(logits=pool(hidden, attention_mask, self.pooling))


def needs_class_vectors(cfg: RunConfig) -> bool:
    return cfg.head.type == "prototype" or (cfg.head.type in ("linear", "low_rank") and cfg.head.init != "random")


def reads_training_rows(cfg: RunConfig) -> bool:
    """Whether the class vectors take a pass over the training rows (all but the class names' vectors)."""
    return needs_class_vectors(cfg) and cfg.head.init != "names"


def class_means(embeddings: np.ndarray, targets: np.ndarray, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean embedding per class and row count per class. ``targets``: int class ids ``[N]`` (-1: no gold
    label) or a 0/1 matrix ``[N, C]`` (a multi-label run; rows with a negative entry have no labels)."""
    targets = np.asarray(targets)
    if targets.ndim == 1:
        member = np.zeros((len(targets), num_labels), dtype=np.float64)
        gold = targets >= 0
        member[np.nonzero(gold)[0], targets[gold].astype(np.int64)] = 1.0
    else:
        member = (targets > 0.5).astype(np.float64)
        member[(targets < 0).any(axis=1)] = 0.0
    counts = member.sum(0)
    sums = member.T @ embeddings.astype(np.float64)
    means = sums / np.maximum(counts, 1.0)[:, None]
    return means.astype(np.float32), counts.astype(np.int64)


# A class-vector start of a linear or low-rank head: a row at its class vector scores about this for its
# class. Low on purpose: the start already ranks the classes, and a confident one (10, the prototype
# head's starting temperature) leaves the loss too small for the adapters to learn from; measured at
# full length, 10 cost 2-3 points on AG News and SST-2 where 1 ties the random start
# (docs/heads-measured.md).
INIT_SCALE = 1.0


def linear_init(vectors: np.ndarray, scale: float = INIT_SCALE) -> tuple[np.ndarray, np.ndarray]:
    """Weight [C, H] and bias [C] of a linear head that starts as a centred nearest-class-vector
    classifier: logit_c = s·(v_c - m)·(x - m) / (|v_c - m|·ρ), ρ the RMS norm of the centred vectors, so
    a row at its class vector scores about s (``scale``)."""
    centre = vectors.mean(0)
    centred = vectors - centre
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    rho = float(np.sqrt((norms**2).mean())) or 1.0
    weight = scale * centred / np.maximum(norms, 1e-6) / rho
    return weight.astype(np.float32), (-(weight @ centre)).astype(np.float32)


def low_rank_init(vectors: np.ndarray, rank: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``down`` [r, H], ``out_proj`` weight [C, r] and bias [C] whose product is the best rank-r
    approximation of :func:`linear_init`'s weight (SVD, singular values split evenly between the two);
    directions beyond the weight's own rank start small and random."""
    weight, bias = linear_init(vectors)
    u, s, vt = np.linalg.svd(weight.astype(np.float64), full_matrices=False)
    k = min(rank, len(s))
    root = np.sqrt(s[:k])
    down = np.random.default_rng(seed).normal(0.0, 0.02, (rank, weight.shape[1]))
    out = np.zeros((weight.shape[0], rank))
    down[:k] = root[:, None] * vt[:k]
    out[:, :k] = u[:, :k] * root[None, :]
    return down.astype(np.float32), out.astype(np.float32), bias


def _set(tensor: torch.Tensor, value: np.ndarray) -> None:
    with torch.no_grad():
        tensor.copy_(torch.as_tensor(value, dtype=tensor.dtype, device=tensor.device))


def apply_class_vectors(model: nn.Module, cfg: RunConfig, vectors: np.ndarray) -> None:
    """Put the class vectors into every copy of the head (PEFT keeps the original and the trained copy)."""
    for head in [m for m in model.modules() if isinstance(m, (PooledLinearHead, LowRankHead, PrototypeHead))]:
        if isinstance(head, PrototypeHead):
            _set(head.prototypes, vectors)
        elif isinstance(head, LowRankHead):
            down, out, bias = low_rank_init(vectors, head.down.out_features, cfg.training.seed)
            _set(head.down.weight, down)
            _set(head.out_proj.weight, out)
            _set(head.out_proj.bias, bias)
        else:
            weight, bias = linear_init(vectors)
            _set(head.out_proj.weight, weight)
            _set(head.out_proj.bias, bias)


# ``forward_over(encoder) -> forward(batch)``: the pooled encoder's forward over cached states.
ForwardOver = Callable[[nn.Module], Callable[[dict], torch.Tensor]]


def _embed(
    model: nn.Module,
    tokens: TokenizedTexts,
    pad_id: int,
    cfg: RunConfig,
    accelerator,
    forward_over: Optional[ForwardOver] = None,
) -> np.ndarray:
    inner = pooled_encoder(model)
    encoder = _PooledEncoder(inner.backbone, cfg.head.pooling)
    forward = forward_over(encoder) if forward_over is not None else None
    # The frozen encoder: a PEFT model's adapters are switched off (most start as the identity, not all).
    off = model.disable_adapter() if hasattr(model, "disable_adapter") and hasattr(model, "peft_config") else None
    with contextlib.ExitStack() as stack:
        stack.enter_context(off if off is not None else contextlib.nullcontext())
        if accelerator is not None:  # the run's precision, arranged as its validation passes have it
            bf16 = accelerator.mixed_precision == "bf16"
            stack.enter_context(frozen_base_in(model, torch.bfloat16 if bf16 else None))
            stack.enter_context(accelerator.autocast())
        return predict_logits(encoder, tokens, pad_id, cfg.training.eval_batch_size, accelerator, forward=forward)


def class_vectors(
    cfg: RunConfig, model: nn.Module, data: Any, accelerator=None, forward_over: Optional[ForwardOver] = None
) -> tuple[np.ndarray, str]:
    """The class vectors ``[C, H]`` of this run and a line saying how they were made; ``forward_over``
    runs the training rows from the frozen-prefix cache."""
    names = cfg.class_names
    name_tokens = tokenize(data.tokenizer, names, cfg.model.max_length)
    by_name = _embed(model, name_tokens, data.pad_id, cfg, accelerator)
    if cfg.head.init == "names":
        return by_name, f"the pooled embeddings of the {len(names)} class names"
    # Long texts in windows (data.long_text: chunks): training holds each window as a row with its row's
    # target; tokens that still map windows to rows get their embeddings pooled per row by predict_logits.
    tokens, targets = data.train_tokens, data.train.labels
    embeddings = _embed(model, tokens, data.pad_id, cfg, accelerator, forward_over)
    means, counts = class_means(embeddings, targets, len(names))
    empty = counts == 0
    means[empty] = by_name[empty]
    line = f"the mean pooled embedding of each class's training rows ({int(counts.sum()):,} memberships)"
    if empty.any():
        line += f"; {int(empty.sum())} class(es) without rows take their name's embedding"
    return means, line


def init_head(
    cfg: RunConfig,
    model: nn.Module,
    data: Any,
    accelerator=None,
    log: Callable[[str], None] = print,
    forward_over: Optional[ForwardOver] = None,
) -> Optional[float]:
    """Compute the class vectors and put them into the head when the config asks for them (a new run
    only: a resumed run restores them from its checkpoint). Every process calls it. Returns the seconds
    it took, or None where the head needs none."""
    if not needs_class_vectors(cfg) or pooled_encoder(model) is None:
        return None
    start = time.perf_counter()
    device = accelerator.device if accelerator is not None else torch.device("cpu")
    if cfg.model.quantization == "none":
        model.to(device)
    else:
        from lorabudget.model.build import keep_4bit_layout_for_training

        keep_4bit_layout_for_training(model)  # before its first no-grad eval pass (see there)
    vectors, how = class_vectors(cfg, model, data, accelerator, forward_over)
    apply_class_vectors(model, cfg, vectors)
    what = "prototype vectors" if cfg.head.type == "prototype" else f"{cfg.head.type} head's starting weights"
    seconds = time.perf_counter() - start
    cached = ", training rows from the frozen-prefix cache" if forward_over and reads_training_rows(cfg) else ""
    log(f"head: {what} from {how}, frozen encoder{cached}, {seconds:.1f}s")
    return seconds


def head_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the head's class vectors (what a checkpoint carries beside the trainable weights)."""
    return {
        name: buffer.detach().to("cpu", copy=True)
        for name, buffer in model.named_buffers()
        if name.endswith("prototypes") and ".head." in f".{name}"
    }


def load_head_buffers(model: nn.Module, values: dict[str, torch.Tensor]) -> None:
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for name, value in values.items():
            buffers[name].copy_(value.to(buffers[name].device))
