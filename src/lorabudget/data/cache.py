"""lorabudget's on-disk caches (``lorabudget cache info|clear``): the folders under the cache root
(``data.cache_dir``, ``$LORABUDGET_CACHE`` or ``~/.cache/lorabudget``) and what they hold."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from lorabudget.data.batching import TOKENS_FOLDER
from lorabudget.io import default_cache_dir
from lorabudget.model.packaged import MODELS_FOLDER

# The folders lorabudget writes under the cache root. Only these are cleared: the root may be a folder
# the user chose ($LORABUDGET_CACHE) that holds other things too.
TEACHER_LOGITS_FOLDER = "teacher_logits"  # distillation teachers' logits (training/distill.py)
# MODELS_FOLDER: packaged models unpacked from split zips (model/packaged.py); unpacked again when needed.
CACHE_FOLDERS = (TOKENS_FOLDER, TEACHER_LOGITS_FOLDER, MODELS_FOLDER)


@dataclass
class CacheFolder:
    path: Path
    files: int
    bytes: int


def cache_folders(root: Path | None = None) -> list[CacheFolder]:
    """Each of lorabudget's cache folders with its file count and size (zero when absent)."""
    root = Path(root) if root is not None else default_cache_dir()
    found = []
    for name in CACHE_FOLDERS:
        folder = root / name
        files = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
        found.append(CacheFolder(folder, len(files), sum(p.stat().st_size for p in files)))
    return found


def clear_caches(root: Path | None = None) -> list[CacheFolder]:
    """Remove lorabudget's cache folders; returns what they held."""
    held = cache_folders(root)
    for folder in held:
        if folder.path.is_dir():
            shutil.rmtree(folder.path)
    return held


def folder_size(path: str | Path) -> int:
    """Bytes of the files under ``path`` (links not followed); 0 when it does not exist."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                stat = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            total += stat.st_size
    return total


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} TB"  # pragma: no cover
