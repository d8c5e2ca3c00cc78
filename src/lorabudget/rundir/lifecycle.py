"""Run directories in use: a lock, fresh runs that leave nothing behind, and a safe ``--overwrite``.

* **Lock.** A run directory being trained holds ``.lock`` (JSON: pid, host, start time). Another
  ``train``/``distill`` (plain, ``--resume`` or ``--overwrite``) on it refuses with one line. A lock
  left by a process that no longer runs on this host is taken over with a warning.
* **Fresh run.** The folder is created (atomically: ``mkdir`` fails if another command made it
  first) and removed again, with any parent folders made for it, when the command fails before
  training started (no ``metrics.jsonl`` yet).
* **Overwrite.** The new run trains in a sibling ``.NAME.overwrite`` while the old run stays locked
  and untouched; only when the new run has finished are the two swapped. A failed or interrupted
  new run is removed; one killed outright is left as ``.NAME.overwrite`` and cleared by the next
  ``--overwrite``.

Only the main process of a multi-process launch (``RANK`` 0 or unset) creates, locks or removes
anything; the others are handed the same path.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

from lorabudget.console import warn
from lorabudget.errors import LorabudgetError
from lorabudget.rundir import layout
from lorabudget.rundir.layout import RunDir


def is_main_launch_process() -> bool:
    """Rank 0 of a ``torchrun``/``accelerate launch`` job, or a plain single process."""
    return os.environ.get("RANK", "0") == "0"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


class RunLock:
    """``RUN/.lock`` holding this process's pid and host while it trains into ``RUN``."""

    def __init__(self, run_dir: Path, warn: Callable[[str], None] = warn):
        self.run_dir = Path(run_dir)
        self.warn = warn
        self.held = False

    @property
    def path(self) -> Path:
        return RunDir(self.run_dir).lock_path

    def holder(self) -> Optional[dict]:
        try:
            value = json.loads(self.path.read_text(encoding="utf-8"))
            return value if isinstance(value, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                holder = self.holder()
                if holder is None:  # released meanwhile
                    continue
                pid, host = holder.get("pid"), holder.get("host")
                if host == me["host"] and pid == me["pid"]:
                    return  # this process already holds it (e.g. a teacher trained inside distill)
                if host == me["host"] and isinstance(pid, int) and not pid_alive(pid):
                    self.warn(f"{self.run_dir}: taking over the lock of process {pid}, which no longer runs")
                    self.path.unlink(missing_ok=True)
                    continue
                who = f"process {pid} on {host}" if pid else "another process (unreadable lock)"
                raise LorabudgetError(
                    f"{self.run_dir} is in use by {who}; wait for it to finish (or delete {self.path} "
                    "if that process is gone)"
                ) from None
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(dict(me, time=time.strftime("%Y-%m-%dT%H:%M:%S")), fh)
            self.held = True
            return
        raise LorabudgetError(f"could not take the lock {self.path}; try again")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def check_not_in_use(run_dir: Path, action: str) -> None:
    """Refuse to write into ``run_dir`` while a live process holds its lock (training it, or replacing it
    with ``--overwrite``: the swap at the end would delete what was written meanwhile)."""
    holder = RunLock(run_dir).holder()
    if holder is None:
        return
    pid, host = holder.get("pid"), holder.get("host")
    here = socket.gethostname()
    if host == here and (pid == os.getpid() or (isinstance(pid, int) and not pid_alive(pid))):
        return  # this process, or a lock left by a process that is gone
    who = f"process {pid} on {host}" if pid else "another process (unreadable lock)"
    raise LorabudgetError(
        f"{run_dir} is in use by {who} (training, or being replaced with --overwrite); {action} would be lost "
        "or mixed with the new run: wait for it to finish"
    )


# What a command must never write over inside a run directory: its records and the files its weights and
# training state live in, and the report and model card the commands rewrite (an output written there would
# be lost). Outputs that are the commands' own (predictions.csv, figures, the onnx/ export predict refreshes)
# are not listed.
_RUN_RECORDS = {
    layout.CONFIG: "its config",
    layout.BUDGET: "its budget record",
    layout.METRICS: "its training metrics",
    layout.SUMMARY: "its summary and weight checksums",
    layout.EVAL: "its latest evaluation",
    layout.PREDICTIONS_SUMMARY: "its predictions record",
    layout.LOCK: "its lock",
    layout.REPORT: "its report",
    layout.MODEL_CARD: "its model card",
}
_RUN_FOLDERS = {
    layout.ADAPTER: "its trained weights",
    layout.CHECKPOINT: "its training checkpoint",
    f".{layout.CHECKPOINT}.old": "its training checkpoint",
    layout.TOKENIZER: "its tokenizer",
    layout.EVALS: "its evaluation records",
}


def check_not_run_file(output: Path, what: str = "--output") -> None:
    """Refuse, in one line, an output path that would replace a run directory's records, weights,
    checkpoint, tokenizer or the run directory itself, in any run directory above it (links resolved:
    a link into a run is the run's file)."""
    resolved = Path(output).expanduser().resolve()
    for folder in (resolved, *resolved.parents):
        if not RunDir(folder).is_run():
            continue
        parts = resolved.relative_to(folder).parts
        if not parts:
            role = "the run directory itself"
        elif len(parts) == 1 and parts[0] in _RUN_RECORDS:
            role = _RUN_RECORDS[parts[0]]
        elif parts[0] in _RUN_FOLDERS:
            role = _RUN_FOLDERS[parts[0]]
        else:
            continue
        shown = f"{output} (-> {resolved})" if Path(output).absolute() != resolved else str(output)
        raise LorabudgetError(
            f"{what} {shown} would replace {role} in the run directory {folder}; choose a path outside the "
            "run's records and weights"
        )


def check_can_create(path: Path) -> None:
    """Fail now, before any work, if ``path`` (a file or folder to create) cannot be written."""
    import tempfile

    path = Path(path)
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise LorabudgetError(f"cannot write {path}: {parent} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".lorabudget-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise LorabudgetError(f"cannot write {path}: {parent} is not writable ({err.strerror})") from None


def _make_fresh(path: Path) -> list[Path]:
    """Create ``path`` (it must not exist); return the folders created, outermost first."""
    made = []
    parent = path.parent
    while not parent.exists():
        made.append(parent)
        parent = parent.parent
    made.reverse()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path)
    except FileExistsError:
        raise LorabudgetError(
            f"run directory {path} exists; pass --overwrite to replace it or --resume to continue it"
        ) from None
    return made + [path]


def _remove_made(made: list[Path]) -> None:
    if made:
        shutil.rmtree(made[-1], ignore_errors=True)
    for folder in reversed(made[:-1]):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if still empty


def requested_run_dir(folder: Path) -> Path:
    """The run directory a run trained in ``folder`` ends up in: the one asked for, where ``folder``
    is the hidden sibling an ``--overwrite`` trains in (``PARENT/.NAME.overwrite``, swapped in at the
    end: :func:`run_directory`), else ``folder`` itself."""
    folder = Path(folder)
    name = folder.name
    if name.startswith(".") and name.endswith(".overwrite") and len(name) > len("..overwrite"):
        asked = folder.parent / name[1 : -len(".overwrite")]
        if RunDir(asked).is_run():  # the run being replaced is still there until the swap
            return asked
    return folder


@contextlib.contextmanager
def run_directory(run_dir: Path, overwrite: bool = False, resume: bool = False) -> Iterator[Path]:
    """Yield the folder to train into, locked for this process; see the module docstring."""
    run_dir = Path(run_dir)
    if not is_main_launch_process():
        yield run_dir.parent / f".{run_dir.name}.overwrite" if overwrite and run_dir.exists() else run_dir
        return
    if resume:
        lock = RunLock(run_dir)
        lock.acquire()
        try:
            yield run_dir
        finally:
            lock.release()
        return
    if not run_dir.exists():
        made = _make_fresh(run_dir)
        lock = RunLock(run_dir)
        try:
            lock.acquire()
            yield run_dir
        except BaseException:
            if not RunDir(run_dir).training_started():
                _remove_made(made)
            raise
        finally:
            lock.release()
        return
    if not overwrite:
        raise LorabudgetError(
            f"run directory {run_dir} exists; pass --overwrite to replace it or --resume to continue it"
        )
    if not RunDir(run_dir).is_run():
        raise LorabudgetError(f"{run_dir} exists and is not a lorabudget run directory; choose another --output")
    old_lock = RunLock(run_dir)
    old_lock.acquire()
    new = run_dir.parent / f".{run_dir.name}.overwrite"
    try:
        if new.exists():  # left by an --overwrite that was killed: clear it (unless still in use)
            RunLock(new).acquire()
            shutil.rmtree(new)
        os.mkdir(new)
        new_lock = RunLock(new)
        new_lock.acquire()
        try:
            yield new
        except BaseException:
            shutil.rmtree(new, ignore_errors=True)
            raise
        parked = run_dir.parent / f".{run_dir.name}.replaced"
        shutil.rmtree(parked, ignore_errors=True)
        os.replace(run_dir, parked)
        os.replace(new, run_dir)
        shutil.rmtree(parked, ignore_errors=True)
        old_lock.held = False  # its lock file went with the old run
        new_lock.run_dir = run_dir  # the new run's lock moved with it
        new_lock.release()
    finally:
        old_lock.release()
