"""A search's outputs, made from its Optuna study: trials.csv, best.yaml, search.md and figures."""

from __future__ import annotations

import csv
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from lorabudget.config import dump_yaml, from_dict
from lorabudget.errors import LorabudgetError
from lorabudget.io import atomic_write_text
from lorabudget.report.compare import run_row
from lorabudget.report.plots import pareto_front, pyplot, save_figure
from lorabudget.search.space import apply_sample
from lorabudget.search.study import trial_kind
from lorabudget.stats import mcnemar

CSV_FIXED = [
    "number",
    "state",
    "value",
    "validation_accuracy",
    "validation_macro_f1",
    "validation_micro_f1",
    "metric",
    "trainable_params",
    "base_model",
    "frozen_params",
    "steps",
    "pruned_at_step",
    "seconds",
    "prefix_cache",
    "prefix_cache_seconds",
    "description",
    "origin",
    "reason",
    "run_dir",
    "worker",
]


def trial_rows(study, metric: Optional[str] = None) -> list[dict[str, Any]]:
    """One row per trial; ``metric`` names what ``value`` is (the validation metric the search maximises)."""

    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        kind = trial_kind(t)
        if kind == "skipped":
            continue
        a = t.user_attrs
        value: Optional[float] = None
        if t.values:
            value = t.values[0]
        elif kind == "pruned" and t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]
        row = {
            "number": t.number,
            "state": kind,
            "value": value,
            "validation_accuracy": a.get("validation_accuracy"),
            "validation_macro_f1": a.get("validation_macro_f1"),
            "validation_micro_f1": a.get("validation_micro_f1"),
            "metric": metric or (study.user_attrs.get("lorabudget") or {}).get("metric"),
            "trainable_params": a.get("trainable_params"),
            "base_model": a.get("base_model", ""),
            "frozen_params": a.get("frozen_params"),
            "steps": a.get("steps"),
            "pruned_at_step": a.get("pruned_at_step"),
            "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None,
            # reused / built / off: the frozen-prefix cache (trials on one base, data and lowest layer share it)
            "prefix_cache": a.get("prefix_cache", ""),
            "prefix_cache_seconds": a.get("prefix_cache_seconds"),
            "description": a.get("description", ""),
            "origin": a.get("origin", ""),  # a starting trial's source: the base config or a preset
            "reason": a.get("rejected") or a.get("error") or "",
            "run_dir": a.get("run_dir", "") if kind == "complete" else "",
            "worker": a.get("worker", ""),
        }
        row.update({f"param:{k}": v for k, v in sorted(t.params.items())})
        rows.append(row)
    return rows


def write_trials_csv(rows: list[dict[str, Any]], path: Path) -> None:
    params = sorted({k for r in rows for k in r if k.startswith("param:")})
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIXED + params, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIXED + params})
    atomic_write_text(path, out.getvalue())


def best_trial(study, multi_objective: bool):
    """The complete trial with the best metric (in multi-objective mode: the most accurate on the front)."""
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not complete:
        return None
    if multi_objective:
        return max(study.best_trials, key=lambda t: (t.values[0], -t.values[1]))
    return study.best_trial


def best_config_values(s, trial) -> dict[str, Any]:
    """best.yaml: the base config (without --trial-set) with the best trial's sample applied, set to
    train on the validation rows too where the trials split them off: the search has chosen on them
    already, and the final model gets every labelled row (the README's check: 4,000 instead of 3,000;
    docs/search.md measures what that bought)."""
    values = apply_sample(s.best_base, trial.user_attrs.get("sample", {}))
    values["name"] = f"{s.name}-best"
    try:
        return from_dict(apply_sample(values, {"data.train_on_validation": True})).to_dict()
    except LorabudgetError:  # a setting it cannot go with (config.validate says which): trained as the trials were
        return from_dict(values).to_dict()


def versus_best(complete: list[dict[str, Any]], best_number: int) -> dict[int, dict]:
    """Each complete trial against the best one on the same validation rows: McNemar's exact test.

    Read from the trials' run directories (per-row results of the kept checkpoint). A trial whose
    rows differ from the best's, or that kept no per-row results, is left out.
    """

    scores = {}
    for r in complete:
        if r["run_dir"] and Path(r["run_dir"]).is_dir():
            validation = run_row(Path(r["run_dir"]))["validation"]
            if validation and validation.get("correct") is not None:
                scores[r["number"]] = validation
    best = scores.get(best_number)
    if best is None:
        return {}
    return {
        number: {**mcnemar(score["correct"], best["correct"]), "n": best["n"], "best_ci95": best["ci95"]}
        for number, score in scores.items()
        if number != best_number and score.get("fingerprint") == best.get("fingerprint")
    }


