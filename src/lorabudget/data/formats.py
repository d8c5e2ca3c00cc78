"""Reading a data source into a table with its own column names: hub datasets, ``save_to_disk``
folders, CSV/TSV, JSON (Lines), Parquet, pickles and in-memory tables (``memory:NAME``).

A file is read once per process: its table is kept, keyed by the file's identity (path, inode, size
and modification time; a pipe by its path and inode, since it cannot be read twice), so inferring the
classes and then loading the rows do not read it again."""

from __future__ import annotations

import json
import pickle
import stat
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from lorabudget.config import AG_NEWS_SOURCES
from lorabudget.data.columns import NO_COLUMNS, Columns, check_unique_columns
from lorabudget.data.csv_layout import csv_layout, header_base, parse_csv
from lorabudget.data.memory import is_memory_source, registered_frame, registered_rows
from lorabudget.errors import LorabudgetError

HUB_DATASETS = {name: "fancyzhx/ag_news" for name in AG_NEWS_SOURCES}
HUB_PREFIX = "hub:"
CSV_SUFFIXES = {".csv", ".tsv", ".txt"}
JSON_SUFFIXES = {".jsonl", ".json", ".ndjson"}
PICKLE_SUFFIXES = {".pkl", ".pickle"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
_KEPT = 8  # tables kept per process: a run reads a training and a validation file, a search a few more

_tables: "OrderedDict[tuple, pd.DataFrame]" = OrderedDict()
_tables_lock = threading.Lock()


class _DuplicateKey(Exception):
    """Raised inside the JSON parser (not a ValueError, which means "not JSON" there)."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen.add(key)
    return dict(pairs)


def _json_loads(text: str):
    return json.loads(text, object_pairs_hook=_unique_keys)


def _read_json(data: bytes, path: Path) -> pd.DataFrame:
    """A JSON array of records (or a mapping of columns), or JSON Lines: one object per line."""
    text = data.decode("utf-8-sig")
    if not text.strip():
        raise LorabudgetError(f"{path}: the file is empty")
    try:
        if path.suffix.lower() == ".json" and text.lstrip()[:1] in "[{":
            try:
                whole = _json_loads(text)
            except ValueError:
                whole = None  # perhaps JSON Lines named .json
            if isinstance(whole, list):
                return pd.DataFrame(whole)
            if isinstance(whole, dict):  # columns (lists or index->value mappings), or one record
                try:
                    return pd.DataFrame(whole)
                except ValueError:
                    return pd.DataFrame([whole])
        return _read_json_lines(text, path)
    except _DuplicateKey as err:
        raise LorabudgetError(f"{path}: the key '{err}' appears twice in one record; keep one") from None


def _read_json_lines(text: str, path: Path) -> pd.DataFrame:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = _json_loads(line)
        except _DuplicateKey as err:
            raise LorabudgetError(f"{path}: line {number}: the key '{err}' appears twice; keep one") from None
        except ValueError as err:
            raise LorabudgetError(f"{path}: line {number} is not valid JSON ({err})") from None
        if not isinstance(record, dict):
            raise LorabudgetError(f"{path}: line {number} is not a JSON object with named fields")
        records.append(record)
    return pd.DataFrame(records)


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _read_pickle(path: Path) -> pd.DataFrame:
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise LorabudgetError(f"{path}: not a readable pickle ({type(err).__name__}: {err})") from None
    if isinstance(obj, pd.DataFrame):
        return obj
    if hasattr(obj, "to_pandas"):  # datasets.Dataset
        return _frame_of_dataset(obj)
    if isinstance(obj, dict):
        return pd.DataFrame(obj)
    kind = type(obj).__name__
    raise LorabudgetError(
        f"{path}: the pickle holds {_article(kind)} {kind}; expected a datasets.Dataset or pandas DataFrame "
        "with a 'text' column"
    )


def _read_parquet(path: Path, regular: bool) -> pd.DataFrame:
    """A Parquet file; ``ClassLabel`` names from the features that ``datasets`` stores in its metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Parquet needs seeking: a pipe is read into memory first, and the schema comes from the same read.
    parquet = pq.ParquetFile(path if regular else pa.BufferReader(path.read_bytes()))
    check_unique_columns(parquet.schema_arrow.names, str(path))
    table = parquet.read()
    frame = table.to_pandas()
    meta = table.schema.metadata or {}
    try:
        features = json.loads(meta[b"huggingface"])["info"]["features"]
        frame.attrs["class_labels"] = {
            col: list(f["names"]) for col, f in features.items() if isinstance(f, dict) and "names" in f
        }
    except (KeyError, ValueError, TypeError, AttributeError):
        pass  # no datasets metadata: labels are read from the values
    return frame


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


def _frame_of_dataset(ds) -> pd.DataFrame:
    frame = ds.to_pandas()
    frame.attrs["class_labels"] = {
        col: list(feature.names) for col, feature in ds.features.items() if hasattr(feature, "names")
    }
    return frame


def _load_hub(name: str) -> pd.DataFrame:
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
    return _frame_of_dataset(ds)


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


def _kept(key: tuple, read) -> pd.DataFrame:
    """The table read for ``key`` in this process, reading it (once) when there is none."""
    with _tables_lock:
        frame = _tables.get(key)
        if frame is not None:
            _tables.move_to_end(key)
    if frame is None:
        frame = read()
        with _tables_lock:
            _tables[key] = frame
            while len(_tables) > _KEPT:
                _tables.popitem(last=False)
    copy = frame.copy(deep=False)
    copy.attrs = dict(frame.attrs)
    return copy


def forget_tables() -> None:
    """Drop the tables kept by :func:`read_table` (a file rewritten within the same second and size
    on a file system with coarse timestamps would otherwise be served from memory)."""
    with _tables_lock:
        _tables.clear()


def _file_key(path: Path) -> tuple[tuple, bool]:
    st = path.stat()
    regular = stat.S_ISREG(st.st_mode)
    where = str(path.resolve())
    if regular:
        return (where, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns), True
    return (where, st.st_dev, st.st_ino), False


def _read_file(path: Path, suffix: str, regular: bool) -> pd.DataFrame:
    if suffix in CSV_SUFFIXES:
        return parse_csv(path.read_bytes(), str(path), "\t" if suffix == ".tsv" else ",")
    if suffix in JSON_SUFFIXES:
        return _read_json(path.read_bytes(), path)
    if suffix in PARQUET_SUFFIXES:
        return _read_parquet(path, regular)
    return _read_pickle(path)


def _check_path(source: str, suffix: str, trust_pickle: bool) -> Path:
    path = Path(source).expanduser()
    if not path.exists():
        raise LorabudgetError(f"data file not found: {source}")
    if suffix not in CSV_SUFFIXES | JSON_SUFFIXES | PARQUET_SUFFIXES | PICKLE_SUFFIXES:
        raise LorabudgetError(
            f"{source}: unknown data format '{suffix or '(no extension)'}'; supported: "
            + ", ".join(sorted(CSV_SUFFIXES | JSON_SUFFIXES | PARQUET_SUFFIXES | PICKLE_SUFFIXES))
        )
    if suffix in PICKLE_SUFFIXES and not trust_pickle:
        raise LorabudgetError(
            f"{source}: refusing to unpickle: loading a pickle runs code from the file; if you trust it, "
            "pass --trust-pickle (or set data.trust_pickle: true)"
        )
    return path


def read_table(
    source: str,
    trust_pickle: bool = False,
    columns: Columns = NO_COLUMNS,
    class_names: Optional[Sequence[str]] = None,
) -> tuple[pd.DataFrame, int]:
    """Read ``source`` into a DataFrame with its own column names; return it and the label base.

    ``ClassLabel`` names known from the source (hub, ``save_to_disk`` folder, Parquet written by
    ``datasets``) are in ``frame.attrs["class_labels"]`` (column -> names); columns a header-less
    CSV layout gave a role are in ``frame.attrs["roles"]``. Pickle files are refused unless
    ``trust_pickle``: unpickling runs code from the file. ``class_names``, when known, help tell a
    CSV's header row from data.
    """
    if is_memory_source(source):
        frame = registered_frame(source)
        frame.columns = [str(c).strip() for c in frame.columns]  # as a file's header reads them
        return _named_table(frame, describe_source(source), columns)
    if is_hub_source(source):
        return _kept(("hub", source), lambda: _load_hub(source)), 0
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return _named_table(_load_saved_dataset(path), source, columns)
        raise LorabudgetError(f"{source} is a folder; pass a data file (CSV, JSON Lines, Parquet or pickle)")
    suffix = path.suffix.lower()
    path = _check_path(source, suffix, trust_pickle)
    try:
        key, regular = _file_key(path)
        frame = _kept(key, lambda: _read_file(path, suffix, regular))
    except LorabudgetError:
        raise
    except Exception as err:  # noqa: BLE001 - a corrupt file in any reader
        raise LorabudgetError(f"{source}: cannot read the file ({type(err).__name__}: {err})".splitlines()[0]) from None
    if suffix in CSV_SUFFIXES:
        return csv_layout(frame, source, columns, class_names)
    return _named_table(frame, source, columns)


def _named_table(frame: pd.DataFrame, source: str, columns: Columns) -> tuple[pd.DataFrame, int]:
    check_unique_columns(list(frame.columns), source)
    return frame, header_base(frame, columns, source)


def describe_source(source: str) -> str:
    """A short name of a data source for messages: the file name of a path, "DataFrame (N rows)" for
    an in-memory table, the source itself for hub datasets."""
    if is_memory_source(source):
        rows = registered_rows(source)
        return f"DataFrame ({rows:,} rows)" if rows is not None else f"{source} (not in this process)"
    if is_hub_source(source):
        return source
    return Path(source).name or source


def message_name(source: str) -> str:
    """How messages name a source: the path or hub name as given, "DataFrame (N rows)" for memory."""
    return describe_source(source) if is_memory_source(source) else source
