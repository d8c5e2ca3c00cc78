"""A run's report: figures and ``report.md`` made from the files its run directory already holds
(read through :mod:`lorabudget.rundir.layout`); anything the run lacks is said, never invented."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from lorabudget.errors import LorabudgetError
from lorabudget.io import atomic_write_text
from lorabudget.methods.registry import get_method
from lorabudget.report.figures import (
    plot_confusion,
    plot_prediction_distribution,
    plot_reliability,
    plot_training_loss,
    plot_validation,
)
from lorabudget.report.figures import reliability as reliability  # re-exported: callers read it from here
from lorabudget.report.multilabel_figures import plot_label_counts, plot_per_class_f1, plot_pr_curves
from lorabudget.rundir.layout import RunDir
from lorabudget.rundir.rows import overlap_text


def _config_summary(files: RunDir) -> list[str]:
    try:
        cfg = files.config_values()
    except LorabudgetError:
        return [f"- {files.config_path.name}: missing or unreadable"]
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
        f"- config: `{cfg.get('name')}` (the preset or config file the run was trained from)",
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
    spec = get_method(method)
    if spec.lora_switches:
        return (
            f"method {method}: r={a.get('r')}, alpha={a.get('alpha')}, dropout={a.get('dropout')}, "
            f"rsLoRA={a.get('use_rslora')}, DoRA={a.get('use_dora')}{extra}"
        )
    settings = [f"r={a.get('r')}"] if spec.uses_rank else []
    settings += [f"alpha={a.get('alpha')}"] if spec.uses_alpha else []
    settings += [f"dropout={a.get('dropout')}"] if spec.uses_dropout else []
    return f"method {method} ({spec.summary})" + (": " + ", ".join(settings) if settings else "") + extra


def budget_table(budget: Optional[dict]) -> list[str]:
    """The Markdown table of a run's ``budget.json`` record (``RunDir.read_budget``): each adapted module
    with its layers and parameter kinds, shared tensors, the head, the total and the verdict. The run's
    report and its model card both show it."""
    if not budget:
        return ["budget.json is missing: no parameter breakdown."]
    method = budget.get("method", "lora")
    lines = ["| part | trainable parameters |", "|---|---:|"]
    by_module: dict[str, int] = {}
    layers: dict[str, set] = {}
    kinds: dict[str, set] = {}
    for site in budget.get("by_site", []):
        by_module[site["module"]] = by_module.get(site["module"], 0) + site["params"]
        layers.setdefault(site["module"], set()).add(site["layer"])
        kinds.setdefault(site["module"], set()).add(site.get("kind", "lora"))
    for module, n in by_module.items():
        lines.append(
            f"| {method} on {module} (layers {', '.join(map(str, sorted(layers[module])))}; "
            f"{', '.join(sorted(kinds[module]))}) | {n:,} |"
        )
    for shared in budget.get("shared", []):
        lines.append(
            f"| {method} {shared['kind']}, shared by {shared['modules']} modules (one copy each: "
            f"{shared['unshared_equivalent']:,}) | {shared['params']:,} |"
        )
    lines.append(f"| classification head | {budget['head_params']:,} |")
    for name, n in (budget.get("other_params") or {}).items():
        lines.append(f"| other: `{name}` | {n:,} |")
    total = budget["trainable_params"]
    lines.append(f"| **total trainable** | **{total:,}** |")
    limit = budget.get("budget")
    if limit is None:
        lines.append("| budget | unlimited (teacher) |")
    else:
        lines.append(f"| budget | {limit:,} ({'within' if total <= limit else 'OVER'}, {total / limit:.1%} used) |")
    return lines


def per_class_table(ev: dict) -> list[str]:
    """Markdown rows of an evaluation's per-class precision, recall, F1 and support (rows of that
    class), closed by the macro averages: with imbalanced classes accuracy alone hides the small ones."""
    table = ev.get("per_class") or []
    if isinstance(table, dict):  # multi-label: each class's decision threshold too
        return multilabel_class_table(ev)
    lines = ["| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for row in table:
        lines.append(
            f"| {row['class']} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | {row['support']:,} |"
        )
    if "macro_f1" in ev:
        lines.append(
            f"| **macro** | {ev.get('macro_precision', float('nan')):.4f} | {ev.get('macro_recall', float('nan')):.4f} "
            f"| **{ev['macro_f1']:.4f}** | {ev.get('rows', 0):,} |"
        )
    return lines


def multilabel_class_table(ev: dict) -> list[str]:
    """A multi-label evaluation's per-class table with each class's decision threshold, closed by the
    micro and macro F1 (where the thresholds were chosen on these same rows, the table says so)."""
    lines = ["| class | precision | recall | F1 | support | threshold |", "|---|---:|---:|---:|---:|---:|"]
    for name, row in ev["per_class"].items():
        lines.append(
            f"| {name} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | {row['support']:,} "
            f"| {row['threshold']:.3f} |"
        )
    lines.append(f"| **micro** | | | **{ev['micro_f1']:.4f}** | {ev.get('rows', 0):,} | |")
    lines.append(f"| **macro** | | | **{ev['macro_f1']:.4f}** | {ev.get('rows', 0):,} | |")
    if ev.get("thresholds_chosen_on_these_rows"):
        lines += ["", "The thresholds were chosen on these rows (each class's best F1): these scores are optimistic."]
    return lines


def _multilabel_figures(files: RunDir, ev: dict, data: str) -> list[str]:
    md = []
    for figure, plot, caption in (
        ("per_class_f1", plot_per_class_f1, f"F1 per class on {data}"),
        ("label_counts", plot_label_counts, f"Labels per row on {data}, predicted and true"),
        ("precision_recall", plot_pr_curves, f"Precision-recall curve per class on {data}"),
    ):
        path = files.eval_figure_path(ev, figure)
        plot(ev, path)
        md += _figure(caption, path)
    return md


def _figure(caption: str, path: Path) -> list[str]:
    """A figure's Markdown under its caption; ``path`` lies in the run's figures folder."""
    return [f"### {caption}", "", f"![{caption}]({path.parent.name}/{path.name})", ""]


def _summary_lines(summary: dict) -> list[str]:
    """The Results section's opening: the kept checkpoint's validation score and the training time."""
    if not summary:
        return ["summary.json is missing: the run has not finished training.", ""]
    took = (
        f"{summary['train_time_s']:.1f} s on {summary.get('device')} "
        f"({summary.get('samples_per_s') or 0:.1f} samples/s)."
    )
    if summary.get("validation_trained_on"):
        md = [
            f"Trained on every labelled row, the {summary.get('validation_rows', 0):,} validation rows included "
            f"(`data.train_on_validation`), and kept its last weights: their validation accuracy "
            f"({summary['validation_accuracy']:.4f}) is no estimate; evaluate the run on a held-out file. "
            f"{summary['steps']} steps took {took}"
        ]
    elif summary.get("validation_micro_f1") is not None:
        md = [
            f"Best validation micro F1 **{summary['validation_micro_f1']:.4f}** (macro F1 "
            f"{summary['validation_macro_f1']:.4f}, subset accuracy {summary['validation_accuracy']:.4f}) at step "
            f"{summary['best_step']} of {summary['steps']}; training took {took}"
        ]
    else:
        md = [
            f"Best validation accuracy **{summary['validation_accuracy']:.4f}** (macro F1 "
            f"{summary['validation_macro_f1']:.4f}) at step {summary['best_step']} of {summary['steps']}; "
            f"training took {took}"
        ]
    if summary.get("train_flops_per_s") and summary.get("matmul_peak_flops_per_s"):
        precision = {"no": "fp32"}.get(summary.get("mixed_precision"), summary.get("mixed_precision") or "fp32")
        md += [
            "",
            f"Training throughput: {summary.get('samples_per_s') or 0:.1f} samples/s, "
            f"{summary.get('tokens_per_s') or 0:,.0f} real tokens/s; {summary['train_flops_per_s'] / 1e9:,.1f} GFLOP/s "
            f"executed ({(summary.get('train_real_token_flops_per_s') or 0) / 1e9:,.1f} on real tokens), "
            f"{100 * summary['train_peak_fraction']:.0f}% of this machine's {precision} matmul peak "
            f"({summary['matmul_peak_flops_per_s'] / 1e9:,.0f} GFLOP/s, measured at the end of the run).",
        ]
    return md + [""]


def _score_line(ev: dict) -> str:
    """An evaluation's accuracy and macro F1; a score on rows the run has seen is marked as such."""
    if ev.get("problem_type") == "multi_label":
        lo, hi = ev["micro_f1_ci95"]
        scores = (
            f"micro F1 **{ev['micro_f1']:.4f}** (95% CI {lo:.4f}–{hi:.4f}), macro F1 {ev['macro_f1']:.4f}, "
            f"subset accuracy {ev['subset_accuracy']:.4f}, Hamming loss {ev['hamming_loss']:.4f}"
        )
        if ev.get("kind") != "validation" and ev.get("held_out") is False:
            return f"- {scores}: **not held out**, no estimate on new text"
        return f"- {scores}"
    ci = ev.get("accuracy_ci95")
    interval = f" (95% CI {ci[0]:.4f}–{ci[1]:.4f})" if ci else ""
    f1 = f", macro F1 {ev['macro_f1']:.4f}" if isinstance(ev.get("macro_f1"), (int, float)) else ""
    if ev.get("kind") != "validation" and ev.get("held_out") is False:  # an interval would claim an estimate
        return f"- accuracy {ev['accuracy']:.4f}{f1}: **not held out**, no estimate of accuracy on new text"
    return f"- accuracy **{ev['accuracy']:.4f}**{interval}{f1}"


