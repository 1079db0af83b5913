"""``ticketctl stats``: the paper's Table 1 from logits artifacts — groups by a metadata key, single-member and
k-member ensemble metrics by the paper's protocol, and each group against a reference group (difference, 95%
interval, permutation test over seeds; ``ticketctl.analysis.significance``); the phase-transition table."""

from __future__ import annotations

import math
import sys
from collections import defaultdict

import numpy as np

from ticketctl.analysis import tables
from ticketctl.analysis.combine import member_terms
from ticketctl.analysis.significance import (RESAMPLES, Scorer, compare, pairing, paper_ttest, protocol_combinations,
                                             protocol_scores, smallest_p, split_groups)
from ticketctl.analysis.members import Members, load_members
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
    """All members, and each group's member indices in seed order."""
    members = load_members(paths)
    if members.labels is None:
        raise UsageError("the artifacts' split is unlabelled: nothing to score")
    grouped: dict[str, list[int]] = defaultdict(list)
    for i, a in enumerate(members.arts):
        grouped[group_value(a, by)].append(i)
    for g, idx in grouped.items():
        check_same_recipe(g, [members.arts[i] for i in idx])
        if by != "sparsity":
            check_same_level(g, [members.arts[i] for i in idx])
        seed_sort(members, idx)
    return members, dict(grouped)


def seeds_of(members: Members, idx: list[int]) -> list[str]:
    return [str(members.arts[i].meta.get("seed", "?")) for i in idx]


def seed_sort(members: Members, idx: list[int]) -> None:
    """Member indices in seed order (then file name), in place: the order of the protocol's groups and of pairing."""
    def key(i):
        seed = str(members.arts[i].meta.get("seed", "0"))
        return int(seed) if seed.isdigit() else 0, members.arts[i].path.name

    idx.sort(key=key)


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


def scorer_of(members: Members, how: str) -> Scorer:
    return Scorer(members.task, member_terms(members.task, members.outputs, how), members.labels)


