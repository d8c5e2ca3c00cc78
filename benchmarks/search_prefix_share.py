"""Search trials sharing the frozen-prefix cache: one 6-trial ``lorabudget search`` over top-k layer
placements, run twice on the same rows, without the cache and with it shared between the trials.

Data: ../shared/data/agnews/train_5k.csv (or ``--data``). Rows are shuffled with a fixed seed and the
first ``--rows`` (800) are the training file; each trial splits its validation rows off it as usual and
trains ``--epochs`` (1) epoch(s) of ``--config`` (``minilm-cpu-10k``: (IA)3 on keys and values of
MiniLM-L6).

The search space is ``layers: top`` (the adapters on the last k layers) and ``learning_rate`` (a log
range over the trials' rates). A space cannot list its trials, and the sampler draws k itself (after
its first trials, from the results, which the cache changes a little), so the trials are pinned:
``(--top[i], --learning-rates[i])`` is enqueued into the Optuna study before ``lorabudget search`` runs
on it (``--storage``/``--study``: the search joins the study as a worker does, and runs the queued
trials first; no warm start, no pruner). Both searches train the same six configurations, in the same
order. By default top 2 and top 4 at three learning rates each: the lowest adapted layers are 4 and 2,
each shared by three trials, which is what sharing needs (trials on the same base, data and lowest
adapted layer reuse one cache). Top 1..6 would give every trial its own lowest layer, and nothing to share.

1. ``none``: ``training.cache_frozen_layers=false``, a fresh cache folder;
2. ``shared``: ``training.cache_frozen_layers=--sharing`` (``true``), another fresh cache folder: the
   first trial at each lowest layer builds the cache, the later ones reuse it. ``auto`` turns the cache
   on only where it pays within the one run (more than one pass over the rows, or a warm cache): a
   one-epoch trial with one validation pass never builds, so under ``auto`` nothing is shared unless
   validation runs more than once per trial (``training.eval_every``, as the pruner's evaluations do).

Each search is one ``lorabudget search`` process, ``none`` first (``--shared-first``: the other way
round; the second finds the model files in the OS page cache, so running both orders shows what the
order alone changes). Printed per trial, from trials.csv and the trial's run folder: placement,
lowest adapted layer, learning rate, the prefix cache (off, built or reused) and its seconds, the
training loop's seconds, the trial's seconds, validation accuracy; then the total trial seconds of
each search and their ratio shared/none, the same for loop + cache seconds (the training without each
trial's setup), each search's process wall time, and the machine's CPU.

Usage: python benchmarks/search_prefix_share.py [--config minilm-cpu-10k] [--top 2,4,2,4,2,4]
       [--learning-rates 1e-2,1e-2,5e-3,5e-3,2e-2,2e-2] [--sharing true|auto] [--rows 800] [--epochs 1]
       [--shared-first] [--data PATH] [--work DIR] [--out FILE] [--smoke]
``--smoke`` checks the script on a tiny random 3-layer model and synthetic rows (top 1 and 2, 4 steps
per trial; the figures mean nothing).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TRAIN_5K, emit, lorabudget, machine, read_rows, write_rows  # noqa: E402
from prefix_cache import smoke_setup  # noqa: E402

SHUFFLE_SEED = 20261206
TOP = "2,4,2,4,2,4"
SMOKE_TOP = "1,2,1,2,1,2"
LEARNING_RATES = "1e-2,1e-2,5e-3,5e-3,2e-2,2e-2"


def training_rows(data: Path, work: Path, rows: int) -> Path:
    """``work/train.csv``: ``rows`` rows of ``data``, drawn with a fixed seed."""
    body = [r for r in read_rows(data) if r and r[-1].strip().isdigit()]
    if len(body) < rows:
        raise SystemExit(f"{data} holds {len(body)} rows; --rows {rows} needs more")
    random.Random(SHUFFLE_SEED).shuffle(body)
    work.mkdir(parents=True, exist_ok=True)
    return write_rows(work / "train.csv", body[:rows])


def pinned_trials(top: str, rates: str) -> list[tuple[int, float]]:
    ks, lrs = [int(k) for k in top.split(",")], [float(lr) for lr in rates.split(",")]
    if len(ks) != len(lrs) or not ks:
        raise SystemExit(f"--top gives {len(ks)} trials and --learning-rates {len(lrs)}: give one of each per trial")
    return list(zip(ks, lrs))


def space_file(work: Path, trials: list[tuple[int, float]]) -> Path:
    """The search space: top-k placements and a learning-rate range that holds every pinned rate."""
    import yaml

    lrs = [lr for _, lr in trials]
    path = work / "space.yaml"
    path.write_text(
        yaml.safe_dump({"layers": "top", "learning_rate": {"low": min(lrs), "high": max(lrs), "log": True}})
    )
    return path


def pin(storage: str, study: str, trials: list[tuple[int, float]]) -> None:
    """Create the study and queue the trials; ``lorabudget search`` joins it and trains them in this order."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    created = optuna.create_study(storage=storage, study_name=study, direction="maximize")
    for k, lr in trials:
        created.enqueue_trial({"layers.k": k, "learning_rate": lr})


