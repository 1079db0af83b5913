"""The report's distillation section (``protocol --distill-from SCHEME``, docs/distillation.md "In the protocol"):
what a student, one model distilled from its seed group's k-member SCHEME ensemble, keeps of that ensemble's gain.

Three differences in the headline metric, each with the interval the report gives its other differences (the
leave-one-seed-out jackknife of ``analysis.significance``, Student's t over seeds):

- student minus member: the mean student minus SCHEME's mean single member, paired by seed (plus the permutation
  test over seeds, ``significance.compare`` at k = 1);
- ensemble minus student: SCHEME's mean k-member ensemble (Table 1's: every combination within each seed group)
  minus the mean student (``significance.budget_interval`` with k and 1);
- ensemble minus member: the ensemble's gain, the same way.

The share of the gain kept, (student - member) / (ensemble - member), is given only where the gain's interval
excludes zero; otherwise the record says why not. Students of one group share a teacher, so they are not
independent draws given the seed: the intervals treat the seed as the unit and may be too narrow (docs).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ticketctl.analysis.grouping import headline_scorer, seeds_of
from ticketctl.analysis.members import load_ensemble_members
from ticketctl.analysis.significance import budget_interval, compare, pairing, protocol_scores
from ticketctl.errors import InputError


def student_scheme(plan) -> str:
    """The report's scheme of ``plan``'s students (``student-random``)."""
    return f"student-{plan.distill_from}"


def distillation(plan, members: dict[str, list[Path]]) -> dict | None:
    """The section's numbers (metric units, as Table 1's) for a plan with ``--distill-from``, else None: the means
    of member, student and k-member ensemble, the three differences (``{"diff", "low", "high"}``; student minus
    member also ``"p"``), ``share_kept`` (a fraction, or None with ``share_reason``). ``members``: scheme -> dev
    logits paths in seed order. Raises InputError where a student is missing (a failed job)."""
    if plan.distill_from is None:
        return None
    scheme, student = plan.distill_from, student_scheme(plan)
    mine, theirs = [str(p) for p in members.get(scheme, [])], [str(p) for p in members.get(student, [])]
    if len(theirs) != len(plan.seeds) or len(mine) != len(plan.seeds):
        raise InputError(f"report: {student} has {len(theirs)} of {len(plan.seeds)} members finished (rerun the "
                         f"protocol)")
    loaded = load_ensemble_members(mine + theirs)
    mem = loaded.in_seed_order(list(range(len(mine))))
    stu = loaded.in_seed_order(list(range(len(mine), len(mine) + len(theirs))))
    scorer = headline_scorer(loaded, "probs")
    paired = pairing(seeds_of(loaded, mem), seeds_of(loaded, stu))
    k, groups = plan.k, plan.groups
    member = float(protocol_scores(scorer, mem, 1, 1).mean())
    taught = protocol_scores(scorer, stu, 1, 1)
    ensemble = float(protocol_scores(scorer, mem, k, groups).mean())
    c = compare(scorer, stu, mem, 1, 1, paired, plan.resamples, limit=None)
    gain = _diff(ensemble - member, budget_interval(scorer, mem, mem, k, 1, groups, True, limit=None))
    out = {"scheme": scheme, "student": student, "k": k, "metric": loaded.task.headline,
           "member_mean": member, "student_mean": float(taught.mean()),
           "student_std": float(taught.std(ddof=1)) if len(taught) > 1 else 0.0, "ensemble_mean": ensemble,
           "student_minus_member": {"diff": c.diff, "low": c.low, "high": c.high, "p": c.p, "test": c.test},
           "ensemble_minus_student": _diff(ensemble - float(taught.mean()),
                                           budget_interval(scorer, mem, stu, k, 1, groups, paired, limit=None)),
           "ensemble_minus_member": gain}
    out["share_kept"], out["share_reason"] = _share(c.diff, gain)
    return out


def _diff(diff: float, interval: tuple[float, float]) -> dict:
    return {"diff": float(diff), "low": float(interval[0]), "high": float(interval[1])}


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


def markdown(d: dict | None) -> list[str]:
    """The section as markdown lines (none without students)."""
    if d is None:
        return []
    pct = lambda r: (f"{100 * r['diff']:+.2f}" + ("" if np.isnan(r["low"]) else  # noqa: E731
                                                  f" [{100 * r['low']:+.2f}, {100 * r['high']:+.2f}]"))
    s, k = d["scheme"], d["k"]
    share = f"{100 * d['share_kept']:.0f}%" if d["share_kept"] is not None else d["share_reason"]
    return ["## Distillation", "",
            f"`{d['student']}`: per seed one student, trained as that seed's {s} member (same options, same mask) on "
            f"the labels and on its seed group's {k}-member {s} ensemble's outputs on the training examples (the "
            f"group's first {k} seeds, `--combine probs`). {d['metric']}, in points, 95% intervals (leave-one-seed-out "
            f"jackknife). Students of one group share their teacher: the intervals treat the seed as the unit and may "
            f"be too narrow.", "",
            "| | difference |", "| --- | --- |",
            f"| student minus single {s} member | {pct(d['student_minus_member'])} (p = "
            f"{d['student_minus_member']['p']:.3f}) |",
            f"| {s} {k}-member ensemble minus student | {pct(d['ensemble_minus_student'])} |",
            f"| {s} {k}-member ensemble minus single member (the gain) | {pct(d['ensemble_minus_member'])} |", "",
            f"Share of the gain the student keeps: {share}.", ""]
