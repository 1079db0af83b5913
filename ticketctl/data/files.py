"""Task data: GLUE TSV files (lossless parsing), the embedded copies, and the Hugging Face hub.

Sources, in order: ``--data-dir`` / ``TICKETCTL_DATA_DIR`` (GLUE download layout), the copies of MRPC, STS-B and
RTE shipped inside this package, then the hub via ``datasets``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ticketctl.data.split import Split, empty_text, read_text, stderr_notice, tsv_rows
from ticketctl.data.tasks import Task, get_task
from ticketctl.errors import InputError, UsageError

EMBEDDED_DIR = Path(__file__).parent / "glue"


def parse_tsv(task: Task, text: str, source: str, name: str, warn=stderr_notice) -> Split:
    """Parse one GLUE TSV file. GLUE's files are not CSV-quoted: a quote is part of the sentence, a tab always
    separates fields and a newline always ends a row, so splitting on them is lossless. A label column holding only
    the placeholder -1 of unlabelled test splits makes the split unlabelled (with a notice through ``warn``)."""
    numbered = tsv_rows(text, source)
    rows = [fields for _, fields in numbered]
    header = rows[0]
    if all(c in header for c in task.text_columns):
        text_idx = tuple(header.index(c) for c in task.text_columns)
        label_idx = header.index(task.label_column) if task.label_column in header else None
        id_idx = header.index("index") if "index" in header else None
        body, width = numbered[1:], len(header)
    elif task.headerless is not None:
        text_idx, label_idx = task.headerless
        id_idx = None
        body, width = numbered, len(rows[0])
        if width <= max(*text_idx, label_idx):
            raise InputError(f"{source}:{numbered[0][0]}: expected {max(*text_idx, label_idx) + 1} tab-separated "
                             f"fields, got {width}")
    else:
        missing = [c for c in task.text_columns if c not in header]
        raise InputError(f"{source}: no column(s) {', '.join(map(repr, missing))} in the header; "
                         f"is this a {task.folder} file?")

    if label_idx is not None and body and all(len(r) == width and _placeholder(r[label_idx]) for _, r in body):
        warn(f"{source}: every label is -1, the placeholder of unlabelled test splits: read as unlabelled "
             f"(no metrics)")
        label_idx = None
    texts: list[tuple[str, ...]] = []
    labels: list = []
    ids: list[int] = []
    for n, (lineno, row) in enumerate(body):
        if len(row) != width:
            raise InputError(f"{source}:{lineno}: expected {width} tab-separated fields, got {len(row)}")
        texts.append(tuple(row[i] for i in text_idx))
        if id_idx is not None:
            try:
                ids.append(int(row[id_idx]))
            except ValueError:
                raise InputError(f"{source}:{lineno}: index {row[id_idx]!r} is not an integer") from None
        else:
            ids.append(n)
        if label_idx is not None:
            value = row[label_idx]
            if task.is_regression:
                try:
                    labels.append(float(value))
                except ValueError:
                    raise InputError(f"{source}:{lineno}: label {value!r} is not a number") from None
            else:
                if value not in task.labels:
                    raise InputError(f"{source}:{lineno}: label {value!r} is not one of {', '.join(task.labels)}")
                labels.append(task.labels.index(value))
    if not texts:
        raise InputError(f"{source}: no examples")
    empty_text(texts, task.text_columns, source, warn)
    label_array = None
    if label_idx is not None:
        label_array = np.asarray(labels, dtype=np.float32 if task.is_regression else np.int64)
    return Split(task, name, texts, label_array, np.asarray(ids, dtype=np.int64), source)


def _placeholder(value: str) -> bool:
    try:
        return float(value) == -1.0
    except ValueError:
        return False


def read_tsv(task: Task, path: str | os.PathLike, name: str | None = None, warn=stderr_notice) -> Split:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    stem = path.name.split(".")[0]
    return parse_tsv(task, read_text(path), str(path), name or stem, warn)


def _split_file(task: Task, split: str) -> str:
    return task.dev_file if split == "dev" else "train.tsv"


def data_dir_from_env(data_dir: str | None) -> str | None:
    return data_dir or os.environ.get("TICKETCTL_DATA_DIR") or None


def load_split(task: Task, split: str, data_dir: str | None = None) -> Split:
    """The task's ``train`` or ``dev`` split from the first source that has it."""
    data_dir = data_dir_from_env(data_dir)
    filename = _split_file(task, split)
    if data_dir:
        path = Path(data_dir) / task.folder / filename
        if not path.is_file():
            raise InputError(f"{path}: no such file (data dir {data_dir} needs GLUE's layout: "
                             f"{task.folder}/{filename})")
        return read_tsv(task, path, split)
    embedded = EMBEDDED_DIR / task.folder / (filename + ".gz")
    if embedded.is_file():
        return parse_tsv(task, read_text(embedded), f"embedded:{task.folder}/{filename}", split)
    return _load_from_hub(task, split)


def _load_from_hub(task: Task, split: str) -> Split:  # pragma: no cover - needs the network
    hub_split = {"train": "train", "dev": "validation_matched" if task.name == "mnli" else "validation"}[split]
    try:
        import datasets
        import huggingface_hub

        datasets.logging.set_verbosity_error()
        huggingface_hub.utils.logging.set_verbosity_error()
        ds = datasets.load_dataset("nyu-mll/glue", task.hub_name, split=hub_split)
    except Exception as e:  # offline, hub down, ...: one clear line
        raise InputError(
            f"no local data for {task.name} and the Hugging Face hub failed ({type(e).__name__}); "
            f"give --data-dir DIR with GLUE's layout ({task.folder}/{_split_file(task, split)}) "
            f"or set TICKETCTL_DATA_DIR"
        ) from None
    return hub_split_of(task, ds, split, f"hub:nyu-mll/glue/{task.hub_name}")


def hub_split_of(task: Task, ds, split: str, source: str) -> Split:
    """A split from a hub-shaped GLUE table (``datasets.Dataset`` with the hub's column names, ``label`` and
    ``idx``); the hub marks unlabelled rows (test splits) with label -1."""
    missing = [c for c in (*task.hub_text_columns, "label", "idx") if c not in ds.column_names]
    if missing:
        raise InputError(f"{source}: no column(s) {', '.join(map(repr, missing))} for {task.name} "
                         f"(columns: {', '.join(ds.column_names)})")
    texts = list(zip(*(ds[c] for c in task.hub_text_columns)))
    raw = np.asarray(ds["label"])
    labels = raw.astype(np.float32) if task.is_regression else raw.astype(np.int64)
    if not task.is_regression and (labels < 0).all():
        labels = None
    elif not task.is_regression and ((labels < 0) | (labels >= task.num_labels)).any():
        raise InputError(f"{source}: labels outside 0..{task.num_labels - 1} for {task.name}")
    return Split(task, split, texts, labels, np.asarray(ds["idx"], dtype=np.int64), source)


def glue_task_data(task_name: str | None, opts, warn):
    """The GLUE source of ``DataOptions`` ``opts``: (task, training split, evaluation splits: dev, then each
    --eval-file). Raises UsageError without a task name."""
    if not task_name:
        raise UsageError("--task is required: a GLUE task, or your own data with --train-file / --dataset")
    task = get_task(task_name)
    evals = [load_split(task, "dev", opts.data_dir)]
    evals += [read_tsv(task, f, warn=warn) for f in opts.eval_files]
    return task, load_split(task, "train", opts.data_dir), evals