def one_search(label: str, config: str, setting: str, train_csv: Path, work: Path, run: dict) -> dict:
    """A fresh search (study, output and cache folder) with ``training.cache_frozen_layers=setting``:
    its trials (see :func:`trial_rows`) and the process's wall seconds."""
    output, cache, db = work / f"search-{label}", work / f"cache-{label}", work / f"study-{label}.db"
    for stale in (output, cache):
        shutil.rmtree(stale, ignore_errors=True)
    db.unlink(missing_ok=True)
    storage, study = f"sqlite:///{db.resolve()}", f"prefix-share-{label}"
    pin(storage, study, run["trials"])
    sets = [f"training.cache_frozen_layers={setting}", f"data.cache_dir={cache}", f"training.epochs={run['epochs']}"]
    cmd = lorabudget(
        "search",
        config,
        "--data",
        str(train_csv),
        "--space",
        str(run["space"]),
        "--trials",
        str(len(run["trials"])),
        "--storage",
        storage,
        "--study",
        study,
        "--output",
        str(output),
        "--pruner",
        "none",
        "--no-warm-start",
        *[a for s in sets for a in ("--set", s)],
    )
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"search failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return {"label": label, "setting": setting, "wall_s": wall, "trials": trial_rows(output)}


def trial_rows(output: Path) -> list[dict]:
    """Each trial of trials.csv with its placement and loop seconds from its run folder."""
    import yaml

    with open(output / "trials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    trials = []
    for row in rows:
        run = Path(row["run_dir"]) if row["run_dir"] else None
        layers = yaml.safe_load((run / "config.yaml").read_text())["adapter"]["layers"] if run else None
        summary = json.loads((run / "summary.json").read_text()) if run else {}
        trials.append(
            {
                "number": int(row["number"]),
                "state": row["state"],
                "layers": layers,
                "learning_rate": float(row["param:learning_rate"]) if row.get("param:learning_rate") else None,
                "cache": row["prefix_cache"] or "-",
                "cache_s": float(row["prefix_cache_seconds"]) if row["prefix_cache_seconds"] else 0.0,
                "loop_s": summary.get("train_time_s"),
                "trial_s": float(row["seconds"]) if row["seconds"] else 0.0,
                "accuracy": float(row["validation_accuracy"]) if row["validation_accuracy"] else None,
            }
        )
    return trials


def _num(value, spec: str) -> str:
    """``value`` in ``spec`` (a width first), or ``-`` right-aligned in that width."""
    width = int("".join(c for c in spec.split(".")[0] if c.isdigit()) or 0)
    return f"{'-':>{width}}" if value is None else format(value, spec)


def table(search: dict) -> list[str]:
    lines = [
        f"{search['label']} (training.cache_frozen_layers={search['setting']}):",
        "  trial  state      placement  lowest       lr  prefix cache  cache s  loop s  trial s  val acc",
    ]
    for t in search["trials"]:
        layers = t["layers"]
        placement = "all" if layers is None else f"{min(layers)}-{max(layers)}"
        lines.append(
            f"  {t['number']:>5}  {t['state']:<9}{placement:>11}{_num(layers and min(layers), 'd'):>8}"
            f"{_num(t['learning_rate'], '9.2g')}  {t['cache']:<12}{t['cache_s']:>9.1f}{_num(t['loop_s'], '8.1f')}"
            f"{t['trial_s']:>9.1f}{_num(t['accuracy'], '9.4f')}"
        )
    total = sum(t["trial_s"] for t in search["trials"])
    lines.append(f"  total trial seconds {total:.1f}; search process wall {search['wall_s']:.1f}s")
    return lines


def totals(none: dict, shared: dict) -> list[str]:
    seconds = {s["label"]: sum(t["trial_s"] for t in s["trials"]) for s in (none, shared)}
    # The training itself, without each trial's setup (model load, data, budget count): loop + cache.
    training = {s["label"]: sum((t["loop_s"] or 0.0) + t["cache_s"] for t in s["trials"]) for s in (none, shared)}
    same = [(t["layers"], t["learning_rate"]) for t in none["trials"]] == [
        (t["layers"], t["learning_rate"]) for t in shared["trials"]
    ]
    reused = sum(t["cache"] == "reused" for t in shared["trials"])
    built = sum(t["cache"] == "built" for t in shared["trials"])
    return [
        f"total trial seconds: without sharing {seconds['none']:.1f}, with sharing {seconds['shared']:.1f}, "
        f"shared/none {seconds['shared'] / seconds['none']:.3f}; search process wall shared/none "
        f"{shared['wall_s'] / none['wall_s']:.3f}",
        f"loop + prefix cache seconds: without sharing {training['none']:.1f}, with sharing "
        f"{training['shared']:.1f}, shared/none {training['shared'] / training['none']:.3f}",
        f"prefix cache in the shared search: built {built}, reused {reused}; "
        f"the same placements and learning rates in both searches: {'yes' if same else 'NO'}",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="minilm-cpu-10k", help="preset or config file the trials start from")
    ap.add_argument("--top", help=f"k of each trial's top-k placement (default {TOP}; --smoke: {SMOKE_TOP})")
    ap.add_argument("--learning-rates", default=LEARNING_RATES, help="each trial's learning rate")
    ap.add_argument("--sharing", choices=["true", "auto"], default="true", help="the shared search's setting")
    ap.add_argument("--shared-first", action="store_true", help="run the shared search before the other")
    ap.add_argument("--rows", type=int, default=800, help="training rows (each trial splits validation off them)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--data", type=Path, default=TRAIN_5K)
    ap.add_argument("--work", type=Path, default=Path("bench-search-prefix-share"))
    ap.add_argument("--out", type=Path, help="also write the result here")
    ap.add_argument("--smoke", action="store_true", help="a tiny random model on synthetic rows: checks the script")
    args = ap.parse_args()
    trials = pinned_trials(args.top or (SMOKE_TOP if args.smoke else TOP), args.learning_rates)
    if args.smoke:
        train_csv, _, _, configs = smoke_setup(args.work)
        config, rows = configs["smoke"][0], len(read_rows(train_csv))
    else:
        if not args.data.is_file():
            print(f"skipped: {args.data} not found (the benchmark needs the shared data rows)")
            return 0
        train_csv, config, rows = training_rows(args.data, args.work, args.rows), args.config, args.rows
    run = {"trials": trials, "epochs": args.epochs, "space": space_file(args.work, trials)}
    order = [("none", "false"), ("shared", args.sharing)]
    searches = {
        label: one_search(label, config, setting, train_csv, args.work, run)
        for label, setting in (order[::-1] if args.shared_first else order)
    }
    none, shared = searches["none"], searches["shared"]
    lines = [
        f"search trials sharing the frozen-prefix cache: {config}, {len(trials)} pinned trials (top-k, learning "
        f"rate) = {', '.join(f'({k}, {lr:g})' for k, lr in trials)}; {rows} training rows of {train_csv}, "
        f"{args.epochs:g} epoch(s) per trial; {'shared' if args.shared_first else 'none'} search first",
        f"machine: {machine()}",
        *table(none),
        *table(shared),
        *totals(none, shared),
    ]
    emit("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
