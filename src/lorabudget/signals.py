"""SIGTERM and SIGHUP as a clean stop.

``timeout``, Docker, Kubernetes and Slurm stop a process with SIGTERM (a closed terminal sends SIGHUP).
Python's default is to die on the spot: no ``finally`` runs, so a run's lock and the temporary files of
atomic writes stay behind. :func:`handle_termination` turns the signal into :class:`Terminated`, raised
in the main thread like ``KeyboardInterrupt``, so every ``except BaseException`` cleanup runs (atomic
outputs remove their temporary files, run directories release their lock).

Inside :func:`deferred_termination` (the training loop) the signal only sets a flag; the loop looks at
it at each step boundary, writes a checkpoint there (cheap: trainable weights and optimizer state) and
then raises :class:`Terminated` itself, so the run can be continued with ``--resume``. A second signal
while a stop is pending raises at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator, Optional

HANDLED = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)


class Terminated(BaseException):
    """The process was asked to stop by a signal; a ``BaseException`` like ``KeyboardInterrupt``."""

    def __init__(self, signum: int, detail: str = ""):
        super().__init__(signum, detail)
        self.signum, self.detail = signum, detail

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 143 for SIGTERM, 129 for SIGHUP

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    def __str__(self) -> str:
        return f"stopped by {self.name}" + (f"; {self.detail}" if self.detail else "")


_pending: Optional[int] = None  # a signal received inside deferred_termination
_deferring = 0


def _on_signal(signum: int, frame) -> None:
    global _pending
    if _deferring and _pending is None:
        _pending = signum
        return
    raise Terminated(signum)


@contextlib.contextmanager
def handle_termination() -> Iterator[None]:
    """SIGTERM/SIGHUP raise :class:`Terminated` in the main thread while the block runs (a no-op off
    the main thread, where Python cannot set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _on_signal) for s in HANDLED}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def deferred_termination() -> Iterator[None]:
    """Inside the block a signal only marks a stop as pending (see :func:`stop_pending`)."""
    global _deferring, _pending
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring:
            _pending = None


def stop_pending() -> Optional[int]:
    """The signal number of a stop requested inside :func:`deferred_termination`, else None."""
    return _pending
