"""The students of ``protocol --distill-from SCHEME`` in the report (docs/distillation.md "In the protocol"): the
distillation section, what a student (one model distilled from its seed group's k-member SCHEME ensemble) keeps of
that ensemble's gain; the students in the probability calibration section; and on the cost frontier.

The unit of every comparison that involves students is the **seed group**, not the seed: a group's students all
learnt from one teacher, a function of the group's first k members, so two students of one group (and a student and
the member of a teacher seed) are not independent draws. Everything a group holds (members, teacher, students) is a
function of that group's seeds alone, so the groups are independent and identically built. A comparison's statistic
is the mean over groups of each group's difference (the group's mean student minus its mean member, or minus its
mean k-member ensemble, Kobayashi et al.'s protocol within the group); its 95% interval is Student's t over the
groups, G - 1 degrees of freedom (the leave-one-group-out jackknife of a mean gives the same interval); its p-value
is the two-sided sign-flip test over groups (exact over all 2^G sign patterns up to 16 groups, else Monte Carlo),
exact where each group's difference is symmetric about zero under the null. With one group there is neither (NaN):
the record says so. The ensemble's gain over a single member involves no student: it keeps the seed as the unit
(the leave-one-seed-out jackknife of ``analysis.significance``, as Table 1).

The share of the gain kept, (student - member) / (ensemble - member), is given only where the gain's interval
excludes zero; otherwise the record says why not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ticketctl.analysis.frontier import affordable, member_costs
from ticketctl.analysis.grouping import headline_scorer, seeds_of
from ticketctl.analysis.members import load_ensemble_members
from ticketctl.analysis.significance import better, budget_interval, pairing, protocol_scores
from ticketctl.errors import InputError

EXACT_GROUPS = 16  # the sign-flip test enumerates all 2^G sign patterns up to this many groups
UNIT = "seed group"


def student_scheme(plan) -> str:
    """The report's scheme of ``plan``'s students (``student-random``)."""
    return f"student-{plan.distill_from}"


@dataclass
class Students:
    """SCHEME's members, the students and the reference's members, loaded once: indices in seed order."""

    loaded: object  # analysis.members.Members
    member: list[int]
    student: list[int]
    ref: list[int]
    scheme: str
    name: str  # student-SCHEME
    groups: int


def load(plan, members: dict[str, list[Path]], ref_paths: list[Path] = ()) -> Students | None:
    """The students of a plan with ``--distill-from`` and the members they are compared with (``members``: scheme
    -> dev logits paths in seed order; ``ref_paths``: the reference's, which may be SCHEME's own), else None. Raises
    InputError where a student or member is missing (a failed job) or the students' seeds are not the members'."""
    if plan.distill_from is None:
        return None
    scheme, student = plan.distill_from, student_scheme(plan)
    mine, theirs = [str(p) for p in members.get(scheme, [])], [str(p) for p in members.get(student, [])]
    if len(theirs) != len(plan.seeds) or len(mine) != len(plan.seeds):
        raise InputError(f"report: {student} has {len(theirs)} of {len(plan.seeds)} members finished (rerun the "
                         f"protocol)")
    paths = list(dict.fromkeys(mine + theirs + [str(p) for p in ref_paths]))  # the reference may be SCHEME
    loaded = load_ensemble_members(paths)
    at = {Path(a.path).resolve(): i for i, a in enumerate(loaded.arts)}
    index = lambda ps: loaded.in_seed_order([at[Path(p).resolve()] for p in ps])  # noqa: E731
    out = Students(loaded, index(mine), index(theirs), index([str(p) for p in ref_paths]), scheme, student,
                   plan.groups)
    if not pairing(seeds_of(loaded, out.member), seeds_of(loaded, out.student)):
        raise InputError(f"report: the {student} students' seeds are not the {scheme} members' (rerun the protocol)")
    return out


# ---------------------------------------------------------------------------------------------- the seed group


def group_means(scorer, idx: list[int], k: int, groups: int) -> np.ndarray:
    """(groups,) each seed group's mean score of its k-member combinations (k = 1: its members' mean score); the
    members ``idx`` in seed order, cut into ``groups`` equal consecutive groups as the protocol cuts them."""
    return protocol_scores(scorer, idx, k, groups).reshape(groups, -1).mean(axis=1)


def sign_flip_p(per_group: np.ndarray, resamples: int = 9999, seed: int = 0) -> float:
    """Two-sided sign-flip p-value of the mean of ``per_group`` (G values, one per independent group): the share of
    sign patterns whose |mean| reaches the observed one, over all 2^G patterns for G <= :data:`EXACT_GROUPS`
    (the smallest p it can give is 2 / 2^G), else (1 + #extreme) / (1 + resamples) over random patterns. NaN for
    G < 2."""
    d = np.asarray(per_group, dtype=np.float64)
    g = len(d)
    if g < 2:
        return float("nan")
    if g <= EXACT_GROUPS:
        signs = ((np.arange(2**g)[:, None] >> np.arange(g)) & 1) * 2.0 - 1.0  # the last row: all +1
        means = signs @ d / g
        return float(np.mean(np.abs(means) >= abs(means[-1]) - 1e-12))
    rng = np.random.default_rng([seed, g])
    means = np.where(rng.random((resamples, g)) < 0.5, -1.0, 1.0) @ d / g
    return float((1 + np.sum(np.abs(means) >= abs(d.mean()) - 1e-12)) / (1 + resamples))


def over_groups(per_group: np.ndarray, test: bool = True, level: float = 0.95) -> dict:
    """The mean of ``per_group`` (one difference per seed group, metric units) with Student's t interval over the
    groups (G - 1 degrees of freedom) and, with ``test``, :func:`sign_flip_p`: ``{"diff", "low", "high"[, "p"],
    "unit", "groups"}``; NaN interval and p with fewer than two groups."""
    from scipy import stats

    d = np.asarray(per_group, dtype=np.float64)
    g, diff = len(d), float(np.mean(per_group))
    low = high = float("nan")
    if g >= 2:
        half = float(stats.t.ppf((1 + level) / 2, g - 1) * d.std(ddof=1) / math.sqrt(g))
        low, high = diff - half, diff + half
    out = {"diff": diff, "low": low, "high": high}
    if test:
        out["p"] = sign_flip_p(d)
    return {**out, "unit": UNIT, "groups": g}


# ---------------------------------------------------------------------------------------------- the section


def distillation(plan, members: dict[str, list[Path]], students: Students | None = None) -> dict | None:
    """The section's numbers (metric units, as Table 1's) for a plan with ``--distill-from``, else None: the means
    of member, student and k-member ensemble; student minus member and ensemble minus student over seed groups
    (:func:`over_groups`; the first also with its sign-flip ``"p"``), the ensemble's gain over a member with its
    seed-level jackknife interval (``{"diff", "low", "high"}``); ``share_kept`` (a fraction, or None with
    ``share_reason``). ``students``: from :func:`load` (loaded here when not given). Raises InputError as
    :func:`load`."""
    s = students if students is not None else load(plan, members)
    if s is None:
        return None
    scorer, k, groups = headline_scorer(s.loaded, "probs"), plan.k, plan.groups
    member, taught = group_means(scorer, s.member, 1, groups), group_means(scorer, s.student, 1, groups)
    ensemble = group_means(scorer, s.member, k, groups)
    single = protocol_scores(scorer, s.student, 1, 1)
    gain = _diff(float(ensemble.mean() - member.mean()),
                 budget_interval(scorer, s.member, s.member, k, 1, groups, True, limit=None))
    kept = over_groups(taught - member)
    out = {"scheme": s.scheme, "student": s.name, "k": k, "metric": s.loaded.task.headline, "unit": UNIT,
           "groups": groups, "member_mean": float(member.mean()), "student_mean": float(taught.mean()),
           "student_std": float(single.std(ddof=1)) if len(single) > 1 else 0.0,
           "ensemble_mean": float(ensemble.mean()),
           "student_minus_member": {**kept, "test": f"sign flip over {UNIT}s"},
           "ensemble_minus_student": over_groups(ensemble - taught, test=False), "ensemble_minus_member": gain}
    out["share_kept"], out["share_reason"] = _share(kept["diff"], gain)
    return out


def _diff(diff: float, interval: tuple[float, float]) -> dict:
    return {"diff": float(diff), "low": float(interval[0]), "high": float(interval[1]), "unit": "seed"}


def _share(kept: float, gain: dict) -> tuple[float | None, str | None]:
    """(student - member) / (ensemble - member) where the gain's interval excludes zero, else (None, why not)."""
    low, high = gain["low"], gain["high"]
    if math.isnan(low) or math.isnan(high):
        return None, ("not given: the ensemble's gain has no interval (k equals a seed group's size, or fewer than "
                      "two seeds)")
    if low <= 0 <= high:
        return None, (f"not given: the ensemble's gain over a single member ({100 * gain['diff']:+.2f}, 95% interval "
                      f"[{100 * low:+.2f}, {100 * high:+.2f}]) is not distinguishable from zero, so a share of it "
                      f"means nothing")
    return float(kept / gain["diff"]), None


