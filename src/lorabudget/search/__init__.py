"""``lorabudget search``: the search space, the Optuna study and its storage, the worker that trains trials, and
the outputs (``best.yaml``, ``trials.csv``, ``search.md``). Depends on everything below it but the CLI."""
