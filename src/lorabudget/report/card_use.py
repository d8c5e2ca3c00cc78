"""The model card's intended-use paragraph: what the model classifies, how it reads long texts, its limits."""

from __future__ import annotations

from lorabudget.config import RunConfig
from lorabudget.inference.decisions import is_multi_label


def intended_use(cfg: RunConfig, news: bool) -> list[str]:
    """``news``: trained on a known news dataset (AG News), so the text is said to be news."""
    names = ", ".join(cfg.class_names)
    what = "one English news text" if news else "one text"
    if is_multi_label(cfg):
        task = (
            f"Gives {what} any number of {cfg.num_labels} classes ({names}): none, one or several. It was trained "
            "on the data above only: expect lower scores on text from other sources, periods or styles. "
        )
        scores = "Scores are per-class sigmoid outputs, not calibrated guarantees. "
    else:
        task = (
            f"Classifies {what} into one of {cfg.num_labels} classes ({names}). It was trained on the data "
            "above only: expect lower accuracy on text from other sources, periods or styles, and no meaningful "
            "answer for text that belongs to none of the classes (it always picks one). "
        )
        scores = "Probabilities are softmax outputs, not calibrated guarantees. "
    return [
        task + _length_note(cfg) + scores + "Any bias of "
        "the training data and of the base model carries over. Not for decisions about people.",
    ]


def _length_note(cfg) -> str:
    n, mode = cfg.model.max_length, cfg.data.long_text
    if mode == "head_tail":
        return f"A longer text keeps its first and last tokens, {n} in all. "
    if mode == "chunks":
        return f"A longer text is read in overlapping windows of {n} tokens whose scores are pooled. "
    return f"Texts are cut to {n} tokens. "
