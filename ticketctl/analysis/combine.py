"""Combining member outputs: what each member contributes (probabilities, logits or votes), the ensemble's outputs,
and the predictions and scores of every k-member combination, vectorised. numpy only."""

from __future__ import annotations

import itertools

import numpy as np

from ticketctl.data.tasks import Task, score
from ticketctl.errors import UsageError

COMBINES = ("probs", "logits", "vote")
CHUNK_ELEMENTS = 4_000_000  # bound on the (combinations x examples x classes) block held at once


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def member_terms(task: Task, outputs: np.ndarray, how: str) -> np.ndarray:
    """What is summed over members: probabilities, logits, or one-hot votes (ties broken by mean probability);
    regression members contribute their prediction. Shape (M, N, C), float32."""
    if how not in COMBINES:
        raise UsageError(f"--combine must be one of {', '.join(COMBINES)}")
    if task.is_regression:
        return outputs[..., :1].astype(np.float32)
    if how == "logits":
        return outputs.astype(np.float32)
    probs = softmax(outputs)
    if how == "probs":
        return probs.astype(np.float32)
    votes = np.eye(outputs.shape[-1], dtype=np.float32)[outputs.argmax(-1)]
    return votes + 1e-4 * probs.astype(np.float32)  # adds < 1 vote for any k < 10,000: only breaks ties


def vote_shares(outputs: np.ndarray) -> np.ndarray:
    """(N, C): the fraction of the M members of ``outputs`` (M, N, C) whose argmax is each class."""
    votes = np.eye(outputs.shape[-1])[outputs.argmax(-1)]
    return votes.mean(axis=0)


def combined_outputs(task: Task, outputs: np.ndarray, how: str) -> np.ndarray:
    """The ensemble's own outputs (N, C): log mean probability (probs), mean logits (logits), vote share (vote),
    mean prediction (regression). argmax (or the value) is the ensemble prediction."""
    terms = member_terms(task, outputs, how).astype(np.float64).mean(axis=0)
    if task.is_regression or how != "probs":
        return terms
    return np.log(np.clip(terms, 1e-30, None))


def combination_predictions(task: Task, terms: np.ndarray, k: int, subset: list[int] | None = None):
    """Predictions of every k-member combination of ``subset`` (default: all members), in chunks of (B, N)."""
    idx = list(range(len(terms))) if subset is None else list(subset)
    combos = np.asarray(list(itertools.combinations(idx, k)), dtype=np.int64).reshape(-1, k)
    binary = not task.is_regression and terms.shape[2] == 2
    if binary:  # argmax over two classes is the sign of the margin: half the work, no argmax
        terms = np.ascontiguousarray(terms[..., 1] - terms[..., 0])[..., None]
    per = max(1, CHUNK_ELEMENTS // max(1, terms.shape[1] * terms.shape[2]))
    for start in range(0, len(combos), per):
        chunk = combos[start : start + per]
        total = terms[chunk[:, 0]].copy()
        for j in range(1, k):
            total += terms[chunk[:, j]]
        if task.is_regression:
            yield total[..., 0] / k
        elif binary:
            yield (total[..., 0] > 0).astype(np.int64)  # a tie goes to class 0, as argmax does
        else:
            yield total.argmax(-1)


def combination_scores(task: Task, terms: np.ndarray, labels: np.ndarray, k: int,
                       subset: list[int] | None = None) -> dict[str, np.ndarray]:
    """Every metric of every k-member combination of ``subset`` (default: all members): arrays over combinations."""
    parts: dict[str, list[np.ndarray]] = {m: [] for m in task.metrics}
    for pred in combination_predictions(task, terms, k, subset):
        for m, v in score(task, pred, labels).items():
            parts[m].append(np.atleast_1d(v))
    return {m: np.concatenate(v) for m, v in parts.items()}
