"""A split of a task's data (texts, labels, ids) and reading a data file's text: what GLUE files
(``ticketctl.data.files``) and the user's own data (``ticketctl.data.custom``) both make. numpy only."""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ticketctl.errors import InputError

@dataclass
class Split:
    task: Any  # ticketctl.data.tasks.Task (not imported: this module sits below it)
    name: str  # "train", "dev", or the stem of an --eval-file
    texts: list[tuple[str, ...]]
    labels: np.ndarray | None  # int64 class indices, float32 scores, or None when unlabelled
    ids: np.ndarray  # int64: GLUE's "index" column where the file has one, else the row number
    source: str
    id_names: list[str] | None = None  # the ids as the file wrote them, where they are not plain integers

    def shown_ids(self) -> list:
        """The ids as the user wrote them (strings), or the integer ids."""
        return list(self.id_names) if self.id_names is not None else self.ids.tolist()

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def fingerprint(self) -> str:
        """Content hash of ids, texts and labels: two artifacts of one split agree on it."""
        h = hashlib.sha256()
        h.update(self.ids.astype("<i8").tobytes())
        for row in self.texts:
            h.update("\x1f".join(row).encode())
            h.update(b"\x1e")
        if self.labels is not None:
            h.update(np.ascontiguousarray(self.labels).tobytes())
        if self.id_names is not None:  # only then: the fingerprints of integer-id data stay as they were
            h.update("\x1f".join(self.id_names).encode())
        return h.hexdigest()

    def subset(self, indices: np.ndarray) -> "Split":
        return Split(
            self.task,
            self.name,
            [self.texts[i] for i in indices],
            None if self.labels is None else self.labels[indices],
            self.ids[indices],
            self.source,
            None if self.id_names is None else [self.id_names[i] for i in indices],
        )


def stderr_notice(message: str) -> None:
    """Where data readers say what they did to the data when the caller gives no log of its own."""
    import sys

    print(message, file=sys.stderr)


def rows_text(rows: list[int], limit: int = 5) -> str:
    """'rows 4, 18' / 'rows 1, 2, 3, 4, 5 and 7 more': row numbers (from 1) for a one-line message."""
    shown = ", ".join(str(r) for r in rows[:limit])
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return f"row{'s' if len(rows) > 1 else ''} {shown}{more}"


def empty_text(texts: list[tuple[str, ...]], columns: tuple[str, ...], source: str, warn) -> None:
    """One notice per text column naming the rows whose text is empty (or only whitespace): they are kept, and
    the model sees only its special tokens for them."""
    for i, column in enumerate(columns):
        blank = [n + 1 for n, row in enumerate(texts) if not row[i].strip()]
        if blank:
            warn(f"{source}: column {column!r} is empty in {rows_text(blank)} of {len(texts)}: kept as empty text")


def read_text(path: Path) -> str:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def tsv_rows(text: str, source: str) -> list[tuple[int, list[str]]]:
    """Rows of tab-separated text without quoting (a quote is text, as in GLUE's files): a tab always separates
    fields and a newline always ends a row, so splitting on them is lossless. Empty lines are no rows, wherever they
    are (as the CSV and JSON Lines readers skip them): a row of fields always has a tab or text.
    Returns (line number from 1, fields) for each row."""
    lines = [line.rstrip("\r") for line in text.split("\n")]
    rows = [(n + 1, line.split("\t")) for n, line in enumerate(lines) if line != ""]
    if not rows:
        raise InputError(f"{source}: empty file")
    return rows
