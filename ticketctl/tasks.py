"""GLUE tasks: where their text and labels live in GLUE's TSV files, and how they are scored.

Pure numpy/scipy: the analysis commands import this without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ticketctl.errors import UsageError


@dataclass(frozen=True)
class Task:
    name: str  # CLI name, e.g. "mrpc"
    folder: str  # GLUE download folder, e.g. "MRPC"
    text_columns: tuple[str, ...]  # header names of the text columns
    label_column: str | None  # header name of the label column
    labels: tuple[str, ...] | None  # label strings in class-index order; None for regression
    metrics: tuple[str, ...]  # first one is the headline metric
    # Files without a header row (CoLA's train/dev): column positions for text and label.
    headerless: tuple[tuple[int, ...], int] | None = None
    dev_file: str = "dev.tsv"
    hub_name: str | None = None  # config name in the hub's "nyu-mll/glue"

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def headline(self) -> str:
        return self.metrics[0]


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), ("accuracy", "f1"), hub_name="mrpc"),
        Task("stsb", "STS-B", ("sentence1", "sentence2"), "score", None, ("pearson", "spearman"), hub_name="stsb"),
        Task("rte", "RTE", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"), ("accuracy",),
             hub_name="rte"),
        Task("cola", "CoLA", ("sentence",), "label", ("0", "1"), ("matthews",), headerless=((3,), 1),
             hub_name="cola"),
        Task("sst2", "SST-2", ("sentence",), "label", ("0", "1"), ("accuracy",), hub_name="sst2"),
        Task("wnli", "WNLI", ("sentence1", "sentence2"), "label", ("0", "1"), ("accuracy",), hub_name="wnli"),
        Task("qnli", "QNLI", ("question", "sentence"), "label", ("entailment", "not_entailment"), ("accuracy",),
             hub_name="qnli"),
        Task("qqp", "QQP", ("question1", "question2"), "is_duplicate", ("0", "1"), ("accuracy", "f1"),
             hub_name="qqp"),
        Task("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", ("entailment", "neutral", "contradiction"),
             ("accuracy",), dev_file="dev_matched.tsv", hub_name="mnli"),
    ]
}


def get_task(name: str) -> Task:
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise UsageError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[key]


# ---------------------------------------------------------------------------------------------- metrics


def predictions(task: Task, outputs: np.ndarray) -> np.ndarray:
    """Class indices (classification) or scores (regression) from model outputs of shape (n, C)."""
    if task.is_regression:
        return outputs.reshape(len(outputs), -1)[:, 0]
    return outputs.argmax(axis=-1)


def _f1(pred: np.ndarray, gold: np.ndarray) -> float:
    tp = float(np.sum((pred == 1) & (gold == 1)))
    fp = float(np.sum((pred == 1) & (gold == 0)))
    fn = float(np.sum((pred == 0) & (gold == 1)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def _matthews(pred: np.ndarray, gold: np.ndarray) -> float:
    tp = float(np.sum((pred == 1) & (gold == 1)))
    tn = float(np.sum((pred == 0) & (gold == 0)))
    fp = float(np.sum((pred == 1) & (gold == 0)))
    fn = float(np.sum((pred == 0) & (gold == 1)))
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if denom == 0 else (tp * tn - fp * fn) / denom


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = x.astype(np.float64) - x.mean()
    y = y.astype(np.float64) - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return 0.0 if denom == 0 else float((x * y).sum() / denom)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import rankdata

    return _pearson(rankdata(x), rankdata(y))


def score(task: Task, pred: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """All of the task's metrics for predictions (class indices or scores) against gold labels."""
    out: dict[str, float] = {}
    for m in task.metrics:
        if m == "accuracy":
            out[m] = float(np.mean(pred == gold))
        elif m == "f1":
            out[m] = _f1(pred, gold)
        elif m == "matthews":
            out[m] = _matthews(pred, gold)
        elif m == "pearson":
            out[m] = _pearson(pred, gold)
        elif m == "spearman":
            out[m] = _spearman(pred, gold)
    return out
