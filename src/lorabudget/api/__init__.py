"""The Python API: plan, train, distill, search, compare and use runs from a notebook or a script.

The command line is a thin shell over these functions: each command parses its arguments and calls
one of them, so both resolve a config the same way, keep the same guards and write the same files.
Mistakes in the input (a missing file, a bad config key, a config over its budget) raise
:class:`~lorabudget.errors.LorabudgetError` with the one line the command prints (never ``SystemExit``);
an argument of the wrong Python type raises ``TypeError`` naming what was given.

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
from lorabudget.inference.predictions import Predictions

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
