"""Distillation of a multi-label run, and what the teacher says about the student's rows (its
validation figures, its confidence per row) for either problem type.

A multi-label run: every class is its own yes/no question.

The teacher's probabilities are sigmoids, one per class. The student learns
``(1 - λ)·BCE(gold) + λ·T²·BCE(sigmoid(student/T), sigmoid(teacher/T))``: the soft term is the binary
cross-entropy of the student's tempered sigmoid against the teacher's, per class, the per-class analogue
of the single-label KL (it differs from the binary KL only by the teacher's entropy, a constant for the
student), scaled by T² as that KL is. Both terms are means over rows and classes, as the multi-label
training loss is, so λ weighs them as it does for single-label runs. Rows without a gold label hold -1
in every class: only the soft term teaches them.

An ensemble of teachers averages the members' per-class probabilities (stored as the logit of the mean).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lorabudget.config import RunConfig
from lorabudget.errors import LorabudgetError
from lorabudget.labelsets import sigmoid
from lorabudget.metrics import classification_metrics, softmax
from lorabudget.rundir.layout import RunDir

PROBABILITY_FLOOR = 1e-7  # an averaged probability of exactly 0 or 1 has no finite logit


def kd_loss_multilabel(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    weight: float,
    pos_weight: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``(1 - weight)·BCE(gold) + weight·T²·BCE(sigmoid(student/T), sigmoid(teacher/T))``.

    ``student_logits``, ``teacher_logits`` [B, C]; ``labels`` [B, C] of 0/1, a row of -1 where the row
    has no gold label. The gold BCE is the mean over labelled rows and classes (0 when none; with
    ``pos_weight`` [C] weighting each class's positive term), the soft BCE the mean over all rows and
    classes. With ``weight`` 0 (and no ``pos_weight``) it is exactly the multi-label training loss, and
    every row must be labelled.
    """
    student = student_logits.float()
    labels = labels.float()
    if weight == 0 and pos_weight is None:
        # Exactly plain training (every row labelled): the call of lorabudget.training.setup.bce_loss.
        return F.binary_cross_entropy_with_logits(student, labels)
    labelled = (labels >= 0).all(dim=1).to(student.dtype)  # [B]
    gold_rows = F.binary_cross_entropy_with_logits(
        student, labels.clamp(min=0), pos_weight=pos_weight, reduction="none"
    ).mean(dim=1)
    gold = (gold_rows * labelled).sum() / labelled.sum().clamp(min=1.0)
    if weight == 0:
        return gold
    t = temperature
    soft_targets = torch.sigmoid(teacher_logits.float() / t)
    soft = F.binary_cross_entropy_with_logits(student / t, soft_targets)
    return (1 - weight) * gold + weight * t * t * soft


def ensemble_logits_multilabel(member_logits: Sequence[np.ndarray]) -> np.ndarray:
    """Logits whose sigmoid is the mean of the members' per-class probabilities (the logit of the mean)."""
    probs = np.mean([sigmoid(m) for m in member_logits], axis=0)
    probs = np.clip(probs, PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
    return np.log(probs / (1 - probs)).astype(np.float32)


def teacher_confidence(train_logits: np.ndarray) -> np.ndarray:
    """How sure the teacher is of each row's label set: its least sure class decision, max(p, 1 - p)."""
    probs = sigmoid(train_logits)
    return np.maximum(probs, 1 - probs).min(axis=1)


def check_teachers(teacher_dirs: Sequence[Path], student: RunConfig) -> None:
    """Teacher and student must be of one problem type, and multi-label ones of the same classes in the
    same order (the soft targets are read per class position); one line naming the teacher otherwise."""
    multi = student.model.problem_type == "multi_label"
    for path in teacher_dirs:
        teacher = RunDir(path).read_config()
        if (teacher.model.problem_type == "multi_label") != multi:
            kinds = ("multi-label", "single-label") if multi else ("single-label", "multi-label")
            raise LorabudgetError(
                f"teacher {path} is a {kinds[1]} run and the student is {kinds[0]}: both must be of one kind"
                + (" (train the teacher with --multi-label)" if multi else "")
            )
        if multi and list(teacher.class_names) != list(student.class_names):
            raise LorabudgetError(
                f"teacher {path} has classes {', '.join(teacher.class_names)} and the student "
                f"{', '.join(student.class_names)}: a multi-label teacher must have the student's classes, in order"
            )


def teacher_validation(val_logits: np.ndarray, cfg: RunConfig, data, log) -> dict[str, Any]:
    """The teacher's metrics on the student's validation rows, logged."""
    teacher_val = classification_metrics(val_logits, data.validation.labels, cfg.class_names)
    key = teacher_val.get("primary_metric", "accuracy")  # micro_f1 for a multi-label run
    ci = teacher_val[f"{key}_ci95"]
    log(
        f"teacher validation {key.replace('_f1', ' F1')} {teacher_val[key]:.4f} (95% CI {ci[0]:.4f}–{ci[1]:.4f}, macro F1 "
        f"{teacher_val['macro_f1']:.4f}) on the student's {len(data.validation):,} validation rows"
    )
    return teacher_val


def confident_rows(rows, train_logits: np.ndarray, min_confidence: float, log) -> np.ndarray:
    """Which rows to keep: every labelled row, and the unlabelled ones the teacher is sure enough of."""
    multi = rows.labels.ndim == 2
    soft = (rows.labels < 0).all(axis=1) if multi else rows.labels < 0
    keep = np.ones(len(rows.labels), dtype=bool)
    if min_confidence > 0 and soft.any():
        sure = teacher_confidence(train_logits) if multi else softmax(train_logits).max(axis=1)
        keep = ~soft | (sure >= min_confidence)
        log(
            f"distill: kept {int((soft & keep).sum()):,} of {int(soft.sum()):,} rows without labels whose teacher "
            f"confidence is >= {min_confidence:g}"
        )
    return keep
