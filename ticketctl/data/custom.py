"""Your own text-classification data, the way transformers' run_glue takes it: files (CSV, TSV, JSON, JSON Lines,
optionally gzipped) or a hub dataset, with named text and label columns.

The task is inferred from the training labels and recorded in every artifact (:meth:`Task.spec`): integer or string
labels make a classification task whose classes are the sorted label values; numbers that are not all integers
make a regression task. ``--metric`` overrides the inference (a regression metric makes integer scores a
regression task). Validation labels outside the training label set are refused, not silently dropped.

Formats, by file extension: ``.csv`` (RFC 4180 quoting, Python's csv module), ``.tsv`` (tab-separated, no quoting:
a quote is part of the text, as in GLUE), ``.json`` (a list of objects, or an object whose ``data`` field is one),
``.jsonl`` / ``.ndjson`` (one object per line). A ``.gz`` suffix is decompressed first. numpy only.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np

from ticketctl.data.split import Split, read_text, tsv_rows
from ticketctl.data.tasks import CLASSIFICATION_METRICS, REGRESSION_METRICS, Task
from ticketctl.errors import InputError, UsageError

FORMATS = ("csv", "tsv", "json", "jsonl")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_TEXT_COLUMNS = (("sentence1", "sentence2"), ("text",), ("sentence",))


def file_format(path: str | Path) -> str:
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    suffix = name.rsplit(".", 1)[-1] if "." in name else ""
    fmt = {"csv": "csv", "tsv": "tsv", "tab": "tsv", "json": "json", "jsonl": "jsonl", "ndjson": "jsonl"}.get(suffix)
    if fmt is None:
        raise UsageError(f"{path}: unknown data format {suffix or '(no extension)'!r}; use .csv, .tsv, .json or .jsonl")
    return fmt


def read_table(path: str | Path) -> tuple[list[str], list[dict]]:
    """(column names, rows as dicts of strings or JSON values) of one data file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    fmt = file_format(path)
    text = read_text(path)
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = list(reader)
        columns = list(reader.fieldnames or [])
        for n, row in enumerate(rows):
            if None in row:  # csv puts the fields beyond the header under the key None
                raise InputError(f"{path}: row {n + 1} has {len(columns) + len(row[None])} fields where the header "
                                 f"has {len(columns)}")
            if any(v is None for v in row.values()):
                raise InputError(f"{path}: row {n + 1} has fewer fields than the header ({len(columns)})")
        return columns, rows
    if fmt == "tsv":
        table = tsv_rows(text, str(path))
        columns = table[0]
        rows = []
        for n, row in enumerate(table[1:]):
            if len(row) != len(columns):
                raise InputError(f"{path}:{n + 2}: expected {len(columns)} tab-separated fields, got {len(row)}")
            rows.append(dict(zip(columns, row)))
        return columns, rows
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise InputError(f"{path}: JSON data must be a list of objects (or {{\"data\": [...]}}); use .jsonl for "
                             f"one object per line")
        rows = data
    else:
        rows = []
        for n, line in enumerate(text.split("\n")):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{n + 1}: not a JSON object ({e.msg})") from None
    columns: list[str] = []
    for n, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InputError(f"{path}: record {n + 1} is not an object")
        columns.extend(k for k in row if k not in columns)
    return columns, rows


# ---------------------------------------------------------------------------------------------- the task


def parse_columns(text_columns: str | None) -> tuple[str, ...] | None:
    if text_columns is None:
        return None
    cols = tuple(c.strip() for c in text_columns.split(","))
    if not 1 <= len(cols) <= 2 or not all(cols):
        raise UsageError(f"--text-columns {text_columns!r}: give one column or two (a,b) for sentence pairs")
    return cols


