"""Ranking runs for ``compare``: what each run's files say (:func:`run_row`), the most trustworthy figure
the runs share (:func:`choose_basis`), Wilson intervals and McNemar paired tests, runs grouped by class set,
and the ranked table as Markdown and CSV rows. The figure is drawn by :mod:`lorabudget.report.compare`."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Optional, Sequence

from lorabudget.errors import LorabudgetError
from lorabudget.io import atomic_write_text
from lorabudget.rundir.layout import RunDir
from lorabudget.stats import accuracy_interval, format_interval, mcnemar

MICRO_F1 = "micro_f1"


def _score(
    acc: Optional[float],
    n: Optional[int],
    record: Optional[dict] = None,
    data: Optional[str] = None,
    metric: str = "accuracy",
) -> Optional[dict]:
    """A run's ranking figure with its row count, 95% interval and (when kept) per-row results.

    ``accuracy`` holds the figure: accuracy (Wilson interval), or for a multi-label run (``metric``
    ``micro_f1``) its micro F1 (bootstrap interval from the record); ``correct`` is then whether
    each row's predicted label set equals its true set, the per-row result the paired test reads."""
    if acc is None:
        return None
    record = record or {}
    n = record.get("n") or record.get("rows") or n
    if metric == MICRO_F1:
        ci = record.get("micro_f1_ci95")
    else:
        ci = record.get("accuracy_ci95") or (list(accuracy_interval(acc, int(n))) if n else None)
    correct = record.get("correct")
    return {
        "accuracy": float(acc),
        "metric": metric,
        "n": int(n) if n else None,
        "ci95": ci,
        "data": data or record.get("data"),
        "fingerprint": record.get("rows_fingerprint"),
        "correct": correct if correct is not None and n and len(correct) == n else None,
    }


def problem_type(files: RunDir, summary: dict, records: list[dict]) -> str:
    """``multi_label`` or ``single_label``: from the run's config, else its evaluations and summary."""
    if files.is_run():
        try:
            return (files.config_values().get("model") or {}).get("problem_type") or "single_label"
        except LorabudgetError:
            pass
    multi = any(r.get("problem_type") == "multi_label" for r in records) or "validation_micro_f1" in summary
    return "multi_label" if multi else "single_label"


def metric_name(metric: str) -> str:
    return "micro F1" if metric == MICRO_F1 else "accuracy"


def _classes(files: RunDir, summary: dict, records: list[dict]) -> Optional[tuple[str, ...]]:
    """The run's class names (its task), from its summary, evaluations or config; None when unknown."""
    names = summary.get("class_names") or next((r["class_names"] for r in records if r.get("class_names")), None)
    if not names and files.is_run():
        try:
            names = (files.config_values().get("model") or {}).get("labels")
        except LorabudgetError:
            names = None
    return tuple(str(n) for n in names) if names else None


