"""Figures and Markdown reports made from the files a run directory already holds.

``write_report(run_dir)`` reads ``metrics.jsonl``, ``eval.json``, ``predictions.json``,
``summary.json``, ``budget.json`` and ``config.yaml`` and writes PNG figures plus ``report.md``.
``write_comparison(runs, out_dir)`` writes a results table across runs and an accuracy-vs-parameters
scatter with the budget line and the Pareto front. Anything a run lacks is said, never invented.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .io import atomic_path, atomic_write_text

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
    return [
        f"- model: `{cfg.get('model', {}).get('name')}`, max length {cfg.get('model', {}).get('max_length')}",
        f"- head: {cfg.get('head', {}).get('type')} (pooling {cfg.get('head', {}).get('pooling')})",
        f"- LoRA: r={a.get('r')}, alpha={a.get('alpha')}, dropout={a.get('dropout')}, rsLoRA={a.get('use_rslora')}, "
        f"DoRA={a.get('use_dora')}; {where}",
        f"- training: {t.get('epochs')} epochs, batch {t.get('batch_size')}, lr {t.get('learning_rate')}, "
        f"{t.get('scheduler')} schedule, warm-up {t.get('warmup_ratio')}, seed {t.get('seed')}",
        f"- data: `{cfg.get('data', {}).get('train')}`",
    ]


def _budget_table(budget: Optional[dict]) -> list[str]:
    if not budget:
        return ["budget.json is missing: no parameter breakdown."]
    lines = ["| part | trainable parameters |", "|---|---:|"]
    by_module: dict[str, int] = {}
    layers: dict[str, set] = {}
    for site in budget.get("lora_by_site", []):
        by_module[site["module"]] = by_module.get(site["module"], 0) + site["params"]
        layers.setdefault(site["module"], set()).add(site["layer"])
    for module, n in by_module.items():
        lines.append(f"| LoRA {module} (layers {', '.join(map(str, sorted(layers[module])))}) | {n:,} |")
    lines.append(f"| classification head | {budget['head_params']:,} |")
    for name, n in (budget.get("other_params") or {}).items():
        lines.append(f"| other: {name} | {n:,} |")
    lines.append(f"| **total** | **{budget['trainable_params']:,}** |")
    lines.append(f"| budget | {budget['budget']:,} ({'within' if budget['within_budget'] else 'OVER'}) |")
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
        md.append(
            f"Best validation accuracy **{summary['validation_accuracy']:.4f}** (macro F1 "
            f"{summary['validation_macro_f1']:.4f}) at step {summary['best_step']} of {summary['steps']}; "
            f"training took {summary['train_time_s']:.1f} s on {summary.get('device')} "
            f"({summary.get('samples_per_s') or 0:.1f} samples/s)."
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


def run_row(run_dir: Path) -> dict[str, Any]:
    """One table row from a run's files; None where the run has no such figure."""
    summary = read_json(run_dir / "summary.json") or {}
    budget = read_json(run_dir / "budget.json") or {}
    test = None
    evals_dir = run_dir / "evals"
    if evals_dir.is_dir():
        tests = [e for e in (read_json(p) for p in sorted(evals_dir.glob("*.json"))) if e and e.get("kind") == "evaluate"]
        if tests:
            test = max(tests, key=lambda e: e.get("time", ""))
    return {
        "run": str(run_dir),
        "name": summary.get("name", run_dir.name),
        "method": summary.get("method"),
        "trainable_params": summary.get("trainable_params", budget.get("trainable_params")),
        "head_params": summary.get("head_params", budget.get("head_params")),
        "budget": summary.get("budget", budget.get("budget")),
        "validation_accuracy": summary.get("validation_accuracy"),
        "test_accuracy": test.get("accuracy") if test else None,
        "test_data": test.get("data") if test else None,
        "train_time_s": summary.get("train_time_s"),
    }


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


def write_comparison(run_dirs: Sequence[Path], out_dir: Path) -> Path:
    """Write ``compare.md`` and ``accuracy_vs_params.png`` into ``out_dir``; return the table's path."""
    rows = [run_row(Path(r)) for r in run_dirs]
    lines = [
        "| configuration | method | trainable params | head params | validation acc | test acc | training time (s) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {_fmt(r['method'], 'str')} | {_fmt(r['trainable_params'], 'int')} | "
            f"{_fmt(r['head_params'], 'int')} | {_fmt(r['validation_accuracy'], 'acc')} | "
            f"{_fmt(r['test_accuracy'], 'acc')} | {_fmt(r['train_time_s'], 's')} |"
        )
    notes = [f"- {r['name']}: test accuracy on `{r['test_data']}`" for r in rows if r["test_data"]]
    text = ["# Run comparison", "", *lines, "", "A dash means the run has no such figure (not trained to the end, or not evaluated on a labelled test set)."]
    if notes:
        text += ["", *notes]

    plotted = [r for r in rows if r["trainable_params"] is not None and r["validation_accuracy"] is not None]
    fig_path = out_dir / "accuracy_vs_params.png"
    if plotted:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(8, 5))
        xs = [r["trainable_params"] for r in plotted]
        ys = [100 * r["validation_accuracy"] for r in plotted]
        ax.scatter(xs, ys, s=40, color="tab:blue", zorder=3, label="validation accuracy")
        tests = [(r["trainable_params"], 100 * r["test_accuracy"]) for r in plotted if r["test_accuracy"] is not None]
        if tests:
            ax.scatter(*zip(*tests), s=40, marker="x", color="tab:orange", zorder=3, label="test accuracy")
        budgets = sorted({r["budget"] for r in plotted if r["budget"]})
        limit = min(budgets) if budgets else float("inf")
        within = [i for i, x in enumerate(xs) if x <= limit]
        front = [within[i] for i in pareto_front([(xs[i], ys[i]) for i in within])]
        ax.plot([xs[i] for i in front], [ys[i] for i in front], color="tab:green", linewidth=1.5, zorder=2,
                label="Pareto front (within budget)")
        for b in budgets:
            if b <= 1.5 * max(xs):  # a teacher's raised limit far off to the right would squash the plot
                ax.axvline(b, color="red", linestyle="--", linewidth=1, label=f"budget {b:,}")
        place_labels(ax, xs, ys, [r["name"] for r in plotted])
        ax.set(xlabel="trainable parameters", ylabel="accuracy (%)", title=f"Accuracy vs trainable parameters ({len(plotted)} runs)")
        ax.xaxis.set_major_formatter(_plt().FuncFormatter(lambda v, _: f"{v / 1e3:,.0f}k"))
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=4, fontsize=8)
        out_dir.mkdir(parents=True, exist_ok=True)
        _save(fig, fig_path)
        text += ["", "![Accuracy vs trainable parameters](accuracy_vs_params.png)"]
    else:
        text += ["", "No run has both a parameter count and a validation accuracy: no scatter plot."]
    path = out_dir / "compare.md"
    atomic_write_text(path, "\n".join(text) + "\n")
    return path
