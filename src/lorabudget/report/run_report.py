"""Figures and Markdown reports made from the files a run directory already holds.

``write_report(run_dir)`` reads ``metrics.jsonl``, ``eval.json``, ``predictions.json``,
``summary.json``, ``budget.json`` and ``config.yaml`` and writes PNG figures plus ``report.md``.
``write_comparison(runs, out_dir)`` writes a results table across runs (Markdown and CSV) ranked by the
most trustworthy accuracy they share, with Wilson intervals and McNemar paired tests, and an
accuracy-vs-parameters plot with error bars, the budget line and the Pareto front. Anything a run lacks is said, never invented.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from lorabudget.errors import LorabudgetError
from lorabudget.io import atomic_path, atomic_write_text
from lorabudget.stats import accuracy_interval, format_interval, mcnemar

FIGSIZE = (7.0, 4.2)
DPI = 110


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 12, "axes.labelsize": 10, "figure.dpi": DPI})
    return plt


def class_colors(n: int) -> list:
    """One fixed colour per class id, the same in every figure."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _save(fig, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        # No software/date metadata: the same inputs give byte-identical files.
        fig.savefig(tmp, format="png", metadata={"Software": None}, bbox_inches="tight")
    _plt().close(fig)


def read_json(path: Path) -> Optional[Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(training lines, evaluation lines) of ``metrics.jsonl``; unreadable lines are skipped."""
    train, evals = [], []
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("type") == "train":
                train.append(record)
            elif record.get("type") == "eval":
                evals.append(record)
    return train, evals


def ema(values: Sequence[float], weight: float = 0.8) -> np.ndarray:
    out, acc = [], None
    for v in values:
        acc = v if acc is None else weight * acc + (1 - weight) * v
        out.append(acc)
    return np.array(out)


def plot_training_loss(train: list[dict], path: Path, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    steps = [r["step"] for r in train]
    loss = [r["loss"] for r in train]
    ax.plot(steps, loss, color="tab:blue", alpha=0.3, linewidth=1, label="logged mean loss")
    ax.plot(steps, ema(loss), color="tab:blue", linewidth=2, label="smoothed (EMA 0.8)")
    ax.set(title=f"Training loss: {title}", xlabel="optimizer step", ylabel="loss (cross-entropy, nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_validation(evals: list[dict], path: Path, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    steps = [r["step"] for r in evals]
    ax.plot(steps, [r["accuracy"] for r in evals], marker="o", color="tab:green", label="accuracy")
    ax.plot(steps, [r["macro_f1"] for r in evals], marker="s", color="tab:purple", label="macro F1")
    kept = [r for r in evals if r.get("best")]  # the last improvement is the checkpoint training kept
    best = kept[-1] if kept else max(evals, key=lambda r: r["accuracy"])
    ax.axvline(best["step"], color="gray", linestyle="--", linewidth=1)
    ax.annotate(f"kept: step {best['step']}, acc {best['accuracy']:.4f}", (best["step"], best["accuracy"]),
                textcoords="offset points", xytext=(6, -14), fontsize=9)
    ax.set(title=f"Validation: {title}", xlabel="optimizer step", ylabel="accuracy / macro F1 (fraction)")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(steps, [r["loss"] for r in evals], marker="^", color="tab:red", alpha=0.7, label="loss")
    ax2.set_ylabel("validation loss (nats)")
    scores = [r["accuracy"] for r in evals] + [r["macro_f1"] for r in evals]
    ax.set_ylim(max(0.0, min(scores) - 0.03), min(1.0, max(scores) + 0.03))
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    # Below the axes, so the legend never covers a curve.
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)
    _save(fig, path)


def plot_confusion(ev: dict, path: Path) -> None:
    plt = _plt()
    cm = np.array(ev["confusion_matrix"], dtype=float)
    names = ev["class_names"]
    rates = cm / np.clip(cm.sum(1, keepdims=True), 1, None)
    size = max(4.5, 1.1 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{int(cm[i, j]):,}\n{rates[i, j]:.1%}", ha="center", va="center", fontsize=9,
                    color="white" if rates[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set(xlabel="predicted class", ylabel="true class",
           title=f"Confusion matrix ({ev.get('rows', int(cm.sum())):,} rows, acc {ev['accuracy']:.4f})")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    _save(fig, path)


def plot_prediction_distribution(pred: dict, names: list[str], expected: Optional[list[float]], path: Path) -> None:
    plt = _plt()
    counts = np.array([pred["counts"].get(n, 0) for n in names])
    total = max(int(counts.sum()), 1)
    fig, ax = plt.subplots(figsize=FIGSIZE)
    bars = ax.bar(range(len(names)), counts, color=class_colors(len(names)))
    for bar, c in zip(bars, counts):
        ax.annotate(f"{c:,}\n{c / total:.1%}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=9, xytext=(0, 2), textcoords="offset points")
    if expected is not None:
        for i, share in enumerate(expected):
            ax.hlines(share * total, i - 0.4, i + 0.4, colors="black", linestyles="--", linewidth=1.5,
                      label="expected (training distribution)" if i == 0 else None)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14))  # below the axes: never over a bar
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, max(counts.max(), max(expected or [0]) * total) * 1.2 + 1)
    source = Path(str(pred.get("input", ""))).name
    ax.set(title=f"Predicted classes on {source} ({total:,} rows)", xlabel="predicted class", ylabel="rows")
    _save(fig, path)


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = 10):
    """Per-bin (mean confidence, accuracy, count) and the expected calibration error."""
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    conf, acc, count = np.zeros(bins), np.zeros(bins), np.zeros(bins, dtype=int)
    for b in range(bins):
        m = idx == b
        count[b] = m.sum()
        if count[b]:
            conf[b], acc[b] = confidence[m].mean(), correct[m].mean()
    ece = float((count / max(len(confidence), 1) * np.abs(acc - conf)).sum())
    return edges, conf, acc, count, ece


def plot_reliability(ev: dict, path: Path) -> float:
    plt = _plt()
    confidence = np.array(ev["confidence"], dtype=float)
    correct = np.array(ev["correct"], dtype=float)
    edges, conf, acc, count, ece = reliability(confidence, correct)
    fig, ax = plt.subplots(figsize=(5.5, 5.0))
    centers = (edges[:-1] + edges[1:]) / 2
    has = count > 0
    ax.bar(centers[has], acc[has], width=edges[1] - edges[0], edgecolor="black", color="tab:blue", alpha=0.7,
           label="accuracy in bin")
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    for c, a, n in zip(centers[has], acc[has], count[has]):
        ax.annotate(f"{n}", (c, a), ha="center", va="bottom", fontsize=7, xytext=(0, 1), textcoords="offset points")
    ax.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="confidence (max class probability)", ylabel="accuracy (fraction)",
           title=f"Reliability: ECE {ece:.4f} ({len(confidence):,} rows)")
    ax.legend(loc="upper left")
    _save(fig, path)
    return ece


def _config_summary(run_dir: Path) -> list[str]:
    import yaml

    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return ["- config.yaml: missing or unreadable"]
    a, t = cfg.get("adapter", {}), cfg.get("training", {})
    placement = a.get("placements") or [{"modules": a.get("modules"), "layers": a.get("layers")}]
    where = "; ".join(
        f"{', '.join(p.get('modules') or [])} on layers {p.get('layers') if p.get('layers') is not None else 'all'}"
        + (f" (r={p['r']})" if p.get("r") else "")
        for p in placement
    )
    model = cfg.get("model", {})
    quant = model.get("quantization", "none")
    return [
        f"- model: `{model.get('name')}`, max length {model.get('max_length')}"
        + (f", base quantized ({quant})" if quant not in (None, "none") else ""),
        f"- head: {cfg.get('head', {}).get('type')} (pooling {cfg.get('head', {}).get('pooling')})",
        f"- {_method_line(a)}; {where}",
        f"- training: {t.get('epochs')} epochs, batch {t.get('batch_size')}, lr {t.get('learning_rate')}, "
        f"{t.get('scheduler')} schedule, warm-up {t.get('warmup_ratio')}, seed {t.get('seed')}",
        f"- data: `{cfg.get('data', {}).get('train')}`",
    ]


def _method_line(a: dict) -> str:
    """The adapter settings that matter for the run's method (runs from before the seam are LoRA)."""
    method = a.get("method", "lora")
    options = a.get("options") or {}
    extra = ", " + ", ".join(f"{k}={v}" for k, v in options.items()) if options else ""
    if method == "lora":
        return (f"method lora: r={a.get('r')}, alpha={a.get('alpha')}, dropout={a.get('dropout')}, "
                f"rsLoRA={a.get('use_rslora')}, DoRA={a.get('use_dora')}{extra}")
    from lorabudget.methods.registry import get_method

    spec = get_method(method)
    settings = [f"r={a.get('r')}"] if spec.uses_rank else []
    settings += [f"alpha={a.get('alpha')}"] if spec.uses_alpha else []
    settings += [f"dropout={a.get('dropout')}"] if spec.uses_dropout else []
    return f"method {method} ({spec.summary})" + (": " + ", ".join(settings) if settings else "") + extra


def _budget_table(budget: Optional[dict]) -> list[str]:
    if not budget:
        return ["budget.json is missing: no parameter breakdown."]
    method = budget.get("method", "lora")
    lines = ["| part | trainable parameters |", "|---|---:|"]
    by_module: dict[str, int] = {}
    layers: dict[str, set] = {}
    kinds: dict[str, set] = {}
    # "lora_by_site" is how runs from before the method seam recorded their sites.
    for site in budget.get("by_site", budget.get("lora_by_site", [])):
        by_module[site["module"]] = by_module.get(site["module"], 0) + site["params"]
        layers.setdefault(site["module"], set()).add(site["layer"])
        kinds.setdefault(site["module"], set()).add(site.get("kind", "lora"))
    for module, n in by_module.items():
        lines.append(
            f"| {method} {module} (layers {', '.join(map(str, sorted(layers[module])))}; "
            f"{', '.join(sorted(kinds[module]))}) | {n:,} |"
        )
    for shared in budget.get("shared", []):
        lines.append(
            f"| {method} {shared['kind']}, shared by {shared['modules']} modules (one copy each: "
            f"{shared['unshared_equivalent']:,}) | {shared['params']:,} |"
        )
    lines.append(f"| classification head | {budget['head_params']:,} |")
    for name, n in (budget.get("other_params") or {}).items():
        lines.append(f"| other: {name} | {n:,} |")
    lines.append(f"| **total** | **{budget['trainable_params']:,}** |")
    limit = budget.get("budget")
    if limit is None:
        lines.append("| budget | unlimited (teacher) |")
    else:
        lines.append(f"| budget | {limit:,} ({'within' if budget['within_budget'] else 'OVER'}) |")
    return lines


def write_report(run_dir: Path) -> Path:
    """Write the run's figures and ``report.md``; return the report's path."""
    run_dir = Path(run_dir)
    fig_dir = run_dir / "figures"
    summary = read_json(run_dir / "summary.json") or {}
    name = summary.get("name", run_dir.name)
    train, evals = read_metrics(run_dir)
    ev = read_json(run_dir / "eval.json")
    pred = read_json(run_dir / "predictions.json")
    budget = read_json(run_dir / "budget.json")
    names = (ev or {}).get("class_names") or summary.get("class_names") or []

    md = [f"# Run report: {name}", ""]
    md += ["## Configuration", ""] + _config_summary(run_dir) + [""]
    md += ["## Trainable parameters", ""] + _budget_table(budget) + [""]
    md += ["## Results", ""]
    if summary:
        took = (f"{summary['train_time_s']:.1f} s on {summary.get('device')} "
                f"({summary.get('samples_per_s') or 0:.1f} samples/s).")
        if summary.get("validation_trained_on"):
            md.append(
                f"Trained on every labelled row, the {summary.get('validation_rows', 0):,} validation rows included "
                f"(`data.train_on_validation`), and kept its last weights: their validation accuracy "
                f"({summary['validation_accuracy']:.4f}) is no estimate; evaluate the run on a held-out file. "
                f"{summary['steps']} steps took {took}"
            )
        else:
            md.append(
                f"Best validation accuracy **{summary['validation_accuracy']:.4f}** (macro F1 "
                f"{summary['validation_macro_f1']:.4f}) at step {summary['best_step']} of {summary['steps']}; "
                f"training took {took}"
            )
        if summary.get("train_flops_per_s") and summary.get("matmul_peak_flops_per_s"):
            precision = {"no": "fp32"}.get(summary.get("mixed_precision"), summary.get("mixed_precision") or "fp32")
            md += ["", (
                f"Training throughput: {summary.get('samples_per_s') or 0:.1f} samples/s, "
                f"{summary.get('tokens_per_s') or 0:,.0f} real tokens/s; {summary['train_flops_per_s'] / 1e9:,.1f} GFLOP/s "
                f"executed ({(summary.get('train_real_token_flops_per_s') or 0) / 1e9:,.1f} on real tokens), "
                f"{100 * summary['train_peak_fraction']:.0f}% of this machine's {precision} matmul peak "
                f"({summary['matmul_peak_flops_per_s'] / 1e9:,.0f} GFLOP/s, measured at the end of the run)."
            )]
    else:
        md.append("summary.json is missing: the run has not finished training.")
    md.append("")
    missing = []
    figures = []
    if train:
        plot_training_loss(train, fig_dir / "training_loss.png", name)
        figures.append(("Training loss", "training_loss.png"))
    else:
        missing.append("training loss (metrics.jsonl has no training lines)")
    if evals:
        plot_validation(evals, fig_dir / "validation.png", name)
        figures.append(("Validation metrics (dashed line: kept checkpoint)", "validation.png"))
    else:
        missing.append("validation curves (no validation evaluations in metrics.jsonl)")
    if ev and ev.get("confusion_matrix"):
        plot_confusion(ev, fig_dir / "confusion_matrix.png")
        figures.append((f"Confusion matrix on {ev.get('data', 'the last evaluated set')}", "confusion_matrix.png"))
        if ev.get("confidence"):
            ece = plot_reliability(ev, fig_dir / "reliability.png")
            figures.append((f"Reliability diagram on {ev.get('data', 'the last evaluated set')} (ECE {ece:.4f})", "reliability.png"))
        else:
            missing.append("reliability diagram (eval.json has no per-row confidences)")
    else:
        missing.append("confusion matrix and reliability diagram (no eval.json: run `lorabudget evaluate`)")
    if pred and names:
        expected = summary.get("train_label_distribution")
        plot_prediction_distribution(pred, names, expected, fig_dir / "prediction_distribution.png")
        figures.append((f"Predicted class distribution on {pred.get('input')}", "prediction_distribution.png"))
    else:
        missing.append("prediction distribution (no predictions.json: run `lorabudget predict`)")
    for caption, file in figures:
        md += [f"### {caption}", "", f"![{caption}](figures/{file})", ""]
    if missing:
        md += ["## Not available", ""] + [f"- {m}" for m in missing] + [""]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(md))
    return path