def noise_sentence(versus: dict[int, dict], short: bool = False) -> str:
    """How many other complete trials the validation rows cannot tell from the best (or '')."""
    if not versus:
        return ""
    n = next(iter(versus.values()))["n"]
    tied = sum(1 for v in versus.values() if v["p_value"] >= 0.05)
    if short:
        return f"{tied} of {len(versus)} other complete trials within noise of it"
    return (
        f"{tied} of the {len(versus)} other complete trials are within noise of it (McNemar p >= 0.05 on the "
        f"same {n:,} validation rows)"
    )


def _plots(study, s, out_dir: Path, rows: list[dict[str, Any]]) -> dict[str, str]:
    """Figures by file name -> caption; a figure that cannot be made is left out (and said so)."""
    import optuna.visualization.matplotlib as ovm
    from optuna.exceptions import ExperimentalWarning

    plt = pyplot()
    made: dict[str, str] = {}
    complete = [r for r in rows if r["state"] == "complete"]
    target_name = f"validation {s.metric}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)
        target = (lambda t: t.values[0]) if s.multi_objective else None
        if complete:
            try:
                ax = ovm.plot_optimization_history(study, target=target, target_name=target_name)
                save_figure(ax.figure, out_dir / "optimization_history.png")
                made["optimization_history.png"] = "Optimization history (complete trials; the line is the best so far)"
            except Exception:  # noqa: BLE001 - a figure that cannot be made is reported missing
                plt.close("all")
        if len(complete) >= 2:
            try:
                ax = ovm.plot_param_importances(study, target=target, target_name=target_name)
                save_figure(ax.figure, out_dir / "param_importances.png")
                made["param_importances.png"] = "Parameter importances (fANOVA over the complete trials)"
            except Exception:  # noqa: BLE001 - e.g. every complete trial has the same value
                plt.close("all")
        plotted = [r for r in complete if r["trainable_params"] is not None and r["value"] is not None]
        if plotted:
            fig, ax = plt.subplots(figsize=(8, 5))
            xs = [r["trainable_params"] for r in plotted]
            ys = [100 * r["value"] for r in plotted]
            ax.scatter(xs, ys, s=30, color="tab:blue", zorder=3, label="complete trials")
            front = pareto_front(list(zip(xs, ys)))
            ax.plot(
                [xs[i] for i in front],
                [ys[i] for i in front],
                color="tab:green",
                marker="o",
                zorder=4,
                label="Pareto front",
            )
            for i in front:
                ax.annotate(
                    f"#{plotted[i]['number']}", (xs[i], ys[i]), textcoords="offset points", xytext=(4, 4), fontsize=8
                )
            ax.axvline(s.budget, color="red", linestyle="--", linewidth=1, label=f"budget {s.budget:,}")
            ax.set(
                xlabel="trainable parameters",
                ylabel=f"{target_name} (%)",
                title=f"{target_name} vs trainable parameters ({len(plotted)} trials)",
            )
            ax.grid(alpha=0.3)
            ax.legend(loc="lower right", fontsize=8)
            save_figure(fig, out_dir / "pareto_front.png")
            made["pareto_front.png"] = "Accuracy vs trainable parameters: complete trials, Pareto front, budget line"
    return made


def _fmt(v: Any, spec: str = "") -> str:
    if v is None or v == "":
        return "–"
    return format(v, spec) if spec else str(v)


@dataclass
class Results:
    """What the study holds, gathered once for every output."""

    rows: list[dict[str, Any]]
    counts: dict[str, int]
    best: Any  # the best Optuna trial, or None
    best_path: Path
    complete: list[dict[str, Any]]  # best first
    versus: dict[int, dict]  # McNemar against the best, per complete trial
    within_noise: str  # "" when the best is clear of the others
    bases: bool  # whether the trials vary the base model


