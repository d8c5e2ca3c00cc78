"""What prediction returns, and what it accepts as texts; no torch here, so the Python API can name these
types without loading a model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Predictions:
    """What :meth:`LoadedRun.predict` returns for ``n`` texts, in input order."""

    # Single-label: one class name per text; multi-label: a list of class names per text (maybe empty).
    labels: list
    label_ids: Any  # [n] int array (index into ``class_names``); multi-label: a list of id lists
    probabilities: np.ndarray  # [n, classes] float: softmax of the logits; multi-label: sigmoid
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def multi_label(self) -> bool:
        return isinstance(self.label_ids, list)

    def to_frame(self):
        """One row per text: ``label``, ``label_id``, ``confidence`` and one probability column per class.
        Multi-label: ``label`` holds the names joined by ``|`` (empty for none), ``label_id`` the ids so
        joined, and ``confidence`` is left out."""
        import pandas as pd

        if self.multi_label:
            frame = pd.DataFrame(
                {
                    "label": ["|".join(names) for names in self.labels],
                    "label_id": ["|".join(str(i) for i in ids) for ids in self.label_ids],
                }
            )
        else:
            frame = pd.DataFrame({"label": self.labels, "label_id": np.asarray(self.label_ids, dtype=np.int64)})
            frame["confidence"] = self.probabilities.max(axis=1) if len(self.labels) else []
        for i, name in enumerate(self.class_names):
            frame[f"prob_{name}"] = self.probabilities[:, i]
        return frame

    def _repr_html_(self) -> str:
        return self.to_frame().head(50).to_html(float_format=lambda v: f"{v:.3f}")


def text_list(texts: Any, what: str = "texts") -> list[str]:
    """``texts`` as a list of strings: one string is one text; a list, tuple or pandas Series of strings
    is taken in order. Anything else (a number, a dict, a list holding a non-string) is a ``TypeError``
    naming what was given, so a string is never split into characters."""
    if isinstance(texts, str):
        return [texts]
    if type(texts).__name__ == "Series" and hasattr(texts, "tolist"):
        texts = texts.tolist()
    elif isinstance(texts, np.ndarray) and texts.ndim == 1:
        texts = texts.tolist()
    if not isinstance(texts, (list, tuple)):
        raise TypeError(
            f"{what} must be a string or a list, tuple or pandas Series of strings, not {type(texts).__name__}"
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{what}[{i}] is {type(text).__name__}, not a string")
    return list(texts)