def table(members: Members, groups: dict[str, list[int]], ref: str, k: int | None, scorer: Scorer, n_groups: int = 1,
          test: str = "permutation", resamples: int = RESAMPLES, bootstrap: int = 0) -> tuple[list[dict], int]:
    """Table 1 by the paper's protocol: per group, the single members' mean (over all seeds) and the mean of its
    k-member ensembles (all combinations within each of ``n_groups`` seed-order groups, averaged within groups,
    then over groups); against the reference group, the difference with a 95% interval and a p-value (the
    calibrated permutation test over seeds, or the paper's t-test over combinations), for ensembles and single
    members."""
    if test not in TESTS:
        raise UsageError(f"--test must be one of {', '.join(TESTS)}")
    if resamples < 99:
        raise UsageError("--resamples must be >= 99")
    per_group = {g: len(idx) // n_groups for g, idx in groups.items()}
    for g, idx in groups.items():
        split_groups(len(idx), n_groups)  # refuses members that do not split evenly
    smallest = min(per_group.values())
    if k is None:
        k = min(5, smallest)
    if not 1 <= k <= smallest:
        raise UsageError(f"--size {k}: every group needs at least {k} members per protocol group "
                         f"(smallest has {smallest} with --groups {n_groups})")
    ens = {g: protocol_scores(scorer, idx, k, n_groups) for g, idx in groups.items()}
    singles = {g: scorer.scores(np.eye(len(scorer))[idx]) for g, idx in groups.items()}
    rows = []
    for g in sorted(groups, key=lambda x: (x != ref, x)):
        s = singles[g]
        row = {"group": g, "members": len(groups[g]), "single_mean": float(s.mean()),
               "single_std": float(s.std(ddof=1)) if len(s) > 1 else 0.0, "k": k, "combinations": len(ens[g]),
               "ensemble_mean": float(ens[g].mean()), "ensemble_gain": float(ens[g].mean() - s.mean()),
               "vs_ref": float(ens[g].mean() - ens[ref].mean())}
        nan = float("nan")
        row.update({"diff_low": nan, "diff_high": nan, "p_value": nan, "test": "ref", "p_single": nan})
        if g != ref:
            paired = pairing(seeds_of(members, groups[g]), seeds_of(members, groups[ref]))
            if test == "paper":
                row.update({"p_value": paper_ttest(ens[g], ens[ref]), "test": "paper t-test (optimistic)",
                            "p_single": paper_ttest(singles[g], singles[ref])})
                c = compare(scorer, groups[g], groups[ref], k, n_groups, paired, resamples=0)
                row.update({"diff_low": c.low, "diff_high": c.high})
            elif len(groups[g]) < 2 or len(groups[ref]) < 2:
                row["test"] = "n/a (one seed)"
            else:
                c = compare(scorer, groups[g], groups[ref], k, n_groups, paired, resamples)
                c1 = compare(scorer, groups[g], groups[ref], 1, 1, paired, resamples)
                floor = smallest_p(len(groups[g]), len(groups[ref]), paired)
                if floor > 0.05:
                    tables.note(f"note: {g} vs {ref}: with {len(groups[g])} and {len(groups[ref])} seeds"
                                f"{' (paired)' if paired else ''} the permutation test cannot give p below "
                                f"{floor:.3g}, so no difference is significant at 5% whatever the data; the "
                                f"interval is a t approximation on {min(len(groups[g]), len(groups[ref])) - 1} "
                                f"degree(s) of freedom and "
                                f"can exclude 0 regardless: use more seeds (6 paired seeds reach p = 0.031)")
                row.update({"diff_low": c.low, "diff_high": c.high, "p_value": c.p, "test": c.test,
                            "p_single": c1.p, "p_paper": paper_ttest(ens[g], ens[ref])})
        if bootstrap:
            row.update(dict(zip(("ci_low", "ci_high"), example_interval(scorer, groups[g], k, n_groups, bootstrap))))
        rows.append(row)
    return rows, k


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
              intervals: dict[str, list[tuple[float, float]]] | None = None) -> None:
    """Figure 3: each group's gain over ``ref`` vs k; with ``intervals`` (per group, a (low, high) per point of its
    curve; NaN where there is none) a shaded 95% band."""
    from ticketctl.analysis.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for g, pts in sorted(curves.items()):
        line = ax.plot([k for k, _ in pts], [100 * v for _, v in pts], marker="o", label=g)[0]
        if intervals and g in intervals:
            lows, highs = zip(*intervals[g])
            ax.fill_between([k for k, _ in pts], [100 * v for v in lows], [100 * v for v in highs],
                            color=line.get_color(), alpha=0.15, linewidth=0)
    ks = sorted({k for pts in curves.values() for k, _ in pts})
    ax.set_xticks(ks)
    ax.axhline(0, color="grey", linewidth=1, linestyle="--", label=f"{ref} (reference)")
    ax.set_xlabel("ensemble members k")
    ax.set_ylabel(f"{metric} gain over {ref} (points)")
    ax.set_title(title)
    ax.legend()
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
                resamples: int = 0) -> tuple[list[dict], list[str], dict]:
    """Metric vs ``by`` (rows), one column per scheme. ``--by sparsity`` is the Super Tickets phase transition:
    columns are the ticket kinds, the full (unpruned) model is the reference column, each row gives the head and FFN
    fractions its tickets really prune and (with ``resamples``) the winning tickets' difference to the full model
    with the calibrated test over seeds. ``--by train_fraction`` is the transfer table (paper's Table 4): columns
    are the schemes and the models they started from. Scores on ``examples`` (default all). Returns rows, the
    columns, and {(column, row value): member indices}."""
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
    for idx in [*cells.values(), full]:
        seed_sort(members, idx)
    scores = scorer.scores(np.eye(len(scorer)))
    full_mean = float(scores[full].mean()) if full else float("nan")
    rows = []
    for level in sorted({lv for _, lv in cells}):
        row: dict = {by: level}
        for k in kinds:
            idx = cells.get((k, level), [])
            s = scores[idx]
            row[k] = float(s.mean()) if len(s) else float("nan")
            row[f"{k}_std"] = float(s.std(ddof=1)) if len(s) > 1 else float("nan")
            row[f"{k}_n"] = len(s)
        if by == "sparsity":
            row["full"] = full_mean
            row["full_n"] = len(full)
            some = members.arts[next(i for k in kinds for i in cells.get((k, level), []))]
            row["heads_pruned"] = float(some.meta.get("sparsity", "nan"))
            row["ffn_pruned"] = float(some.meta.get("ffn_sparsity", "nan"))
            win = cells.get(("winning", level), [])
            row["vs_full"] = row.get("winning", float("nan")) - full_mean
            row["p_vs_full"] = float("nan")
            if resamples and len(win) >= 2 and len(full) >= 2:
                paired = pairing(seeds_of(members, win), seeds_of(members, full))
                row["p_vs_full"] = compare(scorer, win, full, 1, 1, paired, resamples).p
        rows.append(row)
    return rows, kinds, dict(cells)


def best_level(rows: list[dict], kind: str = "winning") -> dict:
    """The super ticket: the level where ``kind`` scores best (ties: the sparser one)."""
    scored = [r for r in rows if kind in r and not math.isnan(r[kind])]
    if not scored:
        raise UsageError(f"--select best: no {kind} tickets among the artifacts")
    return max(scored, key=lambda r: (r[kind], r["sparsity"]))


