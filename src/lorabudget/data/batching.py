"""Tokenize once (cached on disk), pad per batch, group by length, and restore input order.

Fixed-length padding wastes most of the compute on AG News (rows average ~54 RoBERTa tokens, the
usual ``max_length`` is 128-256), so every batch here is padded only to about its own longest row:
training batches come from length-sorted buckets of shuffled rows, inference runs rows sorted by
length and puts the outputs back in input order.

Padded widths are rounded up to a short ladder of bucket sizes (:func:`bucket_widths`) rather than
to each batch's exact longest row: a few fixed shapes let freed activation buffers be reused
exactly (exact widths fragmented the heap of the MiniLM preset on 5,000 AG News rows to 1.9 GB in fp32, against 1.4 GB),
suit bf16/oneDNN kernels (which build a kernel per shape and reuse it for a shape seen before), and
bound the number of shapes ``torch.compile`` sees. The ladder's step is 16 for bf16 training and 8
for fp32 training and for inference, where every padded position costs time: in fp32 training,
steps of 16 padded 13.9% of positions against 1.7% for exact widths and cost 16% of the speed
(docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

# Tokenizing and its cache live in data.tokens; re-exported here for the modules that import them from batching.
from lorabudget.data.tokens import (  # noqa: F401
    CACHE_VERSION,
    TOKENS_FOLDER,
    TokenizedTexts,
    content_sha256,
    pairs_fingerprint,
    texts_fingerprint,
    tokenize,
    tokenizer_fingerprint,
)

BUCKET_MULTIPLE = 16


INFERENCE_BUCKET_MULTIPLE = 8


def bucket_widths(max_width: int, multiple: int = BUCKET_MULTIPLE) -> list[int]:
    """The padded widths a batch may take, up to ``max_width`` (which is always the last one).

    Multiples of ``multiple`` whose step grows with the width (for 16: 16 below 128, 32 to 256, 64
    to 512, ...: 16, 32, ..., 128, 160, 192, 224, 256, 320, ...), so rounding up adds at most a
    quarter of the width. ``max_width`` (the longest row, at most ``max_length``) caps the ladder:
    no batch is ever padded beyond it, so models never see more positions than truncation allows.
    """
    if max_width < 1:
        return [max(max_width, 0)]
    widths: list[int] = []
    w = multiple
    while w < max_width:
        widths.append(w)
        w += max(multiple, (1 << (w.bit_length() - 1)) // 4 // multiple * multiple)
    widths.append(max_width)
    return widths


def bucketed(lengths: np.ndarray, widths: Sequence[int]) -> np.ndarray:
    """Each length rounded up to the smallest bucket width that holds it (lengths above the last
    width are rounded up to a multiple of 16: no row is ever cut here)."""
    lengths = np.asarray(lengths)
    ladder = np.asarray(widths)
    pos = np.searchsorted(ladder, lengths, side="left")
    over = pos >= len(ladder)
    out = ladder[np.minimum(pos, len(ladder) - 1)]
    if over.any():
        out = np.where(over, -(-lengths // BUCKET_MULTIPLE) * BUCKET_MULTIPLE, out)
    return out


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(batch: dict, device=None) -> dict[str, torch.Tensor]:
    """The batch's model inputs (``token_type_ids`` only for BERT-style sentence pairs), on ``device``."""
    return {k: (batch[k].to(device) if device is not None else batch[k]) for k in MODEL_INPUTS if k in batch}


