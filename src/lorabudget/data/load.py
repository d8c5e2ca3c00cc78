"""Loading labelled and unlabelled text data from the hub or local files.

Supported inputs (see README "Data formats"):

* ``ag_news`` (or ``ag_news:test``): the Hugging Face dataset, train split by default.
* ``hub:REPO``, ``hub:REPO:SPLIT`` or ``hub:REPO:CONFIG:SPLIT``: any dataset ``datasets.load_dataset``
  reads, e.g. ``hub:nyu-mll/glue:sst2:train`` or ``hub:SetFit/sst5:test`` (train split by default).
* A folder written by ``datasets.Dataset.save_to_disk`` (a ``DatasetDict``: its ``train`` split).
* CSV: the original AG News corpus layout (no header; class 1..4, title, description), Kaggle's
  (header ``Class Index,Title,Description``, class 1..4), two columns ``text,label`` (label 0..C-1,
  with or without a header), or any file with a header naming ``text`` (or ``title`` and
  ``description``) and optionally ``label``.
* JSON Lines (``.jsonl``/``.json``) and Parquet with the same column names.
* Pickle (``.pkl``/``.pickle``): a pickled ``datasets.Dataset`` or pandas DataFrame with a ``text``
  column, as the competition's unlabelled test file. Unpickling runs code from the file, so it is
  refused unless the caller passes ``trust_pickle=True`` (``--trust-pickle``, ``data.trust_pickle``).

Title and description are joined with one space. Labels may also be given as class names.
``data.text_column``, ``data.text_pair_column`` and ``data.label_column`` name the columns instead of
the automatic finding (:class:`Columns`); with a pair column the two texts are kept apart
(``TextData.pairs``) and tokenized as a pair. Class names of a run whose ``model.labels`` is null come
from :func:`infer_labels`.
"""

from __future__ import annotations

import csv
import json
import pickle
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from lorabudget.config import AG_NEWS_SOURCES, RunConfig
from lorabudget.console import warn
from lorabudget.errors import LorabudgetError

HUB_DATASETS = {name: "fancyzhx/ag_news" for name in AG_NEWS_SOURCES}
HUB_PREFIX = "hub:"
TEXT_NAMES = ("text", "content", "sentence")
LABEL_NAMES = ("label", "labels", "class index", "class", "category")
TITLE_NAMES = ("title",)
DESCRIPTION_NAMES = ("description", "desc")
CSV_SUFFIXES = {".csv", ".tsv", ".txt"}
JSON_SUFFIXES = {".jsonl", ".json", ".ndjson"}
PICKLE_SUFFIXES = {".pkl", ".pickle"}
PARQUET_SUFFIXES = {".parquet", ".pq"}


@dataclass
class TextData:
    """Texts with optional integer labels, in the input's row order.

    ``rows`` holds each text's 0-based row number in the source (data rows, header excluded), so
    messages can point at the user's file even after empty rows were dropped.
    """

    texts: list[str]
    labels: Optional[np.ndarray]  # int64 [n] in 0..num_labels-1, or None when unlabelled
    rows: np.ndarray  # int64 [n]
    source: str
    pairs: Optional[list[str]] = None  # the second text of each row for a sentence-pair task

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> "TextData":
        idx = np.asarray(indices, dtype=np.int64)
        return TextData(
            texts=[self.texts[i] for i in idx],
            labels=None if self.labels is None else self.labels[idx],
            rows=self.rows[idx],
            source=self.source,
            pairs=None if self.pairs is None else [self.pairs[i] for i in idx],
        )


@dataclass(frozen=True)
class Columns:
    """Column names given by the user (``data.text_column`` ...); ``None`` finds the column by name."""

    text: Optional[str] = None
    text_pair: Optional[str] = None
    label: Optional[str] = None

    @classmethod
    def of(cls, cfg: RunConfig) -> "Columns":
        d = cfg.data
        return cls(d.text_column, d.text_pair_column, d.label_column)

    def names(self) -> list[str]:
        return [c for c in (self.text, self.text_pair, self.label) if c]


