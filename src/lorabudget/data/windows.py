"""Rows longer than ``model.max_length`` tokens (``data.long_text``): cut them, keep their head and
tail, or split them into overlapping windows whose logits are pooled back to one row.

Everything here works on plain token-id arrays (no tokenized-texts container, no model), so the
tokenizer wrapper (``data.batching.tokenize``) and inference (``inference.batched``) share it:

- :func:`special_template` finds the special tokens a tokenizer puts before and after a single text
  (``[CLS] … [SEP]``, ``<s> … </s>``), so every cut row and every window keeps them intact.
- :func:`head_tail` keeps the first ⌊B·128/510⌋ and the last remaining tokens of a row whose content
  (tokens without the specials) exceeds the budget B = max_length − specials: Sun et al. (2019), "How
  to fine-tune BERT for text classification?", found head 128 + tail 382 of 512 best on long reviews.
- :func:`window_starts` places windows of B content tokens that share ``stride`` tokens with the one
  before; the last window is moved back to end at the row's end (so it is full, sharing more).
- :func:`pool_windows` turns window logits into row logits (mean or max) before any softmax/sigmoid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from lorabudget.errors import LorabudgetError

LONG_TEXT_MODES = ("truncate", "head_tail", "chunks")
POOLINGS = ("mean", "max")
PAIRS_REFUSED = (
    "data.long_text: {mode} takes single texts; sentence pairs (data.text_pair_column) are cut with "
    "data.long_text: truncate"
)
# Sun et al. 2019: head 128 + tail 382 tokens of BERT's 512 (510 without [CLS] and [SEP]).
HEAD_SHARE = (128, 510)


def default_stride(max_length: int) -> int:
    """``data.chunk_stride: null``: a quarter of ``max_length``."""
    return max_length // 4


KEPT = {"truncate": "first tokens kept", "head_tail": "first and last tokens kept", "chunks": "windows pooled"}


def special_template(tokenizer) -> tuple[list[int], list[int]]:
    """(ids before, ids after) the content of a single text, as the tokenizer's own encoding adds them."""
    probe = "a"
    bare = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    raise LorabudgetError(  # a tokenizer whose specials change the text's own tokens: no template to keep
        f"{type(tokenizer).__name__}: cannot find where the text sits among its special tokens; "
        "use data.long_text: truncate"
    )


def content_budget(max_length: int, prefix: Sequence[int], suffix: Sequence[int]) -> int:
    """Content tokens that fit one row of ``max_length`` with its special tokens."""
    budget = max_length - len(prefix) - len(suffix)
    if budget < 1:
        raise LorabudgetError(
            f"model.max_length {max_length} leaves no room for text beside {len(prefix) + len(suffix)} special tokens"
        )
    return budget


def head_split(budget: int) -> tuple[int, int]:
    """(head, tail) token counts of a row cut by ``head_tail`` to ``budget`` content tokens."""
    head = budget * HEAD_SHARE[0] // HEAD_SHARE[1]
    return head, budget - head


def head_tail(content: np.ndarray, budget: int) -> np.ndarray:
    """The first and last tokens of ``content`` (:func:`head_split`); a row within ``budget`` whole."""
    if len(content) <= budget:
        return content
    head, tail = head_split(budget)
    return np.concatenate([content[:head], content[len(content) - tail :]])


def check_stride(stride: int, budget: int, max_length: int) -> None:
    if not 0 <= stride < budget:
        raise LorabudgetError(
            f"config key 'data.chunk_stride': must be >= 0 and below the {budget} text tokens of a "
            f"{max_length}-token window, got {stride}"
        )


def window_starts(length: int, budget: int, stride: int) -> list[int]:
    """Start offsets of the windows of ``budget`` tokens over ``length`` content tokens.

    Consecutive windows share ``stride`` tokens (the step is ``budget - stride``); the last one ends at
    the row's end, sharing at least ``stride`` with the one before. A row within ``budget`` (an empty
    one too) is one window.
    """
    if length <= budget:
        return [0]
    step = budget - stride
    starts = list(range(0, length - budget, step))
    starts.append(length - budget)
    return starts