def table1_row(d: dict, n: int) -> dict:
    """The students' Table 1 row: single members only (no ensembles of students: those columns blank)."""
    return {"group": d["student"], "members": n, "single_mean": d["student_mean"], "single_std": d["student_std"]}


def _verdict(c: dict, higher_is_better: bool) -> str:
    if math.isnan(c["p"]):
        return "no test: one seed group"
    return better(c["diff"], c["p"], higher_is_better)


def calibration(s: Students, names: list[str], options=None) -> list[dict]:
    """The students in the probability calibration section, as single members: per metric of ``names`` (nll,
    brier, ece, ts_nll, ts_ece: all lower-is-better) their mean, ``ensemble_mean`` None (students are never
    ensembled), and over seed groups (:func:`over_groups`) the student minus the reference's single member
    (``vs_ref``, ``ref_low``, ``ref_high``, ``p_ref``, ``verdict_ref``) and minus SCHEME's single member
    (``vs_member``, ...), in the metric's units. ``options`` (``metrics.Options``, its calibration split in
    ``s.loaded``'s member order): what ts_nll and ts_ece fit their temperature with (None: cross-fitted). Raises
    UsageError for a name that is not a metric of probabilities (``metrics.scorer_for``)."""
    from ticketctl.analysis.metrics import get, scorer_for

    rows = []
    for name in names:
        scorer = scorer_for(s.loaded.task, s.loaded.outputs, s.loaded.labels, "probs", name,
                            options if get(name).fitted else None)
        taught = group_means(scorer, s.student, 1, s.groups)
        row = {"metric": name, "group": s.name, "members": len(s.student), "single_mean": float(taught.mean()),
               "ensemble_mean": None}
        for key, idx in (("ref", s.ref), ("member", s.member)):
            c = over_groups(taught - group_means(scorer, idx, 1, s.groups))
            row.update({f"vs_{key}": c["diff"], f"{key}_low": c["low"], f"{key}_high": c["high"], f"p_{key}": c["p"],
                        f"verdict_{key}": _verdict(c, scorer.higher_is_better)})
        rows.append(row)
    return rows


