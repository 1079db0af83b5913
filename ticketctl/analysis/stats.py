"""``ticketctl stats``: three reports from logits artifacts, each a function returning records.

- :func:`table1`: the paper's Table 1 (Kobayashi et al., 2022) — groups by a metadata key, single-member and
  k-member ensemble metrics by the paper's protocol, and each group against a reference group (difference, 95%
  interval, permutation test over seeds; ``ticketctl.analysis.significance``).
- :func:`phase_transition`: metric vs sparsity per ticket kind (Super Tickets, Liang et al., 2021), or vs the
  training fraction per scheme; :func:`super_ticket` picks the best winning level on held-apart examples.
- :func:`cost_frontier`: ensembles at equal inference cost (``ticketctl.analysis.frontier``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import replace

import numpy as np

from ticketctl.analysis.combine import member_terms
from ticketctl.analysis.members import Members, load_ensemble_members
from ticketctl.analysis.metrics import MetricScorer, scorer_for
from ticketctl.analysis.records import (Cell, CostFrontier, PhaseRow, PhaseTable, SuperTicket, Table1, Table1Row)
from ticketctl.analysis.significance import (RESAMPLES, Scorer, better, compare, difference, pairing, paper_ttest,
                                             protocol_combinations, protocol_scores, smallest_p, split_groups)
from ticketctl.errors import InputError, UsageError
from ticketctl.store.artifacts import Artifact
from ticketctl.store.identity import IDENTITY_DEFAULTS

REF_PREFERENCE = ("dense", "base")


def scheme_of(art: Artifact) -> str:
    """The scheme a member belongs to: its policy, with the level for structured tickets (``winning-50%``), which
    ``--by policy`` alone would put in one group."""
    policy = str(art.meta.get("policy", "?"))
    if art.meta.get("method") == "structured":
        level = art.meta.get("target_sparsity", art.meta.get("sparsity", "0"))
        return f"{policy}-{round(float(level) * 100)}%"
    return policy


def group_value(art: Artifact, key: str) -> str:
    if key == "scheme":
        return scheme_of(art)
    if key in art.meta:
        return str(art.meta[key])
    config = art.meta.get("config") or {}
    if key in config:
        return str(config[key])
    raise UsageError(f"--by {key}: {art.path} has no metadata key {key!r}")


def load_groups(paths: list[str], by: str) -> tuple[Members, dict[str, list[int]]]:
    """All members, and each group's member indices in seed order. Raises UsageError on an unlabelled split or a
    missing key, InputError for a group that mixes configurations or sparsity levels."""
    members = load_ensemble_members(paths)
    if members.labels is None:
        raise UsageError("the artifacts' split is unlabelled: nothing to score")
    grouped: dict[str, list[int]] = defaultdict(list)
    for i, a in enumerate(members.arts):
        grouped[group_value(a, by)].append(i)
    for g, idx in grouped.items():
        check_same_recipe(g, [members.arts[i] for i in idx])
        if by != "sparsity":
            check_same_level(g, [members.arts[i] for i in idx])
    return members, {g: members.in_seed_order(idx) for g, idx in grouped.items()}


def seeds_of(members: Members, idx: list[int]) -> list[str]:
    return [str(members.arts[i].meta.get("seed", "?")) for i in idx]


PER_MEMBER_KEYS = {"seed", "mask", "train_data"}  # what may differ between members of one group
# Config fields added after the first release, at the value that older artifacts (which lack them) were made with.
ADDED_LATER = {k: IDENTITY_DEFAULTS[k] for k in ("computation", "train_fraction", "init", "max_grad_norm")}


def check_same_recipe(group: str, members: list[Artifact], ignore: set[str] = frozenset()) -> None:
    """Members of a group must differ only by seed (and what the seed decides): a quick run and a full run, or two
    learning rates, in one group would make a silently wrong table. ``ignore``: further keys that may differ (the
    ones a pivot table lays out)."""
    skip = PER_MEMBER_KEYS | set(ignore)

    def recipe(a):
        config = {**ADDED_LATER, **(a.meta.get("config") or {})}
        return {k: v for k, v in config.items() if k not in skip}

    first = recipe(members[0])
    for a in members[1:]:
        other = recipe(a)
        diff = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
        if diff:
            k = diff[0]
            raise InputError(f"group {group!r} mixes configurations: {members[0].path.name} has {k}={first.get(k)}, "
                             f"{a.path.name} has {k}={other.get(k)}")


def check_same_level(group: str, members: list[Artifact]) -> None:
    """A mask's digest differs per member, so the config cannot tell a 10% ticket from a 50% one: compare levels."""
    levels = {level_of(a): a for a in members}
    if len(levels) > 1:
        (l1, a1), (l2, a2) = sorted(levels.items())[:2]
        raise InputError(f"group {group!r} mixes sparsity levels: {a1.path.name} is at {l1:.0%}, {a2.path.name} at "
                         f"{l2:.0%} (group --by scheme or --by sparsity, or pass one level)")


