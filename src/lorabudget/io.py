"""Atomic file output (write to a temporary file in the same folder, then rename over the target), the cache
root and lock files.

An interrupted or failed command therefore never leaves a half-written output behind. The
temporary files are created private (mode 0600/0700); before the rename they get the mode a plain
``open()``/``mkdir()`` would have given them under the process's umask. An output that is not a
regular file (a character device such as ``/dev/null``, a FIFO, ``/dev/stdout``) is written through,
never renamed over: replacing a device node with a regular file would break the system.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from lorabudget.errors import LorabudgetError

PathLike = Union[str, Path]


def current_umask() -> int:
    """The process's umask (read from /proc where possible: setting it to read it is not thread-safe)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def writes_through(path: PathLike) -> bool:
    """Whether ``path`` is an existing output that is not a regular file (a device, a FIFO, a socket, or
    a link into ``/dev`` or ``/proc`` such as ``/dev/stdout``): written in place, never replaced."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    if stat.S_ISDIR(mode):
        return False
    if not stat.S_ISREG(mode):
        return True
    if path.is_symlink():
        target = str(path.resolve())
        return target.startswith(("/proc/", "/dev/")) or str(path.absolute()).startswith("/dev/")
    return False


# Failures of the machine rather than of the program: reported as one line (exit 2), never a traceback.
ENVIRONMENT_ERRNOS = {
    code
    for code in (
        errno.ENOSPC,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.ENOTDIR,
        getattr(errno, "EDQUOT", None),
        errno.EFBIG,
        errno.EIO,
    )
    if code is not None
}


def environment_error(err: BaseException) -> str | None:
    """One line describing a full disk, read-only file system, missing permission or a path under a file
    found in ``err`` or its causes, else None. Libraries written in Rust (tokenizers, safetensors) raise
    plain exceptions whose text holds the system's message, so that text is recognised too."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in ENVIRONMENT_ERRNOS:
            what = current.strerror or os.strerror(current.errno)
            return f"{_short(current.filename)}: {what}" if current.filename else f"{what} while writing output"
        current = current.__cause__ or current.__context__
    text = str(err)
    for code in sorted(ENVIRONMENT_ERRNOS):
        if os.strerror(code) in text:
            return f"{os.strerror(code)} while writing output ({type(err).__name__})"
    return None


def _short(value: object, limit: int = 200) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it is renamed to ``path`` only if the block succeeds."""
    path = Path(path)
    if writes_through(path):
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        mask = current_umask()
        # Writers such as safetensors create private files: give everything the umask's modes.
        for folder, _, files in os.walk(tmp):
            os.chmod(folder, 0o777 & ~mask)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o666 & ~mask)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def default_cache_dir(configured: Optional[str] = None) -> Path:
    """lorabudget's cache root: ``configured`` (``data.cache_dir``), else ``$LORABUDGET_CACHE``, else
    ``$XDG_CACHE_HOME/lorabudget``, else ``~/.cache/lorabudget``."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("LORABUDGET_CACHE"):
        return Path(os.environ["LORABUDGET_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):  # the XDG spec: a relative value is invalid and ignored
        return Path(xdg) / "lorabudget"
    return Path.home() / ".cache" / "lorabudget"


@contextlib.contextmanager
def exclusive_lock(path: PathLike, waiting: Optional[Callable[[], None]] = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the lock file ``path`` for the block; ``waiting()`` is called once
    when another process holds it (before blocking until it is free).

    The file is created when missing and never truncated, and a symbolic link there is refused rather
    than followed: a link planted in a shared cache must not let this process create or clobber its
    target."""
    import fcntl

    path = Path(path)
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise LorabudgetError(f"{path} is a symbolic link, not a lock file: remove it and try again") from None
        raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                waiting()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def atomic_write_text(path: PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
