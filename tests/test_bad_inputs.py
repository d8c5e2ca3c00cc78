"""Bad inputs, one table: each config value, data file, head setting, seed or name that is refused must
exit with its documented code, print exactly one error line (no traceback), leave no file created or
changed that should not be, and leave a previous run intact. Misused and damaged runs are the table of
test_bad_run_use.py; a damaged frozen-prefix cache is no error: its own table (``CACHE_CASES``, below)
runs with one warning line per damaged file and ends as a run on a sound cache does.

Every case runs in-process through ``lorabudget.cli.main`` inside a fresh workspace holding a copy
of one finished run, a config and data files (tests/bad_input_workspace.py).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml
from bad_input_workspace import (
    DIVERGE,
    Case,
    T,
    Workspace,
    alias_bomb,
    diverged_run_is_clean,
    no_overwrite_leftovers,
    run_case,
    run_cli,
    truncate,
    write,
)
from prefix_cases import top_layer

from lorabudget.cli import main
from lorabudget.data.prefix_store import PREFIX_FOLDER

CASES = [
    # --- config values
    Case(
        "nan-learning-rate",
        lambda w: T(w, "--output", "new", "--set", "training.learning_rate=.nan"),
        "not a finite number",
    ),
    Case(
        "inf-learning-rate",
        lambda w: T(w, "--output", "new", "--set", "training.learning_rate=.inf"),
        "not a finite number",
    ),
    Case("nan-in-plan", lambda w: ["plan", str(w.cfg), "--set", "adapter.alpha=.nan"], "not a finite number"),
    Case(
        "nan-string-value",
        lambda w: T(w, "--output", "new", "--set", "training.weight_decay=nan"),
        "not a finite number",
    ),
    Case(
        "overwrite-with-nan-keeps-old-run",
        lambda w: T(
            w, "--output", "run", "--overwrite", "--set", "training.learning_rate=.nan", "--set", "training.max_steps=3"
        ),
        "not a finite number",
    ),
    Case(
        "unknown-key", lambda w: T(w, "--output", "new", "--set", "training.lr=1"), "unknown config key 'training.lr'"
    ),
    Case("set-without-equals", lambda w: T(w, "--output", "new", "--set", "training.seed"), "--set expects KEY=VALUE"),
    Case("unknown-module", lambda w: ["plan", str(w.cfg), "--set", "adapter.modules=[qkv]"], "unknown module 'qkv'"),
    Case(
        "layer-out-of-range",
        lambda w: T(w, "--output", "new", "--set", "adapter.layers=[7]"),
        "layer 7 is out of range",
    ),
    Case(
        "prefix-cache-true-with-adapters-in-layer-0",
        lambda w: T(w, "--output", "new", "--set", "training.cache_frozen_layers=true"),
        "training.cache_frozen_layers: true cannot be used here: adapter.method 'lora' trains parameters in layer 0",
    ),
    Case(
        "prefix-cache-unknown-value",
        lambda w: T(w, "--output", "new", "--set", "training.cache_frozen_layers=sometimes"),
        "training.cache_frozen_layers",
    ),
    Case(
        "negative-checkpoint-every",
        lambda w: T(w, "--output", "new", "--set", "training.checkpoint_every=-1"),
        "checkpoint_every",
    ),
    # long texts (data.long_text): the stride is a count of shared tokens below a window's text tokens
    Case(
        "negative-chunk-stride",
        lambda w: T(w, "--output", "new", "--set", "data.long_text=chunks", "--set", "data.chunk_stride=-1"),
        "'data.chunk_stride': tokens shared by consecutive windows must be >= 0",
    ),
    Case(
        "chunk-stride-fills-the-window",
        lambda w: T(w, "--output", "new", "--set", "data.long_text=chunks", "--set", "data.chunk_stride=63"),
        "'data.chunk_stride': must be >= 0 and below the 62 text tokens of a 64-token window, got 63",
    ),
    Case(
        "long-text-unknown",
        lambda w: T(w, "--output", "new", "--set", "data.long_text=middle"),
        "'data.long_text': 'middle' is not allowed",
    ),
    Case(
        "over-budget",
        lambda w: T(w, "--output", "new", "--set", "budget.max_trainable_params=1000"),
        "exceed the budget",
        code=3,
    ),
    # --- the head; the tiny model's hidden size is 32
    Case(
        "head-rank-zero",
        lambda w: ["plan", str(w.cfg), "--set", "head.type=low_rank", "--set", "head.rank=0"],
        "'head.rank': must be >= 1, got 0",
    ),
    Case(
        "head-rank-with-linear",
        lambda w: ["plan", str(w.cfg), "--set", "head.rank=4"],
        "'head.rank' applies to head.type low_rank only",
    ),
    Case(
        "head-rank-with-auto",
        lambda w: ["plan", str(w.cfg), "--set", "head.type=auto", "--set", "head.rank=4"],
        "auto chooses its own rank",
    ),
    Case(
        "head-rank-not-below-hidden",
        lambda w: T(w, "--output", "new", "--set", "head.type=low_rank", "--set", "head.rank=32"),
        "'head.rank': 32 is not below the hidden size 32",
    ),
    Case(
        "head-init-names-with-full",
        lambda w: ["plan", str(w.cfg), "--set", "head.type=full", "--set", "head.init=names"],
        "'head.init': names needs a lorabudget head",
    ),
    Case(
        "head-init-prototypes-with-full",
        lambda w: T(w, "--output", "new", "--set", "head.type=full", "--set", "head.init=prototypes"),
        "'head.init': prototypes needs a lorabudget head",
    ),
    Case(
        "head-low-rank-fits-nowhere",
        lambda w: ["plan", str(w.cfg), "--set", "head.type=low_rank", "--set", "budget.max_trainable_params=200"],
        "no low_rank head fits",
    ),
    Case(
        "head-low-rank-unlimited-budget",
        lambda w: ["plan", str(w.cfg), "--set", "head.type=low_rank", "--set", "budget.max_trainable_params=null"],
        "no rank is the largest",
    ),
    Case(
        "head-type-unknown",
        lambda w: ["plan", str(w.cfg), "--set", "head.type=tiny"],
        "'head.type': 'tiny' is not allowed",
    ),
    Case("config-file-missing", lambda w: ["train", "missing.yaml", "--output", "new"], "neither a file nor a preset"),
    Case("config-not-yaml", lambda w: ["plan", "bad.yaml"], "not valid YAML", setup=write("bad.yaml", "a: [1, 2\n")),
    Case(
        "model-not-available",
        lambda w: T(w, "--output", "new", "--set", "model.name=no-such-org/no-such-model"),
        "--set model.name=/path/to/model",
    ),
    # --- training data (the run folder is made, then removed again: training never started)
    Case("data-missing", lambda w: T(w, "--output", "sub/new", "--data", "none.csv"), "data file not found"),
    Case("data-pickle-untrusted", lambda w: T(w, "--output", "new", "--data", "evil.pkl"), "--trust-pickle"),
    Case(
        "data-jsonl-bad-line",
        lambda w: T(w, "--output", "new", "--data", "bad.jsonl"),
        "line 3 is not valid JSON",
        setup=write("bad.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n{"text": "c", label: 2}\n'),
    ),
    Case(
        "data-json-not-object",
        lambda w: T(w, "--output", "new", "--data", "bad.jsonl"),
        "line 2 is not a JSON object",
        setup=write("bad.jsonl", '{"text": "a", "label": 0}\n[1, 2]\n'),
    ),
    Case(
        "data-csv-short-first-row",
        lambda w: T(w, "--output", "new", "--data", "short.csv"),
        "line 1 has 2 fields",
        setup=write("short.csv", "a b,0\nc d,1,x\ne f,2,y\ng h,3,z\n"),
    ),
    Case(
        "data-label-outside-classes",
        lambda w: T(w, "--output", "new", "--data", "labels.csv"),
        "outside the class set",
        setup=write("labels.csv", "text,label\nhello there,0\nworld,7\n"),
    ),
    # --- multi-label data
    Case(
        "multi-label-file-without-flag",
        lambda w: T(w, "--output", "new", "--data", "ml.csv"),
        "row 1 has several labels ('World|Sports' in column 'label'); pass --multi-label",
        setup=write("ml.csv", "text,label\nhello there,World\nworld cup,World|Sports\nscore,Sports\n"),
    ),
    Case(
        "multi-label-class-name-holds-separator",
        lambda w: T(w, "--output", "new", "--data", "ml.jsonl", "--multi-label", "--set", "model.labels=null"),
        "row 1: class name 'y|z' in column 'labels' contains the label separator",
        setup=write("ml.jsonl", '{"text": "a", "labels": ["x"]}\n{"text": "b", "labels": ["x", "y|z"]}\n'),
    ),
    Case(
        "multi-label-class-column-not-0-1",
        lambda w: T(
            w,
            "--output",
            "new",
            "--data",
            "cols.csv",
            "--multi-label",
            "--set",
            "model.labels=null",
            "--set",
            "data.label_columns=[a, b]",
        ),
        "row 1: column 'a' holds 'yes'; a class column (data.label_columns) holds 0 or 1",
        setup=write("cols.csv", "text,a,b\nhello,1,0\nworld,yes,1\n"),
    ),
    Case(
        "multi-label-bad-separator",
        lambda w: T(w, "--output", "new", "--data", "ml.csv", "--multi-label", "--set", "data.label_separator=/"),
        "'data.label_separator': must be one of",
        setup=write("ml.csv", "text,label\nhello,World/Sports\nworld,World\n"),
    ),
    Case(
        "label-columns-without-multi-label",
        lambda w: T(w, "--output", "new", "--data", "cols.csv", "--set", "data.label_columns=[a, b]"),
        "set model.problem_type=multi_label (--multi-label)",
        setup=write("cols.csv", "text,a,b\nhello,1,0\nworld,0,1\n"),
    ),
    *[
        Case(
            f"threshold-{name}",
            lambda w, value=value: ["predict", "run", "--input", "unlabelled.csv", "--threshold", value],
            "--threshold must be",
        )
        for name, value in (("zero", "0"), ("one", "1"), ("above-one", "1.5"), ("negative", "-0.1"), ("nan", "nan"))
    ],
    Case(
        "threshold-on-a-single-label-run",
        lambda w: ["predict", "run", "--input", "unlabelled.csv", "--threshold", "0.3"],
        "--threshold applies to multi-label runs",
    ),
    Case(
        "data-empty-file",
        lambda w: T(w, "--output", "new", "--data", "empty.csv"),
        "the file is empty",
        setup=write("empty.csv", ""),
    ),
    Case(
        "data-unknown-format",
        lambda w: T(w, "--output", "new", "--data", "d.xlsx"),
        "unknown data format",
        setup=write("d.xlsx", "x"),
    ),
    # --- training that fails after it started
    Case(
        "diverges",
        lambda w: T(w, "--output", "div", *DIVERGE),
        "training diverged at step",
        code=4,
        may_create=("div",),
        check=diverged_run_is_clean,
    ),
    Case(
        "diverges-with-overwrite-keeps-old-run",
        lambda w: T(w, "--output", "run", "--overwrite", *DIVERGE),
        "left as it was",
        code=4,
        check=no_overwrite_leftovers,
    ),
    # --- seeds and names
    Case("seed-negative", lambda w: T(w, "--output", "new", "--set", "training.seed=-1"), "'training.seed': must be"),
    Case("seed-negative-in-plan", lambda w: ["plan", str(w.cfg), "--set", "training.seed=-1"], "'training.seed'"),
    Case(
        "seed-above-2-32",
        lambda w: T(w, "--output", "new", "--set", "training.seed=4294967296"),
        "0 .. 4294967295",
    ),
    Case("seed-1e23", lambda w: T(w, "--output", "new", "--set", "training.seed=1e23"), "'training.seed'"),
    Case("name-escapes-runs", lambda w: T(w, "--set", "name=../../escaped-run"), "not a plain folder name"),
    Case("name-with-separator", lambda w: ["plan", str(w.cfg), "--set", "name=a/b"], "not a plain folder name"),
    Case(
        "alias-bomb-report-to",
        lambda w: ["plan", "bomb.yaml"],
        "'training.report_to[0]'",
        setup=lambda w: (w / "bomb.yaml").write_text(f"name: bomb\ntraining:\n  report_to: {alias_bomb()}\n"),
    ),
    Case(
        "alias-bomb-adapter-options",
        lambda w: ["plan", "bomb.yaml"],
        "adapter.options",
        setup=lambda w: (w / "bomb.yaml").write_text(
            f"name: bomb\nadapter:\n  options:\n    exclude_modules: {alias_bomb()}\n"
        ),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, ws: Workspace, capsys, request):
    run_case(case, ws, capsys, request)


def test_case_ids_are_unique():
    # pytest would run a duplicate id under a suffixed name, hiding which case a failure is.
    ids = [c.id for c in CASES] + [c.id for c in CACHE_CASES]
    assert not {i for i in ids if ids.count(i) > 1}


# --------------------------------------------------------------------------------------------
# A damaged frozen-prefix cache (training.cache_frozen_layers) is not an error either: the run says in
# one line per damaged store that it rebuilds it, never reads the damaged states, and ends (exit 0) with
# the weights and validation metrics of the run that built the cache.


def tamper(states: Path, record: Path) -> None:
    data = bytearray(states.read_bytes())
    data[-5] ^= 0xFF  # the sign and exponent of the last row's second-last value; the record unchanged
    states.write_bytes(bytes(data))


def foreign_key(states: Path, record: Path) -> None:
    entry = json.loads(record.read_text())
    entry["key"] = "0" * 64  # a record (and its states) left by another entry under this name
    record.write_text(json.dumps(entry))


@dataclass
class CacheCase:
    id: str
    damage: Callable[[Path, Path], None]  # (states .npy, record .json) of each store
    line: str  # on stderr after "prefix cache <states>", once per damaged store


UNSOUND, UNREADABLE = "does not match its key or checksum: rebuilding it", "is unreadable: rebuilding it"
CACHE_CASES = [
    CacheCase("prefix-cache-truncated", lambda states, record: truncate(states), UNREADABLE),
    CacheCase("prefix-cache-tampered", tamper, UNSOUND),
    CacheCase("prefix-cache-foreign-key", foreign_key, UNSOUND),
    CacheCase("prefix-cache-no-record", lambda states, record: record.unlink(), UNREADABLE),
]


@pytest.fixture(scope="module")
def prefix_cached(tmp_path_factory, make_config, tiny_roberta) -> Path:
    """A 2-step run with adapters in the top layer only (``first``), which built the frozen-prefix cache
    of its training and validation rows (``cache``), and its config (``cfg.yaml``)."""
    base = tmp_path_factory.mktemp("prefix-cached")
    values = top_layer(make_config, base / "cache", tiny_roberta, True, epochs=1, max_steps=2)
    (base / "cfg.yaml").write_text(yaml.safe_dump(values))
    assert main(["train", str(base / "cfg.yaml"), "--output", str(base / "first"), "--no-report"]) == 0
    return base


@pytest.mark.parametrize("case", CACHE_CASES, ids=[c.id for c in CACHE_CASES])
def test_damaged_prefix_cache_is_rebuilt_not_used(case: CacheCase, prefix_cached: Path, tmp_path, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(prefix_cached / "cache", cache)  # the module's cache stays sound for the next case
    records = sorted((cache / PREFIX_FOLDER).glob("*.json"))
    assert len(records) == 2  # training and validation rows
    for record in records:
        case.damage(record.with_suffix(".npy"), record)
    argv = ["train", str(prefix_cached / "cfg.yaml"), "--set", f"data.cache_dir={cache}", "--no-report"]
    code, out, err = run_cli([*argv, "--output", str(tmp_path / "again")], capsys)
    assert code == 0, err[-2000:]
    rebuilt = sorted(line for line in err.splitlines() if "rebuilding" in line)
    assert rebuilt == [f"warning: prefix cache {r.with_suffix('.npy')} {case.line}" for r in records], err[-2000:]
    first, again = (ended(run) for run in (prefix_cached / "first", tmp_path / "again"))
    assert again["frozen_prefix"]["used"] and not again["frozen_prefix"]["cache_hit"]  # built, not reused
    assert again["adapter_sha256"] == first["adapter_sha256"]  # the same weights, to the bit
    assert again["eval"] == first["eval"]  # validation metrics, predictions and confidences


def ended(run: Path) -> dict:
    """A finished run's summary.json with its eval.json (less the time it was written) as ``eval``."""
    evaluated = json.loads((run / "eval.json").read_text())
    evaluated.pop("time")
    return {**json.loads((run / "summary.json").read_text()), "eval": evaluated}
