"""Batched inference: length-sorted batches, outputs restored to input order, gathered across processes."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lorabudget.data.batching import TokenizedTexts, inference_loader, model_inputs
from lorabudget.model.precision import inference_weights_in
from lorabudget.model.precision import resolve as resolve_device_precision

CPU_TOKENS_PER_BATCH = 1024


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def resolve_precision(
    precision: str,
    log: Optional[Callable[[str], None]] = _stderr,
    model: Optional[nn.Module] = None,
    cache_dir: Optional[str] = None,
) -> str:
    """``auto`` is bf16 on a GPU that supports it, and on a CPU where bf16 measured clearly faster
    than fp32 for ``model``'s layer shapes on batches of :data:`CPU_TOKENS_PER_BATCH` positions
    (``precision.resolve``: a cached probe; MiniLM's shape without a model), fp32 elsewhere. ``auto``
    logs one line (stderr by default) saying what runs and why."""
    from lorabudget.model.probe import representative, workload_from_model

    chosen = resolve_device_precision(
        precision,
        cache_dir=cache_dir,
        workload=lambda: (
            workload_from_model(model, CPU_TOKENS_PER_BATCH, False)
            if model is not None
            else representative(training=False)
        ),
    )
    if precision == "auto" and log is not None:
        log(chosen.line("inference"))
    return chosen.name


def max_tokens_per_batch(device_type: str, batch_size: int) -> int:
    """Padded token positions allowed in one inference batch."""
    # On a CPU, batches of about 1,024 token positions ran fastest (roberta-base, 2 cores: 13-14 rows/s
    # against 11 at 2,048-4,096 positions); GPUs want the larger batches.
    return batch_size * 64 if device_type == "cuda" else min(batch_size * 64, CPU_TOKENS_PER_BATCH)


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    tokens: TokenizedTexts,
    pad_id: int,
    batch_size: int,
    accelerator=None,
    progress: Optional[str] = None,
    precision: str = "fp32",
    forward: Optional[Callable[[dict], torch.Tensor]] = None,
) -> np.ndarray:
    """Logits [rows, classes] (float32) for every row of ``tokens``, in input order; the windows of a
    row (``data.long_text: chunks``) pooled into one logits row (``TokenizedTexts.per_row``).

    ``forward(batch) -> logits`` replaces ``model(**inputs).logits`` (the training loop's frozen-prefix
    cache reads each row's cached states by the batch's ``index``).

    With an ``accelerator`` of several processes each one runs a share of the batches and the
    results are gathered; rows are placed by their ``index``, so padding added to even out the
    shards can neither be counted twice nor shift other rows.

    ``precision="bf16"`` runs the forward pass under bf16 autocast (GPUs, and CPUs with native bf16
    such as AVX512-BF16/AMX) with the model's weights cast to bf16 once for the whole call
    (``precision.inference_weights_in``; the originals are back afterwards); logits are returned in
    float32 either way.
    """
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    loader = inference_loader(tokens, pad_id, batch_size, max_tokens=max_tokens_per_batch(device.type, batch_size))
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader)
    was_training = model.training
    model.eval()
    out: Optional[np.ndarray] = None
    seen = np.zeros(len(tokens), dtype=bool)
    show = progress is not None and (accelerator is None or accelerator.is_main_process)
    bf16 = precision == "bf16"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    # The weights are cast to bf16 once for the call, not by autocast on every batch.
    with inference_weights_in(model, torch.bfloat16 if bf16 else None):
        for batch in tqdm(loader, desc=progress, disable=not show, unit="batch", leave=False):
            with autocast:
                logits = (forward(batch) if forward else model(**model_inputs(batch, device)).logits).float()
            index = batch["index"].to(device)
            if accelerator is not None and accelerator.num_processes > 1:
                # Shards may hold batches of different sizes: pad to a common size (index -1 marks padding).
                logits = accelerator.pad_across_processes(logits, dim=0)
                index = accelerator.pad_across_processes(index, dim=0, pad_index=-1)
                logits, index = accelerator.gather((logits, index))
                logits, index = logits[index >= 0], index[index >= 0]
            logits_np, index_np = logits.cpu().numpy(), index.cpu().numpy()
            if out is None:
                out = np.zeros((len(tokens), logits_np.shape[1]), dtype=np.float32)
            out[index_np] = logits_np
            seen[index_np] = True
    model.train(was_training)
    return _per_row(out, seen, tokens)


def predict_logits_onnx(
    session, tokens: TokenizedTexts, pad_id: int, batch_size: int, progress: Optional[str] = None
) -> np.ndarray:
    """:func:`predict_logits` for an ONNX Runtime ``InferenceSession`` (inputs ``input_ids`` and
    ``attention_mask``, output ``logits``): the same length-sorted batches, outputs in input order."""
    uses_gpu = "CUDAExecutionProvider" in session.get_providers()
    max_tokens = max_tokens_per_batch("cuda" if uses_gpu else "cpu", batch_size)
    loader = inference_loader(tokens, pad_id, batch_size, max_tokens=max_tokens)
    names = {i.name for i in session.get_inputs()}
    out: Optional[np.ndarray] = None
    seen = np.zeros(len(tokens), dtype=bool)
    for batch in tqdm(loader, desc=progress, disable=progress is None, unit="batch", leave=False):
        feed = {"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy()}
        if "token_type_ids" in names:  # BERT-style exports: zeros for single texts, the pair's types for pairs
            types = batch.get("token_type_ids")
            feed["token_type_ids"] = types.numpy() if types is not None else np.zeros_like(feed["input_ids"])
        (logits,) = session.run(["logits"], feed)
        index = batch["index"].numpy()
        if out is None:
            out = np.zeros((len(tokens), logits.shape[1]), dtype=np.float32)
        out[index] = logits
        seen[index] = True
    return _per_row(out, seen, tokens)


def _per_row(out: Optional[np.ndarray], seen: np.ndarray, tokens: TokenizedTexts) -> np.ndarray:
    """One logits row per input row: every tokenized row covered, windows (``data.long_text: chunks``)
    pooled before anything downstream (softmax, sigmoid, metrics) sees them."""
    if out is None or not seen.all():
        raise RuntimeError(f"inference covered {int(seen.sum())} of {len(tokens)} rows")  # a bug, not bad input
    return tokens.per_row(out)