def run_row(run_dir: Path) -> dict[str, Any]:
    """What a run's files say about it; None where the run has no such figure.

    ``tests`` maps a test set's key (file name, rows, rows fingerprint) to its latest evaluation, only
    for evaluations not known to overlap the run's training or validation rows; those that do are in
    ``not_held_out`` (never ranked, never shown as test accuracy). ``validation`` is the kept
    checkpoint's validation score; ``classes`` the run's class names (None when unknown).
    """
    files = RunDir(run_dir)
    summary = files.read_summary()
    budget = files.read_budget() or {}
    records = files.eval_records()
    kind = problem_type(files, summary, records)
    metric = MICRO_F1 if kind == "multi_label" else "accuracy"
    tests: dict[tuple, dict] = {}
    not_held_out: dict[str, dict] = {}
    validation_record = None
    for e in records:
        if e.get("kind") == "evaluate" and e.get(metric) is not None:
            score = _score(e[metric], None, e, metric=metric)
            if e.get("held_out") is False:
                not_held_out[score["data"]] = dict(score, overlap=e.get("overlap"))
            else:
                tests[(Path(str(e.get("data"))).name, score["n"], score["fingerprint"])] = score
        elif e.get("kind") == "validation":
            validation_record = e
    # A run that trained on its validation rows has no validation estimate to rank or compare by.
    val_acc = None if summary.get("validation_trained_on") else summary.get(f"validation_{metric}")
    # The kept checkpoint's per-row validation results, when eval.json/evals recorded that same score.
    if validation_record is not None and val_acc is not None and validation_record.get(metric) != val_acc:
        validation_record = None
    validation = _score(
        val_acc,
        summary.get("validation_rows"),
        validation_record,
        data=(validation_record or {}).get("data", "validation split"),
        metric=metric,
    )
    latest_test = list(tests.values())[-1] if tests else None  # records are in time order
    trainable = summary.get("trainable_params", budget.get("trainable_params"))
    return {
        "run": str(run_dir),
        "name": files.display_name,
        "config_name": summary.get("name"),
        "method": summary.get("method")
        if not summary.get("distill")
        else f"{summary.get('method')} + KD ({summary['distill']})",
        "trainable_params": trainable,
        "adapter_params": summary.get("adapter_params", budget.get("adapter_params")),
        "head_params": summary.get("head_params", budget.get("head_params")),
        "budget": summary.get("budget", budget.get("budget")),
        "classes": _classes(files, summary, records),
        "problem_type": kind,
        "metric": metric,
        "validation": validation,
        "validation_accuracy": val_acc,
        "tests": tests,
        "not_held_out": list(not_held_out.values()),
        "test_accuracy": latest_test["accuracy"] if latest_test else None,
        "test_data": latest_test["data"] if latest_test else None,
        "train_time_s": summary.get("train_time_s"),
        "finished": files.finished(),  # no summary: still training, killed or failed
    }


def display_names(run_dirs: Sequence[Path], names: Sequence[str] = ()) -> list[str]:
    """A distinct display name per run: ``names`` in order, then each run directory's name.

    Runs whose directory names collide are told apart by their parent folders, then by a number.
    """
    run_dirs = [Path(r) for r in run_dirs]
    if len(names) > len(run_dirs):
        raise LorabudgetError(f"{len(names)} --name values for {len(run_dirs)} runs")
    base = list(names) + [RunDir(r).display_name for r in run_dirs[len(names) :]]
    out = [
        f"{run_dirs[i].resolve().parent.name}/{name}" if i >= len(names) and base.count(name) > 1 else name
        for i, name in enumerate(base)
    ]
    seen: dict[str, int] = {}
    final = []
    for name in out:
        seen[name] = seen.get(name, 0) + 1
        final.append(f"{name} ({seen[name]})" if out.count(name) > 1 else name)
    return final


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "–"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "acc":
        return f"{100 * value:.2f}%"
    if kind == "s":
        return f"{value:,.0f}"
    return str(value)


def _fmt_score(score: Optional[dict]) -> str:
    if score is None:
        return "–"
    if score.get("metric") == MICRO_F1:  # an F1 reads as a number in 0..1
        text = f"{score['accuracy']:.4f}"
        if score.get("ci95"):
            text += f" ({format_interval(score['ci95'], percent=False)})"
        return text
    text = f"{100 * score['accuracy']:.2f}%"
    if score.get("ci95"):
        text += f" ({format_interval(score['ci95'])})"
    return text


def _fmt_p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def choose_basis(rows: list[dict]) -> dict:
    """The most trustworthy figure every run with a figure shares.

    A test set every such run was evaluated on (the largest when there are several), else the
    kept validation accuracy. Returns ``kind`` (test/validation), ``key``, a ``label`` for
    headers and titles, and ``scores`` (one per row, None where the row lacks it).
    """
    scored = [r for r in rows if r["validation"] is not None or r["tests"]]
    shared = set.intersection(*(set(r["tests"]) for r in scored)) if scored else set()
    metric = next((r.get("metric") for r in rows if r.get("metric")), "accuracy")
    name = metric_name(metric)
    if shared:
        key = max(shared, key=lambda k: (k[1] or 0, k[0]))
        return {
            "kind": "test",
            "key": key,
            "metric": metric,
            "label": f"test {name} on {key[0]} ({key[1]:,} rows)" if key[1] else f"test {name} on {key[0]}",
            "scores": [r["tests"].get(key) for r in rows],
        }
    sizes = sorted({r["validation"]["n"] for r in scored if r["validation"] and r["validation"]["n"]})
    rows_text = f" ({sizes[0]:,} rows)" if len(sizes) == 1 else ""
    return {
        "kind": "validation",
        "key": None,
        "metric": metric,
        "label": f"validation {name}{rows_text}",
        "scores": [r["validation"] for r in rows],
    }


