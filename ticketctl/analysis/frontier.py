"""Ensembles judged at equal inference cost (``stats --cost``): per scheme, the best ensemble metric reachable
under each budget of dense-member equivalents, and its difference to the reference scheme at the same budget.

A member's cost is the ``relative_flops`` its logits artifact records (``ticketctl.model.cost``: FLOPs per example
of the structure that ran, over one dense member's; unstructured tickets cost a dense member). A k-member ensemble
of a scheme costs k times its members' mean. Under budget b a scheme can afford k = floor(b / cost) members (at most
its seeds per protocol group), and its metric is the protocol mean of k-member ensembles. The largest affordable
ensemble, not the best k' <= k: picking the best size on the evaluation examples would select on them and flatter
schemes with noisy curves (ensembles usually improve with k; where one does not, the plot shows it). The interval of the
difference to the reference at the same budget is the leave-one-seed-out jackknife of the statistics work (paired by
seed where both schemes have the same seeds); no p-value is given: at different ensemble sizes the schemes' members
are not exchangeable, so the permutation test does not apply. Any scorer with a direction serves (the task's
headline metric, or a registered metric such as nll through ``metrics.MetricScorer``): a point (cost, metric) is on
the frontier where no ensemble of any scheme that costs at most as much is better in the metric's own direction
(:func:`on_frontier`). numpy only.
"""

from __future__ import annotations

import math

import numpy as np

from ticketctl.analysis.records import FrontierRow
from ticketctl.analysis.significance import Scorer, budget_interval, difference, protocol_scores
from ticketctl.errors import InputError


def member_costs(members) -> np.ndarray:
    """Each member's cost relative to one dense member (``members``: ``ticketctl.analysis.members.Members``); an
    InputError names an artifact without a cost record."""
    out = []
    for a in members.arts:
        cost = a.meta.get("cost")
        if not cost or "relative_flops" not in cost:
            raise InputError(f"{a.path}: no inference cost recorded (made before ticketctl recorded costs, or not by "
                             f"a finetune/predict); rerun it with --force")
        out.append(float(cost["relative_flops"]))
    return np.asarray(out)


def group_costs(members, groups: dict[str, list[int]]) -> dict[str, float]:
    """Each group's member cost (its members' mean; members of one scheme and level cost alike)."""
    costs = member_costs(members)
    return {g: float(costs[idx].mean()) for g, idx in groups.items()}


def affordable(budget: float, cost: float, most: int) -> int:
    return min(most, int(math.floor(budget / cost + 1e-9)))


def protocol_means(scorer: Scorer, groups: dict[str, list[int]], n_groups: int) -> dict[str, list[float]]:
    """Per scheme: the protocol mean of its k-member ensembles for k = 1 .. its seeds per group."""
    return {g: [float(protocol_scores(scorer, idx, k, n_groups).mean()) for k in range(1, len(idx) // n_groups + 1)]
            for g, idx in groups.items()}


def frontier(scorer: Scorer, groups: dict[str, list[int]], costs: dict[str, float], ref: str, n_groups: int,
             pairs: dict[str, bool], means: dict[str, list[float]] | None = None) -> list[FrontierRow]:
    """One row per budget and scheme: the members k it affords, their cost, the protocol mean of k-member ensembles
    (``means``, from :func:`protocol_means`), the difference to ``ref`` at the same budget with a 95% jackknife
    interval, and whether that ensemble is on the frontier in ``scorer``'s direction (:func:`on_frontier`)."""
    means = protocol_means(scorer, groups, n_groups) if means is None else means
    front = on_frontier(curves(means, costs), scorer.higher_is_better)
    sizes = {g: len(m) for g, m in means.items()}
    top = max(sizes[g] * costs[g] for g in groups)
    intervals: dict[tuple[str, int, int], tuple[float, float]] = {}  # a budget often buys what the last one did
    rows = []
    for budget in range(1, int(math.floor(top + 1e-9)) + 1):
        k_ref = affordable(budget, costs[ref], sizes[ref])
        for g in sorted(groups, key=lambda x: (x != ref, x)):
            k = affordable(budget, costs[g], sizes[g])
            if k < 1:
                continue
            vs_ref = low = high = float("nan")
            if g != ref and k_ref >= 1:
                vs_ref = difference(means[g][k - 1], means[ref][k_ref - 1])
                if (g, k, k_ref) not in intervals:
                    intervals[g, k, k_ref] = budget_interval(scorer, groups[g], groups[ref], k, k_ref, n_groups,
                                                             pairs[g])
                low, high = intervals[g, k, k_ref]
            rows.append(FrontierRow(budget, g, k, round(k * costs[g], 4), means[g][k - 1], vs_ref, low, high,
                                    front[g][k - 1]))
    return rows


def curves(means: dict[str, list[float]], costs: dict[str, float]) -> dict[str, list[tuple[float, float]]]:
    """Per scheme: (cost of k members, protocol mean at k) for k = 1 .. its seeds per group."""
    return {g: [(k * costs[g], m) for k, m in enumerate(ms, start=1)] for g, ms in means.items()}


def on_frontier(points: dict[str, list[tuple[float, float]]], higher_is_better: bool = True) -> dict[str, list[bool]]:
    """Per scheme, for each of its points (cost, metric) (:func:`curves`): whether it is on the cost frontier, i.e.
    no point of any scheme that costs at most as much (within 1e-9) is better in the metric's direction (higher, or
    with ``higher_is_better`` False lower: nll, brier, ece, ...). Values that differ by rounding only
    (``significance.difference``) are equal, so tied points are both on it; a NaN point is not."""
    flat = [(c, v) for pts in points.values() for c, v in pts]
    sign = 1.0 if higher_is_better else -1.0

    def beaten(cost: float, value: float) -> bool:
        return any(c <= cost + 1e-9 and sign * difference(v, value) > 0 for c, v in flat)

    return {g: [not math.isnan(v) and not beaten(c, v) for c, v in pts] for g, pts in points.items()}


def plot(points: dict[str, list[tuple[float, float]]], metric: str, path: str, title: str,
         direction: str | None = None, frontier_points: dict[str, list[bool]] | None = None) -> None:
    """The metric of each scheme's k-member ensembles against their cost, one curve per scheme (``points``, from
    :func:`curves`). ``direction`` None: the task's headline metric, a fraction drawn in percent; else a registered
    metric's direction ("lower is better", ...), drawn in the metric's own units and named on the axis.
    ``frontier_points`` (from :func:`on_frontier`): those points ringed. Raises UsageError for a file name that is
    not .png, .svg or .pdf."""
    from ticketctl.analysis.plots import pyplot, save_figure

    scale = 100 if direction is None else 1
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for g, pts in sorted(points.items()):
        ax.plot([c for c, _ in pts], [m * scale for _, m in pts], marker="o", markersize=3, linewidth=1.2, label=g)
    if frontier_points:
        ringed = [(c, m * scale) for g, pts in points.items() for (c, m), on in zip(pts, frontier_points[g]) if on]
        ax.scatter([c for c, _ in ringed], [m for _, m in ringed], s=60, facecolors="none", edgecolors="black",
                   linewidths=1, label="on the frontier", zorder=3)
    ax.set_xlabel("inference cost (dense-member equivalents, analytic FLOPs)")
    ax.set_ylabel(f"{metric} of k-member ensembles (%)" if direction is None
                  else f"{metric} of k-member ensembles ({direction})")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