class RowDataset(Dataset):
    """Row indices into tokenized texts; the collator does the gathering and padding."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        return index


class PadCollator:
    """Turn a list of row indices into one batch padded to its own longest row (rounded up to
    ``pad_to_multiple_of``, or to the smallest of ``widths`` that holds it when given).

    Returns ``input_ids`` [B, T] int64, ``attention_mask`` [B, T] int64, ``index`` [B] int64 (the
    rows' positions in the dataset, which keeps per-row extras such as teacher logits paired with
    their rows under any shuffling), and ``labels`` [B] int64 when labels are known.
    """

    def __init__(
        self,
        tokens: TokenizedTexts,
        pad_id: int,
        labels: Optional[np.ndarray] = None,
        pad_to_multiple_of: int = 1,
        widths: Optional[Sequence[int]] = None,
    ):
        self.tokens = tokens
        self.pad_id = pad_id
        self.labels = labels
        self.multiple = pad_to_multiple_of
        self.widths = list(widths) if widths is not None else None

    def __call__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        rows = [self.tokens.row(i) for i in indices]
        longest = max(len(r) for r in rows)
        if self.widths is not None:
            width = int(bucketed(np.array([longest]), self.widths)[0])
        else:
            width = -(-longest // self.multiple) * self.multiple
        input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for j, r in enumerate(rows):
            input_ids[j, : len(r)] = r
            mask[j, : len(r)] = 1
        batch = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(mask),
            "index": torch.as_tensor(np.asarray(indices, dtype=np.int64)),
        }
        if self.tokens.type_ids is not None:  # sentence pairs on a BERT-style tokenizer
            type_ids = np.zeros((len(rows), width), dtype=np.int64)
            for j, i in enumerate(indices):
                t = self.tokens.type_row(i)
                type_ids[j, : len(t)] = t
            batch["token_type_ids"] = torch.from_numpy(type_ids)
        if self.labels is not None:
            batch["labels"] = torch.from_numpy(self.labels[np.asarray(indices)])
        return batch


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Random batches of rows of similar length.

    Each epoch: shuffle all rows, cut the order into buckets of ``bucket_batches`` batches, sort each
    bucket by length, cut it into batches, and shuffle the batches. Batches are short (little
    padding) yet still random. ``length_grouping=False`` gives plain shuffled batches.
    """

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        seed: int,
        length_grouping: bool = True,
        bucket_batches: int = 50,
        drop_last: bool = False,
    ):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.length_grouping = length_grouping
        self.bucket = batch_size * bucket_batches
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(len(self.lengths))
        batches: list[np.ndarray] = []
        step = self.bucket if self.length_grouping else max(len(order), 1)
        for start in range(0, len(order), step):
            bucket = order[start : start + step]
            if self.length_grouping:
                bucket = bucket[np.argsort(-self.lengths[bucket], kind="stable")]
            batches.extend(bucket[i : i + self.batch_size] for i in range(0, len(bucket), self.batch_size))
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        for b in rng.permutation(len(batches)):
            yield batches[b].tolist()


def length_sorted_batches(
    lengths: np.ndarray, batch_size: int, max_tokens: Optional[int] = None, widths: Optional[Sequence[int]] = None
) -> list[list[int]]:
    """Inference batches over rows sorted longest first (so memory peaks on the first batch).

    A batch holds at most ``batch_size`` rows and, when ``max_tokens`` is set, at most that many
    padded token positions: the few very long rows then travel in small batches instead of
    forcing their width on many short rows. With ``widths`` (bucket sizes) a batch's padded width
    is its longest row's bucket, and the token cap counts that.
    """
    lengths = np.asarray(lengths)
    padded = bucketed(lengths, widths) if widths is not None else lengths
    order = np.argsort(-lengths, kind="stable")
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order.tolist():
        width = padded[current[0]] if current else padded[i]  # the first row of a batch is its longest
        if current and (len(current) == batch_size or (max_tokens and (len(current) + 1) * width > max_tokens)):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


# Peak RSS of the MiniLM preset's first 20 steps on 5,000 AG News rows (1 thread, glibc malloc, fp32): no cap 3.5 GB,
# 2,048 positions 2.4 GB, 1,024: 1.6 GB, 768: 1.36 GB (also over a whole epoch), 512: 1.17 GB.
# Smaller chunks shrink the heap's fragmentation along with the live activations (docs/benchmarks.md).
CPU_MAX_BATCH_POSITIONS = 768
# bf16 (the whole frozen base in bf16, precision.frozen_base_in): activations are half the size, so
# chunks can be bigger, and fewer, bigger chunks run faster. The whole MiniLM preset run on 5,000 rows (2026-12-01): 1,536
# positions 189.9 s and 1.56 GB peak (over the 1.5 GB target), 1,024: 186.4 s and 1.33 GB.
CPU_BF16_MAX_BATCH_POSITIONS = 1024