def plot_phase(rows: list[dict], kinds: list[str], metric: str, path: str, title: str, by: str = "sparsity") -> None:
    from ticketctl.analysis.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [100 * r[by] for r in rows]
    for k in kinds:
        ys = [100 * r[k] for r in rows]
        err = [0 if math.isnan(r[f"{k}_std"]) else 100 * r[f"{k}_std"] for r in rows]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=f"{k} tickets" if k in KIND_ORDER else k)
    if by == "sparsity" and not math.isnan(rows[0]["full"]):
        ax.axhline(100 * rows[0]["full"], color="grey", linestyle="--", linewidth=1, label="full model")
    if by == "train_fraction":
        ax.set_xscale("log")
        ax.set_xlabel("training data used (%)")
    else:
        ax.set_xticks(xs)
        ax.set_xlabel("sparsity (% pruned)")
    ax.set_ylabel(f"dev {metric} (mean over seeds)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------- commands


def stats(paths: list[str], by: str = "policy", ref: str | None = None, size: int | None = None,
          combine: str = "probs", plot: str | None = None, fmt: str = "table", bootstrap: int = 0,
          select: str | None = None, groups: int = 1, test: str = "permutation", resamples: int = RESAMPLES,
          select_fraction: float = 0.5, cost: bool = False) -> None:
    """Print the paper's Table 1 (groups by ``by``), or with ``by="sparsity"`` the phase-transition table, or with
    ``cost`` the accuracy-at-equal-cost frontier."""
    if bootstrap < 0:
        raise UsageError("--bootstrap must be >= 0")
    if size is not None and size < 1:
        raise UsageError(f"--size {size}: an ensemble has at least one member")
    if select is not None and select != "best":
        raise UsageError("--select must be best")
    if by in ("sparsity", "train_fraction"):
        if select is not None and by != "sparsity":
            raise UsageError("--select best needs --by sparsity")
        return phase(paths, plot, fmt, select, by, resamples, select_fraction)
    if select is not None:
        raise UsageError("--select best needs --by sparsity")
    members, grouped = load_groups(paths, by)
    ref = pick_ref(grouped, ref)
    scorer = scorer_of(members, combine)
    if cost:
        return cost_frontier(members, grouped, ref, scorer, groups, by, combine, fmt, plot)
    rows, k = table(members, grouped, ref, size, scorer, groups, test, resamples, bootstrap)
    task = members.task
    costs = None
    if all(a.meta.get("cost") for a in members.arts):
        from ticketctl.analysis.frontier import group_costs

        costs = group_costs(members, grouped)
        for row in rows:  # the k-member ensemble's cost: relative to one dense member, and GFLOPs per example
            idx = grouped[row["group"]]
            row["cost"] = round(row["k"] * costs[row["group"]], 4)
            row["gflops"] = round(row["k"] * float(np.mean([members.arts[i].meta["cost"]["flops_per_example"]
                                                            for i in idx])) / 1e9, 4)
    cols = ["group", "members", "single_mean", "single_std", "k"] + (["cost", "gflops"] if costs else []) + [
            "combinations", "ensemble_mean", "ensemble_gain",
            "vs_ref", "diff_low", "diff_high", "p_value", "test", "p_single"]
    cols += ["p_paper"] if test == "permutation" else []
    cols += ["ci_low", "ci_high"] if bootstrap else []
    what = ("permutation test over seeds" if test == "permutation" else
            "the paper's t-test over combinations, optimistic: combinations share members")
    tables.emit(rows, cols, fmt, f"{task.name} {members.split}: {task.headline} by {by} (k={k}, {combine}, "
                                 f"{groups} seed group(s); vs {ref}: difference, 95% interval, {what})")
    if test == "paper":
        tables.note("note: --test paper is the t-test of Kobayashi et al. over k-member combinations; combinations "
                    "share members, so its p-values are optimistic, too small (README: Statistics)")
    if plot:
        curves = gain_curves(scorer, grouped, ref, groups)
        plot_gain(curves, ref, task.headline, plot, f"{task.name}: ensemble gain over {ref}")
        tables.note(f"wrote {plot}")


def cost_frontier(members: Members, grouped: dict[str, list[int]], ref: str, scorer: Scorer, n_groups: int, by: str,
                  combine: str, fmt: str, plot: str | None) -> None:
    """``stats --cost``: per budget (dense-member equivalents) and scheme, the largest affordable ensemble and its
    difference to the reference at the same budget; ``--plot`` draws metric against cost."""
    from ticketctl.analysis import frontier

    for g, idx in grouped.items():
        split_groups(len(idx), n_groups)
    costs = frontier.group_costs(members, grouped)
    pairs = {g: pairing(seeds_of(members, idx), seeds_of(members, grouped[ref])) for g, idx in grouped.items()}
    means = frontier.protocol_means(scorer, grouped, n_groups)
    rows = frontier.frontier(scorer, grouped, costs, ref, n_groups, pairs, means)
    task = members.task
    tables.emit(rows, ["budget", "group", "k", "cost", "mean", "vs_ref", "diff_low", "diff_high"], fmt,
                f"{task.name} {members.split}: {task.headline} of the largest ensemble within each inference budget (dense-member "
                f"equivalents, analytic FLOPs; {combine}, {n_groups} seed group(s); vs {ref} at the same budget: "
                f"difference and 95% jackknife interval)")
    tables.note("member cost (x dense): " + ", ".join(f"{g} {costs[g]:.3f}" for g in sorted(costs))
                + "; unstructured tickets cost a dense member (no sparse kernel)")
    if plot:
        frontier.plot(frontier.curves(means, costs), task.headline, plot,
                      f"{task.name}: {task.headline} vs inference cost, by {by}")
        tables.note(f"wrote {plot}")


def phase(paths: list[str], plot: str | None, fmt: str, select: str | None, by: str = "sparsity",
          resamples: int = RESAMPLES, select_fraction: float = 0.5) -> None:
    """``stats --by sparsity``: the phase-transition table (metric vs sparsity per ticket kind); with
    ``--select best`` only the super ticket's mask path(s), chosen on a seeded ``select_fraction`` of the
    evaluation examples and reported on the rest. ``--by train_fraction``: metric vs training data per scheme
    (transfer)."""
    members = load_members(paths)
    if members.labels is None:
        raise UsageError("the artifacts' split is unlabelled: nothing to score")
    if select:
        if not 0 < select_fraction < 1:
            raise UsageError("--select-fraction must be in (0, 1)")
        n = len(members.ids)
        order = np.random.default_rng(SELECT_SEED).permutation(n)
        cut = max(1, min(n - 1, int(round(select_fraction * n))))
        choose, report = np.sort(order[:cut]), np.sort(order[cut:])
        rows, _, cells = phase_table(members, by, choose)
        best = best_level(rows)
        shown, _, _ = phase_table(members, by, report)
        held = next(r for r in shown if r["sparsity"] == best["sparsity"])
        for i in cells[("winning", best["sparsity"])]:
            for par in members.arts[i].meta.get("parents") or []:
                sys.stdout.write(f"{par['path']}\n")
        tables.note(f"super ticket: winning at {best['sparsity']:.0%}, chosen on {len(choose)} of {n} "
                    f"{members.split} examples (a seeded {select_fraction:g} of them); on the other {len(report)}: "
                    f"{task_name(members)} {held['winning']:.4f} (full model {held['full']:.4f})")
        return
    rows, kinds, cells = phase_table(members, by, resamples=resamples)
    task = members.task
    full = ["full"] if by == "sparsity" else []
    extra = ["heads_pruned", "ffn_pruned", "vs_full", "p_vs_full"] if by == "sparsity" else []
    if fmt == "table" or fmt == "markdown":
        shown = [{by: f"{r[by]:.0%}" if by == "sparsity" else f"{r[by]:g}",
                  **{k: "" if math.isnan(r[k]) else f"{r[k]:.4f}" + (f" ±{r[k + '_std']:.4f}" if not math.isnan(
                      r[k + "_std"]) else "") + f" ({r[k + '_n']})" for k in kinds},
                  **({"full": "" if math.isnan(r["full"]) else f"{r['full']:.4f} ({r['full_n']})"} if full else {}),
                  **({"heads/FFN pruned": f"{r['heads_pruned']:.1%} / {r['ffn_pruned']:.1%}",
                      "winning vs full (p)": "" if math.isnan(r["vs_full"]) else f"{r['vs_full']:+.4f}"
                      + ("" if math.isnan(r["p_vs_full"]) else f" ({r['p_vs_full']:.3g})")} if full else {})}
                 for r in rows]
        tables.emit(shown, [by, *kinds, *full] + (["heads/FFN pruned", "winning vs full (p)"] if full else []), fmt,
                    f"{task.name} {members.split}: {task.headline} by {by} (mean ±std over seeds (n))"
                    + ("; full = unpruned model; p: permutation test over seeds" if full else ""))
    else:
        cols = [by] + [c for k in kinds for c in (k, f"{k}_std", f"{k}_n")] + (["full", "full_n"] if full else [])
        tables.emit(rows, cols + extra, fmt, f"{task.name} {members.split}: {task.headline} by {by}")
    if plot:
        plot_phase(rows, kinds, task.headline, plot,
                   f"{task.name}: {'phase transition' if full else 'metric vs training data'}", by)
        tables.note(f"wrote {plot}")


SELECT_SEED = 0  # the split of the evaluation examples into selection and report halves for --select best


def task_name(members: Members) -> str:
    return f"{members.split} {members.task.headline}"
