"""Tokenized texts and the on-disk token cache: each text tokenized once per tokenizer, ``max_length``
and ``data.long_text`` setting; rows longer than ``max_length`` are cut or split as ``data.long_text`` says."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from lorabudget.console import warn
from lorabudget.data import windows
from lorabudget.errors import LorabudgetError
from lorabudget.io import atomic_path

CACHE_VERSION = "3"  # 3: data.long_text (source lengths and window rows stored); 2: token type ids (pairs)

TOKENS_FOLDER = "tokens"  # under the cache root: tokenized training and validation texts


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides the token ids: the full tokenizer definition."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        # Truncation and padding are call-time state that a previous call leaves behind; the call
        # settings that matter (max_length) are part of the cache key separately.
        definition.pop("truncation", None)
        definition.pop("padding", None)
        digest.update(json.dumps(definition, sort_keys=True).encode())
    else:  # slow tokenizers: fall back to the vocabulary
        digest.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(repr((type(tokenizer).__name__, tokenizer.model_max_length)).encode())
    return digest.hexdigest()


def texts_fingerprint(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()


class TokenizedTexts:
    """Token ids of many rows, stored flat: row ``i`` is ``ids[offsets[i]:offsets[i+1]]``.

    ``type_ids`` (same layout) are the token type ids of sentence pairs for tokenizers that make them
    (BERT: 0 for the first text, 1 for the second); ``None`` for single texts and for tokenizers
    without them (RoBERTa), where the model's default (all zeros) is exactly right.

    With ``data.long_text: chunks`` a row here is a *window* of an input row: ``row_of_window`` (int64
    [windows]) says whose, and :meth:`per_row` pools window logits back to one row per input row with
    ``pooling``; ``None`` means one row per input row. ``source_lengths`` (int64 [input rows]) are the
    rows' full lengths before any cut, when known; ``long_text`` the mode that made the rows.
    """

    def __init__(
        self,
        ids: np.ndarray,
        offsets: np.ndarray,
        type_ids: Optional[np.ndarray] = None,
        row_of_window: Optional[np.ndarray] = None,
        source_lengths: Optional[np.ndarray] = None,
        long_text: str = "truncate",
        pooling: str = "mean",
    ):
        self.ids = ids  # int32 [total tokens]
        self.offsets = offsets  # int64 [rows + 1]
        self.type_ids = type_ids  # int8 [total tokens] or None
        self.row_of_window = row_of_window
        self.source_lengths = source_lengths
        self.long_text = long_text
        self.pooling = pooling

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def input_rows(self) -> int:
        """Input rows (texts) these rows come from: ``len(self)`` unless rows are windows."""
        if self.source_lengths is not None:
            return len(self.source_lengths)
        return len(self) if self.row_of_window is None else int(self.row_of_window.max()) + 1

    def row(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def type_row(self, i: int) -> Optional[np.ndarray]:
        return None if self.type_ids is None else self.type_ids[self.offsets[i] : self.offsets[i + 1]]

    def per_row(self, logits: np.ndarray) -> np.ndarray:
        """Logits of these rows [len(self), C] -> one logits row per input row (windows pooled)."""
        return windows.pool_windows(logits, self.row_of_window, self.pooling, self.input_rows)

    def stats(self, max_length: int) -> Optional[windows.LongTextStats]:
        """How many input rows were longer than ``max_length`` and the tokens cut (None: lengths unknown)."""
        if self.source_lengths is None:
            return None
        kept = self.lengths if self.row_of_window is None else self.source_lengths
        return windows.LongTextStats.of(self.long_text, self.source_lengths, kept, max_length, len(self))

    def as_rows(self) -> "TokenizedTexts":
        """The same tokens with every window an input row of its own (what training iterates over)."""
        return TokenizedTexts(self.ids, self.offsets, self.type_ids, None, None, self.long_text, self.pooling)

    def concat(self, other: "TokenizedTexts") -> "TokenizedTexts":
        """These rows followed by ``other``'s (rows, not windows: for training rows)."""
        type_ids = None
        if self.type_ids is not None or other.type_ids is not None:
            type_ids = np.concatenate(
                [t.type_ids if t.type_ids is not None else np.zeros(len(t.ids), np.int8) for t in (self, other)]
            )
        return TokenizedTexts(
            np.concatenate([self.ids, other.ids]),
            np.concatenate([self.offsets, other.offsets[1:] + self.offsets[-1]]),
            type_ids,
        )


