"""Model cards: ``README.md`` in the Hugging Face layout (YAML metadata, then Markdown).

Written into every run directory (after train, distill, evaluate and predict) and into every export.
Everything on the card is read from the run's own files (``config.yaml``, ``budget.json``,
``summary.json``, ``eval.json``, ``evals/``): a figure the run did not record is not shown.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import yaml

from lorabudget.config import RunConfig
from lorabudget.inference.decisions import is_multi_label
from lorabudget.io import atomic_write_text
from lorabudget.model.packaged import packaged_model
from lorabudget.report.card_multilabel import multilabel_card_lines
from lorabudget.report.card_use import intended_use
from lorabudget.report.run_report import budget_table, per_class_table
from lorabudget.rundir.layout import RunDir
from lorabudget.rundir.rows import source_name

HUB_DATASETS = {"ag_news": "ag_news", "fancyzhx/ag_news": "fancyzhx/ag_news"}
# The F1 scores a card lists, in this order, where an evaluation recorded them (micro: multi-label runs only).
F1_AVERAGES = ("micro", "macro")


def base_model_name(cfg: RunConfig) -> Optional[str]:
    """The base model's Hugging Face hub name, or ``None`` when the run used a local folder."""
    name = cfg.model.name
    packaged = packaged_model(name)
    if packaged:
        return packaged.hub_name
    if os.path.isdir(os.path.expanduser(name)):
        return None
    return name