def pick_ref(groups: dict, ref: str | None) -> str:
    if ref is not None:
        if ref not in groups:
            raise UsageError(f"--ref {ref}: no such group (groups: {', '.join(sorted(groups))})")
        return ref
    for g in REF_PREFERENCE:
        if g in groups:
            return g
    return sorted(groups)[0]


TESTS = ("permutation", "paper")


def scorer_of(members: Members, how: str, score: str | None = None) -> Scorer:
    """The members' scorer: the task's headline metric, or with ``score`` a registered metric
    (``metrics.scorer_for``; raises UsageError as it does)."""
    if score is None:
        return Scorer(members.task, member_terms(members.task, members.outputs, how), members.labels)
    return scorer_for(members.task, members.outputs, members.labels, how, score)


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
        if isinstance(scorer, MetricScorer):  # --score: say in words which way the difference goes
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
    c1 = compare(scorer, a, b, 1, 1, paired, resamples)
    return {"diff_low": c.low, "diff_high": c.high, "p_value": c.p, "test": c.test, "p_single": c1.p,
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


def plot_gain(curves: dict[str, list[tuple[int, float]]], ref: str, metric: str, path: str, title: str,
              intervals: dict[str, list[tuple[float, float]]] | None = None, points: bool = True) -> None:
    """Figure 3: each group's gain over ``ref`` vs k; with ``intervals`` (per group, a (low, high) per point of its
    curve; NaN where there is none) a shaded 95% band. ``points``: the metric is a fraction, drawn x 100 (points);
    False draws it in its own units (nll, brier, ...)."""
    scale = 100 if points else 1
    from ticketctl.analysis.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for g, pts in sorted(curves.items()):
        line = ax.plot([k for k, _ in pts], [scale * v for _, v in pts], marker="o", label=g)[0]
        if intervals and g in intervals:
            lows, highs = zip(*intervals[g])
            ax.fill_between([k for k, _ in pts], [scale * v for v in lows], [scale * v for v in highs],
                            color=line.get_color(), alpha=0.15, linewidth=0)
    ks = sorted({k for pts in curves.values() for k, _ in pts})
    ax.set_xticks(ks)
    ax.axhline(0, color="grey", linewidth=1, linestyle="--", label=f"{ref} (reference)")
    ax.set_xlabel("ensemble members k")
    ax.set_ylabel(f"{metric} gain over {ref} (points)" if points else f"{metric} minus {ref}'s")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_reliability(curves: dict[str, dict], path: str, title: str) -> None:
    """The reliability diagram: per group (``curves[g]["ensemble"]`` and ``["single"]``, each
    ``metrics.reliability``'s bins) accuracy against mean confidence in the non-empty bins, ensembles solid and
    single members dashed in the group's colour, and the diagonal of perfect calibration."""
    from ticketctl.analysis.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linewidth=1, linestyle=":", label="perfect calibration")
    for g, curve in sorted(curves.items()):
        line = None
        for which, style in (("ensemble", "-"), ("single", "--")):
            bins = curve[which]
            xs = [c for c, n in zip(bins["confidence"], bins["count"]) if n]
            ys = [a for a, n in zip(bins["accuracy"], bins["count"]) if n]
            line = ax.plot(xs, ys, marker="o", markersize=3, linestyle=style,
                           color=None if line is None else line.get_color(),
                           label=f"{g} (k={curve['k']})" if which == "ensemble" else None)[0]
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean top-label confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------- phase transition

