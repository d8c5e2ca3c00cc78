"""User-facing errors.

Anything raised as :class:`LorabudgetError` is a problem with the user's input or environment
(a missing file, a bad config key, a budget overrun). The CLI prints its message as one line and
exits non-zero; tracebacks are reserved for bugs (or ``--debug``).
"""


def first_line(err: BaseException) -> str:
    """The first line of an exception's text (its type's name when it has none), for one-line messages."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class LorabudgetError(Exception):
    """An error caused by the user's input or environment, reported without a traceback."""


class BudgetExceededError(LorabudgetError):
    """The planned trainable-parameter count is over the configured budget."""


class TrainingStopped(Exception):
    """Raised by an ``on_eval`` callback of :func:`lorabudget.training.loop.train` to end a run early.

    A control-flow signal between the caller's hook and the loop, not a user error: it is not a
    :class:`LorabudgetError`, so a handler of user errors never swallows it.

    The run is finished with the best checkpoint so far (adapter, eval.json, summary.json with
    ``stopped_early``), then the exception is raised again to the caller with ``summary`` set.
    """

    summary: dict | None = None


class TrainingDiverged(LorabudgetError):
    """A non-finite loss or gradient norm: training stopped, the best finite checkpoint was kept.

    ``kept`` says what was kept (the CLI rewords it when an ``--overwrite`` run is discarded).
    """

    exit_code = 4

    def __init__(self, step: int, last_finite_loss: float | None, kept: str = ""):
        super().__init__(step, last_finite_loss, kept)
        self.step, self.last_finite_loss, self.kept = step, last_finite_loss, kept

    def __str__(self) -> str:
        last = "none" if self.last_finite_loss is None else f"{self.last_finite_loss:.4f}"
        return (
            f"training diverged at step {self.step}: non-finite loss or gradient norm (last finite loss {last}); "
            f"stopped, {self.kept}; try a lower training.learning_rate"
        )
