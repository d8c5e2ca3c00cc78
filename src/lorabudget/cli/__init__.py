"""The ``lorabudget`` command line, a thin shell over :mod:`lorabudget.api`: plan, train, search, distill,
evaluate, predict, classify, serve, export, presets, cache, report, compare, env.

Exit codes: 0 success, 2 bad input (one line on stderr), 3 over budget, 4 training diverged (non-finite
loss or gradient norm), 130 interrupted.
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from lorabudget.console import quiet_broken_pipe
from lorabudget.errors import BudgetExceededError, LorabudgetError
from lorabudget.io import environment_error
from lorabudget.signals import Terminated, handle_termination


def main(argv: Optional[Sequence[str]] = None) -> int:
    from lorabudget.cli.parser import build_parser

    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        # SIGTERM/SIGHUP raise Terminated: cleanups run, locks are released. A reader that closed stdout
        # (`| head`) has what it wanted: a quiet exit 0.
        with handle_termination(), quiet_broken_pipe():
            return args.func(args)
        return 0
    except LorabudgetError as err:
        if args.debug:
            raise
        print(f"lorabudget {args.command}: error: {err}", file=sys.stderr)
        return 3 if isinstance(err, BudgetExceededError) else getattr(err, "exit_code", 2)
    except KeyboardInterrupt:
        print(f"lorabudget {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated as err:
        print(f"lorabudget {args.command}: {err}", file=sys.stderr)
        return err.exit_code
    except Exception as err:  # noqa: BLE001 - only environment errors (full disk, read-only ...) are reworded
        message = environment_error(err)
        if message is None or args.debug:
            raise
        print(f"lorabudget {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