def _named(frame: pd.DataFrame, name: str, key: str, source: str) -> str:
    """The column the user named (exactly, else ignoring case and surrounding spaces)."""
    if name in frame.columns:
        return name
    found = _find(frame.columns, (name.strip().lower(),))
    if found is None:
        raise LorabudgetError(
            f"{source}: no column '{name}' ({key}); found: " + ", ".join(str(c) for c in frame.columns)
        )
    return found


def _find(columns: Sequence[str], names: Sequence[str]) -> Optional[str]:
    lowered = {str(c).strip().lower(): c for c in columns}
    for name in names:
        if name in lowered:
            return lowered[name]
    return None


def _is_int(value: object) -> bool:
    try:
        int(str(value).strip())
        return True
    except ValueError:
        return False


def _read_csv(path: Path, columns: Columns = Columns()) -> tuple[pd.DataFrame, int]:
    """Read a CSV in any supported layout; return named columns and the label base (0 or 1)."""
    sep = "\t" if path.suffix == ".tsv" else ","
    try:
        raw = pd.read_csv(path, header=None, dtype=str, keep_default_na=False, sep=sep)
    except pd.errors.EmptyDataError:
        raise LorabudgetError(f"{path}: the file is empty") from None
    except pd.errors.ParserError as err:
        raise LorabudgetError(
            f"{path}: not a readable CSV file ({_csv_field_count_problem(path, sep) or str(err).splitlines()[0]})"
        ) from None
    except UnicodeDecodeError as err:
        raise LorabudgetError(f"{path}: not a readable CSV file ({str(err).splitlines()[0]})") from None
    first = [str(v).strip().lower() for v in raw.iloc[0]] if len(raw) else []
    known = set(TEXT_NAMES + LABEL_NAMES + TITLE_NAMES + DESCRIPTION_NAMES + ("id",))
    known |= {c.strip().lower() for c in columns.names()}
    if any(cell in known for cell in first):
        frame = raw.iloc[1:].reset_index(drop=True)
        frame.columns = [str(v).strip() for v in raw.iloc[0]]
        # An unlabelled file (predict) lacks the label column: only labelled reads insist on it.
        label_col = _find(frame.columns, (columns.label.strip().lower(),) if columns.label else LABEL_NAMES)
        # Kaggle's layout (Class Index, Title, Description) numbers classes from 1.
        one_based = label_col is not None and str(label_col).strip().lower() == "class index"
        return frame, 1 if one_based else 0
    ncols = raw.shape[1]
    if columns.names():
        raise LorabudgetError(
            f"{path}: the first row names no column given by data.text_column, data.text_pair_column or "
            "data.label_column; add a header row naming them"
        )
    if ncols == 3:  # the original corpus: class 1..4, title, description
        raw.columns = ["label", "title", "description"]
        return raw, 1
    if ncols == 2:  # text,label (or label,text): the label column is the all-integer one
        ints = [raw[c].map(_is_int).all() for c in raw.columns]
        raw.columns = ["label", "text"] if ints[0] and not ints[1] else ["text", "label"]
        return raw, 0
    if ncols == 1:
        raw.columns = ["text"]
        return raw, 0
    raise LorabudgetError(
        f"{path}: cannot tell the layout of a {ncols}-column CSV without a header; add a header row "
        "naming the 'text' (or 'title' and 'description') and 'label' columns"
    )