def position_cap(configured: Optional[int], device_type: str, bf16: bool = False) -> Optional[int]:
    """``training.max_batch_positions`` resolved: ``None`` is 768 on a CPU (1,024 when training in
    bf16) and no cap elsewhere (GPU memory is rarely the limit for these models, and bigger kernels
    run faster there); 0 is no cap."""
    if configured is None:
        if device_type != "cpu":
            return None
        return CPU_BF16_MAX_BATCH_POSITIONS if bf16 else CPU_MAX_BATCH_POSITIONS
    return configured or None


def split_rows(batch: dict, max_positions: Optional[int]) -> list[tuple[dict, float]]:
    """Cut a padded batch into row chunks of at most ``max_positions`` padded token positions.

    Returns ``[(chunk, share), ...]`` where ``share`` is the chunk's fraction of the batch's rows,
    so that ``Σ share · mean_loss(chunk)`` is the batch's mean loss and the accumulated gradients
    are the full batch's (exactly for a mean over rows, such as cross-entropy). Activation memory
    then peaks at one chunk instead of one batch: a 32-row batch at width 128 saves about 1.4 GB of
    activations for MiniLM's backward in fp32, over three times the memory of the whole model and
    libraries. Chunks are as even as possible (fewer shapes); a chunk has at least one row; no cap
    (``None`` or 0) or a batch within it gives the batch itself.
    """
    rows, width = batch["input_ids"].shape
    if not max_positions or rows * width <= max_positions:
        return [(batch, 1.0)]
    pieces = -(-rows // max(1, max_positions // width))
    sizes = [rows // pieces + (1 if i < rows % pieces else 0) for i in range(pieces)]
    out, start = [], 0
    for size in sizes:
        chunk = {k: v[start : start + size] if isinstance(v, torch.Tensor) and v.ndim else v for k, v in batch.items()}
        out.append((chunk, size / rows))
        start += size
    return out


def train_loader(
    tokens: TokenizedTexts,
    labels: np.ndarray,
    pad_id: int,
    batch_size: int,
    seed: int,
    length_grouping: bool = True,
    num_workers: int = 0,
    bucket_multiple: int = BUCKET_MULTIPLE,
) -> DataLoader:
    """Shuffled, length-grouped training batches, padded to bucket widths on a ladder of
    ``bucket_multiple`` (1: to each batch's own longest row)."""
    sampler = LengthGroupedBatchSampler(tokens.lengths, batch_size, seed, length_grouping)
    widths = data_widths(tokens, bucket_multiple) if bucket_multiple > 1 else None
    return DataLoader(
        RowDataset(len(tokens)),
        batch_sampler=sampler,
        collate_fn=PadCollator(tokens, pad_id, labels, widths=widths),
        num_workers=num_workers,
    )


def data_widths(tokens: TokenizedTexts, multiple: int = BUCKET_MULTIPLE) -> list[int]:
    """Bucket widths for these rows: the ladder up to their longest row (never beyond ``max_length``,
    which truncation already applied)."""
    return bucket_widths(int(tokens.lengths.max()) if len(tokens) else 1, multiple)


def inference_loader(
    tokens: TokenizedTexts,
    pad_id: int,
    batch_size: int,
    labels: Optional[np.ndarray] = None,
    num_workers: int = 0,
    max_tokens: Optional[int] = None,
) -> DataLoader:
    """Batches in length order; each batch carries ``index`` so outputs can be put back in order.

    Widths are rounded up to bucket sizes (:func:`bucket_widths`, in steps of 8 below 64 tokens:
    inference runs near the matmul peak, so every padded position costs): few distinct shapes let
    CPU kernels (oneDNN) and the allocator reuse what they prepared for an earlier batch. A batch holds at most
    ``batch_size`` rows and ``max_tokens`` padded token positions (default ``batch_size * 64``; 64
    is about a typical AG News row).
    """
    widths = data_widths(tokens, INFERENCE_BUCKET_MULTIPLE)
    return DataLoader(
        RowDataset(len(tokens)),
        batch_sampler=length_sorted_batches(
            tokens.lengths, batch_size, max_tokens=max_tokens or batch_size * 64, widths=widths
        ),
        collate_fn=PadCollator(tokens, pad_id, labels, widths=widths),
        num_workers=num_workers,
    )