def paired_test(a: Optional[dict], b: Optional[dict]) -> Optional[dict]:
    """McNemar's exact test when both scores carry per-row results on the same rows, else None."""
    if not a or not b or a.get("correct") is None or b.get("correct") is None:
        return None
    if a["n"] != b["n"] or not a.get("fingerprint") or a.get("fingerprint") != b.get("fingerprint"):
        return None
    return mcnemar(a["correct"], b["correct"])


def short_verdict(a: dict, name_b: str, b: dict, alpha: float = 0.05) -> str:
    """Table-cell form of :func:`verdict` for a run and the next one in the ranking."""
    test = paired_test(a, b)
    if test is None:
        return f"no paired test with {name_b}"
    if test["p_value"] < alpha and test["only_a"] > test["only_b"]:
        return f"beats {name_b} ({_fmt_p(test['p_value'])})"
    return f"within noise of {name_b} ({_fmt_p(test['p_value'])})"


def verdict(name_a: str, a: dict, name_b: str, b: dict, alpha: float = 0.05) -> str:
    """One sentence on whether run A (ranked higher) beats run B, honest about noise."""
    test = paired_test(a, b)
    if test is None:
        overlap = a.get("ci95") and b.get("ci95") and a["ci95"][0] <= b["ci95"][1] and b["ci95"][0] <= a["ci95"][1]
        how = "95% intervals overlap" if overlap else "95% intervals do not overlap"
        return f"{name_a} vs {name_b}: no paired test (not evaluated on the same rows with per-row results; {how})"
    exact = " exactly (label set)" if a.get("metric") == MICRO_F1 else ""
    detail = f"{test['only_a']:,} rows only {name_a} got right{exact}, {test['only_b']:,} only {name_b}"
    if test["p_value"] < alpha and a["accuracy"] != b["accuracy"]:
        winner, loser = (name_a, name_b) if test["only_a"] > test["only_b"] else (name_b, name_a)
        return f"**{winner} beats {loser}** ({_fmt_p(test['p_value'])}, McNemar exact; {detail})"
    return f"{name_a} vs {name_b}: difference within noise ({_fmt_p(test['p_value'])}, McNemar exact; {detail})"


COMPARE_COLUMNS = [
    "rank",
    "name",
    "run",
    "method",
    "trainable_params",
    "adapter_params",
    "head_params",
    "budget",
    "ranked_by",
    "score",
    "score_ci_low",
    "score_ci_high",
    "score_rows",
    "validation_accuracy",
    "validation_ci_low",
    "validation_ci_high",
    "validation_rows",
    "test_accuracy",
    "test_ci_low",
    "test_ci_high",
    "test_rows",
    "test_data",
    "train_time_s",
    "classes",
    "not_held_out",
    # What score, validation_* and test_* hold: accuracy, or micro F1 for multi-label runs.
    "metric",
]