def _evaluation_section(files: RunDir, ev: dict, trained_on: bool = False) -> list[str]:
    """One evaluation's section: what was evaluated, how it overlaps the run's own rows, its scores,
    per-class table, confusion matrix and reliability diagram (each its own figure file)."""
    data = ev.get("data", "the evaluated set")
    if ev.get("kind") == "validation":
        md = [f"## Validation: {data}", ""]
        if trained_on:
            md += ["- the run trained on these rows (`data.train_on_validation`): its scores are no estimate"]
    else:
        digest = f"texts digest `{ev['data_digest']}`" if ev.get("data_digest") else "texts digest not recorded"
        md = [f"## Evaluation: {data}", "", f"- {ev.get('rows', 0):,} rows; {digest}", f"- {overlap_text(ev)}"]
    if isinstance(ev.get("accuracy"), (int, float)):
        md.append(_score_line(ev))
    md.append("")
    if ev.get("per_class"):
        md += per_class_table(ev) + [""]
    if ev.get("problem_type") == "multi_label" and ev.get("probabilities") is not None:
        md += _multilabel_figures(files, ev, data)
    if ev.get("confusion_matrix"):
        path = files.eval_figure_path(ev, "confusion_matrix")
        plot_confusion(ev, path)
        md += _figure(f"Confusion matrix on {data}", path)
    if ev.get("confidence") and ev.get("correct"):
        path = files.eval_figure_path(ev, "reliability")
        ece = plot_reliability(ev, path)
        md += _figure(f"Reliability diagram on {data} (ECE {ece:.4f})", path)
    return md


