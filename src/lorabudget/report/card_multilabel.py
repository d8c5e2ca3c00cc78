"""The model card's section on a multi-label run's decisions: sigmoid scores, the per-class thresholds
every export carries, and the transformers pipeline call that applies them."""

from __future__ import annotations

from pathlib import Path

from lorabudget.config import RunConfig
from lorabudget.inference.decisions import thresholds_record

CODE = """
from transformers import AutoConfig, pipeline

config = AutoConfig.from_pretrained("DIR")
classifier = pipeline("text-classification", model="DIR", top_k=None, function_to_apply="sigmoid", truncation=True)
scores = classifier(["Stocks rallied after the earnings report."])[0]
labels = [s["label"] for s in scores if s["score"] >= config.lorabudget_thresholds[s["label"]]]
"""


def multilabel_card_lines(run_dir: Path, cfg: RunConfig) -> list[str]:
    """How a multi-label model decides: sigmoid scores against the run's per-class thresholds."""
    record = thresholds_record(run_dir, cfg.class_names)
    where = "the validation rows" if record.get("chosen_on") == "validation" else "nothing (the default 0.5)"
    lines = [
        "Each class gets its own sigmoid score; a class is predicted where its score reaches its threshold. "
        f"The thresholds were chosen on {where}, each maximising its class's F1. Every export carries them: in "
        "`thresholds.json`, in `lorabudget_export.json` (`thresholds`) and, for transformers, in `config.json` "
        "as `lorabudget_thresholds` (`problem_type` is `multi_label_classification`).",
        "",
        "| class | threshold |",
        "|---|---:|",
        *(f"| {name} | {float(t):.4f} |" for name, t in record["thresholds"].items()),
        "",
    ]
    return lines + ["```python", CODE.strip("\n"), "```"]
