"""``ticketctl diversity``: pairwise diversity of ensemble members.

Classification, over the oracle outputs (member correct / wrong on each example), for members i, j with counts
N11 (both right), N00 (both wrong), N10 / N01 (only i / only j right), N = N11 + N10 + N01 + N00
(Kuncheva & Whitaker, 2003):

- Q statistic  (N11 N00 - N01 N10) / (N11 N00 + N01 N10)                      lower = more diverse
- correlation  (N11 N00 - N01 N10) / sqrt((N11+N10)(N01+N00)(N11+N01)(N10+N00)) lower = more diverse
- disagreement (N01 + N10) / N                                                  higher = more diverse
- negative double fault  -N00 / N                                               higher = more diverse
- ratio errors (N01 + N10) / N00: errors made by one member per error made by both   higher = more diverse

Where a ratio's denominator is zero: Q and correlation are 1 for members that agree on every example (no
diversity) and 0 otherwise; ratio errors is +inf for a pair with single faults but no double fault, 0 for a pair
without any fault. The summary of ratio errors pools counts over pairs (sum of single faults / sum of double
faults) so that one fault-free pair does not make the mean infinite.

Regression (STS-B): pairwise correlation of the members' errors, and the ambiguity decomposition of the simple
average: ensemble squared error = mean member squared error - mean ambiguity (Krogh & Vedelsby, 1995).
"""

from __future__ import annotations

import numpy as np

from ticketctl.analysis.members import Members, load_ensemble_members
from ticketctl.analysis.records import Diversity, DiversityRow, PairDiversity
from ticketctl.data.tasks import predictions
from ticketctl.errors import UsageError

DIRECTIONS = {"q_statistic": "lower = more diverse", "correlation": "lower = more diverse",
              "disagreement": "higher = more diverse", "negative_double_fault": "higher = more diverse",
              "ratio_errors": "higher = more diverse"}


def oracle(members: Members) -> np.ndarray:
    """(M, N) bool: member m is right on example n."""
    pred = np.stack([predictions(members.task, o) for o in members.outputs])
    return pred == members.labels[None, :]


def pair_counts(correct: np.ndarray):
    c = correct.astype(np.float64)
    w = 1.0 - c
    return c @ c.T, c @ w.T, w @ c.T, w @ w.T  # N11, N10, N01, N00


def _ratio(num, den, agree):
    """num / den; where den == 0: 1 if the pair agrees everywhere, else 0."""
    out = np.where(agree, 1.0, 0.0)
    np.divide(num, den, out=out, where=den != 0)
    return out


def pairwise(correct: np.ndarray) -> dict[str, np.ndarray]:
    n11, n10, n01, n00 = pair_counts(correct)
    n = correct.shape[1]
    agree = (n10 + n01) == 0
    single, double = n01 + n10, n00
    ratio = np.full(single.shape, np.inf)
    ratio[(single == 0) & (double == 0)] = 0.0
    np.divide(single, double, out=ratio, where=double != 0)
    return {
        "q_statistic": _ratio(n11 * n00 - n01 * n10, n11 * n00 + n01 * n10, agree),
        "correlation": _ratio(n11 * n00 - n01 * n10, np.sqrt((n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00)),
                              agree),
        "disagreement": single / n,
        "negative_double_fault": -double / n,
        "ratio_errors": ratio,
        "_single": single,
        "_double": double,
    }


def summary(correct: np.ndarray) -> list[DiversityRow]:
    """Each metric averaged over all pairs i < j of the (M, N) oracle outputs ``correct``; ratio errors pooled
    (summed single faults over summed double faults)."""
    p = pairwise(correct)
    iu = np.triu_indices(correct.shape[0], k=1)
    rows = []
    for name in DIRECTIONS:
        if name == "ratio_errors":
            s, d = p["_single"][iu].sum(), p["_double"][iu].sum()
            value = float(s / d) if d else (float("inf") if s else 0.0)
        else:
            value = float(p[name][iu].mean())
        rows.append(DiversityRow(name, value, DIRECTIONS[name]))
    return rows


def pair_rows(correct: np.ndarray, names: list[str]) -> list[PairDiversity]:
    """Every pair i < j of the (M, N) oracle outputs ``correct``, named by ``names`` (M)."""
    p = pairwise(correct)
    rows = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            rows.append(PairDiversity(names[i], names[j], {m: float(p[m][i, j]) for m in DIRECTIONS}))
    return rows


def regression_summary(members: Members) -> list[DiversityRow]:
    """Regression members: the mean pairwise correlation of their errors, and the ambiguity decomposition of their
    average (Krogh & Vedelsby, 1995) in squared label units."""
    pred = members.outputs[..., 0]
    y = members.labels.astype(np.float64)
    err = pred - y[None, :]
    corr = np.corrcoef(err) if len(pred) > 1 else np.ones((1, 1))
    iu = np.triu_indices(len(pred), k=1)
    ens = pred.mean(axis=0)
    ens_err = float(np.mean((ens - y) ** 2))
    member_err = float(np.mean((pred - y) ** 2))
    ambiguity = float(np.mean((pred - ens) ** 2))
    return [
        DiversityRow("error_correlation", float(corr[iu].mean()), "lower = more diverse"),
        DiversityRow("ensemble_squared_error", ens_err, "= member error - ambiguity"),
        DiversityRow("mean_member_squared_error", member_err, ""),
        DiversityRow("mean_ambiguity", ambiguity, "higher = more diverse"),
    ]


def diversity(paths: list[str], matrix: bool = False) -> Diversity:
    """The members' diversity (logits artifacts among ``paths``): each metric's mean over pairs, or with ``matrix``
    every pair (classification; regression always gives the averages).

    Raises UsageError (fewer than two members, an unlabelled split) or InputError (members that must not mix)."""
    members = load_ensemble_members(paths, minimum=2)
    if members.labels is None:
        raise UsageError("diversity needs a labelled split")
    regression = members.task.is_regression
    if regression:
        rows = regression_summary(members)
    elif matrix:
        rows = pair_rows(oracle(members), members.names)
    else:
        rows = summary(oracle(members))
    return Diversity(members.evaluated, len(members), rows, regression)
