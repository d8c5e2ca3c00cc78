"""Messages for the person at the terminal: progress lines that keep progress bars intact, and warnings."""

from __future__ import annotations

import sys


def say(message: str) -> None:
    """Print a progress line above any running progress bar (tqdm's write keeps the bars intact)."""
    from tqdm.auto import tqdm

    tqdm.write(message)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)
