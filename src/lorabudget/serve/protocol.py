"""What ``POST /v1/classify`` takes and answers: the request and response models, the checks a request
passes before its texts are queued for the model, and the results built from the logits."""

from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field

from lorabudget.serve.guards import short

FIELDS = '"texts" (or "inputs", or "pairs") and optionally "top_k" and "threshold"'


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class ClassifyRequest(BaseModel):
    # A misspelt field ("text", "top-k") would otherwise be ignored silently.
    model_config = ConfigDict(extra="forbid")

    texts: Optional[list[str]] = Field(None, description="texts to classify, one result each, in order")
    inputs: Optional[Union[str, list[str]]] = Field(
        None, description='the Hugging Face inference convention: one text or a list of them, as "texts"'
    )
    pairs: Optional[list[tuple[str, str]]] = Field(
        None, description="text pairs [[a, b], ...], only for runs trained on pairs (data.text_pair_column)"
    )
    top_k: Optional[int] = Field(
        None, ge=1, description="also list each text's k most probable classes, most probable first (at most all)"
    )
    threshold: Optional[float] = Field(
        None,
        gt=0,
        lt=1,
        description="multi-label runs only: one decision threshold for every class instead of the run's "
        "per-class thresholds (chosen on its validation rows)",
    )


class ClassProbability(BaseModel):
    label: str
    probability: float


class RankedClass(BaseModel):
    label: str
    label_id: int
    probability: float


class Classification(BaseModel):
    label: str = Field(description="the predicted class name")
    label_id: int = Field(description="its index into the run's classes")
    probability: float = Field(description="its probability")
    probabilities: list[ClassProbability] = Field(description="every class, in the run's class order")
    top_k: Optional[list[RankedClass]] = Field(None, description='with "top_k": the k most probable classes')


class ClassScore(BaseModel):
    label: str
    probability: float = Field(description="the class's sigmoid score")
    threshold: float = Field(description="the score at which the class is predicted")
    predicted: bool = Field(description="whether the class is among the text's labels")


class MultiLabelClassification(BaseModel):
    labels: list[str] = Field(description="the predicted class names, in class order; empty for none")
    label_ids: list[int] = Field(description="their indices into the run's classes")
    probabilities: list[ClassScore] = Field(description="every class, in the run's class order")
    top_k: Optional[list[RankedClass]] = Field(None, description='with "top_k": the k most probable classes')


class ClassifyResponse(BaseModel):
    # A single-label run answers Classification, a multi-label run MultiLabelClassification.
    results: list[Union[Classification, MultiLabelClassification]]


def _text_problem(text: str, max_chars: int) -> Optional[tuple[int, str]]:
    """(status, what is wrong) for a text the model must not see, or None."""
    if len(text) > max_chars:
        return 413, f"has {len(text):,} characters; at most {max_chars:,}"
    if not text.strip():
        return 422, "is empty"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # JSON's "\ud800" decodes to a lone surrogate: tokenizers reject it
        return 422, f"is not valid Unicode: a lone surrogate U+{ord(text[err.start]):04X} at character {err.start}"
    return None


def check_request(request: ClassifyRequest, pair_column: Optional[str], max_texts: int, max_chars: int) -> list:
    """The rows to classify (texts, or (first, second) pairs for a pair run), after the limits and the
    pair rules; ApiError otherwise. Every text is checked here, so one bad text fails its own request
    and never a batch shared with others."""
    given = [key for key in ("texts", "inputs", "pairs") if getattr(request, key) is not None]
    if len(given) != 1:
        raise ApiError(422, 'send exactly one of "texts" (a list of strings), "inputs" and "pairs"')
    key = given[0]
    if key == "pairs" and pair_column is None:
        raise ApiError(422, 'this run was trained on single texts, not pairs: send "texts"')
    if key != "pairs" and pair_column is not None:
        raise ApiError(422, f'this run was trained on text pairs ({pair_column}): send "pairs"')
    value = getattr(request, key)
    rows = [value] if isinstance(value, str) else list(value)
    if not rows:
        raise ApiError(422, f'"{key}" is empty: send one or more {"pairs" if key == "pairs" else "texts"}')
    if len(rows) > max_texts:
        raise ApiError(413, f"{len(rows)} texts in one request; at most {max_texts}")
    for i, row in enumerate(rows):
        for text in row if isinstance(row, tuple) else (row,):
            problem = _text_problem(text, max_chars)
            if problem:
                raise ApiError(problem[0], f"text {i} {problem[1]}")
    return [tuple(row) for row in rows] if key == "pairs" else rows


def results(probs: np.ndarray, names: list[str], top_k: Optional[int]) -> list[dict[str, Any]]:
    """One result per row of ``probs``; with ``top_k``, the k most probable classes too (ties: class order)."""
    found = []
    for row in probs:
        best = int(row.argmax())
        result = {
            "label": names[best],
            "label_id": best,
            "probability": float(row[best]),
            "probabilities": [{"label": n, "probability": float(p)} for n, p in zip(names, row)],
        }
        if top_k is not None:
            result["top_k"] = _ranked(row, names, top_k)
        found.append(result)
    return found


def check_threshold_option(request: ClassifyRequest, multi_label: bool) -> None:
    """A ``threshold`` is a multi-label run's option: a single-label run picks the most probable class."""
    if request.threshold is not None and not multi_label:
        raise ApiError(422, '"threshold" applies to multi-label runs; this run picks one class per text')


def _ranked(row: np.ndarray, names: list[str], top_k: int) -> list[dict[str, Any]]:
    order = np.argsort(-row, kind="stable")[:top_k]
    return [{"label": names[i], "label_id": int(i), "probability": float(row[i])} for i in order]


def multilabel_results(
    probs: np.ndarray, decisions: np.ndarray, thresholds: np.ndarray, names: list[str], top_k: Optional[int]
) -> list[dict[str, Any]]:
    """One result per row of sigmoid ``probs``: the predicted classes, and every class's score,
    threshold and decision; with ``top_k``, the k most probable classes too (ties: class order)."""
    found = []
    for row, chosen in zip(probs, decisions):
        ids = [int(j) for j in np.flatnonzero(chosen)]
        result: dict[str, Any] = {
            "labels": [names[j] for j in ids],
            "label_ids": ids,
            "probabilities": [
                {"label": n, "probability": float(p), "threshold": float(t), "predicted": bool(d)}
                for n, p, t, d in zip(names, row, thresholds, chosen)
            ],
        }
        if top_k is not None:
            result["top_k"] = _ranked(row, names, top_k)
        found.append(result)
    return found


def validation_message(err: RequestValidationError) -> str:
    """One line for a request the models refuse: the unknown fields by name, else the first problem."""
    errors = err.errors()
    unknown = [".".join(str(p) for p in e.get("loc", ()) if p != "body") for e in errors]
    unknown = [name for name, e in zip(unknown, errors) if e.get("type") == "extra_forbidden"]
    if unknown:
        names = ", ".join(f'"{short(name, 40)}"' for name in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        return f"unknown field{'s' if len(unknown) > 1 else ''} {names}: a request has {FIELDS}"
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return f"invalid request at {short(where)}: {short(first.get('msg', 'malformed'), 200)}"
