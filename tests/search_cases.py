"""Shared by the search tests: a tiny search space, a base config that searches it, and readers of a
search's trials.csv and study. A module of test helpers, not a test file."""

from __future__ import annotations

import csv
from pathlib import Path

import yaml

# Tiny RoBERTa (hidden 32, 3 layers): LoRA costs 64*r per module and layer, the linear head 132.
SPACE = {
    "r": [1, 2, 4],
    "modules": {"subsets_of": ["query", "value"]},
    "layers": ["all", "top"],
    "learning_rate": {"low": 5.0e-3, "high": 3.0e-2, "log": True},
}


def search_config_file(make_config, tmp_path: Path, budget: int = 600, name: str = "tiny", **training) -> Path:
    values = make_config(
        tmp_path / "cache",
        name=name,
        model={"labels": None},
        head={"type": "linear", "pooling": "mean"},
        training={
            "max_steps": 4,
            "eval_every": 2,
            "learning_rate": 2e-2,
            "threads": 1,
            "epochs": 3.0,
            **training,
        },
        budget={"max_trainable_params": budget},
        search=SPACE,
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def trial_rows(out: Path) -> list[dict]:
    with open(out / "trials.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def load_study(out_or_url, name: str):
    import optuna

    from lorabudget.search.study import open_storage

    url = out_or_url if isinstance(out_or_url, str) else f"sqlite:///{Path(out_or_url) / 'study.db'}"
    return optuna.load_study(study_name=name, storage=open_storage(url))