KIND_ORDER = ("winning", "random", "losing")
FULL = {"dense", "share-dense"}


def level_of(art: Artifact) -> float:
    """The sparsity level a member was trained at: the mask's target level (IMP rounds and structured levels land
    near it, e.g. 7 of 72 heads for 10%), read from the member or, for artifacts that predate the field, from its
    parent mask's header; else the measured sparsity."""
    if "target_sparsity" in art.meta:
        return round(float(art.meta["target_sparsity"]), 6)
    for par in art.meta.get("parents") or []:
        if par.get("kind") == "mask":
            target = _parent_target(par["path"])
            if target is not None:
                return round(target, 6)
    return round(float(art.meta.get("sparsity", 0.0)), 6)


def _parent_target(path: str) -> float | None:
    from ticketctl.store.artifacts import read_artifact

    try:
        value = read_artifact(path, "mask").meta.get("target_sparsity")
    except InputError:
        return None
    return float(value) if value is not None else None


PIVOTS = ("sparsity", "train_fraction")  # --by keys that print metric vs the key, one column per scheme


def column_label(art: Artifact) -> str:
    """A member's scheme for pivot tables: its policy, and the model it started from when not the pretrained one."""
    policy = str(art.meta.get("policy", "?"))
    init = str(art.meta.get("init_model", "pretrained"))
    return policy if init == "pretrained" else f"{policy} from {init.rstrip('/').split('/')[-1]}"


def row_value(art: Artifact, by: str) -> float:
    if by == "sparsity":
        return level_of(art)
    try:
        return float(group_value(art, by))
    except ValueError:
        raise UsageError(f"--by {by}: {art.path} has a non-numeric value") from None


def phase_table(members: Members, by: str = "sparsity", examples: np.ndarray | None = None,
                resamples: int = 0) -> tuple[PhaseTable, dict[tuple[str, float], list[int]]]:
    """Metric vs ``by`` (rows), one column per scheme. ``--by sparsity`` is the Super Tickets phase transition
    (Liang et al., 2021): columns are the ticket kinds, the full (unpruned) model is the reference column, each row
    gives the head and FFN fractions its tickets really prune and (with ``resamples``) the winning tickets'
    difference to the full model with the calibrated test over seeds. ``--by train_fraction`` is the transfer table
    (paper's Table 4): columns are the schemes and the models they started from. Scores on ``examples`` (default
    all). Returns the table and {(column, row value): member indices in seed order}. Raises UsageError when no
    member is pruned, InputError when members differ in more than seed, mask and the pivot key."""
    check_same_recipe("all", members.arts, ignore={"init", "train_fraction", "mask", "method"})
    cells: dict[tuple[str, float], list[int]] = defaultdict(list)
    full: list[int] = []
    for i, a in enumerate(members.arts):
        label = column_label(a)
        if by == "sparsity" and (label in FULL or level_of(a) == 0):
            full.append(i)
        else:
            cells[(label, row_value(a, by))].append(i)
    if not cells:
        raise UsageError("--by sparsity: no pruned members (only full models) among the artifacts")
    kinds = sorted({k for k, _ in cells}, key=lambda k: (KIND_ORDER.index(k) if k in KIND_ORDER else 9, k))
    scorer = scorer_of(members, "probs")
    if examples is not None:
        scorer = scorer.on_examples(examples)
    cells = {key: members.in_seed_order(idx) for key, idx in cells.items()}
    full = members.in_seed_order(full)
    scores = scorer.scores(np.eye(len(scorer)))
    rows = []
    for level in sorted({lv for _, lv in cells}):
        row = PhaseRow(level, {k: _summary(scores[cells.get((k, level), [])]) for k in kinds})
        if by == "sparsity":
            row = _against_full(members, scorer, scores, row, kinds, cells, full, resamples)
        rows.append(row)
    return PhaseTable(members.evaluated, by, kinds, rows), cells


def _summary(s: np.ndarray) -> Cell:
    """A phase-transition cell: mean, sample standard deviation and count of these scores (NaN where undefined)."""
    nan = float("nan")
    return Cell(float(s.mean()) if len(s) else nan, float(s.std(ddof=1)) if len(s) > 1 else nan, len(s))


