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
import dataclasses
import io
import json
import re
from pathlib import Path

import numpy as np

from ticketctl.data.split import Split, empty_text, read_text, rows_text, stderr_notice, tsv_rows
from ticketctl.data.tasks import CLASSIFICATION_METRICS, REGRESSION_METRICS, TASKS, Task
from ticketctl.errors import InputError, NoLabels, UsageError

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


def _unique_columns(columns: list[str], source: str) -> None:
    """A header that names a column twice is refused: a reader keeps only one of the two, silently."""
    seen: dict[str, int] = {}
    for i, c in enumerate(columns):
        if c in seen:
            raise InputError(f"{source}: the header names column {c!r} twice (fields {seen[c] + 1} and {i + 1}); "
                             f"rename one")
        seen[c] = i


def _json_object(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    twice = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
    if twice is not None:
        raise InputError(f"a record names field {twice!r} twice")
    return dict(pairs)


def _loads(text: str):
    return json.loads(text, object_pairs_hook=_json_object)


def read_table(path: str | Path, warn=stderr_notice) -> tuple[list[str], list[dict]]:
    """(column names, rows as dicts of strings or JSON values) of one data file. Blank lines are skipped in every
    line-based format (CSV, TSV, JSON Lines); a header or record that names a column twice is refused. Column names
    are stripped of surrounding whitespace, with a notice through ``warn`` (:func:`strip_header`), so that every
    column option (``--text-columns``, ``--label-column``, also stripped) finds ``"review "`` as ``review``.

    Raises InputError (missing file, bad format, ragged rows, duplicate columns) or UsageError (unknown format)."""
    columns, rows = _read_records(Path(path))
    return strip_header(columns, rows, str(path), warn)


def strip_header(columns: list[str], rows: list[dict], source: str, warn) -> tuple[list[str], list[dict]]:
    """The one rule for column names, in every format and reader (CSV, TSV, JSON, JSON Lines, hub datasets): a name
    with surrounding whitespace is read without it, and ``warn`` gets one line naming it. Raises InputError where
    two names become one (``"label"`` and ``"label "``)."""
    padded = [c for c in columns if isinstance(c, str) and c != c.strip()]
    if not padded:
        return columns, rows
    stripped = [c.strip() if isinstance(c, str) else c for c in columns]
    _unique_columns(stripped, f"{source} (column names stripped of surrounding whitespace)")
    out = []
    for n, row in enumerate(rows):
        new = {k.strip() if isinstance(k, str) else k: v for k, v in row.items()}
        if len(new) != len(row):
            raise InputError(f"{source}: record {n + 1} names a field twice once surrounding whitespace is stripped "
                             f"({', '.join(repr(k) for k in row if isinstance(k, str) and k != k.strip())})")
        out.append(new)
    warn(f"{source}: column name{'s' if len(padded) > 1 else ''} {', '.join(map(repr, padded))} read without "
         f"surrounding whitespace, as {', '.join(repr(c.strip()) for c in padded)}")
    return stripped, out


def _read_records(path: Path) -> tuple[list[str], list[dict]]:
    """:func:`read_table` before the header rule."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    fmt = file_format(path)
    text = read_text(path)
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        columns = list(reader.fieldnames or [])
        _unique_columns(columns, str(path))
        rows = list(reader)
        for n, row in enumerate(rows):
            if None in row:  # csv puts the fields beyond the header under the key None
                raise InputError(f"{path}: row {n + 1} has {len(columns) + len(row[None])} fields where the header "
                                 f"has {len(columns)}")
            if any(v is None for v in row.values()):
                raise InputError(f"{path}: row {n + 1} has fewer fields than the header ({len(columns)})")
        return columns, rows
    if fmt == "tsv":
        table = tsv_rows(text, str(path))
        columns = table[0][1]
        _unique_columns(columns, str(path))
        rows = []
        for lineno, row in table[1:]:
            if len(row) != len(columns):
                raise InputError(f"{path}:{lineno}: expected {len(columns)} tab-separated fields, got {len(row)}")
            rows.append(dict(zip(columns, row)))
        return columns, rows
    if fmt == "json":
        try:
            data = _loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
        except InputError as e:
            raise InputError(f"{path}: {e}") from None
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
                    rows.append(_loads(line))
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{n + 1}: not a JSON object ({e.msg})") from None
                except InputError as e:
                    raise InputError(f"{path}:{n + 1}: {e}") from None
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
    cols = tuple(c.strip() for c in text_columns.split(","))  # as column names are read (strip_header)
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


INTEGER = re.compile(r"^-?(0|[1-9][0-9]*)$")


def _is_integer_label(v) -> bool:
    """An integer as written: a JSON integer (or integral number), or a string such as "0", "1", "-1" (not "007",
    "1.0" or "+1": those are kept as the names the user wrote)."""
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    if isinstance(v, float):
        return v.is_integer()
    return isinstance(v, str) and bool(INTEGER.match(v.strip()))


def _class_key(v, integer_labels: bool) -> str:
    """The class name a label value stands for: integers as their decimal string, strings stripped of surrounding
    whitespace (a trailing space from a spreadsheet is not another class)."""
    if integer_labels and _is_integer_label(v):
        return str(int(v.strip()) if isinstance(v, str) else int(v))
    return v.strip() if isinstance(v, str) else str(v)


def _padded(values: list, source: str, warn) -> None:
    """One line naming the label values that surrounding whitespace made look like other classes."""
    rows = [n + 1 for n, v in enumerate(values) if isinstance(v, str) and v != v.strip()]
    if rows:
        names = sorted({repr(values[r - 1]) for r in rows})
        warn(f"{source}: label{'s' if len(names) > 1 else ''} {', '.join(names[:3])} with surrounding whitespace in "
             f"{rows_text(rows)}: read as {', '.join(sorted({repr(values[r - 1].strip()) for r in rows})[:3])}")


def infer_task(name: str, columns: list[str], rows: list[dict], text_columns: tuple[str, ...] | None,
               label_column: str, metric: str | None, source: str, class_names: tuple[str, ...] | None = None,
               warn=stderr_notice) -> Task:
    """The task of a training table: its text columns, its label set (sorted, or a hub ``ClassLabel``'s names in
    their order) or regression, and its metrics.

    Labels are kept as the user wrote them: integers (``0``, ``1``, ``-1``) are classes named by their value and
    sorted as numbers; anything else (``007``, ``1.0``, ``positive``) is a class name sorted as text. Surrounding
    whitespace is stripped with a notice through ``warn``. Numbers that are not all integers make a regression task.
    Raises UsageError (bad name, metric) or InputError (missing columns or labels, one class, ambiguous labels)."""
    if not NAME_PATTERN.match(name):
        raise UsageError(f"--task {name!r}: a task name is letters, digits, '.', '_' or '-' (it names the artifacts)")
    text = pick_text_columns(columns, text_columns, source)
    if label_column not in columns:
        raise NoLabels(f"{source}: no label column {label_column!r} (columns: {', '.join(columns)}); "
                         f"name it with --label-column")
    if metric is not None and metric not in CLASSIFICATION_METRICS + REGRESSION_METRICS:
        raise UsageError(f"--metric {metric}: choose one of {', '.join(CLASSIFICATION_METRICS + REGRESSION_METRICS)}")
    if not rows:
        raise InputError(f"{source}: no examples")
    values = [r.get(label_column) for r in rows]
    empty = [n + 1 for n, v in enumerate(values) if v is None or (isinstance(v, str) and not v.strip())]
    if empty:
        raise InputError(f"{source}: {rows_text(empty)} {'have' if len(empty) > 1 else 'has'} no label (training "
                         f"data must be labelled)")
    numbers = [_as_number(v) for v in values]
    numeric = all(x is not None for x in numbers)
    integral = numeric and all(float(x).is_integer() for x in numbers)
    integer_labels = all(_is_integer_label(v) for v in values)
    regression = metric in REGRESSION_METRICS if metric else numeric and not integral
    if regression:
        if not numeric:
            bad = next(v for v, x in zip(values, numbers) if x is None)
            raise InputError(f"{source}: label {bad!r} is not a number (regression with --metric {metric})")
        labels = None
        metrics = (metric or "pearson",) + tuple(m for m in REGRESSION_METRICS if m != (metric or "pearson"))
    else:
        _padded(values, source, warn)
        if class_names:
            labels = tuple(class_names)
        elif integer_labels:
            labels = tuple(str(v) for v in sorted({int(_class_key(v, True)) for v in values}))
        else:
            labels = tuple(sorted({_class_key(v, False) for v in values}))
            if numeric:
                _same_number(labels, source)
        if len(labels) < 2:
            raise InputError(f"{source}: every training label is {labels[0]!r}: classification needs two classes")
        if metric in ("f1", "matthews") and len(labels) != 2:
            raise UsageError(f"--metric {metric} needs two classes; {source} has {len(labels)}")
        default = ("accuracy", "f1") if len(labels) == 2 else ("accuracy",)
        metrics = (metric,) + tuple(m for m in default if m != metric) if metric else default
    return Task(name, "", text, label_column, labels, metrics, source_kind="custom")


def _same_number(labels: tuple[str, ...], source: str) -> None:
    """Class names written differently for one number (``1`` and ``1.0``, ``7`` and ``007``) are refused: either
    reading (one class or two) would be a guess."""
    by_value: dict[float, str] = {}
    for name in labels:
        x = float(_as_number(name))
        if x in by_value:
            raise InputError(f"{source}: labels {by_value[x]!r} and {name!r} are the same number written two ways; "
                             f"write each class one way")
        by_value[x] = name


def label_index(task: Task, value, source: str, row: int) -> int | float:
    if task.is_regression:
        x = _as_number(value)
        if x is None or not np.isfinite(float(x)):
            raise InputError(f"{source}: row {row}: label {value!r} is not a number")
        return float(x)
    integer_labels = all(INTEGER.match(name) for name in task.labels)
    key = _class_key(value, integer_labels)
    if key not in task.labels:
        raise InputError(f"{source}: row {row}: label {value!r} is not one of the training labels "
                         f"({', '.join(task.labels)})")
    return task.labels.index(key)


PLACEHOLDER = -1  # the label of every row of an unlabelled test split exported from the hub (GLUE's test sets)


def is_placeholder(values: list) -> bool:
    """Every label is the hub's unlabelled marker ``-1`` (or ``-1.0``): the split is unlabelled, not labelled -1."""
    return bool(values) and all(_as_number(v) == PLACEHOLDER for v in values)


def _ids(columns: list[str], rows: list[dict], source: str, warn) -> tuple[np.ndarray, list[str] | None]:
    """The split's ids: an ``idx``/``id``/``index`` column of distinct integers as they are; any other values of
    such a column (``r101``, ``101.0``) are kept as written for the predictions, with row numbers inside artifacts;
    without such a column, the row numbers."""
    rownums = np.arange(len(rows), dtype=np.int64)
    key = next((k for k in ("idx", "id", "index") if k in columns), None)
    if key is None:
        return rownums, None
    raw = [r.get(key) for r in rows]
    if all(_is_integer_label(v) and not isinstance(v, float) for v in raw):
        got = [int(str(v).strip()) for v in raw]
        if len(set(got)) == len(got):
            return np.asarray(got, dtype=np.int64), None
    names = ["" if v is None else str(v) for v in raw]
    if len(set(names)) != len(names):
        twice = next(v for i, v in enumerate(names) if v in names[:i])
        warn(f"{source}: column {key!r} repeats the id {twice!r}: examples are identified by row number")
        return rownums, None
    example = next(v for v in names if not INTEGER.match(v))
    warn(f"{source}: ids in column {key!r} are not plain integers (e.g. {example!r}): kept as written in "
         f"predictions, numbered by row inside artifacts")
    return rownums, names


def split_of(task: Task, columns: list[str], rows: list[dict], source: str, name: str,
             need_labels: bool = False, warn=stderr_notice) -> Split:
    """A :class:`Split` of a table for ``task``: the text columns, and the labels where the label column is there
    (unlabelled data, e.g. for ``predict``, has none; an evaluation file whose labels are all the placeholder -1 is
    unlabelled, with a notice). Ids are the row numbers, or an ``idx``/``id``/``index`` column (see :func:`_ids`).

    Empty text and JSON ``null`` are both read as empty text, with one notice naming the rows (one rule for every
    reader, GLUE's files included). Raises InputError: missing columns, no rows, text that is a number or a list
    (naming the rows), some rows labelled and some not, labels outside the task's."""
    missing = [c for c in task.text_columns if c not in columns]
    if missing:
        raise InputError(f"{source}: no column(s) {', '.join(map(repr, missing))} (columns: {', '.join(columns)})")
    if not rows:
        raise InputError(f"{source}: no examples")
    texts = [tuple("" if r.get(c) is None else r.get(c) for c in task.text_columns) for r in rows]
    for i, column in enumerate(task.text_columns):
        bad = [n + 1 for n, row in enumerate(texts) if not isinstance(row[i], str)]
        if bad:
            raise InputError(f"{source}: column {column!r} is not text in {rows_text(bad)} (a number, list or object)")
    empty_text(texts, task.text_columns, source, warn)
    labels = None
    has = [r.get(task.label_column) not in (None, "") for r in rows] if task.label_column in columns else []
    if any(has) and not all(has):
        raise InputError(f"{source}: some rows have a label and some do not "
                         f"(none in {rows_text([n + 1 for n, h in enumerate(has) if not h])})")
    labelled = bool(has) and all(has)
    if labelled and not need_labels and is_placeholder([r[task.label_column] for r in rows]):
        warn(f"{source}: every label is {PLACEHOLDER}, the placeholder of unlabelled test splits: read as unlabelled "
             f"(no metrics)")
        labelled = False
    if need_labels and not labelled:
        raise InputError(f"{source}: no labels in column {task.label_column!r}")
    if labelled:
        values = [r[task.label_column] for r in rows]
        if not task.is_regression:
            _padded(values, source, warn)
        values = [label_index(task, v, source, n + 1) for n, v in enumerate(values)]
        labels = np.asarray(values, dtype=np.float32 if task.is_regression else np.int64)
    ids, id_names = _ids(columns, rows, source, warn)
    return Split(task, name, texts, labels, ids, source, id_names)


def read_split(task: Task, path: str | Path, name: str | None = None, need_labels: bool = False,
               warn=stderr_notice) -> Split:
    columns, rows = read_table(path, warn)
    return split_of(task, columns, rows, str(path), name or Path(path).name.split(".")[0], need_labels, warn)


OOD_SPLIT = "ood"  # the split name of --ood-file's outputs (docs/calibration.md)


def read_ood(task: Task, path: str | Path, warn=stderr_notice) -> Split:
    """``--ood-file``: texts from another distribution, as the unlabelled split :data:`OOD_SPLIT` of ``task``. Any
    format of :func:`read_table` with a header row (a GLUE TSV with its header too) and the task's text columns (a
    GLUE task's also under the hub's names, sentence1,sentence2 for MRPC); a label column, where there is one, is
    ignored: its values need not be the task's labels. Raises InputError (unreadable file, missing text columns,
    no rows) or UsageError (unknown format)."""
    columns, rows = read_table(path, warn)
    text = task.text_columns
    if not all(c in columns for c in text) and all(c in columns for c in task.hub_text_columns):
        text = task.hub_text_columns
    reader = Task(task.name, task.folder, text, task.label_column, task.labels, task.metrics)
    split = split_of(reader, [c for c in columns if c != task.label_column], rows, str(path), OOD_SPLIT, warn=warn)
    return dataclasses.replace(split, task=task)


CALIBRATION_SPLIT = "calibration"  # the split name of --calibration-file's outputs (docs/calibration.md)


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
        hint = " (name another with --validation-split, or give --validation-file)" if split == "validation" else ""
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
    columns, rows = strip_header(columns, rows, source, stderr_notice)
    return columns, rows, source, {c.strip(): names for c, names in class_names.items()}


def dataset_name(dataset: str, config: str | None) -> str:
    """A task name for a hub dataset: its last path component (and config), in the characters a name allows."""
    base = Path(dataset.rstrip("/")).name or "dataset"
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", base + (f"-{config}" if config else ""))
    return name.lstrip(".-_")[:64] or "dataset"


def own_task_data(task_name: str | None, opts, warn):
    """The own-data source of ``DataOptions`` ``opts`` (--train-file or --dataset): (task inferred from the data,
    training split, evaluation splits: dev, each --eval-split, each --eval-file). Raises UsageError for a GLUE
    task's name."""
    if task_name and task_name.lower().replace("-", "") in TASKS:
        raise UsageError(f"--task {task_name} is a GLUE task; name your own data differently (or leave --task out)")
    text_columns = parse_columns(opts.text_columns)
    label_column = (opts.label_column or "label").strip()  # as column names are read (strip_header)
    class_names: dict = {}
    if opts.train_file:
        name = task_name or "custom"
        columns, rows = read_table(opts.train_file, warn)
        source = opts.train_file
    else:
        name = task_name or dataset_name(opts.dataset, opts.dataset_config)
        columns, rows, source, class_names = hub_table(opts.dataset, opts.dataset_config, "train")
    task = infer_task(name, columns, rows, text_columns, label_column, opts.metric, source,
                      class_names.get(label_column), warn=warn)
    train = split_of(task, columns, rows, source, "train", need_labels=True, warn=warn)
    if opts.validation_file:
        dev = read_split(task, opts.validation_file, "dev", warn=warn)
    else:
        columns, rows, source, _ = hub_table(opts.dataset, opts.dataset_config, opts.validation_split or "validation")
        dev = split_of(task, columns, rows, source, "dev", warn=warn)
    extra = []
    for split in opts.eval_splits:
        columns, rows, source, _ = hub_table(opts.dataset, opts.dataset_config, split)
        extra.append(split_of(task, columns, rows, source, split, warn=warn))
    return task, train, [dev] + extra + [read_split(task, f, warn=warn) for f in opts.eval_files]