# --------------------------------------------------------------------------------------------
# Comparing runs


def _eval_records(run_dir: Path) -> list[dict]:
    """Every evaluation a run kept (``evals/``, else ``eval.json``), oldest first."""
    records = []
    evals_dir = run_dir / "evals"
    if evals_dir.is_dir():
        records = [e for e in (read_json(p) for p in sorted(evals_dir.glob("*.json"))) if isinstance(e, dict)]
    if not records:
        latest = read_json(run_dir / "eval.json")
        records = [latest] if isinstance(latest, dict) else []
    return sorted(records, key=lambda e: str(e.get("time", "")))


def _score(acc: Optional[float], n: Optional[int], record: Optional[dict] = None, data: Optional[str] = None) -> Optional[dict]:
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
    summary = read_json(run_dir / "summary.json") or {}
    budget = read_json(run_dir / "budget.json") or {}
    records = _eval_records(run_dir)
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
    validation = _score(val_acc, summary.get("validation_rows"), validation_record,
                        data=(validation_record or {}).get("data", "validation split"))
    latest_test = list(tests.values())[-1] if tests else None  # records are in time order
    trainable = summary.get("trainable_params", budget.get("trainable_params"))
    head = summary.get("head_params", budget.get("head_params"))
    # New runs say adapter_params; runs made before the adapter-method seam say lora_params.
    adapter = summary.get("adapter_params", summary.get("lora_params", budget.get("adapter_params", budget.get("lora_params"))))
    return {
        "run": str(run_dir),
        "name": run_dir.name,
        "config_name": summary.get("name"),
        "method": summary.get("method") if not summary.get("distill") else f"{summary.get('method')} + KD ({summary['distill']})",
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
        "finished": (run_dir / "summary.json").is_file(),  # no summary: still training, killed or failed
    }


