"""Does distillation pay at tight budgets? MiniLM students at ~10k, ~100k and ~1M trainable parameters.

Data: ../shared/data/agnews/train_5k.csv. The last 1,000 rows are a held-out slice that no run trains
on or selects checkpoints on; the first 4,000 are the pool, from which every run splits the same
validation rows (the presets' `data.validation_size` and `data.split_seed`).

For each student (a preset, optionally with `--set`-style overrides), four runs with the same
architecture and hyperparameters; only the loss and the labels seen differ:

  plain                  `train` on every labelled training row
  distilled              `distill` from the teacher on the same rows
  plain, few labels      `train` on the rows that keep their labels when a share F of them is used
                         as transfer texts (`--transfer-fraction`, default 0.5)
  distilled + transfer   `distill --transfer-from-train-fraction F`: the same labelled rows plus the
                         other share as texts with the teacher's soft labels only

`--transfer-only` skips the two all-label runs (and the all-label teacher). `--equal-steps` adds, in the
transfer setting, one more run that answers "is the gain only more optimizer steps?":

  plain, equal steps     `train` on the few labelled rows for as many optimizer steps as the distilled
                         run took on labelled + transfer rows, evaluated as often

Teacher: the strongest CPU teacher preset (`--teacher`, default `minilm-cpu-teacher`; repeat it for
an ensemble). It is trained once on every labelled row, and once on the labelled rows of the transfer
setting only (so it knows no label the student lacks); its logits are computed once per setting and
cached, so its cost is counted once, not per student.

Reported: held-out accuracy with Wilson 95% intervals; McNemar's exact p-value of each distilled
student against its plain counterpart on the same 1,000 held-out rows; training times.

Usage:
  python benchmarks/distill_accuracy.py [--data PATH] [--out docs/distill-accuracy.md]
      [--student LABEL=PRESET[;key=value;...]] ... [--teacher PRESET[;key=value;...]|RUN] ... [--transfer-fraction F]
      [--no-transfer | --transfer-only] [--equal-steps] [--set key=value] [--workdir DIR] [--dry-run] [--quick]

`--dry-run` resolves and counts every config (no weights, no data read) and prints the plan.
`--quick` is a smoke run: 400 pool rows, 100 held-out rows, a few optimizer steps per run, the first
student only; its output says it is not a measurement.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TRAIN_5K, emit, machine, read_rows, split_held_out  # noqa: E402

# label, preferred preset, fallback (preset + overrides) when the preferred preset does not exist
DEFAULT_STUDENTS = [
    ("~10k", "minilm-cpu-10k-distill", "minilm-cpu-distill;adapter.r=2;adapter.alpha=4;adapter.modules=[query]"),
    ("~100k", "minilm-cpu-100k-distill", "minilm-cpu-distill;adapter.r=2;adapter.alpha=4"),
    ("~1M", "minilm-cpu-distill;adapter.r=24;adapter.alpha=48", None),
]
QUICK_SETTINGS = ["training.max_steps=3", "training.log_every=1", "training.eval_every=3"]


def preset_exists(name: str) -> bool:
    from lorabudget.config import resolve_config_path
    from lorabudget.errors import LorabudgetError

    try:
        resolve_config_path(name)
        return True
    except LorabudgetError:
        return False


def parse_spec(spec: str) -> tuple[str, list[str]]:
    """``PRESET;key=value;...`` -> (preset, overrides)."""
    preset, *overrides = [part.strip() for part in spec.split(";") if part.strip()]
    return preset, overrides


def default_students() -> list[tuple[str, str]]:
    chosen = []
    for label, preferred, fallback in DEFAULT_STUDENTS:
        name = parse_spec(preferred)[0]
        chosen.append((label, preferred if preset_exists(name) or fallback is None else fallback))
    return chosen


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=TRAIN_5K)
    ap.add_argument(
        "--student",
        action="append",
        default=[],
        metavar="LABEL=PRESET[;key=value...]",
        help="a student size (repeatable); default ~10k, ~100k, ~1M MiniLM students",
    )
    ap.add_argument(
        "--teacher",
        action="append",
        default=[],
        metavar="PRESET[;key=value...]|RUN",
        help="teacher preset (with overrides) or finished run; repeat for an ensemble; default minilm-cpu-teacher",
    )
    ap.add_argument("--transfer-fraction", type=float, default=0.5)
    ap.add_argument("--no-transfer", action="store_true", help="skip the transfer-text setting")
    ap.add_argument("--transfer-only", action="store_true", help="skip the all-labels setting")
    ap.add_argument(
        "--equal-steps",
        action="store_true",
        help="transfer setting: also train the plain student for as many steps as the distilled one",
    )
    ap.add_argument("--held-out", type=int, default=1000)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override for every run")
    ap.add_argument("--workdir", type=Path, help="where runs are written (default: a temporary folder)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)

    from lorabudget.config import load_config
    from lorabudget.model.budget import breakdown
    from lorabudget.model.build import build_model

    students = [tuple(s.split("=", 1)) for s in args.student] if args.student else default_students()
    if args.quick:
        students = students[:1]
    teachers = args.teacher or ["minilm-cpu-teacher"]
    if args.no_transfer and args.transfer_only:
        ap.error("--no-transfer and --transfer-only leave nothing to measure")
    fraction = 0.0 if args.no_transfer else args.transfer_fraction
    if args.transfer_only and not 0 < fraction < 1:
        ap.error("--transfer-only needs a --transfer-fraction between 0 and 1")
    quick = QUICK_SETTINGS if args.quick else []

    def student_config(spec: str, extra: list[str]):
        preset, overrides = parse_spec(spec)
        return load_config(preset, [*overrides, *extra, *quick, *args.overrides])

    print(f"teacher: {' + '.join(teachers)}; transfer fraction {fraction:g}{'; QUICK smoke run' if args.quick else ''}")
    for label, spec in students:
        cfg = student_config(spec, [])
        params = breakdown(build_model(cfg, weights=False).model).total
        print(
            f"student {label}: {spec} -> {params:,} trainable parameters (budget {cfg.budget.max_trainable_params:,})"
        )
    if args.dry_run:
        return 0
    if not args.data.is_file():
        print(f"skipped: {args.data} not found (the benchmark needs the shared AG News rows)")
        return 0

    from lorabudget.inference.runs import evaluate_run, load_run
    from lorabudget.io import default_cache_dir
    from lorabudget.metrics import classification_metrics
    from lorabudget.stats import format_interval, mcnemar
    from lorabudget.training.distill import (
        TeacherLogitsCache,
        distill,
        resolve_teacher,
        teacher_logits,
        without_transfer_rows,
    )
    from lorabudget.training.loop import train
    from lorabudget.training.setup import prepare_data

    work = args.workdir or Path(tempfile.mkdtemp(prefix="distill-accuracy-"))
    work.mkdir(parents=True, exist_ok=True)
    held_out = 100 if args.quick else args.held_out
    pool, test = split_held_out(args.data, work, held_out, 400 if args.quick else None)
    quick_data = ["data.validation_size=100"] if args.quick else []
    data_settings = [f"data.train={pool}", f"data.cache_dir={work / 'cache'}", *quick_data]
    runs = work / "runs"
    test_texts = [r[0] for r in read_rows(test) if r[-1].strip().isdigit()]  # a header row left out

    def held_out_metrics(run_dir: Path) -> dict:
        return evaluate_run(load_run(run_dir), str(test))

    # ---- teachers: trained and their logits computed once per setting
    base_cfg = student_config(students[0][1], data_settings)
    base_data = prepare_data(base_cfg, print)
    cache = TeacherLogitsCache(default_cache_dir(base_cfg.data.cache_dir))
    settings = [] if args.transfer_only else [("all labels", 0.0)]
    settings += [(f"{fraction:.0%} as transfer texts", fraction)] if fraction else []
    teacher_rows, teacher_dirs = [], {}
    for setting, frac in settings:
        dirs = []
        for spec in teachers:
            start = time.perf_counter()
            # A teacher config is trained here with the students' data settings (once; reused after).
            teacher, teacher_overrides = parse_spec(spec)
            d = resolve_teacher(
                teacher,
                base_cfg,
                runs / "(students)",
                print,
                frac,
                overrides=[*teacher_overrides, *quick, *args.overrides],
            )
            dirs.append(d)
            print(f"teacher {d}: ready in {time.perf_counter() - start:.0f}s")
        start = time.perf_counter()
        teacher_logits(dirs, base_data.train.texts, cache, print, "training texts")
        teacher_logits(dirs, base_data.validation.texts, cache, print, "validation texts")
        logits_s = time.perf_counter() - start
        test_logits = teacher_logits(dirs, test_texts, cache, print, "held-out texts")
        test_labels = load_labels(test, base_cfg.model.labels)
        m = classification_metrics(test_logits, test_labels, base_cfg.model.labels)
        summaries = [read_summary(d) for d in dirs]
        teacher_rows.append(
            {
                "setting": setting,
                "teachers": ", ".join(f"`{d.name}`" for d in dirs),
                "params": sum(s.get("trainable_params") or 0 for s in summaries),
                "train_rows": summaries[0].get("train_rows"),
                "acc": m["accuracy"],
                "ci": m["accuracy_ci95"],
                "train_s": sum(s.get("train_time_s") or 0 for s in summaries),
                "logits_s": logits_s,
            }
        )
        teacher_dirs[frac] = [str(d) for d in dirs]

    # ---- students
    results = []
    for label, spec in students:
        cfg = student_config(spec, data_settings)
        for setting, frac in settings:
            tag = f"{label.strip('~')}-{'transfer' if frac else 'all'}"
            plain_dir, kd_dir = runs / f"plain-{tag}", runs / f"distilled-{tag}"
            data = prepare_data(cfg, print)
            if frac:
                data = without_transfer_rows(data, frac, cfg.data.split_seed)
            plain = train(cfg, plain_dir, data=data, log=print)
            kd = distill(cfg, kd_dir, teacher=teacher_dirs[frac], log=print, transfer_fraction=frac)
            pm, km = held_out_metrics(plain_dir), held_out_metrics(kd_dir)
            test_pair = mcnemar(km["correct"], pm["correct"])
            results.append(
                {
                    "label": label,
                    "spec": spec,
                    "setting": setting,
                    "params": plain["trainable_params"],
                    "labelled": len(data.train),
                    "transfer": kd.get("transfer_rows", 0),
                    "plain": (plain, pm),
                    "distilled": (kd, km),
                    "mcnemar": test_pair,
                }
            )
            print(results[-1]["label"], setting, pm["accuracy"], km["accuracy"], test_pair, flush=True)
            if frac and args.equal_steps:
                # As many optimizer steps as the distilled run, evaluated as often (once per its epoch).
                steps = kd["steps"]
                every = math.ceil(steps / max(1, math.ceil(cfg.training.epochs)))
                eq_cfg = student_config(
                    spec, [*data_settings, f"training.max_steps={steps}", f"training.eval_every={every}"]
                )
                eq_dir = runs / f"plain-equal-steps-{tag}"
                eq = train(eq_cfg, eq_dir, data=data, log=print)
                em = held_out_metrics(eq_dir)
                results[-1]["equal_steps"] = (eq, em, mcnemar(km["correct"], em["correct"]))
                print(label, setting, "equal steps", em["accuracy"], results[-1]["equal_steps"][2], flush=True)

    # ---- report
    lines = []
    if args.quick:
        lines += ["**QUICK SMOKE RUN: a few optimizer steps per run on 400 rows. Not a measurement.**", ""]
    lines += [
        f"Held-out slice: the last {held_out:,} rows of `{args.data.name}`, never trained on. Intervals: Wilson 95%. "
        "p: McNemar's exact test, distilled vs plain student, on the same held-out rows.",
        "",
        "### Teacher (cost counted once per setting)",
        "",
        "| setting | teacher | trainable params | labelled training rows | held-out acc (95% CI) | training (s) | logits for train + validation texts (s) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for t in teacher_rows:
        lines.append(
            f"| {t['setting']} | {t['teachers']} | {t['params']:,} | {t['train_rows']:,} | "
            f"{100 * t['acc']:.2f}% ({format_interval(t['ci'])}) | {t['train_s']:.0f} | {t['logits_s']:.0f} |"
        )
    lines += [
        "",
        "### Students",
        "",
        "| student | trainable params | setting | labelled rows | transfer rows | plain: held-out acc (95% CI) | "
        "distilled: held-out acc (95% CI) | distilled vs plain | plain / distilled training (s) |",
        "|---|---:|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        (ps, pm), (ks, km), test_pair = r["plain"], r["distilled"], r["mcnemar"]
        verdict = verdict_text(km["accuracy"] - pm["accuracy"], test_pair["p_value"])
        lines.append(
            f"| {r['label']} (`{r['spec']}`) | {r['params']:,} | {r['setting']} | {r['labelled']:,} | {r['transfer']:,} | "
            f"{100 * pm['accuracy']:.2f}% ({format_interval(pm['accuracy_ci95'])}) | "
            f"{100 * km['accuracy']:.2f}% ({format_interval(km['accuracy_ci95'])}) | {verdict} | "
            f"{ps['train_time_s']:.0f} / {ks['train_time_s']:.0f} |"
        )
    equal = [r for r in results if "equal_steps" in r]
    if equal:
        lines += [
            "",
            "### The plain student given as many optimizer steps as the distilled one",
            "",
            "| student | setting | labelled rows | optimizer steps (plain / equal steps / distilled) | "
            "plain, equal steps: held-out acc (95% CI) | distilled vs plain with equal steps | training (s) |",
            "|---|---|---:|---|---:|---|---:|",
        ]
        for r in equal:
            (ps, _), (ks, km), (es, em, test_pair) = r["plain"], r["distilled"], r["equal_steps"]
            lines.append(
                f"| {r['label']} | {r['setting']} | {r['labelled']:,} | {ps['steps']} / {es['steps']} / {ks['steps']} | "
                f"{100 * em['accuracy']:.2f}% ({format_interval(em['accuracy_ci95'])}) | "
                f"{verdict_text(km['accuracy'] - em['accuracy'], test_pair['p_value'])} | {es['train_time_s']:.0f} |"
            )
    if results:
        kd_cfg = student_config(students[0][1], []).distill
        lines += [
            "",
            f"Distillation: T={kd_cfg.temperature:g}, λ={kd_cfg.alpha:g}, min teacher confidence "
            f"{kd_cfg.min_teacher_confidence:g} (from the student presets). Runs: `{runs}`.",
        ]
    lines += ["", f"Machine: {machine()}."]
    emit("\n".join(lines) + "\n", args.out)
    return 0


def verdict_text(accuracy_diff: float, p: float) -> str:
    diff = 100 * accuracy_diff
    if p < 0.05:
        return f"{'gain' if diff > 0 else 'loss'} {diff:+.2f} pts (p={p:.3g})"
    return f"{diff:+.2f} pts, within noise (p={p:.3g})"


def load_labels(path: Path, class_names):
    from lorabudget.data.load import load_labelled

    return load_labelled(str(path), class_names).labels


def read_summary(run_dir: Path) -> dict:
    import json

    return json.loads((Path(run_dir) / "summary.json").read_text(encoding="utf-8"))


if __name__ == "__main__":
    sys.exit(main())