def frontier(s: Students, budgets: list[int]) -> dict:
    """The students on the cost frontier: one model each, never ensembled, so k = 1 at their own cost (the mean
    ``relative_flops`` their artifacts record: dense-member equivalents of analytic FLOPs per example; the rows round
    it to 4 decimals, as the frontier's) at every budget of ``budgets`` that affords one, against the reference's
    largest affordable ensemble at that budget (at most a seed group's members, as ``analysis.frontier``), over seed
    groups. Returns ``{"group", "cost", "mean", "rows"}``; each row the frontier's fields (budget, group, k, cost,
    mean, vs_ref, diff_low, diff_high) and ``unit``. Raises InputError for an artifact without a cost record."""
    scorer, costs = headline_scorer(s.loaded, "probs"), member_costs(s.loaded)
    cost, ref_cost = float(costs[s.student].mean()), float(costs[s.ref].mean())
    taught = group_means(scorer, s.student, 1, s.groups)
    rows = []
    for budget in budgets:
        if affordable(budget, cost, 1) < 1:
            continue
        k_ref = affordable(budget, ref_cost, len(s.ref) // s.groups)
        c = (over_groups(taught - group_means(scorer, s.ref, k_ref, s.groups), test=False) if k_ref >= 1
             else {"diff": float("nan"), "low": float("nan"), "high": float("nan")})
        rows.append({"budget": budget, "group": s.name, "k": 1, "cost": round(cost, 4), "mean": float(taught.mean()),
                     "vs_ref": c["diff"], "diff_low": c["low"], "diff_high": c["high"], "unit": UNIT})
    return {"group": s.name, "cost": cost, "mean": float(taught.mean()), "rows": rows}


# ---------------------------------------------------------------------------------------------- markdown


def _pct(r: dict) -> str:
    low = r["low"]
    return f"{100 * r['diff']:+.2f}" + ("" if np.isnan(low) else f" [{100 * low:+.2f}, {100 * r['high']:+.2f}]")


def unit_line(groups: int) -> str:
    """One sentence: the unit of the comparisons with students, and what it allows with ``groups`` seed groups."""
    line = (f"Unit: the seed group ({groups} group(s), one teacher each): a group's students share their teacher, so "
            f"each group's mean difference is one observation (Student's t over groups, two-sided sign-flip test "
            f"over groups; docs/distillation.md).")
    if groups < 2:
        return line + (" With one group there is one teacher: no interval and no test for a comparison with a "
                       "student (--groups 2 or more; a p below 0.05 takes at least 6 groups).")
    if groups < 6:
        return line + f" With {groups} groups the smallest p the test can give is {2 / 2**groups:.3f}."
    return line


def markdown(d: dict | None) -> list[str]:
    """The section as markdown lines (none without students)."""
    if d is None:
        return []
    s, k = d["scheme"], d["k"]
    share = f"{100 * d['share_kept']:.0f}%" if d["share_kept"] is not None else d["share_reason"]
    kept = d["student_minus_member"]
    p = "no test: one seed group" if kept["p"] is None or np.isnan(kept["p"]) else f"p = {kept['p']:.3f}"
    return ["## Distillation", "",
            f"`{d['student']}`: per seed one student, trained as that seed's {s} member (same options, same mask) on "
            f"the labels and on its seed group's {k}-member {s} ensemble's outputs on the training examples (the "
            f"group's first {k} seeds, `--combine probs`). {d['metric']}, in points, 95% intervals. "
            + unit_line(d["groups"]) + " The ensemble's gain involves no student: its interval is the "
            "leave-one-seed-out jackknife, as Table 1's.", "",
            "| | difference |", "| --- | --- |",
            f"| student minus single {s} member | {_pct(kept)} ({p}) |",
            f"| {s} {k}-member ensemble minus student | {_pct(d['ensemble_minus_student'])} |",
            f"| {s} {k}-member ensemble minus single member (the gain) | {_pct(d['ensemble_minus_member'])} |", "",
            f"Share of the gain the student keeps: {share}.", ""]


def calibration_markdown(rows: list[dict], ref: str, scheme: str, table) -> list[str]:
    """The students' rows of the calibration section as markdown lines (none without students); ``table`` renders
    rows and columns (``report._table``)."""
    if not rows:
        return []
    name = rows[0]["group"]
    return [f"Students (`{name}`) as single members: students are never ensembled, so no ensemble row (n/a). "
            f"`vs_ref`: the mean student minus {ref}'s mean single member, `vs_member`: minus {scheme}'s, in the "
            f"metric's units, each with its 95% interval and sign-flip p-value over seed groups (students of a group "
            f"share their teacher: the seed group is the unit, docs/distillation.md).", "",
            table(rows, ["metric", "group", "single_mean", "vs_ref", "ref_low", "ref_high", "p_ref", "verdict_ref",
                         "vs_member", "member_low", "member_high", "p_member", "verdict_member"]), ""]
