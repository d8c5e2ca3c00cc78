"""lorabudget's on-disk caches (``lorabudget cache info|clear``): the folders under the cache root
(``data.cache_dir``, ``$LORABUDGET_CACHE``, ``$XDG_CACHE_HOME/lorabudget`` or ``~/.cache/lorabudget``) and
what they hold."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from lorabudget.data.batching import TOKENS_FOLDER
from lorabudget.data.prefix_store import PREFIX_FOLDER
from lorabudget.io import default_cache_dir
from lorabudget.model.packaged import MODELS_FOLDER, unpack_lock

# The folders lorabudget writes under the cache root. Only these are cleared: the root may be a folder
# the user chose ($LORABUDGET_CACHE) that holds other things too.
TEACHER_LOGITS_FOLDER = "teacher_logits"  # distillation teachers' logits (training/distill.py)
# MODELS_FOLDER: packaged models unpacked from split zips (model/packaged.py); unpacked again when needed.
# PREFIX_FOLDER: hidden states of the frozen layers below the lowest adapted one (training/prefix_cache.py).
CACHE_FOLDERS = (TOKENS_FOLDER, TEACHER_LOGITS_FOLDER, MODELS_FOLDER, PREFIX_FOLDER)


@dataclass
class CacheFolder:
    path: Path
    files: int
    bytes: int
    link: Optional[str] = None  # the target when the folder is a symbolic link (clearing removes the link only)

    def line(self, cleared: bool = False) -> str:
        """What ``cache info`` (or ``cache clear``, with ``cleared``) says about the folder."""
        if cleared and self.link is not None:
            return f"{self.path} removed (a link; its target {self.link} was kept)"
        where = f" (a link to {self.link})" if self.link is not None else ""
        return f"{self.path}{where} {'removed' if cleared else 'holds'} {self.files:,} files, {human_size(self.bytes)}"


def cache_folders(root: Path | None = None) -> list[CacheFolder]:
    """Each of lorabudget's cache folders with its file count and size (zero when absent); a folder that
    is a link is counted through it, links inside it are not followed."""
    root = Path(root) if root is not None else default_cache_dir()
    found = []
    for name in CACHE_FOLDERS:
        folder = root / name
        files, size = _count(folder) if folder.is_dir() else (0, 0)
        found.append(CacheFolder(folder, files, size, _link_target(folder)))
    return found


def clear_caches(root: Path | None = None, waiting: Optional[Callable[[], None]] = None) -> list[CacheFolder]:
    """Remove lorabudget's cache folders; returns what they held. Waits for an unpack in progress (its lock)
    and never follows a link: a cache folder that is a link loses the link, never its target's files."""
    root = Path(root) if root is not None else default_cache_dir()
    if not root.is_dir():
        return cache_folders(root)
    held = []
    with unpack_lock(root, waiting or (lambda: _waiting_for_unpack(root))):
        for name in CACHE_FOLDERS:
            folder = root / name
            link = _link_target(folder)
            if link is not None:
                folder.unlink()
                held.append(CacheFolder(folder, 0, 0, link))
                continue
            files, size = _count(folder) if folder.is_dir() else (0, 0)
            if folder.is_dir():
                shutil.rmtree(folder, onerror=_ignore_vanished)
            elif folder.exists():  # a stray file under a cache folder's name blocks the cache: ours to remove
                folder.unlink()
            held.append(CacheFolder(folder, files, size))
    return held


def _waiting_for_unpack(root: Path) -> None:
    print(f"waiting for a packaged model being unpacked into {root} to finish ...", file=sys.stderr, flush=True)


def _link_target(path: Path) -> Optional[str]:
    try:
        return os.readlink(path)
    except OSError:  # not a link, or absent
        return None


def _ignore_vanished(function, path, exc_info) -> None:
    # Another process (a training run writing token caches) may remove its own temporary files meanwhile.
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


def _count(folder: Path) -> tuple[int, int]:
    """(files, bytes) under ``folder``; links inside it are not followed, files that vanish are skipped."""
    files = size = 0
    for parent, _, names in os.walk(folder):
        for name in names:
            try:
                stat = os.lstat(os.path.join(parent, name))
            except OSError:
                continue
            files += 1
            size += stat.st_size
    return files, size


def folder_size(path: str | Path) -> int:
    """Bytes of the files under ``path`` (links not followed); 0 when it does not exist."""
    return _count(Path(path))[1]


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} TB"  # pragma: no cover