def pick_text_columns(columns: list[str], given: tuple[str, ...] | None, source: str) -> tuple[str, ...]:
    if given is not None:
        missing = [c for c in given if c not in columns]
        if missing:
            raise InputError(f"{source}: no column(s) {', '.join(map(repr, missing))} (columns: {', '.join(columns)})")
        return given
    for cols in DEFAULT_TEXT_COLUMNS:
        if all(c in columns for c in cols):
            return cols
    raise UsageError(f"{source}: say which columns hold the text with --text-columns a[,b] "
                     f"(columns: {', '.join(columns)})")


def _as_number(v):
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return v
    try:
        return int(v)
    except (TypeError, ValueError):
        try:
            return float(v)
        except (TypeError, ValueError):
            return None


def infer_task(name: str, columns: list[str], rows: list[dict], text_columns: tuple[str, ...] | None,
               label_column: str, metric: str | None, source: str, class_names: tuple[str, ...] | None = None) -> Task:
    """The task of a training table: its text columns, its label set (sorted, or a hub ``ClassLabel``'s names in
    their order) or regression, and its metrics."""
    if not NAME_PATTERN.match(name):
        raise UsageError(f"--task {name!r}: a task name is letters, digits, '.', '_' or '-' (it names the artifacts)")
    text = pick_text_columns(columns, text_columns, source)
    if label_column not in columns:
        raise InputError(f"{source}: no label column {label_column!r} (columns: {', '.join(columns)}); "
                         f"name it with --label-column")
    if metric is not None and metric not in CLASSIFICATION_METRICS + REGRESSION_METRICS:
        raise UsageError(f"--metric {metric}: choose one of {', '.join(CLASSIFICATION_METRICS + REGRESSION_METRICS)}")
    if not rows:
        raise InputError(f"{source}: no examples")
    values = [r.get(label_column) for r in rows]
    if any(v is None or v == "" for v in values):
        n = next(i for i, v in enumerate(values) if v is None or v == "")
        raise InputError(f"{source}: row {n + 1} has no label (training data must be labelled)")
    numbers = [_as_number(v) for v in values]
    numeric = all(x is not None for x in numbers)
    integral = numeric and all(float(x).is_integer() for x in numbers)
    regression = metric in REGRESSION_METRICS if metric else numeric and not integral
    if regression:
        if not numeric:
            bad = next(v for v, x in zip(values, numbers) if x is None)
            raise InputError(f"{source}: label {bad!r} is not a number (regression with --metric {metric})")
        labels = None
        metrics = (metric or "pearson",) + tuple(m for m in REGRESSION_METRICS if m != (metric or "pearson"))
    else:
        if class_names:
            labels = tuple(class_names)
        elif integral:
            labels = tuple(str(v) for v in sorted({int(x) for x in numbers}))
        else:
            labels = tuple(sorted({str(v) for v in values}))
        if len(labels) < 2:
            raise InputError(f"{source}: every training label is {labels[0]!r}: classification needs two classes")
        if metric in ("f1", "matthews") and len(labels) != 2:
            raise UsageError(f"--metric {metric} needs two classes; {source} has {len(labels)}")
        default = ("accuracy", "f1") if len(labels) == 2 else ("accuracy",)
        metrics = (metric,) + tuple(m for m in default if m != metric) if metric else default
    return Task(name, "", text, label_column, labels, metrics, source_kind="custom")


def label_index(task: Task, value, source: str, row: int) -> int | float:
    if task.is_regression:
        x = _as_number(value)
        if x is None or not np.isfinite(float(x)):
            raise InputError(f"{source}: row {row}: label {value!r} is not a number")
        return float(x)
    x = _as_number(value)
    integer_labels = task.labels[0].lstrip("-").isdigit()
    key = str(int(x)) if x is not None and float(x).is_integer() and integer_labels else str(value)
    if key not in task.labels:
        raise InputError(f"{source}: row {row}: label {value!r} is not one of the training labels "
                         f"({', '.join(task.labels)})")
    return task.labels.index(key)