def pairs_fingerprint(pairs: Optional[Sequence[str]]) -> str:
    """``texts_fingerprint`` of the second texts, or ``single`` when the rows are single texts."""
    return "single" if pairs is None else "pair:" + texts_fingerprint(pairs)


def tokenize(
    tokenizer,
    texts: Sequence[str],
    max_length: int,
    cache_dir: Optional[Path] = None,
    chunk: int = 4096,
    pairs: Optional[Sequence[str]] = None,
    long_text: str = "truncate",
    stride: Optional[int] = None,
    pooling: str = "mean",
) -> TokenizedTexts:
    """Tokenize ``texts`` to at most ``max_length`` tokens a row, reusing an on-disk cache when possible.

    ``long_text`` (``data.long_text``) says what happens to a longer row: ``truncate`` keeps its first
    tokens (the tokenizer's own cut), ``head_tail`` its first and last (``windows.head_tail``), ``chunks``
    makes it windows sharing ``stride`` tokens (``null``: a quarter of ``max_length``) whose logits
    :meth:`TokenizedTexts.per_row` pools with ``pooling``. Special tokens stay in every row and window.

    With ``pairs`` (one second text per row) each row is the tokenizer's own pair encoding
    (``tokenizer(text, pair)``: separators and, for BERT-style tokenizers, token type ids), truncated
    longest-first; ``head_tail`` and ``chunks`` take single texts only. The cache key covers the
    tokenizer definition, ``max_length``, the long-text mode and stride, every text and every second
    text, so any change gives a new entry; an unreadable or inconsistent cache file is ignored and
    rewritten.
    """
    if pairs is not None and len(pairs) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(pairs)} second texts")  # a bug, not bad input
    if long_text not in windows.LONG_TEXT_MODES or pooling not in windows.POOLINGS:
        raise ValueError(f"long_text {long_text!r}, pooling {pooling!r}")  # config validation lets neither through
    if pairs is not None and long_text != "truncate":
        raise LorabudgetError(windows.PAIRS_REFUSED.format(mode=long_text))
    stride = windows.default_stride(max_length) if stride is None else stride
    setting = "truncate" if long_text == "truncate" else f"{long_text}:{stride if long_text == 'chunks' else ''}"
    path = full_key = None
    if cache_dir is not None:  # the fingerprint serializes the whole tokenizer: only worth it for a cache
        full_key = hashlib.sha256(
            f"{CACHE_VERSION}|{tokenizer_fingerprint(tokenizer)}|{max_length}|{setting}|{texts_fingerprint(texts)}|"
            f"{pairs_fingerprint(pairs)}".encode()
        ).hexdigest()
        path = cache_dir / TOKENS_FOLDER / f"{full_key[:32]}.npz"
    arrays = _read_cache(path, full_key, len(texts)) if path is not None and path.is_file() else None
    if arrays is None:
        # Only a cached (training or evaluation) pass counts what was cut: prediction and serving need
        # no second, uncut tokenizer pass.
        arrays = _encode(tokenizer, texts, max_length, chunk, pairs, long_text, stride, count_cut=path is not None)
        if path is not None:
            _write_cache(path, full_key, arrays)
    return TokenizedTexts(
        arrays["ids"],
        arrays["offsets"],
        arrays.get("type_ids"),
        arrays.get("row_of_window"),
        arrays.get("source_lengths"),
        long_text,
        pooling,
    )