def _csv_field_count_problem(path: Path, sep: str) -> Optional[str]:
    """Name the line whose field count differs from most lines (pandas blames the line after a short
    first row, since it takes the first row's count as the expected one)."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh, delimiter=sep)
            counts = []
            for record in reader:
                counts.append((reader.line_num, len(record)))
    except (csv.Error, UnicodeDecodeError, OSError):
        return None
    if not counts:
        return None
    usual = Counter(n for _, n in counts).most_common(1)[0][0]
    odd = next(((line, n) for line, n in counts if n != usual), None)
    if odd is None:
        return None
    return f"line {odd[0]} has {odd[1]} fields, most lines have {usual}"


def _read_json(path: Path) -> pd.DataFrame:
    """A JSON array of records (or a mapping of columns), or JSON Lines: one object per line."""
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise LorabudgetError(f"{path}: the file is empty")
    if path.suffix.lower() == ".json" and text.lstrip()[:1] in "[{":
        try:
            whole = json.loads(text)
        except ValueError:
            whole = None  # perhaps JSON Lines named .json
        if isinstance(whole, list):
            return pd.DataFrame(whole)
        if isinstance(whole, dict):  # columns (lists or index->value mappings), or one record
            try:
                return pd.DataFrame(whole)
            except ValueError:
                return pd.DataFrame([whole])
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            raise LorabudgetError(f"{path}: line {number} is not valid JSON ({err})") from None
        if not isinstance(record, dict):
            raise LorabudgetError(f"{path}: line {number} is not a JSON object with named fields")
        records.append(record)
    return pd.DataFrame(records)


def _article(word: str) -> str:
    return "an" if re.match(r"[aeiouAEIOU]", word) else "a"


def _read_pickle(path: Path, trust_pickle: bool = False) -> pd.DataFrame:
    if not trust_pickle:
        raise LorabudgetError(
            f"{path}: refusing to unpickle: loading a pickle runs code from the file; if you trust it, "
            "pass --trust-pickle (or set data.trust_pickle: true)"
        )
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise LorabudgetError(f"{path}: not a readable pickle ({type(err).__name__}: {err})") from None
    if isinstance(obj, pd.DataFrame):
        return obj
    if hasattr(obj, "to_pandas"):  # datasets.Dataset
        return obj.to_pandas()
    if isinstance(obj, dict):
        return pd.DataFrame(obj)
    raise LorabudgetError(
        f"{path}: the pickle holds {_article(type(obj).__name__)} {type(obj).__name__}; expected a datasets.Dataset or pandas DataFrame "
        "with a 'text' column"
    )


def parse_hub_name(name: str) -> tuple[str, Optional[str], str]:
    """``(repo, config or None, split)`` of ``ag_news[:SPLIT]`` or ``hub:REPO[:SPLIT]`` /
    ``hub:REPO:CONFIG:SPLIT`` (the split defaults to ``train``)."""
    if name.startswith(HUB_PREFIX):
        parts = name[len(HUB_PREFIX) :].split(":")
        if not parts[0] or len(parts) > 3 or not all(parts):
            raise LorabudgetError(
                f"data source '{name}': expected hub:REPO, hub:REPO:SPLIT or hub:REPO:CONFIG:SPLIT "
                "(e.g. hub:nyu-mll/glue:sst2:train)"
            )
        if len(parts) == 3:
            return parts[0], parts[1], parts[2]
        return parts[0], None, parts[1] if len(parts) == 2 else "train"
    dataset, _, split = name.partition(":")
    return HUB_DATASETS[dataset], None, split or "train"


def is_hub_source(source: str) -> bool:
    return source.startswith(HUB_PREFIX) or (source.split(":")[0] in HUB_DATASETS and not Path(source).exists())


def _class_labels(ds) -> dict[str, list[str]]:
    """Names of every ``ClassLabel`` column of a ``datasets.Dataset``."""
    return {col: list(feature.names) for col, feature in ds.features.items() if hasattr(feature, "names")}


def _frame_of_dataset(ds) -> pd.DataFrame:
    frame = ds.to_pandas()
    frame.attrs["class_labels"] = _class_labels(ds)
    return frame


def _load_hub(name: str) -> tuple[pd.DataFrame, int]:
    from lorabudget.model.build import hub_reachable

    repo, config, split = parse_hub_name(name)
    try:
        import datasets

        if not hub_reachable():
            # The hub is not reachable: only a copy in the local cache can serve the request.
            datasets.config.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]
        ds = datasets.load_dataset(repo, config, split=split)
    except Exception as err:  # noqa: BLE001 - datasets raises many types for "not available"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LorabudgetError(
            f"cannot load dataset '{name}' from the Hugging Face hub ({first}). When offline, pass a local "
            "file instead, e.g. --set data.train=train.csv (CSV, JSON Lines, Parquet or pickle)"
        ) from None
    return _frame_of_dataset(ds), 0


def _load_saved_dataset(path: Path) -> pd.DataFrame:
    """A folder written by ``save_to_disk``: a Dataset, or a DatasetDict's ``train`` split."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as err:  # noqa: BLE001 - any reason means the same to the user
        raise LorabudgetError(
            f"{path}: not a readable datasets folder ({type(err).__name__}: {err})".splitlines()[0]
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise LorabudgetError(f"{path}: a DatasetDict without a 'train' split (splits: {', '.join(ds)})")
        ds = ds["train"]
    return _frame_of_dataset(ds)


def _read_parquet(path: Path) -> pd.DataFrame:
    """A Parquet file; ``ClassLabel`` names from the features that ``datasets`` stores in its metadata."""
    import pyarrow.parquet as pq

    frame = pd.read_parquet(path)
    meta = pq.read_schema(path).metadata or {}
    try:
        features = json.loads(meta[b"huggingface"])["info"]["features"]
        frame.attrs["class_labels"] = {
            col: list(f["names"]) for col, f in features.items() if isinstance(f, dict) and "names" in f
        }
    except (KeyError, ValueError, TypeError, AttributeError):
        pass  # no datasets metadata: labels are read from the values
    return frame


MEMORY_PREFIX = "memory:"
_FRAMES: dict[str, pd.DataFrame] = {}


def register_frame(frame: pd.DataFrame, name: Optional[str] = None) -> str:
    """Keep a copy of ``frame`` for this process and return the source string that reads it."""
    import hashlib

    key = name or hashlib.sha256(frame.to_csv(index=False).encode("utf-8", "surrogatepass")).hexdigest()[:12]
    _FRAMES[key] = frame.copy()
    return MEMORY_PREFIX + key


def _registered_frame(source: str) -> pd.DataFrame:
    frame = _FRAMES.get(source[len(MEMORY_PREFIX) :])
    if frame is None:
        raise LorabudgetError(f"data source '{source}' is an in-memory table of another process; pass the data again")
    return frame.copy()


def describe_source(source: str) -> str:
    if source.startswith(MEMORY_PREFIX):
        frame = _FRAMES.get(source[len(MEMORY_PREFIX) :])
        return f"DataFrame ({len(frame):,} rows)" if frame is not None else source
    return Path(source).name if not is_hub_source(source) else source


def read_table(source: str, trust_pickle: bool = False, columns: Columns = Columns()) -> tuple[pd.DataFrame, int]:
    """Read ``source`` into a DataFrame with its own column names; return it and the label base.

    ``ClassLabel`` names known from the source (hub, ``save_to_disk`` folder, Parquet written by
    ``datasets``) are in ``frame.attrs["class_labels"]`` (column -> names). Pickle files are refused
    unless ``trust_pickle``: unpickling runs code from the file.
    """
    if source.startswith(MEMORY_PREFIX):
        return _registered_frame(source), 0
    if is_hub_source(source):
        return _load_hub(source)
    path = Path(source).expanduser()
    if not path.exists():
        raise LorabudgetError(f"data file not found: {source}")
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return _load_saved_dataset(path), 0
        raise LorabudgetError(f"{source} is a folder; pass a data file (CSV, JSON Lines, Parquet or pickle)")
    suffix = path.suffix.lower()
    try:
        if suffix in CSV_SUFFIXES:
            return _read_csv(path, columns)
        if suffix in JSON_SUFFIXES:
            return _read_json(path), 0
        if suffix in PARQUET_SUFFIXES:
            return _read_parquet(path), 0
        if suffix in PICKLE_SUFFIXES:
            return _read_pickle(path, trust_pickle), 0
    except LorabudgetError:
        raise
    except Exception as err:  # noqa: BLE001 - a corrupt file in any reader
        raise LorabudgetError(f"{source}: cannot read the file ({type(err).__name__}: {err})".splitlines()[0]) from None
    raise LorabudgetError(
        f"{source}: unknown data format '{suffix or '(no extension)'}'; supported: "
        + ", ".join(sorted(CSV_SUFFIXES | JSON_SUFFIXES | PARQUET_SUFFIXES | PICKLE_SUFFIXES))
    )


def _texts_from(frame: pd.DataFrame, source: str, columns: Columns = Columns()) -> pd.Series:
    if columns.text:
        return frame[_named(frame, columns.text, "data.text_column", source)]
    text_col = _find(frame.columns, TEXT_NAMES)
    if text_col is not None:
        return frame[text_col]
    title_col = _find(frame.columns, TITLE_NAMES)
    desc_col = _find(frame.columns, DESCRIPTION_NAMES)
    if title_col is not None and desc_col is not None:

        def join(title: object, desc: object) -> object:
            parts = [p.strip() for p in (title, desc) if isinstance(p, str) and p.strip()]
            return " ".join(parts) if parts else None

        return pd.Series([join(t, d) for t, d in zip(frame[title_col], frame[desc_col])], index=frame.index)
    raise LorabudgetError(
        f"{source}: no text column; expected 'text' (or 'title' and 'description'; or name it with "
        "--text-column), found: " + ", ".join(str(c) for c in frame.columns)
    )


def _pairs_from(frame: pd.DataFrame, source: str, columns: Columns) -> Optional[pd.Series]:
    if not columns.text_pair:
        return None
    return frame[_named(frame, columns.text_pair, "data.text_pair_column", source)]


def _label_column(frame: pd.DataFrame, source: str, columns: Columns) -> str:
    if columns.label:
        return _named(frame, columns.label, "data.label_column", source)
    label_col = _find(frame.columns, LABEL_NAMES)
    if label_col is None:
        raise LorabudgetError(
            f"{source}: no label column; expected one of {', '.join(LABEL_NAMES)} (or name it with "
            "--label-column), found: " + ", ".join(str(c) for c in frame.columns)
        )
    return label_col


def _labels_from(
    frame: pd.DataFrame, source: str, base: int, class_names: Sequence[str], columns: Columns = Columns()
) -> np.ndarray:
    label_col = _label_column(frame, source, columns)
    by_name = {name.lower(): i for i, name in enumerate(class_names)}
    num = len(class_names)
    labels = np.empty(len(frame), dtype=np.int64)
    for row, value in enumerate(frame[label_col].tolist()):
        text = str(value).strip()
        if _is_int(text):
            label = int(text) - base
        elif text.lower() in by_name:
            label = by_name[text.lower()]
        else:
            label = -1
        if not 0 <= label < num:
            allowed = f"{base}..{base + num - 1}"
            raise LorabudgetError(
                f"{source}: row {row}: label {value!r} is outside the class set "
                f"(this layout uses {allowed}, or the class names {', '.join(class_names)})"
            )
        labels[row] = label
    return labels


def _empty_mask(texts: pd.Series) -> np.ndarray:
    return np.array([not (isinstance(t, str) and t.strip()) for t in texts], dtype=bool)


def _row_list(rows: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def load_labelled(
    source: str, class_names: Sequence[str], trust_pickle: bool = False, columns: Columns = Columns()
) -> TextData:
    """Texts and labels for training or evaluation. Empty or non-text rows are dropped, with a warning
    (for pairs: rows where either text is empty)."""
    frame, base = read_table(source, trust_pickle, columns)
    texts = _texts_from(frame, source, columns)
    pairs = _pairs_from(frame, source, columns)
    labels = _labels_from(frame, source, base, class_names, columns)
    empty = _empty_mask(texts) | (_empty_mask(pairs) if pairs is not None else False)
    rows = np.arange(len(frame), dtype=np.int64)
    if empty.any():
        warn(f"{source}: dropped {int(empty.sum())} empty or non-text rows (rows {_row_list(rows[empty])})")
    keep = ~empty
    if not keep.any():
        raise LorabudgetError(f"{source}: no rows with text")
    return TextData(
        texts=[t.strip() for t in texts[keep]],
        labels=labels[keep],
        rows=rows[keep],
        source=source,
        pairs=None if pairs is None else [t.strip() for t in pairs[keep]],
    )


def load_unlabelled(source: str, trust_pickle: bool = False, columns: Columns = Columns()) -> TextData:
    """Texts for prediction, every row kept so output IDs match input rows.

    Empty or non-text rows are predicted from an empty string and reported in a warning.
    """
    frame, _ = read_table(source, trust_pickle, columns)
    texts = _texts_from(frame, source, columns)
    pairs = _pairs_from(frame, source, columns)
    empty = _empty_mask(texts) | (_empty_mask(pairs) if pairs is not None else False)
    rows = np.arange(len(frame), dtype=np.int64)
    if len(frame) == 0:
        raise LorabudgetError(f"{source}: no rows")
    if empty.any():
        warn(
            f"{source}: {int(empty.sum())} empty or non-text rows (rows {_row_list(rows[empty])}) are "
            "predicted from an empty text so that every input row keeps its ID"
        )
    cleaned = ["" if e else t.strip() for t, e in zip(texts, empty)]
    cleaned_pairs = None if pairs is None else ["" if e else t.strip() for t, e in zip(pairs, empty)]
    return TextData(texts=cleaned, labels=None, rows=rows, source=source, pairs=cleaned_pairs)


def infer_labels(source: str, columns: Columns = Columns(), trust_pickle: bool = False) -> tuple[list[str], str]:
    """``(class names, label format)`` read from a labelled source's label column.

    A ``ClassLabel`` column gives its names (format ``id``); integer labels 0..C-1 (1..C in the layouts
    numbered from 1) give C classes named "0".."C-1" (``id``); any other labels give their distinct
    values, sorted (``name``).
    """
    frame, base = read_table(source, trust_pickle, columns)
    col = _label_column(frame, source, columns)
    named = frame.attrs.get("class_labels", {}).get(col)
    if named:
        return list(named), "id"
    values = [str(v).strip() for v in frame[col].tolist() if v is not None and str(v).strip()]
    if all(_is_int(v) for v in values):
        ids = [int(v) - base for v in values]
        if not ids or min(ids) < 0:
            raise LorabudgetError(f"{source}: integer labels must be {base} or more to number the classes")
        names = [str(i) for i in range(max(ids) + 1)]
        fmt = "id"
    else:
        names, fmt = sorted(set(values)), "name"
    if len(names) < 2:
        raise LorabudgetError(f"{source}: the label column '{col}' holds fewer than two classes ({', '.join(names)})")
    return names, fmt


def resolve_labels(cfg: RunConfig, log=warn, preset_labels: bool = False) -> RunConfig:
    """Fill ``model.labels`` (when null) and ``model.label_format`` from the training data, in place.

    A run records both in its ``config.yaml``, so evaluation, prediction and exports use the same
    classes; given labels are kept (with a warning when integer labels leave some of them unused).
    """
    m = cfg.model
    if m.labels is not None and m.label_format is not None:
        return cfg
    names, fmt = infer_labels(cfg.data.train, Columns.of(cfg), cfg.data.trust_pickle)
    if m.labels is None:
        if m.num_labels is not None and fmt == "id" and len(names) <= m.num_labels:
            names = [str(i) for i in range(m.num_labels)]
        if m.num_labels is not None and len(names) != m.num_labels:
            raise LorabudgetError(
                f"model.num_labels is {m.num_labels} but {cfg.data.train} has {len(names)} classes ({', '.join(names)})"
            )
        m.labels = names
    elif fmt == "id" and len(names) < len(m.labels):
        log(
            f"{cfg.data.train}: the integer labels use classes 0..{len(names) - 1} of the {len(m.labels)} in "
            f"model.labels ({', '.join(m.labels)}); if this data has its own classes, pass --set model.labels=null"
        )
    m.label_format = fmt
    return cfg


def split_validation(data: TextData, size: float | int, seed: int) -> tuple[TextData, TextData]:
    """A deterministic split: ``size`` rows (int) or fraction (float) go to validation."""
    n = len(data)
    n_val = int(size) if isinstance(size, int) else int(round(n * size))
    if not 0 < n_val < n:
        raise LorabudgetError(f"data.validation_size={size} leaves no training or no validation rows out of {n}")
    order = np.random.default_rng(seed).permutation(n)
    return data.subset(np.sort(order[n_val:])), data.subset(np.sort(order[:n_val]))
