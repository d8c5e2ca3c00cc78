"""The Python API: plan, train, distill, search, compare and use runs from a notebook or a script.

The command line is a thin shell over these functions: each command parses its arguments and calls
one of them, so both resolve a config the same way, keep the same guards and write the same files.
Errors are :class:`~lorabudget.errors.LorabudgetError` (one line, raised, never ``SystemExit``).

    import lorabudget as lb

    lb.plan("minilm-cpu-10k").trainable                      # 6148, counted exactly, no weights read
    run = lb.train("minilm-cpu-10k", data=df, output="runs/news")
    run.evaluate(test_df).accuracy
    run.predict("Stocks fell sharply").labels                # ['Business']
"""

from lorabudget.api.planning import Plan, plan
from lorabudget.api.resolve import resolve_config
from lorabudget.api.runs import Evaluation, Run, load_run
from lorabudget.api.studies import Comparison, Search, compare, search
from lorabudget.api.training import distill, train
from lorabudget.inference.runs import Predictions

__all__ = [
    "Comparison",
    "Evaluation",
    "Plan",
    "Predictions",
    "Run",
    "Search",
    "compare",
    "distill",
    "load_run",
    "plan",
    "resolve_config",
    "search",
    "train",
]