@dataclass
class Encoded:
    """Rows cut or split for the model: ``pieces`` (ids with specials, one per window), ``row_of_window``
    (int64, the input row of each window; None when every row is one window) and ``source_lengths`` (each
    input row's full length with specials, before any cut)."""

    pieces: list[np.ndarray]
    row_of_window: Optional[np.ndarray]
    source_lengths: np.ndarray


def encode_long(tokenizer, texts: Sequence[str], max_length: int, mode: str, stride: int) -> Encoded:
    """Single texts through ``head_tail`` or ``chunks`` (``truncate`` stays with the tokenizer's own cut)."""
    prefix, suffix = special_template(tokenizer)
    budget = content_budget(max_length, prefix, suffix)
    if mode == "chunks":
        check_stride(stride, budget, max_length)
    before, after = np.asarray(prefix, np.int32), np.asarray(suffix, np.int32)
    pieces: list[np.ndarray] = []
    owners: list[int] = []
    sources = np.zeros(len(texts), dtype=np.int64)
    for start in range(0, len(texts), 4096):
        encoded = tokenizer(list(texts[start : start + 4096]), add_special_tokens=False, verbose=False)
        for j, ids in enumerate(encoded["input_ids"]):
            row = start + j
            content = np.asarray(ids, dtype=np.int32)
            sources[row] = len(content) + len(before) + len(after)
            if mode == "head_tail":
                pieces.append(np.concatenate([before, head_tail(content, budget), after]))
                continue
            for s in window_starts(len(content), budget, stride):
                pieces.append(np.concatenate([before, content[s : s + budget], after]))
                owners.append(row)
    row_of_window = np.asarray(owners, dtype=np.int64) if mode == "chunks" else None
    return Encoded(pieces, row_of_window, sources)


def pool_windows(
    logits: np.ndarray, row_of_window: Optional[np.ndarray], pooling: str = "mean", rows: Optional[int] = None
) -> np.ndarray:
    """Window logits [windows, C] -> row logits [rows, C]: the mean (or max) over each row's windows.

    Rows are numbered 0..rows-1 by ``row_of_window`` (``rows``: their count, by default one past the
    largest) and each has at least one window; ``None`` (one window per row) returns ``logits``
    unchanged. Pooling logits, not probabilities, keeps everything after "one logits row per input
    row" (softmax, sigmoid, thresholds) as it is.
    """
    if row_of_window is None:
        return logits
    if rows is None:
        rows = int(row_of_window.max()) + 1 if len(row_of_window) else 0
    if pooling == "max":
        out = np.full((rows, logits.shape[1]), -np.inf, dtype=np.float32)
        np.maximum.at(out, row_of_window, logits.astype(np.float32))
        return out
    sums = np.zeros((rows, logits.shape[1]), dtype=np.float64)
    np.add.at(sums, row_of_window, logits)
    counts = np.bincount(row_of_window, minlength=rows)[:, None]
    return (sums / counts).astype(np.float32)


@dataclass
class LongTextStats:
    """How many rows were longer than ``max_length`` and what that cost: tokens cut, or windows made."""

    mode: str
    rows: int
    longer: int
    tokens_cut: int
    windows: int

    @classmethod
    def of(cls, mode: str, source_lengths: np.ndarray, kept_lengths: np.ndarray, max_length: int, windows: int):
        over = source_lengths > max_length
        cut = 0 if mode == "chunks" else int((source_lengths - kept_lengths).clip(min=0).sum())
        return cls(mode, len(source_lengths), int(over.sum()), cut, windows)

    def text(self) -> str:
        """One log phrase, e.g. ``12 of 200 rows longer than max_length (840 tokens cut)``."""
        said = f"{self.longer:,} of {self.rows:,} rows longer than max_length"
        return (
            f"{said} ({self.windows:,} windows)"
            if self.mode == "chunks"
            else f"{said} ({self.tokens_cut:,} tokens cut)"
        )

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "rows": self.rows,
            "longer_than_max_length": self.longer,
            "tokens_cut": self.tokens_cut,
            "windows": self.windows,
        }
