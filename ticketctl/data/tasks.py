"""GLUE tasks (the table in :mod:`ticketctl.data.task_table`, re-exported here) and how they are scored.

Pure numpy/scipy: the analysis commands import this without torch.
"""

from __future__ import annotations

import numpy as np

from ticketctl.data.task_table import CLASSIFICATION_METRICS, REGRESSION_METRICS, TASKS, Task
from ticketctl.errors import UsageError

__all__ = ["CLASSIFICATION_METRICS", "REGRESSION_METRICS", "TASKS", "Task", "get_task", "task_of", "predictions",
           "metric", "score", "undefined_note"]


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