def _against_full(members: Members, scorer: Scorer, scores: np.ndarray, row: PhaseRow, kinds: list[str],
                  cells: dict, full: list[int], resamples: int) -> PhaseRow:
    """A sparsity row with the full model's column, the fractions its tickets prune, and the winning tickets'
    difference to the full model (permutation test over seeds with ``resamples``)."""
    level = row.value
    full_mean = float(scores[full].mean()) if full else float("nan")
    some = members.arts[next(i for k in kinds for i in cells.get((k, level), []))]
    win = cells.get(("winning", level), [])
    p = float("nan")
    if resamples and len(win) >= 2 and len(full) >= 2:
        p = compare(scorer, win, full, 1, 1, pairing(seeds_of(members, win), seeds_of(members, full)), resamples).p
    winning = row.cells["winning"].mean if "winning" in row.cells else float("nan")
    return replace(row, full=Cell(full_mean, float("nan"), len(full)),
                   heads_pruned=float(some.meta.get("sparsity", "nan")),
                   ffn_pruned=float(some.meta.get("ffn_sparsity", "nan")), vs_full=winning - full_mean, p_vs_full=p)


def best_level(table: PhaseTable, kind: str = "winning") -> PhaseRow:
    """The super ticket: the level where ``kind`` scores best (ties: the sparser one). Raises UsageError when no
    level has ``kind`` tickets."""
    scored = [r for r in table.rows if kind in r.cells and not math.isnan(r.cells[kind].mean)]
    if not scored:
        raise UsageError(f"--select best: no {kind} tickets among the artifacts")
    return max(scored, key=lambda r: (r.cells[kind].mean, r.value))


def plot_phase(table: PhaseTable, path: str, title: str) -> None:
    """Each column's mean (±std over seeds) against the sparsity level or training fraction, in percent."""
    from ticketctl.analysis.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [100 * r.value for r in table.rows]
    for k in table.columns:
        ys = [100 * r.cells[k].mean for r in table.rows]
        err = [0 if math.isnan(r.cells[k].std) else 100 * r.cells[k].std for r in table.rows]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=f"{k} tickets" if k in KIND_ORDER else k)
    if table.by == "sparsity" and not math.isnan(table.rows[0].full.mean):
        ax.axhline(100 * table.rows[0].full.mean, color="grey", linestyle="--", linewidth=1, label="full model")
    if table.by == "train_fraction":
        ax.set_xscale("log")
        ax.set_xlabel("training data used (%)")
    else:
        ax.set_xticks(xs)
        ax.set_xlabel("sparsity (% pruned)")
    ax.set_ylabel(f"dev {table.on.metric} (mean over seeds)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------- the three reports


def check_options(by: str = "policy", size: int | None = None, bootstrap: int = 0, select: str | None = None,
                  score: str | None = None, cost: bool = False) -> None:
    """The command's flag combinations: raises UsageError for a negative --bootstrap, a --size below 1, a --select
    other than best, --select without --by sparsity, or --score with a view other than Table 1."""
    if score is not None and (cost or select is not None or by in PIVOTS):
        raise UsageError("--score compares Table 1 only: not with --cost, --select or --by sparsity/train_fraction")
    if bootstrap < 0:
        raise UsageError("--bootstrap must be >= 0")
    if size is not None and size < 1:
        raise UsageError(f"--size {size}: an ensemble has at least one member")
    if select is not None and select != "best":
        raise UsageError("--select must be best")
    if select is not None and by != "sparsity":
        raise UsageError("--select best needs --by sparsity")


def table1(paths: list[str], by: str = "policy", ref: str | None = None, size: int | None = None,
           combine: str = "probs", groups: int = 1, test: str = "permutation", resamples: int = RESAMPLES,
           bootstrap: int = 0, curves: bool = False, score: str | None = None) -> Table1:
    """The paper's Table 1 from the logits artifacts among ``paths``, grouped by the metadata key ``by`` (see
    :func:`table1_rows`; ``ref`` default: dense, else base, else the first group), with each k-member ensemble's
    cost where members record one, and with ``curves`` Figure 3's gain over ``ref`` for k = 1, 2, ...
    ``score``: compare by this registered metric (``ticketctl.analysis.metrics``: nll, brier, ece, ts_nll, ...)
    instead of the task's headline metric; every number is then in its units, differences stay A minus the
    reference (negative favours A where lower is better) and each row gets a ``verdict`` in words.

    Raises UsageError (unlabelled split, unknown --ref, --test or score, k too large) or InputError (groups that
    mix configurations or levels, members that do not split into ``groups`` equal groups)."""
    members, grouped = load_groups(paths, by)
    ref = pick_ref(grouped, ref)
    scorer = scorer_of(members, combine, score)
    rows, k, notes = table1_rows(members, grouped, ref, size, scorer, groups, test, resamples, bootstrap)
    if all(a.meta.get("cost") for a in members.arts):
        rows = _with_costs(members, grouped, rows)
    on = members.evaluated if score is None else replace(members.evaluated, metric=scorer.name)
    return Table1(on, by, ref, k, combine, groups, test, bootstrap, rows, notes,
                  gain_curves(scorer, grouped, ref, groups) if curves else None,
                  None if score is None else scorer.metric.direction)


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
                  groups: int = 1) -> CostFrontier:
    """``stats --cost``: per budget (dense-member equivalents) and scheme, the largest affordable ensemble and its
    difference to the reference at the same budget (``ticketctl.analysis.frontier``), the members' costs, and each
    scheme's metric-vs-cost curve. Raises InputError for a member without a cost record, or groups that do not
    split into ``groups`` equal groups."""
    from ticketctl.analysis import frontier

    members, grouped = load_groups(paths, by)
    ref = pick_ref(grouped, ref)
    scorer = scorer_of(members, combine)
    for idx in grouped.values():
        split_groups(len(idx), groups)
    costs = frontier.group_costs(members, grouped)
    pairs = {g: pairing(seeds_of(members, idx), seeds_of(members, grouped[ref])) for g, idx in grouped.items()}
    means = frontier.protocol_means(scorer, grouped, groups)
    rows = frontier.frontier(scorer, grouped, costs, ref, groups, pairs, means)
    return CostFrontier(members.evaluated, by, ref, combine, groups, rows, costs, frontier.curves(means, costs))


