"""Messages for the person at the terminal: progress lines that keep progress bars intact, warnings, and a
quiet end when the reader of stdout goes away."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from typing import Iterator


def say(message: str) -> None:
    """Print a progress line above any running progress bar (tqdm's write keeps the bars intact)."""
    from tqdm.auto import tqdm

    tqdm.write(message)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _is_broken_pipe(err: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, BrokenPipeError) or (isinstance(current, OSError) and current.errno == errno.EPIPE):
            return True
        current = current.__cause__ or current.__context__
    return False


@contextlib.contextmanager
def quiet_broken_pipe() -> Iterator[None]:
    """End quietly when stdout's reader has gone (``lorabudget presets | head``, ``predict --output - | true``).

    A closed pipe is the reader saying it has what it wants, so the block's BrokenPipeError is swallowed and
    the code after the ``with`` runs (a command returns 0, as ``head``'s users expect). Output still buffered
    is flushed inside the block, so its error surfaces here rather than as Python's "Exception ignored"
    message at exit; stdout is then pointed at /dev/null so no later flush can fail again."""
    try:
        yield
        sys.stdout.flush()
    except BaseException as err:  # noqa: BLE001 - anything else is raised again unchanged
        if not _is_broken_pipe(err):
            raise
        _stdout_to_devnull()


def _stdout_to_devnull() -> None:
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a non-file (captured output)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
