"""Array pieces shared by the metric registry (``ticketctl.analysis.metrics``) and the OOD scores
(``ticketctl.analysis.ood``): reductions over the class axis (sum, top label, entropy) and the two detection figures
of a score, AUROC and FPR at a given TPR, batched over rows. numpy only; it imports nothing of the package, so both
modules use one copy of each without importing each other (``benchmarks/layout.py``: level 1)."""

from __future__ import annotations

import numpy as np

EPS = 1e-12  # probabilities are clipped here before a log: a member that gives the gold class 0 costs -log(1e-12)
TPR = 0.95  # the true-positive rate of "FPR at 95% TPR" (Hendrycks & Gimpel, 2017)


def class_sum(a: np.ndarray) -> np.ndarray:
    """Sum over the last (class) axis: (..., C) -> (...). Slice by slice when C <= 8: numpy's reduction over a last
    axis of 2 or 3 is several times slower than adding the slices."""
    if a.shape[-1] > 8:
        return a.sum(axis=-1)
    out = a[..., 0].copy()
    for j in range(1, a.shape[-1]):
        out += a[..., j]
    return out


def top(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(max, argmax) over the last (class) axis: (..., C) -> (...), (...) int64; a tie goes to the lower class, as
    argmax does."""
    if a.shape[-1] > 8:
        return a.max(axis=-1), a.argmax(axis=-1)
    if a.shape[-1] == 2:
        return top_value(a), (a[..., 1] > a[..., 0]).astype(np.int64)
    best, arg = a[..., 0].copy(), np.zeros(a.shape[:-1], dtype=np.int64)
    for j in range(1, a.shape[-1]):
        better = a[..., j] > best
        best = np.where(better, a[..., j], best)
        arg[better] = j
    return best, arg


def top_value(a: np.ndarray) -> np.ndarray:
    """The max over the last (class) axis alone, slice by slice: (..., C) -> (...)."""
    out = np.maximum(a[..., 0], a[..., 1]) if a.shape[-1] > 1 else a[..., 0].copy()
    for j in range(2, a.shape[-1]):
        np.maximum(out, a[..., j], out=out)
    return out


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats over the last axis: (..., C) -> (...); probabilities clipped at ``EPS`` inside the
    log. With C <= 8 class by class (no (..., C) temporary), the terms added in class order as :func:`class_sum`
    adds them, so both ways give the same bits."""
    p = np.asarray(probs, dtype=np.float64)
    if p.shape[-1] > 8:
        return -class_sum(p * np.log(np.clip(p, EPS, None)))
    out = None
    for j in range(p.shape[-1]):
        pj = p[..., j]
        term = pj * np.log(np.clip(pj, EPS, None))
        if out is None:
            out = term
        else:
            out += term
    return -out


# ---------------------------------------------------------------------------------------------- detection


def _rows(score_in: np.ndarray, score_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(score_in, dtype=np.float64), np.asarray(score_out, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or len(a) != len(b):
        raise ValueError(f"scores must be (B, a) and (B, b) arrays of as many rows; got {a.shape} and {b.shape}")
    return a, b


def _auroc_sorted(sorted_in: np.ndarray, sorted_out: np.ndarray) -> np.ndarray:
    """AUROC of each row from each side's scores sorted ascending, (B, a) and (B, b) -> (B,): U / (a b) with U the
    sum over OOD scores x of (#in-distribution scores < x + #equal to x / 2). A stable argsort of the two sorted
    halves side by side is a merge of two runs; an OOD score's position in the merge with the in-distribution half
    first (first on ties) is its index among the OOD scores plus the in-distribution scores <= it, with the OOD
    half first plus those < it. Positions are whole numbers: the sums are exact."""
    a, b = sorted_in.shape[1], sorted_out.shape[1]
    position = np.arange(a + b, dtype=np.float64)
    in_first = np.argsort(np.concatenate([sorted_in, sorted_out], axis=1), axis=1, kind="stable")
    out_first = np.argsort(np.concatenate([sorted_out, sorted_in], axis=1), axis=1, kind="stable")
    at_most = (in_first >= a) @ position  # sum over OOD scores of (their index + in-distribution scores <= them)
    below = (out_first < b) @ position  # ... of (their index + in-distribution scores < them)
    return ((at_most + below) / 2 - b * (b - 1) / 2) / (a * b)


def _fpr_sorted(score_in: np.ndarray, sorted_out: np.ndarray, tpr: float) -> np.ndarray:
    """FPR at ``tpr`` of each row from the in-distribution scores (B, a) and the OOD ones sorted ascending (B, b)."""
    t = sorted_out[:, ::-1][:, int(np.ceil(tpr * sorted_out.shape[1])) - 1]  # the ceil(tpr b)-th largest
    return (score_in >= t[:, None]).mean(axis=1)


def auroc_rows(score_in: np.ndarray, score_out: np.ndarray) -> np.ndarray:
    """AUROC of a score meant to be higher on out-of-distribution inputs (Hendrycks & Gimpel, 2017), row by row:
    (B, a) in-distribution and (B, b) OOD scores -> (B,), the probability that an OOD example scores above an
    in-distribution one, ties counting half (Mann-Whitney U / (a b), as scikit-learn's ``roc_auc_score``). Raises
    ValueError for arrays that are not two rows-by-scores blocks of as many rows."""
    a, b = _rows(score_in, score_out)
    return _auroc_sorted(np.sort(a, axis=1), np.sort(b, axis=1))


def fpr_rows(score_in: np.ndarray, score_out: np.ndarray, tpr: float = TPR) -> np.ndarray:
    """False-positive rate at ``tpr`` true-positive rate (OOD = positive, higher score = more OOD; Hendrycks &
    Gimpel, 2017), row by row: (B, a), (B, b) -> (B,), the fraction of in-distribution scores at or above the
    largest threshold t with mean(score_out >= t) >= tpr. Raises ValueError as :func:`auroc_rows`."""
    a, b = _rows(score_in, score_out)
    return _fpr_sorted(a, np.sort(b, axis=1), tpr)


def detection_rows(score_in: np.ndarray, score_out: np.ndarray, tpr: float = TPR) -> tuple[np.ndarray, np.ndarray]:
    """(:func:`auroc_rows`, :func:`fpr_rows`) of the same scores, sorting the OOD side once for both."""
    a, b = _rows(score_in, score_out)
    sorted_out = np.sort(b, axis=1)
    return _auroc_sorted(np.sort(a, axis=1), sorted_out), _fpr_sorted(a, sorted_out, tpr)