def split_of(task: Task, columns: list[str], rows: list[dict], source: str, name: str,
             need_labels: bool = False) -> Split:
    """A :class:`Split` of a table for ``task``: the text columns, and the labels where the label column is there
    (unlabelled data, e.g. for ``predict``, has none). Ids are the row numbers, or an ``idx``/``id`` column of
    integers."""
    missing = [c for c in task.text_columns if c not in columns]
    if missing:
        raise InputError(f"{source}: no column(s) {', '.join(map(repr, missing))} (columns: {', '.join(columns)})")
    if not rows:
        raise InputError(f"{source}: no examples")
    texts = []
    for n, r in enumerate(rows):
        row = tuple(r.get(c) for c in task.text_columns)
        if any(not isinstance(t, str) for t in row):
            raise InputError(f"{source}: row {n + 1}: text column value is not a string")
        texts.append(row)
    labels = None
    labelled = task.label_column in columns and all(r.get(task.label_column) not in (None, "") for r in rows)
    if task.label_column in columns and not labelled and any(r.get(task.label_column) not in (None, "") for r in rows):
        raise InputError(f"{source}: some rows have a label and some do not")
    if need_labels and not labelled:
        raise InputError(f"{source}: no labels in column {task.label_column!r}")
    if labelled:
        values = [label_index(task, r[task.label_column], source, n + 1) for n, r in enumerate(rows)]
        labels = np.asarray(values, dtype=np.float32 if task.is_regression else np.int64)
    ids = np.arange(len(rows), dtype=np.int64)
    for key in ("idx", "id", "index"):
        if key in columns:
            got = [_as_number(r.get(key)) for r in rows]
            if all(isinstance(x, int) for x in got) and len(set(got)) == len(got):
                ids = np.asarray(got, dtype=np.int64)
            break
    return Split(task, name, texts, labels, ids, source)


def read_split(task: Task, path: str | Path, name: str | None = None, need_labels: bool = False) -> Split:
    columns, rows = read_table(path)
    return split_of(task, columns, rows, str(path), name or Path(path).name.split(".")[0], need_labels)


# ---------------------------------------------------------------------------------------------- hub datasets


def hub_table(dataset: str, config: str | None, split: str) -> tuple[list[str], list[dict], str, dict]:
    """(columns, rows, source) of one split of a dataset loaded by ``datasets.load_dataset`` (a hub name, or a local
    folder of data files), through its cache, and the class names of its ``ClassLabel`` columns."""
    try:
        import datasets

        datasets.logging.set_verbosity_error()
        datasets.disable_progress_bars()
        ds = datasets.load_dataset(dataset, config, split=split)
    except (ValueError, KeyError) as e:
        hint = " (give --validation-file)" if split == "validation" else ""
        raise InputError(f"--dataset {dataset}: no split {split!r}{hint} ({type(e).__name__}: "
                         f"{str(e)[:200]})") from None
    except Exception as e:  # offline, unknown name, ...: one clear line
        raise InputError(f"--dataset {dataset}: cannot load it ({type(e).__name__}: {str(e)[:200]})") from None
    columns = list(ds.column_names)
    rows = ds.to_list()
    class_names = {}
    for col, feature in ds.features.items():
        names = getattr(feature, "names", None)
        if names:  # ClassLabel: class names, -1 = unlabelled
            class_names[col] = tuple(names)
            for r in rows:
                r[col] = names[r[col]] if r[col] is not None and r[col] >= 0 else None
    source = f"dataset:{dataset}" + (f"/{config}" if config else "") + f"[{split}]"
    return columns, rows, source, class_names


def dataset_name(dataset: str, config: str | None) -> str:
    """A task name for a hub dataset: its last path component (and config), in the characters a name allows."""
    base = Path(dataset.rstrip("/")).name or "dataset"
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", base + (f"-{config}" if config else ""))
    return name.lstrip(".-_")[:64] or "dataset"