def gather(study, s) -> Results:
    rows = trial_rows(study, s.metric)
    kinds = [r["state"] for r in rows]
    best = best_trial(study, s.multi_objective)
    complete = sorted((r for r in rows if r["state"] == "complete"), key=lambda r: -(r["value"] or 0))
    versus = versus_best(complete, best.number) if best is not None and not s.multi_objective else {}
    return Results(
        rows=rows,
        counts={k: kinds.count(k) for k in ("complete", "pruned", "rejected", "failed", "running")},
        best=best,
        best_path=Path(s.output) / "best.yaml",
        complete=complete,
        versus=versus,
        within_noise=noise_sentence(versus),
        # A space that varies the base model shows each trial's base and its frozen size (time, not budget).
        bases="model" in (s.space or {}) or len({r["base_model"] for r in complete}) > 1,
    )


def write_best_yaml(s, res: Results) -> None:
    """best.yaml: the best trial's full config, with a header saying how it was found and how to train it."""
    best = res.best
    best_values = best_config_values(s, best)
    header = (
        f"# Best trial #{best.number} of search '{s.name}': validation {s.metric} {best.values[0]:.4f}, "
        f"{best.user_attrs.get('trainable_params', 0):,} trainable parameters.\n"
    )
    if res.within_noise:
        header += f"# {res.within_noise}: check it on a held-out test set.\n"
    if s.trial_overrides:
        header += (
            "# Trials ran with " + " ".join(f"--trial-set {o}" for o in s.trial_overrides) + " (not applied here).\n"
        )
    if best_values["data"]["train_on_validation"]:
        header += (
            "# It trains on the validation rows too (data.train_on_validation) and keeps its last weights; "
            "--set data.train_on_validation=false keeps them out.\n"
        )
    header += f"# Train it: lorabudget train {res.best_path}\n"
    atomic_write_text(res.best_path, header + dump_yaml(from_dict(best_values)))


def _summary_lines(s, res: Results) -> list[str]:
    counts = res.counts
    objective = (
        f"validation {s.metric} and trainable parameters (NSGA-II, Pareto front)"
        if s.multi_objective
        else f"validation {s.metric} (TPE, pruner {s.pruner if isinstance(s.pruner, str) else type(s.pruner).__name__})"
    )
    return [
        f"# Search `{s.name}`",
        "",
        f"Model `{s.base.get('model', {}).get('name')}`, budget **{s.budget:,}** trainable parameters, objective: "
        f"{objective}, seed {s.seed}. Storage: `{_safe_url(s.storage_url)}`, study `{s.name}`.",
        "",
        f"Trials: {counts['complete']} complete, {counts['pruned']} pruned, {counts['rejected']} rejected before "
        f"training (over budget or invalid), {counts['failed']} failed"
        + (f", {counts['running']} still running" if counts["running"] else "")
        + ".",
    ]


def _best_lines(s, res: Results) -> list[str]:
    best = res.best
    if best is None:
        return ["", "No trial completed: no best configuration yet."]
    trainable = best.user_attrs.get("trainable_params", 0)
    lines = [
        "",
        f"**Best trial #{best.number}**: validation {s.metric} {best.values[0]:.4f}, {trainable:,} trainable "
        f"parameters ({trainable / s.budget:.1%} of the budget): {best.user_attrs.get('description', '')}. "
        "Config: [`best.yaml`](best.yaml).",
    ]
    if res.within_noise:
        low, high = next(iter(res.versus.values()))["best_ci95"]
        lines += [
            "",
            f"Its 95% interval is {100 * low:.1f}–{100 * high:.1f}%. {res.within_noise}: on this validation "
            "split the search cannot rank them, and the pick among them may not hold on other data. The best was "
            "chosen on these same rows, so its lead over the others is overstated even where p < 0.05. Judge "
            "it on a held-out test set (`lorabudget evaluate RUN --data TEST`, then `lorabudget compare`).",
        ]
    return lines


