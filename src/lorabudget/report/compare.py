"""Comparing runs: a results table across runs (Markdown and CSV) ranked by the most trustworthy accuracy
they share, with Wilson intervals and McNemar paired tests, and an accuracy-vs-parameters plot with error
bars, the budget line and the Pareto front. Anything a run lacks is said, never invented."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Optional, Sequence

from lorabudget.errors import LorabudgetError
from lorabudget.io import atomic_write_text
from lorabudget.report.compare_figure import draw_comparison
from lorabudget.report.plots import save_figure
from lorabudget.rundir.layout import RunDir
from lorabudget.stats import accuracy_interval, format_interval, mcnemar


def _score(
    acc: Optional[float], n: Optional[int], record: Optional[dict] = None, data: Optional[str] = None
) -> Optional[dict]:
    """An accuracy with its row count, Wilson 95% interval and (when kept) per-row results."""
    if acc is None:
        return None
    record = record or {}
    n = record.get("n") or record.get("rows") or n
    ci = record.get("accuracy_ci95") or (list(accuracy_interval(acc, int(n))) if n else None)
    correct = record.get("correct")
    return {
        "accuracy": float(acc),
        "n": int(n) if n else None,
        "ci95": ci,
        "data": data or record.get("data"),
        "fingerprint": record.get("rows_fingerprint"),
        "correct": correct if correct is not None and n and len(correct) == n else None,
    }


def run_row(run_dir: Path) -> dict[str, Any]:
    """What a run's files say about it; None where the run has no such figure.

    ``tests`` maps a test set's key (file name, rows, rows fingerprint) to its latest evaluation;
    ``validation`` is the kept checkpoint's validation score.
    """
    files = RunDir(run_dir)
    summary = files.read_summary()
    budget = files.read_budget() or {}
    records = files.eval_records()
    tests: dict[tuple, dict] = {}
    validation_record = None
    for e in records:
        if e.get("kind") == "evaluate" and e.get("accuracy") is not None:
            score = _score(e["accuracy"], None, e)
            tests[(Path(str(e.get("data"))).name, score["n"], score["fingerprint"])] = score
        elif e.get("kind") == "validation":
            validation_record = e
    # A run that trained on its validation rows has no validation estimate to rank or compare by.
    val_acc = None if summary.get("validation_trained_on") else summary.get("validation_accuracy")
    # The kept checkpoint's per-row validation results, when eval.json/evals recorded that same score.
    if validation_record is not None and val_acc is not None and validation_record.get("accuracy") != val_acc:
        validation_record = None
    validation = _score(
        val_acc,
        summary.get("validation_rows"),
        validation_record,
        data=(validation_record or {}).get("data", "validation split"),
    )
    latest_test = list(tests.values())[-1] if tests else None  # records are in time order
    trainable = summary.get("trainable_params", budget.get("trainable_params"))
    head = summary.get("head_params", budget.get("head_params"))
    adapter = summary.get("adapter_params", budget.get("adapter_params"))
    return {
        "run": str(run_dir),
        "name": run_dir.name,
        "config_name": summary.get("name"),
        "method": summary.get("method")
        if not summary.get("distill")
        else f"{summary.get('method')} + KD ({summary['distill']})",
        "trainable_params": trainable,
        "adapter_params": adapter,
        "head_params": head,
        "budget": summary.get("budget", budget.get("budget")),
        "validation": validation,
        "validation_accuracy": val_acc,
        "tests": tests,
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
    base = list(names) + [Path(r).resolve().name for r in run_dirs[len(names) :]]
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
    if shared:
        key = max(shared, key=lambda k: (k[1] or 0, k[0]))
        return {
            "kind": "test",
            "key": key,
            "label": f"test accuracy on {key[0]} ({key[1]:,} rows)" if key[1] else f"test accuracy on {key[0]}",
            "scores": [r["tests"].get(key) for r in rows],
        }
    sizes = sorted({r["validation"]["n"] for r in scored if r["validation"] and r["validation"]["n"]})
    rows_text = f" ({sizes[0]:,} rows)" if len(sizes) == 1 else ""
    return {
        "kind": "validation",
        "key": None,
        "label": f"validation accuracy{rows_text}",
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
    detail = f"{test['only_a']:,} rows only {name_a} got right, {test['only_b']:,} only {name_b}"
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
    ]


def write_comparison(run_dirs: Sequence[Path], out_dir: Path, names: Sequence[str] = ()) -> Path:
    """Write ``compare.md``, ``compare.csv`` and ``accuracy_vs_params.png`` into ``out_dir``.

    Runs are ranked by the most trustworthy figure they all share (see :func:`choose_basis`), and
    "A beats B" is written only when McNemar's exact test on the same rows gives p < 0.05.
    Returns the Markdown table's path.
    """
    run_dirs = [Path(r) for r in run_dirs]
    rows = [run_row(r) for r in run_dirs]
    shown = display_names(run_dirs, names)
    for r, name in zip(rows, shown):
        r["display"] = name
    basis = choose_basis(rows)
    order = sorted(range(len(rows)), key=lambda i: -(basis["scores"][i] or {"accuracy": -1})["accuracy"])
    ranked = [i for i in order if basis["scores"][i] is not None]
    other_label = "validation acc (95% CI)" if basis["kind"] == "test" else "test acc (95% CI)"

    lines = [
        f"| rank | run | method | trainable params | head params | **{basis['label']}** (95% CI) | {other_label} | "
        "vs next in ranking | training time (s) |",
        "|---:|---|---|---:|---:|---:|---:|---|---:|",
    ]
    csv_rows = []
    for i in order:
        r, score = rows[i], basis["scores"][i]
        rank = ranked.index(i) + 1 if i in ranked else None
        other = r["validation"] if basis["kind"] == "test" else (list(r["tests"].values())[-1] if r["tests"] else None)
        nxt = ranked[ranked.index(i) + 1] if i in ranked and ranked.index(i) + 1 < len(ranked) else None
        versus = short_verdict(score, rows[nxt]["display"], basis["scores"][nxt]) if nxt is not None else ""
        lines.append(
            f"| {_fmt(rank, 'int')} | {r['display']}{'' if r['finished'] else ' (unfinished)'} | "
            f"{_fmt(r['method'], 'str')} | {_fmt(r['trainable_params'], 'int')} | "
            f"{_fmt(r['head_params'], 'int')} | {_fmt_score(score)} | {_fmt_score(other)} | {versus} | "
            f"{_fmt(r['train_time_s'], 's')} |"
        )
        csv_rows.append(_csv_row(rank, r["display"], r, basis, score))

    text = [
        "# Run comparison",
        "",
        f"Ranked by **{basis['label']}**, the most trustworthy figure all runs share"
        + (
            " (a labelled test set every run was evaluated on)."
            if basis["kind"] == "test"
            else ": no labelled test set is shared by every run. Validation accuracy is the score each kept "
            "checkpoint was chosen on, so it is optimistic; run `lorabudget evaluate RUN --data FILE` on one "
            "labelled file for every run to rank on test accuracy."
        ),
        'Intervals are Wilson 95% intervals. A run "beats" another only when McNemar\'s exact test on the '
        "rows both were evaluated on gives p < 0.05; otherwise the difference is within noise.",
        "",
        *lines,
        "",
        "A dash means the run has no such figure (not trained to the end, or not evaluated on that labelled set).",
    ]
    sources = [f"- {rows[i]['display']}: `{rows[i]['run']}`" for i in order]
    text += ["", "Run directories:", "", *sources]

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

    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "compare.csv"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COMPARE_COLUMNS)
    writer.writerows([["" if v is None else v for v in row] for row in csv_rows])
    atomic_write_text(csv_path, buffer.getvalue())

    if plot_comparison(rows, basis, out_dir / "accuracy_vs_params.png"):
        text += ["", f"![{basis['label']} vs trainable parameters](accuracy_vs_params.png)"]
    else:
        text += ["", f"No run has both a parameter count and a {basis['label']}: no scatter plot."]
    text += ["", "The same table as CSV: [compare.csv](compare.csv)."]
    path = out_dir / "compare.md"
    atomic_write_text(path, "\n".join(text) + "\n")
    return path


def plot_comparison(rows: list[dict], basis: dict, path: Path) -> bool:
    """Accuracy (the ranking figure, with 95% intervals) against trainable parameters, drawn by
    :func:`~lorabudget.report.compare_figure.draw_comparison`; False if there is nothing to draw."""
    fig = draw_comparison(rows, basis)
    if fig is None:
        return False
    save_figure(fig, path)
    return True
