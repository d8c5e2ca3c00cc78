"""User-facing errors.

Anything raised as :class:`LorabudgetError` is a problem with the user's input or environment
(a missing file, a bad config key, a budget overrun). The CLI prints its message as one line and
exits non-zero; tracebacks are reserved for bugs (or ``--debug``).
"""


class LorabudgetError(Exception):
    """An error caused by the user's input or environment, reported without a traceback."""


class BudgetExceededError(LorabudgetError):
    """The planned trainable-parameter count is over the configured budget."""