def _csv_row(rank: Optional[int], name: str, r: dict, basis: dict, score: Optional[dict]) -> list:
    def ci(s, i):
        return s["ci95"][i] if s and s.get("ci95") else None

    test = (
        r["tests"].get(basis["key"])
        if basis["kind"] == "test"
        else (list(r["tests"].values())[-1] if r["tests"] else None)
    )
    v = r["validation"]
    return [
        rank,
        name,
        r["run"],
        r["method"],
        r["trainable_params"],
        r["adapter_params"],
        r["head_params"],
        r["budget"],
        basis["label"],
        score and score["accuracy"],
        ci(score, 0),
        ci(score, 1),
        score and score["n"],
        v and v["accuracy"],
        ci(v, 0),
        ci(v, 1),
        v and v["n"],
        test and test["accuracy"],
        ci(test, 0),
        ci(test, 1),
        test and test["n"],
        test and test["data"],
        r["train_time_s"],
        "|".join(r["classes"]) if r["classes"] else None,
        "; ".join(_not_held_out_text(x) for x in r["not_held_out"]) or None,
        r.get("metric", "accuracy"),
    ]


def _not_held_out_text(score: dict) -> str:
    """A score on rows the run had seen, never called a test accuracy."""
    counts = score.get("overlap") or {}
    seen = f" ({counts.get('training_rows', 0):,} training, {counts.get('validation_rows', 0):,} validation rows)"
    return f"{_fmt_score(dict(score, ci95=None))} on {score['data']}{seen if counts else ''}"


def check_one_problem_type(rows: list[dict]) -> None:
    """Single-label accuracy and multi-label micro F1 are different measures: never ranked together."""
    multi = [r["display"] for r in rows if r.get("problem_type") == "multi_label"]
    single = [r["display"] for r in rows if r.get("problem_type") != "multi_label"]
    if multi and single:
        raise LorabudgetError(
            f"cannot compare single-label runs ({', '.join(single)}) with multi-label runs ({', '.join(multi)}): "
            "accuracy and micro F1 do not rank against each other; compare each kind on its own"
        )


def class_groups(rows: list[dict], allow_different_classes: bool = False) -> list[list[int]]:
    """Indices of the rows per class set, in first-seen order; runs whose classes are unknown join the first.

    Runs of different class sets are different tasks, whose accuracies do not rank against each other:
    refused in one line naming them, unless ``allow_different_classes`` (then one table per class set)."""
    sets: dict[frozenset, list[int]] = {}
    for i, r in enumerate(rows):
        if r.get("classes"):
            sets.setdefault(frozenset(r["classes"]), []).append(i)
    if len(sets) > 1 and not allow_different_classes:
        named = "; ".join(
            f"{', '.join(rows[i]['display'] for i in idx)} ({', '.join(rows[idx[0]]['classes'])})"
            for idx in sets.values()
        )
        raise LorabudgetError(
            f"runs of different class sets cannot be ranked together: {named}; compare runs of one task, "
            "or pass --allow-different-classes for one table per class set"
        )
    groups = list(sets.values()) or [[]]
    groups[0] = sorted(groups[0] + [i for i, r in enumerate(rows) if not r.get("classes")])
    return groups


def _ranked_table(rows: list[dict], basis: dict) -> tuple[list[str], list[list], list[int]]:
    """The Markdown table, its CSV rows and the ranked row indices, for rows ranked on ``basis``."""
    order = sorted(range(len(rows)), key=lambda i: -(basis["scores"][i] or {"accuracy": -1})["accuracy"])
    ranked = [i for i in order if basis["scores"][i] is not None]
    short_name = "micro F1" if basis.get("metric") == MICRO_F1 else "acc"
    other_label = f"validation {short_name} (95% CI)" if basis["kind"] == "test" else f"test {short_name} (95% CI)"
    seen = any(r["not_held_out"] for r in rows)  # a column only when some run has such a score
    lines = [
        f"| rank | run | method | trainable params | head params | **{basis['label']}** (95% CI) | {other_label} | "
        + ("not held out (rows the run had seen) | " if seen else "")
        + "vs next in ranking | training time (s) |",
        "|---:|---|---|---:|---:|---:|---:|" + ("---|" if seen else "") + "---|---:|",
    ]
    csv_rows = []
    for i in order:
        r, score = rows[i], basis["scores"][i]
        rank = ranked.index(i) + 1 if i in ranked else None
        other = r["validation"] if basis["kind"] == "test" else (list(r["tests"].values())[-1] if r["tests"] else None)
        nxt = ranked[ranked.index(i) + 1] if i in ranked and ranked.index(i) + 1 < len(ranked) else None
        versus = short_verdict(score, rows[nxt]["display"], basis["scores"][nxt]) if nxt is not None else ""
        not_held = "; ".join(_not_held_out_text(x) for x in r["not_held_out"]) or "–"
        lines.append(
            f"| {_fmt(rank, 'int')} | {r['display']}{'' if r['finished'] else ' (unfinished)'} | "
            f"{_fmt(r['method'], 'str')} | {_fmt(r['trainable_params'], 'int')} | "
            f"{_fmt(r['head_params'], 'int')} | {_fmt_score(score)} | {_fmt_score(other)} | "
            + (f"{not_held} | " if seen else "")
            + f"{versus} | {_fmt(r['train_time_s'], 's')} |"
        )
        csv_rows.append(_csv_row(rank, r["display"], r, basis, score))
    return lines, csv_rows, ranked


