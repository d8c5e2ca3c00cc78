"""The on-disk store of a frozen prefix's output: per tokenized row, the hidden states entering layer k
at the row's own length, memory-mapped (``<cache root>/prefix/<key>.npy`` beside ``<key>.json``).

The JSON records the key the states were built for and a checksum of the whole ``.npy`` file: a
store whose key differs (a file copied from another entry), whose checksum does not match (tampered
with) or that cannot be read (truncated) is rebuilt, never used. Both files are written atomically,
the states first, so a reader never sees a record without its states.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from lorabudget.console import warn
from lorabudget.io import atomic_path

PREFIX_FOLDER = "prefix"  # under the cache root
PREFIX_VERSION = "1"
_CHUNK = 1 << 24
_DTYPES = ("float32", "bfloat16", "float16")


def prefix_key(parts: dict) -> str:
    """The store's key: a hash of what decides the states (model weights below k, k, token rows, precision)."""
    return hashlib.sha256(json.dumps({"version": PREFIX_VERSION, **parts}, sort_keys=True).encode()).hexdigest()


def store_paths(cache_root: Path, key: str) -> tuple[Path, Path]:
    stem = Path(cache_root) / PREFIX_FOLDER / key[:32]
    return stem.with_suffix(".npy"), stem.with_suffix(".json")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


class PrefixStore:
    """Hidden states of many rows, flat: row ``i`` is ``states[offsets[i]:offsets[i+1]]`` [length, hidden]."""

    def __init__(self, states: np.ndarray, offsets: np.ndarray, path: Path, dtype: str = "float32"):
        self.states = states  # float32 [total tokens, hidden], memory-mapped
        self.offsets = offsets
        self.path = path
        # The dtype the states entered layer k in when they were built (bf16 runs: possibly bfloat16),
        # which every read gives back, so layer k sees exactly what it saw then.
        self.dtype = getattr(torch, dtype) if dtype in _DTYPES else torch.float32

    @property
    def bytes(self) -> int:
        return int(self.states.nbytes)

    def padded(self, index: torch.Tensor, width: int, device=None) -> torch.Tensor:
        """The rows ``index`` as a batch [B, width, hidden], zeros after each row's end (masked positions)."""
        rows = index.tolist()
        out = np.zeros((len(rows), width, self.states.shape[1]), dtype=np.float32)
        for j, i in enumerate(rows):
            start, end = int(self.offsets[i]), int(self.offsets[i + 1])
            out[j, : end - start] = self.states[start:end]
        tensor = torch.from_numpy(out).to(self.dtype)
        return tensor.to(device) if device is not None else tensor


def is_warm(cache_root: Path, key: str) -> bool:
    """Whether a store for ``key`` is on disk (its record names the key; the checksum is checked on open)."""
    states, record = store_paths(cache_root, key)
    try:
        return states.is_file() and json.loads(record.read_text(encoding="utf-8")).get("key") == key
    except (OSError, ValueError):
        return False


def open_store(cache_root: Path, key: str, offsets: np.ndarray, hidden_size: int) -> Optional[PrefixStore]:
    """The store for ``key`` when it is on disk and sound; None (after a warning when a file was there
    but wrong) when it must be built."""
    states_path, record_path = store_paths(cache_root, key)
    if not states_path.exists() and not record_path.exists():
        return None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        states = np.load(states_path, mmap_mode="r")
        sound = (
            record.get("key") == key
            and states.dtype == np.float32
            and states.shape == (int(offsets[-1]), hidden_size)
            and record.get("sha256") == file_sha256(states_path)
        )
    except Exception:  # noqa: BLE001 - unreadable or truncated (ValueError, OSError, ...): rebuilt below
        warn(f"prefix cache {states_path} is unreadable: rebuilding it")
        return None
    if not sound:
        warn(f"prefix cache {states_path} does not match its key or checksum: rebuilding it")
        return None
    return PrefixStore(states, offsets, states_path, str(record.get("dtype", "float32")))


def write_store(
    cache_root: Path,
    key: str,
    offsets: np.ndarray,
    hidden_size: int,
    fill: Callable[[np.ndarray], Optional[str]],
) -> PrefixStore:
    """Build the store for ``key``: ``fill(states)`` writes every row into the memory-mapped array and
    returns the dtype the states had (``float32`` when it returns None); they are stored as float32."""
    states_path, record_path = store_paths(cache_root, key)
    shape = (int(offsets[-1]), hidden_size)
    with atomic_path(states_path, suffix=".npy") as tmp:
        if shape[0] == 0:  # no rows: nothing to map (an empty file cannot be memory-mapped)
            dtype = fill(np.zeros(shape, dtype=np.float32)) or "float32"
            with open(tmp, "wb") as fh:  # a path would get ".npy" appended
                np.save(fh, np.zeros(shape, dtype=np.float32))
        else:
            states = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
            dtype = fill(states) or "float32"
            states.flush()
            del states
    with atomic_path(record_path, suffix=".json") as tmp:
        record = {
            "key": key,
            "sha256": file_sha256(states_path),
            "rows": len(offsets) - 1,
            "hidden": hidden_size,
            "dtype": dtype,
        }
        tmp.write_text(json.dumps(record), encoding="utf-8")
    return PrefixStore(np.load(states_path, mmap_mode="r"), offsets, states_path, dtype)
