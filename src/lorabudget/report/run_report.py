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
from lorabudget.rundir.layout import RunDir


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
    lines = ["| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for row in ev.get("per_class") or []:
        lines.append(
            f"| {row['class']} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | {row['support']:,} |"
        )
    if "macro_f1" in ev:
        lines.append(
            f"| **macro** | {ev.get('macro_precision', float('nan')):.4f} | {ev.get('macro_recall', float('nan')):.4f} "
            f"| **{ev['macro_f1']:.4f}** | {ev.get('rows', 0):,} |"
        )
    return lines


def write_report(run_dir: Path) -> Path:
    """Write the run's figures and ``report.md``; return the report's path."""
    files = RunDir(run_dir)
    fig_dir = files.figures_dir
    summary = files.read_summary()
    name = summary.get("name", files.path.name)
    train, evals = files.read_metrics()
    ev = files.latest_eval()
    pred = files.read_predictions_summary()
    budget = files.read_budget()
    names = (ev or {}).get("class_names") or summary.get("class_names") or []

    md = [f"# Run report: {name}", ""]
    md += ["## Configuration", ""] + _config_summary(files) + [""]
    md += ["## Trainable parameters", ""] + budget_table(budget) + [""]
    md += ["## Results", ""]
    if summary:
        took = (
            f"{summary['train_time_s']:.1f} s on {summary.get('device')} "
            f"({summary.get('samples_per_s') or 0:.1f} samples/s)."
        )
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
            md += [
                "",
                (
                    f"Training throughput: {summary.get('samples_per_s') or 0:.1f} samples/s, "
                    f"{summary.get('tokens_per_s') or 0:,.0f} real tokens/s; {summary['train_flops_per_s'] / 1e9:,.1f} GFLOP/s "
                    f"executed ({(summary.get('train_real_token_flops_per_s') or 0) / 1e9:,.1f} on real tokens), "
                    f"{100 * summary['train_peak_fraction']:.0f}% of this machine's {precision} matmul peak "
                    f"({summary['matmul_peak_flops_per_s'] / 1e9:,.0f} GFLOP/s, measured at the end of the run)."
                ),
            ]
    else:
        md.append("summary.json is missing: the run has not finished training.")
    md.append("")
    if ev and ev.get("per_class"):
        md += [f"### Per class on {ev.get('data', 'the last evaluated set')}", ""] + per_class_table(ev) + [""]
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
            figures.append(
                (
                    f"Reliability diagram on {ev.get('data', 'the last evaluated set')} (ECE {ece:.4f})",
                    "reliability.png",
                )
            )
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
        md += [f"### {caption}", "", f"![{caption}]({fig_dir.name}/{file})", ""]
    if missing:
        md += ["## Not available", ""] + [f"- {m}" for m in missing] + [""]
    path = files.report_path
    atomic_write_text(path, "\n".join(md))
    return path