# The arrays of a cache entry, in checksum order; the optional ones are absent when None.
CACHED_ARRAYS = ("ids", "offsets", "type_ids", "source_lengths", "row_of_window")


def _encode(
    tokenizer, texts, max_length, chunk, pairs, long_text, stride, count_cut: bool = True
) -> dict[str, np.ndarray]:
    if long_text != "truncate":
        encoded = windows.encode_long(tokenizer, texts, max_length, long_text, stride)
        pieces, type_pieces = encoded.pieces, []
        arrays = {"source_lengths": encoded.source_lengths, "row_of_window": encoded.row_of_window}
    else:
        pieces, type_pieces, sources = [], [], []
        for start in range(0, len(texts), chunk):
            firsts = list(texts[start : start + chunk])
            seconds = list(pairs[start : start + chunk]) if pairs is not None else None
            encoded = tokenizer(firsts, seconds, truncation=True, max_length=max_length)
            pieces.extend(np.asarray(row, dtype=np.int32) for row in encoded["input_ids"])
            if pairs is not None and "token_type_ids" in encoded:
                type_pieces.extend(np.asarray(row, dtype=np.int8) for row in encoded["token_type_ids"])
            if count_cut:  # the full lengths, for the log's count of rows cut and tokens lost
                uncut = tokenizer(firsts, seconds, truncation=False, verbose=False)["input_ids"]
                sources.extend(len(row) for row in uncut)
        arrays = {"source_lengths": np.asarray(sources, dtype=np.int64)} if count_cut else {}
    if type_pieces and not any(p.any() for p in type_pieces):
        type_pieces = []  # all zeros (RoBERTa-style pairs): the model's default, nothing to pass
    lengths = np.array([len(p) for p in pieces], dtype=np.int64)
    arrays["offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    arrays["ids"] = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
    arrays["type_ids"] = np.concatenate(type_pieces) if type_pieces else None
    return {k: v for k, v in arrays.items() if v is not None}


def _read_cache(path: Path, full_key: str, texts: int) -> Optional[dict[str, np.ndarray]]:
    """A cache entry's arrays; None (and a warning) when it is unreadable or does not match."""
    # The entry records the key it was built for and a checksum of its content: a file rewritten
    # with other (valid) ids, or one left by another tokenizer, is rebuilt, never used.
    try:
        with np.load(path) as cached:
            arrays = {k: cached[k] for k in CACHED_ARRAYS if k in cached.files}
            stored_key = str(cached["key"]) if "key" in cached.files else None
            stored_sum = str(cached["checksum"]) if "checksum" in cached.files else None
        ids, offsets = arrays["ids"], arrays["offsets"]
        windows_ = arrays.get("row_of_window")
        rows = len(offsets) - 1 if windows_ is None else len(windows_)
        if (
            stored_key == full_key
            and stored_sum == content_sha256(*arrays.values())
            and len(arrays["source_lengths"]) == texts
            and rows == len(offsets) - 1
            and (windows_ is not None or rows == texts)
            and offsets[-1] == len(ids)
        ):
            return arrays
        warn(f"token cache {path} does not match its key or checksum: rebuilding it")
    except Exception:  # noqa: BLE001 - corrupt or truncated (BadZipFile, OSError, KeyError, ...): rebuilt
        warn(f"token cache {path} is unreadable: rebuilding it")
    return None


def _write_cache(path: Path, full_key: str, arrays: dict[str, np.ndarray]) -> None:
    ordered = {k: arrays[k] for k in CACHED_ARRAYS if k in arrays}
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                key=np.array(full_key),
                checksum=np.array(content_sha256(*ordered.values())),
                **ordered,
            )


def content_sha256(*arrays: np.ndarray) -> str:
    """sha256 of arrays' dtypes, shapes and bytes: a cache entry's checksum of its content."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