def display_names(run_dirs: Sequence[Path], names: Sequence[str] = ()) -> list[str]:
    """A distinct display name per run: ``names`` in order, then each run directory's name.

    Runs whose directory names collide are told apart by their parent folders, then by a number.
    """
    run_dirs = [Path(r) for r in run_dirs]
    if len(names) > len(run_dirs):
        raise LorabudgetError(f"{len(names)} --name values for {len(run_dirs)} runs")
    base = list(names) + [Path(r).resolve().name for r in run_dirs[len(names):]]
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
            "kind": "test", "key": key,
            "label": f"test accuracy on {key[0]} ({key[1]:,} rows)" if key[1] else f"test accuracy on {key[0]}",
            "scores": [r["tests"].get(key) for r in rows],
        }
    sizes = sorted({r["validation"]["n"] for r in scored if r["validation"] and r["validation"]["n"]})
    rows_text = f" ({sizes[0]:,} rows)" if len(sizes) == 1 else ""
    return {
        "kind": "validation", "key": None,
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
        return (f"{name_a} vs {name_b}: no paired test (not evaluated on the same rows with per-row results; "
                f"{how})")
    detail = f"{test['only_a']:,} rows only {name_a} got right, {test['only_b']:,} only {name_b}"
    if test["p_value"] < alpha and a["accuracy"] != b["accuracy"]:
        winner, loser = (name_a, name_b) if test["only_a"] > test["only_b"] else (name_b, name_a)
        return f"**{winner} beats {loser}** ({_fmt_p(test['p_value'])}, McNemar exact; {detail})"
    return f"{name_a} vs {name_b}: difference within noise ({_fmt_p(test['p_value'])}, McNemar exact; {detail})"


COMPARE_COLUMNS = [
    "rank", "name", "run", "method", "trainable_params", "adapter_params", "head_params", "budget",
    "ranked_by", "score", "score_ci_low", "score_ci_high", "score_rows",
    "validation_accuracy", "validation_ci_low", "validation_ci_high", "validation_rows",
    "test_accuracy", "test_ci_low", "test_ci_high", "test_rows", "test_data", "train_time_s",
]


def _csv_row(rank: Optional[int], name: str, r: dict, basis: dict, score: Optional[dict]) -> list:
    def ci(s, i):
        return s["ci95"][i] if s and s.get("ci95") else None

    test = r["tests"].get(basis["key"]) if basis["kind"] == "test" else (list(r["tests"].values())[-1] if r["tests"] else None)
    v = r["validation"]
    return [
        rank, name, r["run"], r["method"], r["trainable_params"], r["adapter_params"], r["head_params"], r["budget"],
        basis["label"], score and score["accuracy"], ci(score, 0), ci(score, 1), score and score["n"],
        v and v["accuracy"], ci(v, 0), ci(v, 1), v and v["n"],
        test and test["accuracy"], ci(test, 0), ci(test, 1), test and test["n"], test and test["data"],
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
    for pos, i in enumerate(order):
        r, score = rows[i], basis["scores"][i]
        rank = ranked.index(i) + 1 if i in ranked else None
        other = r["validation"] if basis["kind"] == "test" else (list(r["tests"].values())[-1] if r["tests"] else None)
        nxt = ranked[ranked.index(i) + 1] if i in ranked and ranked.index(i) + 1 < len(ranked) else None
        versus = short_verdict(score, rows[nxt]["display"], basis["scores"][nxt]) if nxt is not None else ""
        lines.append(
            f"| {_fmt(rank, 'int')} | {r['display']}{'' if r['finished'] else ' (unfinished)'} | {_fmt(r['method'], 'str')} | {_fmt(r['trainable_params'], 'int')} | "
            f"{_fmt(r['head_params'], 'int')} | {_fmt_score(score)} | {_fmt_score(other)} | {versus} | "
            f"{_fmt(r['train_time_s'], 's')} |"
        )
        csv_rows.append(_csv_row(rank, r["display"], r, basis, score))

    text = [
        "# Run comparison", "",
        f"Ranked by **{basis['label']}**, the most trustworthy figure all runs share"
        + (" (a labelled test set every run was evaluated on)." if basis["kind"] == "test" else
           ": no labelled test set is shared by every run. Validation accuracy is the score each kept "
           "checkpoint was chosen on, so it is optimistic; run `lorabudget evaluate RUN --data FILE` on one "
           "labelled file for every run to rank on test accuracy."),
        "Intervals are Wilson 95% intervals. A run \"beats\" another only when McNemar's exact test on the "
        "rows both were evaluated on gives p < 0.05; otherwise the difference is within noise.",
        "", *lines, "",
        "A dash means the run has no such figure (not trained to the end, or not evaluated on that labelled set).",
    ]
    sources = [f"- {rows[i]['display']}: `{rows[i]['run']}`" for i in order]
    text += ["", "Run directories:", "", *sources]

    pairs = [(a, b) for x, a in enumerate(ranked) for b in ranked[x + 1:]] if len(ranked) <= 10 else list(zip(ranked, ranked[1:]))
    if pairs:
        text += ["", f"## Pairwise ({basis['label']})", ""]
        text += [f"- {verdict(rows[a]['display'], basis['scores'][a], rows[b]['display'], basis['scores'][b])}" for a, b in pairs]

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


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not beaten by another with fewer-or-equal parameters and higher-or-equal accuracy."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def place_labels(ax, xs: Sequence[float], ys: Sequence[float], names: Sequence[str], fontsize: int = 8) -> None:
    """Annotate points, trying a few offsets per label so labels do not cover each other (greedy)."""
    ax.autoscale_view()
    fig = ax.figure
    to_px = ax.transData.transform
    scale = fig.dpi / 72.0  # offsets are in points; overlap is checked in pixels
    char_w, line_h = 0.62 * fontsize * scale, 1.3 * fontsize * scale
    candidates = [(4, 5), (4, -13), (-4, 5), (-4, -13), (4, 16), (4, -24), (-4, 16), (-4, -24)]
    placed: list[tuple[float, float, float, float]] = []
    for x, y, name in sorted(zip(xs, ys, names), key=lambda p: (-p[1], p[0])):
        px, py = to_px((x, y))
        width = char_w * len(name)
        choice = candidates[0]
        for dx, dy in candidates:
            left = px + dx * scale - (width if dx < 0 else 0)
            box = (left, py + dy * scale, left + width, py + dy * scale + line_h)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                choice = (dx, dy)
                placed.append(box)
                break
        else:
            left = px + 4 * scale
            placed.append((left, py + 5 * scale, left + width, py + 5 * scale + line_h))
        ax.annotate(name, (x, y), textcoords="offset points", xytext=choice, fontsize=fontsize,
                    ha="right" if choice[0] < 0 else "left")




def _param_formatter(value: float, _pos=None) -> str:
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    if value >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def plot_comparison(rows: list[dict], basis: dict, path: Path) -> bool:
    """Accuracy (the ranking figure, with 95% intervals) against trainable parameters; False if nothing to draw.

    The x axis is logarithmic when the parameter counts (and budget lines) span more than 10x.
    """
    idx = [i for i, r in enumerate(rows) if r["trainable_params"] and basis["scores"][i] is not None]
    if not idx:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5))
    xs = [rows[i]["trainable_params"] for i in idx]
    scores = [basis["scores"][i] for i in idx]
    ys = [100 * s["accuracy"] for s in scores]
    low = [y - 100 * s["ci95"][0] if s.get("ci95") else 0 for y, s in zip(ys, scores)]
    high = [100 * s["ci95"][1] - y if s.get("ci95") else 0 for y, s in zip(ys, scores)]
    ax.errorbar(xs, ys, yerr=[low, high], fmt="o", color="tab:blue", ecolor="tab:blue", elinewidth=1, capsize=3,
                markersize=6, zorder=3, label=f"{basis['label']}, 95% interval")
    if basis["kind"] == "test":
        vals = [(rows[i]["trainable_params"], 100 * rows[i]["validation"]["accuracy"]) for i in idx if rows[i]["validation"]]
        if vals:
            ax.scatter(*zip(*vals), s=22, marker="s", facecolors="none", edgecolors="gray", zorder=2,
                       label="validation accuracy (not ranked)")
    budgets = sorted({int(rows[i]["budget"]) for i in idx if rows[i]["budget"]})
    # Runs planned under different budgets (a 10k, a 100k and a 1M preset) each count within their own.
    within = [k for k, i in enumerate(idx) if not rows[i]["budget"] or xs[k] <= int(rows[i]["budget"])]
    if within:
        front = sorted((within[k] for k in pareto_front([(xs[k], ys[k]) for k in within])), key=lambda k: xs[k])
        scope = (f" (within the {budgets[0]:,} budget)" if len(budgets) == 1
                 else " (each run within its own budget)" if budgets else "")
        ax.plot([xs[k] for k in front], [ys[k] for k in front], color="tab:green", linewidth=1.5, zorder=2,
                marker="o", markersize=11, markerfacecolor="none", label="Pareto front" + scope)
    span = [*xs, *budgets]
    log_x = max(span) / max(min(span), 1) > 10
    if log_x:
        ax.set_xscale("log")
    for b in budgets:
        ax.axvline(b, color="red", linestyle="--", linewidth=1, zorder=1, label=f"budget {b:,} trainable parameters")
        ax.annotate(f"budget {_param_formatter(b)}", (b, 1), xycoords=("data", "axes fraction"), xytext=(-4, -12),
                    textcoords="offset points", ha="right", fontsize=8, color="red")
    lo, hi = min(span), max(span)
    ax.set_xlim(lo / 1.6, hi * 1.6) if log_x else ax.set_xlim(max(0, lo - 0.1 * (hi - lo + 1)), hi + 0.1 * (hi - lo + 1))
    place_labels(ax, xs, ys, [rows[i]["display"] for i in idx])
    ax.set(xlabel="trainable parameters" + (" (log scale)" if log_x else ""), ylabel="accuracy (%)",
           title=f"{basis['label'][0].upper() + basis['label'][1:]} vs trainable parameters ({len(idx)} runs)")
    ax.xaxis.set_major_formatter(plt.FuncFormatter(_param_formatter))
    ax.grid(alpha=0.3, which="both" if log_x else "major")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=8)
    _save(fig, path)
    return True