def _labelled(paths: list[str]) -> Members:
    members = load_ensemble_members(paths)
    if members.labels is None:
        raise UsageError("the artifacts' split is unlabelled: nothing to score")
    return members


def phase_transition(paths: list[str], by: str = "sparsity", resamples: int = RESAMPLES) -> PhaseTable:
    """``stats --by sparsity``: the phase-transition table (metric vs sparsity per ticket kind, the full model as
    reference; Liang et al., 2021); ``--by train_fraction``: metric vs training data per scheme (transfer). See
    :func:`phase_table`."""
    return phase_table(_labelled(paths), by, resamples=resamples)[0]


def super_ticket(paths: list[str], fraction: float = 0.5) -> SuperTicket:
    """``stats --by sparsity --select best``: the sparsity level whose winning tickets score best on a seeded
    ``fraction`` of the evaluation examples, its mask paths (the winning members' parents), and its score on the
    other examples (so that the choice does not flatter it). Raises UsageError for a fraction outside (0, 1) or
    no winning tickets."""
    members = _labelled(paths)
    if not 0 < fraction < 1:
        raise UsageError("--select-fraction must be in (0, 1)")
    n = len(members.ids)
    order = np.random.default_rng(SELECT_SEED).permutation(n)
    cut = max(1, min(n - 1, int(round(fraction * n))))
    choose, report = np.sort(order[:cut]), np.sort(order[cut:])
    chosen, cells = phase_table(members, "sparsity", choose)
    best = best_level(chosen)
    held = next(r for r in phase_table(members, "sparsity", report)[0].rows if r.value == best.value)
    masks = [par["path"] for i in cells[("winning", best.value)] for par in members.arts[i].meta.get("parents") or []]
    return SuperTicket(members.evaluated, best.value, masks, fraction, len(choose), n, len(report),
                       held.cells["winning"].mean, held.full.mean)


SELECT_SEED = 0  # the split of the evaluation examples into selection and report halves for --select best
