"""``ticketctl stats``: the paper's Table 1 and the cost frontier, each a function returning records.

- :func:`table1`: the paper's Table 1 (Kobayashi et al., 2022) — groups by a metadata key, single-member and
  k-member ensemble metrics by the paper's protocol, and each group against a reference group (difference, 95%
  interval, permutation test over seeds; ``ticketctl.analysis.significance``).
- :func:`cost_frontier`: ensembles at equal inference cost (``ticketctl.analysis.frontier``).

The phase transition and the super ticket are ``ticketctl.analysis.phase``; how members are grouped is
``ticketctl.analysis.grouping``; the figures are ``ticketctl.analysis.plots``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from collections import defaultdict

from ticketctl.analysis.grouping import (check_same_level, check_same_recipe, group_value, headline_scorer, pick_ref,
                                         seeds_of)
from ticketctl.analysis.members import Members, load_ensemble_members
from ticketctl.analysis.metrics import MetricScorer, Options, scorer_for, temperature_fit
from ticketctl.analysis.ood import OodScorer
from ticketctl.analysis.ood import Paired as OodPaired
from ticketctl.analysis.records import PIVOTS, CostFrontier, Table1, Table1Row
from ticketctl.analysis.significance import (RESAMPLES, Scorer, better, compare, difference, pairing, paper_ttest,
                                             protocol_combinations, protocol_scores, smallest_p, split_groups)
from ticketctl.errors import UsageError

TESTS = ("permutation", "paper")


def load_groups(paths: list[str], by: str, members: Members | None = None) -> tuple[Members, dict[str, list[int]]]:
    """All members (``members``: those already loaded, instead of ``paths``, labelled or not: ``stats --ood`` needs
    no labels), and each group's member indices in seed order. Raises UsageError on an unlabelled split (of
    ``paths``) or a missing key, InputError for a group that mixes configurations or sparsity levels."""
    given = members is not None
    members = members if given else load_ensemble_members(paths)
    if members.labels is None and not given:
        raise UsageError("the artifacts' split is unlabelled: nothing to score")
    grouped: dict[str, list[int]] = defaultdict(list)
    for i, a in enumerate(members.arts):
        grouped[group_value(a, by)].append(i)
    for g, idx in grouped.items():
        check_same_recipe(g, [members.arts[i] for i in idx])
        if by != "sparsity":
            check_same_level(g, [members.arts[i] for i in idx])
    return members, {g: members.in_seed_order(idx) for g, idx in grouped.items()}


def scorer_of(members: Members, how: str, score: str | None = None, options: Options | None = None) -> Scorer:
    """The members' scorer: the task's headline metric (:func:`grouping.headline_scorer`), or with ``score`` a
    registered metric scored with ``options`` (``metrics.scorer_for``; raises UsageError as it does)."""
    if score is None:
        return headline_scorer(members, how)
    return scorer_for(members.task, members.outputs, members.labels, how, score, options)


def protocol_size(groups: dict[str, list[int]], k: int | None, n_groups: int) -> int:
    """The ensemble size k of Table 1 (default: min(5, the smallest protocol group)); raises UsageError when a group
    cannot hold k members per protocol group, InputError when its members do not split into equal groups."""
    for idx in groups.values():
        split_groups(len(idx), n_groups)  # refuses members that do not split evenly
    smallest = min(len(idx) // n_groups for idx in groups.values())
    k = min(5, smallest) if k is None else k
    if not 1 <= k <= smallest:
        raise UsageError(f"--size {k}: every group needs at least {k} members per protocol group "
                         f"(smallest has {smallest} with --groups {n_groups})")
    return k


def table1_rows(members: Members, groups: dict[str, list[int]], ref: str, k: int | None, scorer: Scorer,
                n_groups: int = 1, test: str = "permutation", resamples: int = RESAMPLES,
                bootstrap: int = 0) -> tuple[list[Table1Row], int, list[str]]:
    """Table 1 by the paper's protocol (Kobayashi et al., 2022): per group, the single members' mean (over all
    seeds) and the mean of its k-member ensembles (all combinations within each of ``n_groups`` seed-order groups,
    averaged within groups, then over groups); against the reference group, the difference with a 95% interval and
    a p-value (the calibrated permutation test over seeds, or the paper's t-test over combinations), for ensembles
    and single members. Returns the rows (reference first), k, and notes for people (tests that cannot reach
    p < 0.05 with these seeds). Raises UsageError for a bad test, resamples below 99, or a k too large."""
    if test not in TESTS:
        raise UsageError(f"--test must be one of {', '.join(TESTS)}")
    if resamples < 99:
        raise UsageError("--resamples must be >= 99")
    k = protocol_size(groups, k, n_groups)
    ens = {g: protocol_scores(scorer, idx, k, n_groups) for g, idx in groups.items()}
    singles = {g: scorer.scores(np.eye(len(scorer))[idx]) for g, idx in groups.items()}
    rows, notes = [], []
    nan = float("nan")
    for g in sorted(groups, key=lambda x: (x != ref, x)):
        s = singles[g]
        row = {"group": g, "members": len(groups[g]), "single_mean": float(s.mean()),
               "single_std": float(s.std(ddof=1)) if len(s) > 1 else 0.0, "k": k, "combinations": len(ens[g]),
               "ensemble_mean": float(ens[g].mean()), "ensemble_gain": difference(ens[g].mean(), s.mean()),
               "vs_ref": difference(ens[g].mean(), ens[ref].mean()),
               "diff_low": nan, "diff_high": nan, "p_value": nan, "test": "ref", "p_single": nan}
        if g != ref:
            paired = pairing(seeds_of(members, groups[g]), seeds_of(members, groups[ref]))
            row.update(_against_ref(scorer, groups[g], groups[ref], ens[g], ens[ref], singles[g], singles[ref], k,
                                    n_groups, paired, test, resamples))
            notes += _few_seeds(g, ref, len(groups[g]), len(groups[ref]), paired) if "p_paper" in row else []
        if bootstrap:
            row.update(dict(zip(("ci_low", "ci_high"), example_interval(scorer, groups[g], k, n_groups, bootstrap))))
        if isinstance(scorer, (MetricScorer, OodScorer)):  # --score: say in words which way the difference goes
            row["verdict"] = "ref" if g == ref else better(row["vs_ref"], row["p_value"], scorer.higher_is_better)
        rows.append(Table1Row(**row))
    return rows, k, notes


def _against_ref(scorer: Scorer, a: list[int], b: list[int], ens_a, ens_b, single_a, single_b, k: int,
                 n_groups: int, paired: bool, test: str, resamples: int) -> dict:
    """Table 1's comparison of group ``a`` with the reference ``b``: interval, p-values and the test's name."""
    if test == "paper":
        c = compare(scorer, a, b, k, n_groups, paired, resamples=0)
        return {"p_value": paper_ttest(ens_a, ens_b), "test": "paper t-test (optimistic)",
                "p_single": paper_ttest(single_a, single_b), "diff_low": c.low, "diff_high": c.high}
    if len(a) < 2 or len(b) < 2:
        return {"test": "n/a (one seed)"}
    c = compare(scorer, a, b, k, n_groups, paired, resamples)
    # a metric undefined for one member (spread_error_corr: NaN) has no single-member test, not a p of NaNs
    defined = bool(np.isfinite(single_a).all() and np.isfinite(single_b).all())
    p_single = compare(scorer, a, b, 1, 1, paired, resamples).p if defined else float("nan")
    return {"diff_low": c.low, "diff_high": c.high, "p_value": c.p, "test": c.test, "p_single": p_single,
            "p_paper": paper_ttest(ens_a, ens_b)}


def _few_seeds(group: str, ref: str, na: int, nb: int, paired: bool) -> list[str]:
    """A note when the permutation test cannot give p below 0.05 with these seeds, whatever the data."""
    floor = smallest_p(na, nb, paired)
    if floor <= 0.05:
        return []
    return [f"note: {group} vs {ref}: with {na} and {nb} seeds{' (paired)' if paired else ''} the permutation test "
            f"cannot give p below {floor:.3g}, so no difference is significant at 5% whatever the data; the interval "
            f"is a t approximation on {min(na, nb) - 1} degree(s) of freedom and can exclude 0 regardless: use more "
            f"seeds (6 paired seeds reach p = 0.031)"]


def example_interval(scorer: Scorer, idx: list[int], k: int, n_groups: int, samples: int,
                     level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of a group's protocol mean over resamples of the evaluation examples (seeds fixed)."""
    k_matrix = protocol_combinations(len(idx), k, n_groups)
    sub = scorer.subset(idx)
    rng = np.random.default_rng(0)
    n = len(scorer.labels)
    stats_ = np.array([sub.scores(k_matrix, rng.integers(0, n, n)).mean() for _ in range(samples)])
    lo, hi = np.quantile(stats_, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def gain_curves(scorer: Scorer, groups: dict[str, list[int]], ref: str,
                n_groups: int = 1) -> dict[str, list[tuple[int, float]]]:
    """Figure 3: for each group, its protocol mean of k-member ensembles minus the reference's, k = 1 .. the
    smallest protocol group."""
    smallest = min(len(idx) for idx in groups.values()) // n_groups
    means = {g: [float(protocol_scores(scorer, idx, k, n_groups).mean()) for k in range(1, smallest + 1)]
             for g, idx in groups.items()}
    return {g: [(k + 1, means[g][k] - means[ref][k]) for k in range(smallest)] for g in groups if g != ref}


def check_options(by: str = "policy", size: int | None = None, bootstrap: int = 0, select: str | None = None,
                  cost: bool = False, calibration_split: str | None = None, ood: str | None = None) -> None:
    """The command's flag combinations: raises UsageError for a negative --bootstrap, a --size below 1, a --select
    other than best, --select without --by sparsity, --calibration-split or --ood outside Table 1, or both."""
    if calibration_split is not None and (select or cost or by in PIVOTS):
        raise UsageError("--calibration-split: only with Table 1 (not --cost, --select or --by "
                         f"{'/'.join(PIVOTS)})")
    if bootstrap < 0:
        raise UsageError("--bootstrap must be >= 0")
    if size is not None and size < 1:
        raise UsageError(f"--size {size}: an ensemble has at least one member")
    if select is not None and select != "best":
        raise UsageError("--select must be best")
    if select is not None and by != "sparsity":
        raise UsageError("--select best needs --by sparsity")
    if ood is not None and (select or cost or by in PIVOTS):
        raise UsageError("--ood: Table 1 only (not with --cost, --select or --by sparsity/train_fraction)")
    if ood is not None and calibration_split is not None:
        raise UsageError("--ood with --calibration-split: the OOD scores fit no temperature; give one of them")


def table1(paths: list[str], by: str = "policy", ref: str | None = None, size: int | None = None,
           combine: str = "probs", groups: int = 1, test: str = "permutation", resamples: int = RESAMPLES,
           bootstrap: int = 0, curves: bool = False, score: str | None = None,
           paired: OodPaired | None = None, options: Options | None = None) -> Table1:
    """The paper's Table 1 from the logits artifacts among ``paths``, grouped by the metadata key ``by`` (see
    :func:`table1_rows`; ``ref`` default: dense, else base, else the first group), with each k-member ensemble's
    cost where members record one, and with ``curves`` Figure 3's gain over ``ref`` for k = 1, 2, ...
    ``score``: compare by this registered metric (``ticketctl.analysis.metrics``: nll, brier, ece, ts_nll, ...)
    instead of the task's headline metric; every number is then in its units, differences stay A minus the
    reference (negative favours A where lower is better) and each row gets a ``verdict`` in words.
    ``options``: how ``score`` is computed (``metrics.Options``; with temperature scaling's calibration split, the
    one ``ensemble.calibration_of`` pairs with the members of ``paths``); the record's ``temperature_fit`` says
    where ts_nll's or ts_ece's temperature was fitted.

    Raises UsageError (unlabelled split, unknown --ref, --test or score, k too large) or InputError (groups that
    mix configurations or levels, members that do not split into ``groups`` equal groups).

    ``paired`` (``stats --ood SPLIT``, ``ensemble.load_ood``): the members (``paths`` unused) with their outputs on
    OOD texts; ``score`` is then one OOD column (:func:`ticketctl.analysis.ood.task_columns`, default ``auroc_msp``,
    regression ``auroc_spread``) and every number is that column's (``ood.OodScorer``); UsageError with
    ``bootstrap`` (it resamples labelled examples) or under ``--combine vote`` for classification."""
    members, grouped = load_groups(paths, by, paired.inside if paired else None)
    ref = pick_ref(grouped, ref)
    scorer = (scorer_of(members, combine, score, options) if paired is None
              else ood_scorer(paired, combine, score, bootstrap))
    rows, k, notes = table1_rows(members, grouped, ref, size, scorer, groups, test, resamples, bootstrap)
    if all(a.meta.get("cost") for a in members.arts):
        rows = _with_costs(members, grouped, rows)
    tested = score is not None or paired is not None
    on = replace(members.evaluated, metric=scorer.name) if tested else members.evaluated
    return Table1(on, by, ref, k, combine, groups, test, bootstrap, rows, notes,
                  gain_curves(scorer, grouped, ref, groups) if curves else None,
                  scorer.direction if paired is not None else scorer.metric.direction if tested else None,
                  temperature_fit(scorer.options) if paired is None and score is not None and scorer.metric.fitted
                  else None)


def ood_scorer(paired: OodPaired, combine: str, score: str | None, bootstrap: int = 0) -> OodScorer:
    """``stats --ood``'s scorer: the OOD column ``score`` (default ``auroc_msp``; regression ``auroc_spread``).
    Raises UsageError for another column, with ``bootstrap``, or under vote (classification)."""
    if bootstrap:
        raise UsageError("--bootstrap resamples the labelled evaluation examples: not with --ood")
    default = "auroc_spread" if paired.inside.task.is_regression else "auroc_msp"
    return OodScorer(paired, default if score is None else score, combine)


def _with_costs(members: Members, grouped: dict[str, list[int]], rows: list[Table1Row]) -> list[Table1Row]:
    """Each k-member ensemble's cost: relative to one dense member, and GFLOPs per example."""
    from ticketctl.analysis.frontier import group_costs

    costs = group_costs(members, grouped)
    out = []
    for row in rows:
        idx = grouped[row.group]
        flops = float(np.mean([members.arts[i].meta["cost"]["flops_per_example"] for i in idx]))
        out.append(replace(row, cost=round(row.k * costs[row.group], 4), gflops=round(row.k * flops / 1e9, 4)))
    return out


def cost_frontier(paths: list[str], by: str = "policy", ref: str | None = None, combine: str = "probs",
                  groups: int = 1, score: str | None = None) -> CostFrontier:
    """``stats --cost``: per budget (dense-member equivalents) and scheme, the largest affordable ensemble, its
    difference to the reference at the same budget and whether it is on the frontier
    (``ticketctl.analysis.frontier``), the members' costs, and each scheme's metric-vs-cost curve. ``score``: by
    this registered metric with a direction (``ticketctl.analysis.metrics``: nll, brier, ece, accuracy, ...)
    instead of the task's headline metric; every number is then in its units, differences stay group minus the
    reference, and the frontier follows the metric's direction (lower is better for nll). Raises UsageError for an
    unknown or undirected score (temperature), InputError for a member without a cost record, or groups that do
    not split into ``groups`` equal groups."""
    from ticketctl.analysis import frontier

    members, grouped = load_groups(paths, by)
    ref = pick_ref(grouped, ref)
    scorer = scorer_of(members, combine, score)
    for idx in grouped.values():
        split_groups(len(idx), groups)
    costs = frontier.group_costs(members, grouped)
    pairs = {g: pairing(seeds_of(members, idx), seeds_of(members, grouped[ref])) for g, idx in grouped.items()}
    means = frontier.protocol_means(scorer, grouped, groups)
    rows = frontier.frontier(scorer, grouped, costs, ref, groups, pairs, means)
    on = members.evaluated if score is None else replace(members.evaluated, metric=scorer.name)
    return CostFrontier(on, by, ref, combine, groups, rows, costs, frontier.curves(means, costs),
                        None if score is None else scorer.metric.direction)
