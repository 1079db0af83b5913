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
    hub_columns: tuple[str, ...] | None = None  # the hub's text columns where they differ from the TSV header
    source_kind: str = "glue"  # "custom": a task inferred from the user's data (--train-file, --dataset)

    @property
    def is_custom(self) -> bool:
        return self.source_kind == "custom"

    def spec(self) -> dict | None:
        """What defines a custom task, recorded in its artifacts (None for a GLUE task: its name says it all)."""
        if not self.is_custom:
            return None
        return {"name": self.name, "text_columns": list(self.text_columns), "label_column": self.label_column,
                "labels": None if self.labels is None else list(self.labels), "metrics": list(self.metrics)}

    @classmethod
    def from_spec(cls, spec: dict) -> "Task":
        labels = spec.get("labels")
        return cls(spec["name"], "", tuple(spec["text_columns"]), spec.get("label_column"),
                   None if labels is None else tuple(labels), tuple(spec["metrics"]), source_kind="custom")

    @property
    def hub_text_columns(self) -> tuple[str, ...]:
        return self.hub_columns or self.text_columns

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
        Task("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), ("accuracy", "f1"), hub_name="mrpc",
             hub_columns=("sentence1", "sentence2")),
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
             ("accuracy",), dev_file="dev_matched.tsv", hub_name="mnli", hub_columns=("premise", "hypothesis")),
    ]
}


CLASSIFICATION_METRICS = ("accuracy", "f1", "matthews")
REGRESSION_METRICS = ("pearson", "spearman")


def task_of(meta: dict) -> Task:
    """The task an artifact was made for: a custom task from its recorded spec, else the GLUE task it names."""
    spec = meta.get("task_spec")
    if spec:
        try:
            return Task.from_spec(spec)
        except (KeyError, TypeError):
            raise UsageError(f"artifact's task_spec is malformed: {str(spec)[:80]}") from None
    return get_task(meta["task"])


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


def _counts(pred: np.ndarray, gold: np.ndarray):
    p, g = pred == 1, gold == 1
    tp = np.sum(p & g, axis=-1, dtype=np.float64)
    fp = np.sum(p & ~g, axis=-1, dtype=np.float64)
    fn = np.sum(~p & g, axis=-1, dtype=np.float64)
    tn = np.sum(~p & ~g, axis=-1, dtype=np.float64)
    return tp, fp, fn, tn


def _safe_div(num, den):
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.where(den == 0, 0.0, num / np.where(den == 0, 1.0, den))


def _f1(pred, gold):
    tp, fp, fn, _ = _counts(pred, gold)
    return _safe_div(2 * tp, 2 * tp + fp + fn)


def _matthews(pred, gold):
    tp, fp, fn, tn = _counts(pred, gold)
    return _safe_div(tp * tn - fp * fn, np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))


def _pearson(x, y):
    """Pearson's r along the last axis; NaN where either side is constant (r is undefined there, not 0)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x = x - x.mean(axis=-1, keepdims=True)
    y = y - y.mean(axis=-1, keepdims=True)
    den = np.sqrt((x * x).sum(axis=-1) * (y * y).sum(axis=-1))
    num = (x * y).sum(axis=-1)
    return np.where(den == 0, np.nan, num / np.where(den == 0, 1.0, den))


def _rank(x):
    """Average ranks along the last axis (as scipy's rankdata), vectorised for rows without ties."""
    x = np.asarray(x)
    flat = x.reshape(-1, x.shape[-1])
    order = np.argsort(flat, axis=-1)
    ranks = np.empty(flat.shape, dtype=np.float64)
    ranks[np.arange(len(flat))[:, None], order] = np.arange(1, flat.shape[-1] + 1, dtype=np.float64)
    ordered = np.take_along_axis(flat, order, axis=-1)
    for i in np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=-1)):
        _, inverse, counts = np.unique(flat[i], return_inverse=True, return_counts=True)
        ends = np.cumsum(counts)
        ranks[i] = ((ends - counts + 1 + ends) / 2)[inverse]
    return ranks.reshape(x.shape)


def _spearman(x, y):
    return _pearson(_rank(x), _rank(y))


METRICS = CLASSIFICATION_METRICS + REGRESSION_METRICS


def metric(name: str, pred: np.ndarray, gold: np.ndarray):
    """One metric of predictions against gold labels; leading axes of ``pred`` give an array of values. A
    correlation against constant gold scores (or of constant predictions) is NaN: undefined.

    Raises UsageError for a name that is not one of ``METRICS``."""
    if name not in METRICS:
        raise UsageError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)}")
    if name == "accuracy":
        return np.mean(pred == gold, axis=-1)
    if name == "f1":
        return _f1(pred, gold)
    if name == "matthews":
        return _matthews(pred, gold)
    if name == "pearson":
        return _pearson(pred, gold)
    return _spearman(pred, gold)


def undefined_note(task: Task, metrics: dict, gold: np.ndarray | None) -> str:
    """A notice for metrics that came out undefined (NaN), saying why; "" when all are defined."""
    bad = [m for m, v in metrics.items() if np.ndim(v) == 0 and not np.isfinite(v)]
    if not bad:
        return ""
    why = ("the gold scores are constant" if gold is not None and len(gold) and np.ptp(gold) == 0
           else "the predictions are constant")
    return f"{', '.join(bad)} undefined: {why}"


def score(task: Task, pred: np.ndarray, gold: np.ndarray) -> dict:
    """All of the task's metrics for predictions (class indices or scores) against gold labels. ``pred`` may have
    leading axes (e.g. one row per ensemble combination): the metrics then are arrays over those axes."""
    out = {}
    for m in task.metrics:
        v = metric(m, pred, gold)
        out[m] = float(v) if np.ndim(v) == 0 else v
    return out
