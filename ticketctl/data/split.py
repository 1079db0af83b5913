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
        return h.hexdigest()

    def subset(self, indices: np.ndarray) -> "Split":
        return Split(
            self.task,
            self.name,
            [self.texts[i] for i in indices],
            None if self.labels is None else self.labels[indices],
            self.ids[indices],
            self.source,
        )


def read_text(path: Path) -> str:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def tsv_rows(text: str, source: str) -> list[list[str]]:
    """Rows of tab-separated text without quoting (a quote is text, as in GLUE's files): a tab always separates
    fields and a newline always ends a row, so splitting on them is lossless. A final empty line is no row."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    rows = [line.rstrip("\r").split("\t") for line in lines]
    if not rows:
        raise InputError(f"{source}: empty file")
    return rows