def _fmt_int(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "—"


def _dataset_name(cfg: RunConfig) -> Optional[str]:
    source = cfg.data.train.split(":", 1)[0]
    return HUB_DATASETS.get(source)


def _method(cfg: RunConfig, summary: dict[str, Any]) -> str:
    return str(summary.get("method") or getattr(cfg.adapter, "method", None) or "lora")


def eval_results(cfg: RunConfig, run_dir: Optional[Path], summary: dict[str, Any]) -> list[Any]:
    """The run's measured accuracy and macro F1 per held-out evaluated file, as ``huggingface_hub``
    ``EvalResult``s (the card's ``model-index``). Only evaluations known to share no row with the run's
    training or validation rows (``held_out`` true) are listed: the validation score chose the checkpoint,
    and a score on rows the run has seen estimates nothing. Data sets are named by file name, never a path."""
    from huggingface_hub import EvalResult

    if run_dir is None:
        return []
    results = []
    for record in RunDir(run_dir).eval_records():
        if record.get("kind") != "evaluate" or record.get("held_out") is not True:
            continue
        data = source_name(str(record.get("data") or ""))
        common = {
            "task_type": "text-classification",
            "dataset_type": HUB_DATASETS.get(data.split(":", 1)[0], data),
            "dataset_name": data,
            "dataset_split": "test",
        }
        if isinstance(record.get("accuracy"), (int, float)):
            results.append(EvalResult(metric_type="accuracy", metric_value=round(record["accuracy"], 4), **common))
        for average in F1_AVERAGES:
            value = record.get(f"{average}_f1")
            if isinstance(value, (int, float)):
                results.append(
                    EvalResult(
                        metric_type="f1",
                        metric_name=f"{average} F1",
                        metric_args={"average": average},
                        metric_value=round(value, 4),
                        **common,
                    )
                )
    return results


def front_matter(
    cfg: RunConfig, summary: dict[str, Any], export_format: Optional[str], run_dir: Optional[Path] = None
) -> dict[str, Any]:
    """The card's YAML metadata through ``huggingface_hub.ModelCardData``; with ``run_dir``, a
    ``model-index`` holding the accuracy and macro F1 each evaluation measured."""
    from huggingface_hub import ModelCardData

    method = _method(cfg, summary)
    dataset = _dataset_name(cfg)
    libraries = {None: "peft", "peft": "peft", "onnx": "onnx", "hf": "transformers"}
    results = eval_results(cfg, run_dir, summary)
    name = RunDir(run_dir).display_name if run_dir is not None else cfg.name
    data = ModelCardData(
        base_model=base_model_name(cfg),
        library_name=libraries[export_format],
        pipeline_tag="text-classification",
        datasets=[dataset] if dataset else None,
        metrics=["accuracy", "f1"],
        tags=["lorabudget", method, "text-classification", "parameter-efficient-fine-tuning"]
        + (["onnx"] if export_format == "onnx" else []),
        model_name=name if results else None,
        eval_results=results or None,
    )
    return data.to_dict()


def _layers(layers: Optional[list[int]]) -> str:
    return "all layers" if layers is None else "layers " + ", ".join(map(str, layers))


def _method_lines(cfg: RunConfig, method: str) -> list[str]:
    a = cfg.adapter
    placement = a.placements or []
    if placement:
        where = "; ".join(
            f"{', '.join(p.modules)} on {_layers(p.layers)}" + (f" (r={p.r})" if p.r else "") for p in placement
        )
    else:
        where = f"{', '.join(a.modules)} on {_layers(a.layers)}"
    pooled = (
        "the first token's final hidden state"
        if cfg.head.pooling == "first"
        else "the mean of the real tokens' final hidden states"
    )
    head = {
        "full": "the architecture's own classification head",
        "low_rank": f"two Linear layers (hidden -> {cfg.head.rank} -> classes) on {pooled}",
        "prototype": f"cosine similarity of {pooled} to one fixed vector per class (computed from the data before "
        "training, not trained), times a trained temperature, plus a trained bias per class",
    }.get(cfg.head.type, f"one Linear layer on {pooled}")
    options = getattr(a, "options", None)
    lines = [
        f"- method: **{method}** (PEFT), placed on {where}",
        f"- settings: r={a.r}, alpha={a.alpha}, dropout={a.dropout}"
        + (", rsLoRA" if a.use_rslora else "")
        + (", DoRA" if a.use_dora else "")
        + (f", options {options}" if options else ""),
        f"- head: `{cfg.head.type}`: {head}; trained in full and counted in the budget",
        f"- base model: `{base_model_name(cfg) or cfg.model.name}`; max length {cfg.model.max_length} tokens",
    ]
    return lines


def _data_lines(cfg: RunConfig, summary: dict[str, Any]) -> list[str]:
    d = cfg.data
    rows = f", {summary['validation_rows']:,} rows" if "validation_rows" in summary else ""
    if d.validation:
        validation = f"`{d.validation}`{rows}"
    elif isinstance(d.validation_size, float):
        validation = f"{d.validation_size:.0%} of the rows split off the training data (seed {d.split_seed}){rows}"
    elif d.validation_size is None:
        validation = f"20% of the rows (at most 1,000) split off the training data (seed {d.split_seed}){rows}"
    else:
        validation = f"{d.validation_size:,} rows split off the training data (seed {d.split_seed})"
    if d.train_on_validation:
        validation += ", trained on too (`data.train_on_validation`): its figures are no estimate"
    lines = [f"- training data: `{d.train}`" + (f", {summary['train_rows']:,} rows" if "train_rows" in summary else "")]
    lines.append(f"- validation: {validation}")
    lines.append("- classes (label id: name): " + ", ".join(f"{i}: {n}" for i, n in enumerate(cfg.class_names)))
    dist = summary.get("train_label_distribution")
    if dist:
        lines.append("- training class shares: " + ", ".join(f"{n} {p:.1%}" for n, p in zip(cfg.class_names, dist)))
    return lines


def _held_out_cell(record: dict[str, Any], trained_on: bool) -> str:
    """Whether an evaluation's rows are new to the run: the results table's last column."""
    if record.get("kind") == "validation":
        return "no: trained on" if trained_on else "chose the checkpoint"
    if record.get("held_out") is None:
        return "unknown"
    if record["held_out"]:
        return "yes"
    counts = record.get("overlap") or {}
    return (
        f"**not held out** ({counts.get('training_rows', 0):,} training, "
        f"{counts.get('validation_rows', 0):,} validation rows)"
    )


def _results_lines(run_dir: Path, summary: dict[str, Any]) -> list[str]:
    rows = RunDir(run_dir).eval_records()
    if not rows:
        return ["No evaluation recorded yet (`lorabudget evaluate RUN --data FILE` adds one)."]
    # An interval says how far the figure may be from the model's accuracy on new rows; rows the run
    # trained on (or, for an evaluated file, had seen at all) give no such figure, so they get none.
    trained_on = bool(summary.get("validation_trained_on"))
    seen = [(trained_on and r.get("kind") == "validation") or r.get("held_out") is False for r in rows]
    intervals = [None if s else r.get("accuracy_ci95") for r, s in zip(rows, seen)]
    with_ci = any(intervals)
    header = "| data | kind | rows | accuracy |" + (" 95% interval |" if with_ci else "") + " macro F1 | held out |"
    lines = [header, "|---|---|---:|---:|" + ("---|" if with_ci else "") + "---:|---|"]
    for r, ci in zip(rows, intervals):
        cell = f" [{ci[0]:.4f}, {ci[1]:.4f}] |" if ci else (" — |" if with_ci else "")
        data = source_name(str(r.get("data", "?"))) if r.get("kind") == "evaluate" else r.get("data", "?")
        lines.append(
            f"| {data} | {r.get('kind', '?')} | {_fmt_int(r.get('rows'))} "
            f"| {r.get('accuracy', float('nan')):.4f} |"
            f"{cell} {r.get('macro_f1', float('nan')):.4f} | {_held_out_cell(r, trained_on)} |"
        )
    if with_ci:
        lines += ["", "Intervals: Wilson 95% intervals of the accuracy over the evaluated rows."]
    multi = [r for r in rows if isinstance(r.get("micro_f1"), (int, float))]
    if multi:
        lines += [
            "",
            "Multi-label: accuracy is subset accuracy (a row counts when its whole label set is right); micro F1: "
            + ", ".join(f"{r.get('data', '?')} {r['micro_f1']:.4f}" for r in multi)
            + ".",
        ]
    if any(r.get("held_out") is False for r in rows):
        lines += [
            "",
            "A file marked not held out shares rows with the run's training or validation rows: its score "
            "estimates nothing about new text and is left out of the metadata above.",
        ]
    if rows[-1].get("per_class"):
        lines += ["", f"Per class on {rows[-1].get('data', 'the latest evaluation')}:", ""] + per_class_table(rows[-1])
    return lines + _kept_weights_lines(summary, trained_on)


def _kept_weights_lines(summary: dict[str, Any], trained_on: bool) -> list[str]:
    if trained_on:
        return [
            "",
            f"The kept weights are the last evaluation's, at step {summary.get('best_step')} of "
            f"{summary.get('steps')}: the run trained on its "
            "validation rows, so only a held-out file it did not train on estimates its accuracy.",
        ]
    if "best_step" in summary:
        return [
            "",
            f"The kept checkpoint is the best validation "
            f"{'micro F1' if 'validation_micro_f1' in summary else 'accuracy'}, at step {summary['best_step']} "
            f"of {summary.get('steps')}.",
        ]
    return []


def _training_lines(summary: dict[str, Any]) -> list[str]:
    if not summary:
        return ["The run has not finished training (no `summary.json`)."]
    lines = [
        f"- training time: {summary['train_time_s']:.1f} s ({summary.get('steps')} optimizer steps, evaluations included)"
    ]
    if summary.get("samples_per_s"):
        lines.append(f"- throughput: {summary['samples_per_s']:.1f} training rows/s")
    machine = summary.get("machine")
    lines.append(
        f"- device: {summary.get('device')} × {summary.get('processes', 1)} process(es), mixed precision "
        f"{summary.get('mixed_precision')}" + (f"; machine: {machine}" if machine else "")
    )
    return lines


def _py(code: str) -> list[str]:
    return ["```python", code.strip("\n"), "```"]


_LONG_TEXT_NOTE = {  # data.long_text beyond truncate: what transformers' pipeline does instead
    "head_tail": "The run kept the first and last tokens of longer texts (`data.long_text: head_tail`); the "
    "pipeline keeps the first tokens only: `lorabudget predict` reads texts as training did.",
    "chunks": "The run reads longer texts as overlapping windows and pools their logits (`data.long_text: "
    "chunks`); the pipeline truncates instead: only `lorabudget predict`/`serve` pool the windows.",
}


def _hf_section(cfg: RunConfig, export_format: Optional[str], folder: str) -> list[str]:
    remote = cfg.head.type != "full"
    trust = ", trust_remote_code=True" if remote else ""
    sigmoid = ', top_k=None, function_to_apply="sigmoid"' if is_multi_label(cfg) else ""
    lines = ["### transformers (`lorabudget export RUN --format hf --output DIR`)", ""]
    lines += _py(f"""
from transformers import pipeline

classifier = pipeline("text-classification", model="{folder if export_format == "hf" else "DIR"}"{trust}{sigmoid}, truncation=True)
print(classifier(["Stocks rallied after the earnings report."]))
""")
    lines.append("")
    if remote:
        lines += [
            "The head sits on a pooled token state, which no standard transformers class has, "
            "so the folder ships it as `modeling_lorabudget.py` (needs only torch and transformers) and "
            "`trust_remote_code=True` is required. `AutoModelForSequenceClassification.from_pretrained(DIR, "
            "trust_remote_code=True)` loads the same model.",
            "",
        ]
    else:
        lines += ["`AutoModelForSequenceClassification.from_pretrained(DIR)` loads the same model.", ""]
    lines += ["`truncation=True` cuts texts where training did (the tokenizer's `model_max_length`).", ""]
    if cfg.data.long_text != "truncate":
        lines += [_LONG_TEXT_NOTE[cfg.data.long_text], ""]
    if cfg.data.text_pair_column:
        lines += [
            f"The model reads sentence pairs ({cfg.data.text_column or 'text'}, {cfg.data.text_pair_column}): "
            'pass each as `{"text": FIRST, "text_pair": SECOND}`.',
            "",
        ]
    return lines


def _peft_section(cfg: RunConfig, export_format: Optional[str], folder: str) -> list[str]:
    base = base_model_name(cfg) or cfg.model.name  # a local folder: the path the run read
    peft_dir = folder if export_format == "peft" else "DIR"
    if cfg.head.type != "full":
        code = f"""
from peft import PeftModel
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

config = AutoConfig.from_pretrained("{peft_dir}", trust_remote_code=True)
base = AutoModelForSequenceClassification.from_config(config, trust_remote_code=True)
base.backbone = AutoModel.from_pretrained("{base}", add_pooling_layer=False)  # pretrained encoder weights
model = PeftModel.from_pretrained(base, "{peft_dir}").eval()
tokenizer = AutoTokenizer.from_pretrained("{peft_dir}")
"""
    else:
        code = f"""
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

labels = {dict(enumerate(cfg.class_names))!r}
base = AutoModelForSequenceClassification.from_pretrained(
    "{base}", num_labels={cfg.num_labels}, id2label=labels, label2id={{v: k for k, v in labels.items()}}
)
model = PeftModel.from_pretrained(base, "{peft_dir}").eval()  # adapters and the trained head
tokenizer = AutoTokenizer.from_pretrained("{peft_dir}")
"""
    lines = ["### PEFT adapter (`lorabudget export RUN --format peft --output DIR`)", ""]
    return (
        lines
        + _py(code)
        + [
            "",
            "The adapter folder holds the adapter weights and the trained head (`modules_to_save`); "
            "`model.merge_and_unload()` folds the adapters into the weights. Tokenize with "
            f"`truncation=True, max_length={cfg.model.max_length}`.",
            "",
        ]
    )


def _onnx_section(cfg: RunConfig, export_format: Optional[str], folder: str) -> list[str]:
    onnx_dir = folder if export_format == "onnx" else "DIR"
    lines = ["### ONNX Runtime (`lorabudget export RUN --format onnx --output DIR [--quantize int8]`)", ""]
    lines += _py(f"""
import onnxruntime as ort
from transformers import AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{onnx_dir}")
session = ort.InferenceSession("{onnx_dir}/model.onnx")  # or model_int8.onnx after --quantize int8
batch = tokenizer(["Stocks rallied after the earnings report."], padding=True, truncation=True, return_tensors="np")
logits = session.run(["logits"], {{"input_ids": batch["input_ids"].astype("int64"),
                                   "attention_mask": batch["attention_mask"].astype("int64")}})[0]
""")
    return lines + [
        "",
        f"Or `lorabudget predict {onnx_dir} --input texts.csv` (length-sorted batches). Inputs `input_ids` and "
        "`attention_mask` (int64, [batch, sequence]); output `logits` [batch, classes]; label ids as listed above.",
        "",
    ]


def _run_dir_section(cfg: RunConfig, export_format: Optional[str], folder: str) -> list[str]:
    lines = ["### lorabudget (the run directory)", ""]
    lines += _py("""
from lorabudget import load_run

run = load_run("RUN")  # this run directory; engine="onnx" runs it on ONNX Runtime
print(run.predict(["Stocks rallied after the earnings report."]).labels)
""")
    return lines + [""]


LOAD_SECTIONS = {None: _run_dir_section, "hf": _hf_section, "peft": _peft_section, "onnx": _onnx_section}


def load_instructions(cfg: RunConfig, export_format: Optional[str], folder: str) -> list[str]:
    """How to load the model: this folder's format first, then the others."""
    order = [export_format] + [k for k in (None, "hf", "peft", "onnx") if k != export_format]
    lines: list[str] = []
    for key in order:
        lines += LOAD_SECTIONS[key](cfg, export_format, folder)
    return lines


def model_card(run_dir: Path, cfg: RunConfig, export_format: Optional[str] = None, folder_name: str = "DIR") -> str:
    files = RunDir(run_dir)
    summary = files.read_summary()
    budget = files.read_budget()
    method = _method(cfg, summary)
    base = base_model_name(cfg) or f"a local model ({cfg.model.name})"
    what = {
        None: "lorabudget run directory",
        "hf": "transformers model (adapters merged)",
        "peft": "PEFT adapter",
        "onnx": "ONNX model (adapters merged)",
    }[export_format]
    total = (budget or {}).get("trainable_params")
    limit = (budget or {}).get("budget")
    md = [
        "---",
        yaml.safe_dump(front_matter(cfg, summary, export_format, run_dir), sort_keys=False).rstrip("\n"),
        "---",
        "",
        f"# {files.display_name}",
        "",
        f"A {cfg.num_labels}-class text classifier fine-tuned from `{base}` with **{method}**"
        + (f" under a hard budget of **{limit:,}** trainable parameters" if isinstance(limit, int) else "")
        + (" with no limit on trainable parameters" if budget and limit is None else "")
        + (f" ({total:,} trained, head included)" if isinstance(total, int) else "")
        + f", trained with lorabudget. This folder is a {what}.",
        "",
        "## Trainable-parameter budget",
        "",
        *budget_table(budget),
        "",
        "## Method",
        "",
        *_method_lines(cfg, method),
        "",
        "## Data",
        "",
        *_data_lines(cfg, summary),
        "",
        "## Results",
        "",
        *_results_lines(run_dir, summary),
        "",
        "## Training",
        "",
        *_training_lines(summary),
        "",
        "## Intended use and limits",
        "",
        *intended_use(cfg, bool(_dataset_name(cfg))),
        "",
        *(["## Multi-label decisions", "", *multilabel_card_lines(run_dir, cfg), ""] if is_multi_label(cfg) else []),
        "## How to load",
        "",
        *load_instructions(cfg, export_format, folder_name),
    ]
    return "\n".join(md).rstrip("\n") + "\n"


def write_model_card(
    run_dir: Path, folder: Optional[Path] = None, export_format: Optional[str] = None, folder_name: str = "DIR"
) -> Path:
    """Write ``README.md`` into ``folder`` (default: the run directory itself); return its path."""
    files = RunDir(run_dir)
    cfg = files.read_config()
    path = RunDir(folder or run_dir).model_card_path
    atomic_write_text(path, model_card(run_dir, cfg, export_format, folder_name))
    return path


def parse_model_card(text: str) -> tuple[dict[str, Any], str]:
    """``(metadata, markdown body)`` of a model card: the YAML block between the leading ``---`` lines."""
    if not text.startswith("---\n"):
        raise ValueError("a model card starts with a '---' line")
    end = text.index("\n---\n", 4)
    return yaml.safe_load(text[4:end]) or {}, text[end + 5 :]