def _training_figures(files: RunDir, name: str, missing: list[str]) -> list[str]:
    train, evals = files.read_metrics()
    md = []
    if train:
        plot_training_loss(train, files.figures_dir / "training_loss.png", name)
        md += _figure("Training loss", files.figures_dir / "training_loss.png")
    else:
        missing.append("training loss (metrics.jsonl has no training lines)")
    if evals:
        rows = files.read_summary().get("validation_rows") if files.finished() else None
        plot_validation(evals, files.figures_dir / "validation.png", name, rows=rows)
        md += _figure("Validation metrics (dashed line: kept checkpoint)", files.figures_dir / "validation.png")
    else:
        missing.append("validation curves (no validation evaluations in metrics.jsonl)")
    return md


def _prediction_section(files: RunDir, summary: dict, names: list[str], missing: list[str]) -> list[str]:
    pred = files.read_predictions_summary()
    if not (pred and names):
        missing.append("prediction distribution (no predictions.json: run `lorabudget predict`)")
        return []
    path = files.figures_dir / "prediction_distribution.png"
    plot_prediction_distribution(pred, names, summary.get("train_label_distribution"), path)
    return ["## Predictions", ""] + _figure(f"Predicted class distribution on {pred.get('input')}", path)


def write_report(run_dir: Path) -> Path:
    """Write the run's figures and ``report.md``; return the report's path.

    The validation evaluation keeps its own section, and so does every labelled file the run was
    evaluated on (``evals/``), each with its overlap with the run's own rows."""
    files = RunDir(run_dir)
    summary = files.read_summary()
    name = files.display_name
    records = files.eval_records()
    validations = [r for r in records if r.get("kind") == "validation"]
    evaluations = [r for r in records if r.get("kind") != "validation"]
    names = next((r["class_names"] for r in reversed(records) if r.get("class_names")), None)
    names = names or summary.get("class_names") or []
    missing: list[str] = []

    md = [f"# Run report: {name}", ""]
    md += ["## Configuration", ""] + _config_summary(files) + [""]
    md += ["## Trainable parameters", ""] + budget_table(files.read_budget()) + [""]
    md += ["## Results", ""] + _summary_lines(summary)
    md += _training_figures(files, name, missing)
    if validations:
        md += _evaluation_section(files, validations[-1], bool(summary.get("validation_trained_on")))
    for ev in evaluations:
        md += _evaluation_section(files, ev)
    if not records:
        missing.append("confusion matrix and reliability diagram (no eval.json: run `lorabudget evaluate`)")
    elif not evaluations:
        missing.append("an evaluation on a held-out labelled file (run `lorabudget evaluate RUN --data FILE`)")
    md += _prediction_section(files, summary, names, missing)
    if missing:
        md += ["## Not available", ""] + [f"- {m}" for m in missing] + [""]
    path = files.report_path
    atomic_write_text(path, "\n".join(md))
    return path