def ranking_section(rows: list[dict], basis: dict) -> tuple[list[str], list[list]]:
    """The ranking of one class set: what it is ranked by, the table, and the pairwise verdicts."""
    lines, csv_rows, ranked = _ranked_table(rows, basis)
    text = [
        f"Ranked by **{basis['label']}**, the most trustworthy figure all runs share"
        + (
            " (a labelled test set every run was evaluated on)."
            if basis["kind"] == "test"
            else ": no labelled test set is shared by every run. Validation accuracy is the score each kept "
            "checkpoint was chosen on, so it is optimistic; run `lorabudget evaluate RUN --data FILE` on one "
            "labelled file for every run to rank on test accuracy."
        ),
        (
            'Multi-label runs: intervals are bootstrap 95% intervals of micro F1. A run "beats" another only '
            "when McNemar's exact test on the rows both were evaluated on, counting the rows whose predicted "
            "label set is exactly the true set, gives p < 0.05; otherwise the difference is within noise."
            if basis.get("metric") == MICRO_F1
            else 'Intervals are Wilson 95% intervals. A run "beats" another only when McNemar\'s exact test on '
            "the rows both were evaluated on gives p < 0.05; otherwise the difference is within noise."
        ),
        "",
        *lines,
        "",
        "A dash means the run has no such figure (not trained to the end, or not evaluated on that labelled set).",
    ]
    if any(r["not_held_out"] for r in rows):
        text.append(
            "Scores on files that share rows with a run's training or validation rows are not held out: "
            "they estimate nothing about new text, so they are neither ranked nor called test accuracy."
        )
    pairs = (
        [(a, b) for x, a in enumerate(ranked) for b in ranked[x + 1 :]]
        if len(ranked) <= 10
        else list(zip(ranked, ranked[1:]))
    )
    if pairs:
        text += ["", f"## Pairwise ({basis['label']})", ""]
        text += [
            f"- {verdict(rows[a]['display'], basis['scores'][a], rows[b]['display'], basis['scores'][b])}"
            for a, b in pairs
        ]
    return text, csv_rows


def write_csv(path: Path, csv_rows: list[list]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COMPARE_COLUMNS)
    writer.writerows([["" if v is None else v for v in row] for row in csv_rows])
    atomic_write_text(path, buffer.getvalue())


def plot_basis(bases: list[tuple[list[int], dict]], count: int) -> dict:
    """The ranking figure of each row across all class sets: each row's score from its own set's basis."""
    if len(bases) == 1:
        return bases[0][1]
    scores: list[Optional[dict]] = [None] * count
    for idx, basis in bases:
        for k, i in enumerate(idx):
            scores[i] = basis["scores"][k]
    kinds = {basis["kind"] for _, basis in bases}
    metric = bases[0][1].get("metric", "accuracy")  # one problem type per comparison
    label = f"{metric_name(metric)} (each class set ranked on its own figure)"
    kind = kinds.pop() if len(kinds) == 1 else "mixed"
    return {"kind": kind, "key": None, "label": label, "metric": metric, "scores": scores}