def _complete_table(res: Results) -> list[str]:
    if not res.complete:
        return []
    bases = res.bases
    # A multi-label search shows micro F1 where a single-label one shows accuracy (subset accuracy says little).
    first, first_name = (
        ("validation_micro_f1", "validation micro F1")
        if any(r.get("validation_micro_f1") is not None for r in res.complete)
        else ("validation_accuracy", "validation accuracy")
    )
    lines = [
        "",
        "## Complete trials (best first)",
        "",
        f"| trial | {first_name} | macro F1 | vs best: McNemar p | trainable params | "
        + ("base model | frozen params | " if bases else "")
        + "time (s) | configuration |",
        "|---:|---:|---:|---:|---:|" + ("---|---:|" if bases else "") + "---:|---|",
    ]
    for r in res.complete[:20]:
        p_value = res.versus.get(r["number"], {}).get("p_value")
        origin = f" (starting trial: {r['origin']})" if r["origin"] else ""
        base = f"`{r['base_model']}` | {_fmt(r['frozen_params'], ',')} | " if bases else ""
        lines.append(
            f"| {r['number']} | {_fmt(r[first], '.4f')} | {_fmt(r['validation_macro_f1'], '.4f')} | "
            f"{_fmt(p_value, '.3f')} | {_fmt(r['trainable_params'], ',')} | {base}{_fmt(r['seconds'], '.0f')} | "
            f"{r['description']}{origin} |"
        )
    if len(res.complete) > 20:
        lines.append(f"\n{len(res.complete) - 20} more in [`trials.csv`](trials.csv).")
    runs = " ".join(r["run_dir"] for r in res.complete[:8] if r["run_dir"])
    return lines + ["", f"Compare the trial runs: `lorabudget compare {runs}`"]


def _pareto_lines(study, s, res: Results) -> list[str]:
    if not s.multi_objective or res.best is None:
        return []
    lines = [
        "",
        f"## Pareto front ({s.metric} vs trainable parameters)",
        "",
        f"| trial | validation {s.metric} | trainable params |",
        "|---:|---:|---:|",
    ]
    for t in sorted(study.best_trials, key=lambda t: t.values[1]):
        lines.append(f"| {t.number} | {t.values[0]:.4f} | {int(t.values[1]):,} |")
    return lines


def _figure_lines(figures: dict[str, str]) -> list[str]:
    lines: list[str] = []
    if figures:
        lines += ["", "## Figures", ""]
        for name, caption in figures.items():
            lines += [f"{caption}:", "", f"![{caption}](figures/{name})", ""]
    missing = [n for n in ("optimization_history.png", "param_importances.png", "pareto_front.png") if n not in figures]
    if missing:
        lines += [
            "",
            "Not available: " + ", ".join(missing) + " (too few complete trials, or every trial scored the same).",
        ]
    return lines


def write_search_md(study, s, res: Results, figures: dict[str, str]) -> Path:
    lines = _summary_lines(s, res) + _best_lines(s, res) + _complete_table(res) + _pareto_lines(study, s, res)
    lines += _figure_lines(figures) + [
        "",
        "Every trial (parameters, trainable count, state, validation figures, time, rejection reason or "
        "error): [`trials.csv`](trials.csv).",
    ]
    path = Path(s.output) / "search.md"
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    return path


def summary_message(s, res: Results, report: Path) -> str:
    """The one line the search ends with."""
    counts, best = res.counts, res.best
    message = (
        f"search {s.name}: {counts['complete'] + counts['pruned']} trials trained ({counts['complete']} complete, "
        f"{counts['pruned']} pruned), {counts['rejected']} sample{'' if counts['rejected'] == 1 else 's'} rejected "
        f"before training, {counts['failed']} failed"
    )
    if best is not None:
        message += (
            f"; best #{best.number}: {s.metric} {best.values[0]:.4f} with "
            f"{best.user_attrs.get('trainable_params', 0):,} trainable parameters -> {res.best_path}"
        )
    if res.within_noise:
        message += f"; {noise_sentence(res.versus, short=True)}"
    return message + f"; report: {report}"


def write_outputs(study, s) -> dict[str, Any]:
    """Write trials.csv, best.yaml, search.md and figures into the search directory; return a summary."""
    out = Path(s.output)
    res = gather(study, s)
    write_trials_csv(res.rows, out / "trials.csv")
    if res.best is not None:
        write_best_yaml(s, res)
    figures = _plots(study, s, out / "figures", res.rows)
    report = write_search_md(study, s, res, figures)
    planned = [r["trainable_params"] for r in res.rows if r["trainable_params"] is not None]
    best = res.best
    return {
        "message": summary_message(s, res, report),
        "trained": res.counts["complete"] + res.counts["pruned"],
        **res.counts,
        "smallest_planned": min(planned) if planned else 0,
        "over_budget": sum(
            1 for r in res.rows if r["state"] == "rejected" and str(r["reason"]).startswith("over budget")
        ),
        "best_number": best.number if best is not None else None,
        "best_value": best.values[0] if best is not None else None,
        "best_yaml": str(res.best_path) if best is not None else None,
    }


def _safe_url(url: str) -> str:
    """The storage URL without a password."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url
