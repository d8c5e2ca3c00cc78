"""Which rows a run trained and chose its checkpoint on, kept as short digests of their texts.

A run records one 8-byte BLAKE2b digest per training and per validation text (``RunDir.row_digests_path``)
so that a later evaluation can count how many of its rows the run has already seen: a score on rows the
run trained on is no estimate of its accuracy on new text. Texts are compared after folding case and
runs of whitespace, so a copy re-saved with other spacing or capitals is still recognised; a sentence
pair is digested as its two texts together.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

DIGEST_BYTES = 8


def normalised(text: str) -> str:
    """The form texts are compared in: case folded, whitespace runs made one space, ends stripped."""
    return " ".join(str(text).split()).casefold()


def text_digests(texts: Sequence[str], pairs: Optional[Sequence[str]] = None) -> np.ndarray:
    """One unsigned 64-bit digest per row (in row order) of the normalised text, or text pair."""
    out = np.empty(len(texts), dtype="<u8")
    for i, text in enumerate(texts):
        key = normalised(text) if pairs is None else normalised(text) + "\x1f" + normalised(pairs[i])
        raw = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=DIGEST_BYTES).digest()
        out[i] = int.from_bytes(raw, "little")
    return out


def rows_digest(digests: np.ndarray) -> str:
    """One digest of a whole data set's texts, in row order (32 hex characters): two evaluations with the
    same value read the same texts."""
    return hashlib.blake2b(np.asarray(digests, dtype="<u8").tobytes(), digest_size=16).hexdigest()


def overlap(evaluated: np.ndarray, seen: Optional[dict[str, np.ndarray]]) -> dict[str, Any]:
    """``overlap`` (rows, training_rows, validation_rows) and ``held_out`` of an evaluation whose row digests
    are ``evaluated``, against the run's recorded digests ``seen`` (None: the run recorded none, so both
    are unknown: ``overlap`` None and ``held_out`` None)."""
    if seen is None:
        return {"overlap": None, "held_out": None}
    counts = {
        "rows": int(len(evaluated)),
        "training_rows": int(np.isin(evaluated, seen["train"]).sum()),
        "validation_rows": int(np.isin(evaluated, seen["validation"]).sum()),
    }
    return {"overlap": counts, "held_out": counts["training_rows"] == 0 and counts["validation_rows"] == 0}


def overlap_text(record: dict[str, Any]) -> str:
    """How an evaluation record's rows relate to the run's own rows, in words (reports, model card, warnings)."""
    counts = record.get("overlap")
    if record.get("held_out") is None or not isinstance(counts, dict):
        return "overlap with the run's training rows unknown (the run recorded no row digests)"
    if record["held_out"]:
        return f"held out: none of its {counts['rows']:,} rows is a training or validation row of the run"
    return (
        f"not held out: {counts['training_rows']:,} of its {counts['rows']:,} rows are training rows of the run "
        f"and {counts['validation_rows']:,} validation rows"
    )


def source_name(source: str) -> str:
    """How an evaluated source is named in records and reports: a file's name (never its folder, which
    says where it lay on one machine), or a hub data set's name as given."""
    path = Path(str(source))
    return path.name if path.exists() or path.suffix else str(source)


def source_key(source: str) -> str:
    """Which source an evaluation read (a hash of its absolute path, or of the hub name): two different files
    of one name keep a record each, the same file evaluated again replaces its own."""
    path = Path(str(source))
    where = str(path.absolute()) if path.exists() else str(source)
    return hashlib.blake2b(where.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()
