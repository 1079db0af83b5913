"""The report's out-of-distribution section (``protocol --ood-file FILE``, docs/calibration.md "In the protocol
report"): per scheme, how well single members and k-member ensembles tell the OOD texts from the evaluation split's
texts, as ``ensemble --ood ood`` computes it (``ticketctl.analysis.ood``): AUROC and FPR at 95% TPR of 1 - max
probability and entropy, for single members and ensembles, and of mutual information for ensembles; for a regression
task, of the members' spread, for ensembles only. Against the reference scheme (BASELINE), each score's difference
with the seed test of Table 1 (``ticketctl.analysis.significance``: permutation over seeds, jackknife interval), for
k-member ensembles and single members: ``stats --by scheme --ood ood --score COLUMN`` gives the same numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ticketctl.analysis import ood
from ticketctl.analysis.grouping import pick_ref, seeds_of
from ticketctl.analysis.members import load_ensemble_members
from ticketctl.analysis.significance import better, compare, group_combinations, pairing
from ticketctl.store import paths
from ticketctl.store.artifacts import read_artifact

SPLIT = "ood"  # ticketctl.data.custom.OOD_SPLIT


def section(plan, members: dict[str, list[Path]]) -> dict | None:
    """The section's numbers for a plan with ``--ood-file`` (None without one).

    ``rows``: one per scheme with all its members' OOD outputs: ``single_<column>`` (mean over members) and
    ``ensemble_<column>`` (mean over the k-member combinations within each seed group, Table 1's), the columns of
    :func:`ticketctl.analysis.ood.task_columns` (``columns``; ``single_columns``: those defined for one member);
    ``tests``: per scheme other than ``ref`` and column, :func:`_test`'s fields; ``missing``: scheme -> how many
    members have no OOD outputs (finished before ``--ood-file`` was given: docs/calibration.md); ``regression``.
    Raises InputError where the two sides do not pair up (``ood.check_sides``, ``ood.pairing``)."""
    if not plan.data.ood_file or not members:
        return None
    found = _ood_artifacts(plan, next(iter(members.values()))[0])
    ins, outs, missing, grouped = [], [], {}, {}
    for scheme in plan.member_schemes:
        arts = [read_artifact(p) for p in members.get(scheme, [])]
        mine = partners(found, arts)
        if None in mine:
            missing[scheme] = mine.count(None)
            continue
        grouped[scheme] = list(range(len(ins), len(ins) + len(arts)))
        ins += [str(a.path) for a in arts]
        outs += mine
    out = {"file": str(plan.data.ood_file), "k": plan.k, "rows": [], "tests": [], "missing": missing, "ref": None}
    inside = load_ensemble_members(ins or [str(next(iter(members.values()))[0])])
    regression = inside.task.is_regression
    out.update(regression=regression, columns=ood.task_columns(regression, plan.k),
               single_columns=ood.task_columns(regression, 1))
    if not ins:
        return out
    outside = load_ensemble_members(outs, split=SPLIT)
    ood.check_sides(inside, outside, SPLIT)
    paired = ood.Paired(inside, outside.outputs[ood.pairing(inside.arts, outside.arts, SPLIT)], SPLIT)
    grouped = {g: inside.in_seed_order(idx) for g, idx in grouped.items()}
    out["rows"] = [_row(g, paired, idx, plan.k, plan.groups) for g, idx in grouped.items()]
    ref = pick_ref(dict.fromkeys(plan.member_schemes), None)  # the report's reference (BASELINE)
    if ref not in grouped:  # without its OOD outputs, nothing to test against
        return out
    out["ref"] = ref
    scorer = ood.OodScorer(paired, out["columns"][0]) if out["columns"] else None
    for g, idx in grouped.items():
        if g == ref or scorer is None:
            continue
        paired_seeds = pairing(seeds_of(inside, idx), seeds_of(inside, grouped[ref]))
        for column in out["columns"]:
            test = _test(scorer.column(column), idx, grouped[ref], plan, paired_seeds,
                         column in out["single_columns"])
            out["tests"].append({"scheme": g, "score": column, **test})
    return out


def _ood_artifacts(plan, member: Path) -> list[tuple[str, set[str]]]:
    """(path, member keys) of the OOD logits artifacts of ``--ood-file`` in the members' folder."""
    return split_artifacts(Path(member).parent, read_artifact(member).meta.get("task"), SPLIT, str(plan.data.ood_file))


def split_artifacts(folder: Path, task: str | None, split: str, source: str) -> list[tuple[str, set[str]]]:
    """(path, member keys: ``ood.member_keys``) of the logits artifacts of split ``split`` in ``folder`` that score
    the file ``source`` (their ``split_source``), in name order."""
    out = []
    for path in sorted(Path(folder).glob(paths.logits_name(task, split, "*", "*", "*"))):
        art = read_artifact(path)
        if art.kind == "logits" and art.meta.get("split_source") == source:
            out.append((str(path), ood.member_keys(art)))
    return out


def partners(found: list[tuple[str, set[str]]], arts: list) -> list[str | None]:
    """For each member artifact of ``arts``, the path among ``found`` (:func:`split_artifacts`) of the same member
    (sharing a key of ``ood.member_keys``), None where it has none."""
    return [next((p for p, keys in found if keys & ood.member_keys(a)), None) for a in arts]


def _row(scheme: str, paired: ood.Paired, idx: list[int], k: int, groups: int) -> dict:
    """One scheme's means: over its members (single) and over its k-member combinations within seed groups."""
    regression = paired.inside.task.is_regression
    row = {"scheme": scheme, "members": len(idx)}
    if ood.task_columns(regression, 1):
        single = ood.any_combinations(paired, np.asarray(idx)[:, None], "probs")
        row.update({f"single_{c}": float(single[c].mean()) for c in ood.task_columns(regression, 1)})
    ensemble = ood.any_combinations(paired, group_combinations(idx, groups, k), "probs")
    row.update({f"ensemble_{c}": float(ensemble[c].mean()) for c in ood.task_columns(regression, k)})
    return row


def _test(scorer: ood.OodScorer, a: list[int], b: list[int], plan, paired: bool, single: bool) -> dict:
    """Scheme ``a`` against the reference ``b`` by one OOD column: ``diff`` (k-member ensembles, A minus the
    reference), its jackknife interval ``low``/``high`` and permutation ``p`` over seeds (at most
    ``significance.TEST_COMBINATIONS`` combinations per seed group, as ``stats``), ``verdict`` by the column's
    direction; the same for single members (``single_*``, None for a column undefined for one member); ``test``,
    ``direction``. Fewer than two seeds a side: no test (p None)."""
    none = dict.fromkeys(("diff", "low", "high", "p", "verdict", "single_diff", "single_low", "single_high",
                          "p_single", "verdict_single"))
    out = {**none, "direction": scorer.direction, "test": "n/a (one seed)"}
    if min(len(a), len(b)) < 2:
        return out
    rounds = (("", plan.k, plan.groups), *((("single_", 1, 1),) if single else ()))
    for prefix, k, groups in rounds:
        c = compare(scorer, a, b, k, groups, paired, plan.resamples)
        out.update({f"{prefix}diff": c.diff, f"{prefix}low": c.low, f"{prefix}high": c.high, "test": c.test,
                    ("p_single" if prefix else "p"): c.p,
                    f"verdict{'_single' if prefix else ''}": better(c.diff, c.p, scorer.higher_is_better)})
    return out


def markdown(data: dict | None, named) -> list[str]:
    """The section's markdown lines (none without ``--ood-file``)."""
    if not data:
        return []
    k = data["k"]
    scores = ("the members' spread (`spread`; ensembles only: a single prediction has no spread)"
              if data.get("regression") else "1 - max probability (`msp`), entropy and mutual information (`mi`, "
              "ensembles only)")
    lines = ["## Out-of-distribution detection", "",
             f"How well each scheme's uncertainty tells the texts of `{data['file']}` from the evaluation split's "
             f"(docs/calibration.md): AUROC (0.5: chance; higher is better) and FPR at 95% TPR (lower is better) of "
             f"{scores}, for {'' if data.get('regression') else 'single members (mean over members) and '}{k}-member "
             f"ensembles (mean over the combinations of Table 1). Numbers in report.json's `ood`.", ""]
    columns = [c for c in ("auroc_msp", "auroc_entropy", "auroc_mi", "auroc_spread", "fpr95_msp", "fpr95_entropy",
                           "fpr95_mi", "fpr95_spread") if c in data.get("columns", [])]
    head = ["scheme", *[f"{who} {c}" for c in columns for who in ("single", "ensemble")
                        if who == "ensemble" or c in data["single_columns"]]]
    if data["rows"]:
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    for r in data["rows"]:
        values = [r.get(f"{who}_{c}", float("nan")) for c in columns for who in ("single", "ensemble")
                  if who == "ensemble" or c in data["single_columns"]]
        cells = [named(r["scheme"])] + ["" if np.isnan(v) else f"{v:.4f}" for v in values]
        lines.append("| " + " | ".join(cells) + " |")
    lines += _md_tests(data, named)
    for scheme, n in data["missing"].items():
        lines.append(f"\n{named(scheme)}: left out, {n} member(s) without OOD outputs (finished before --ood-file "
                     f"was given; they are not retrained for it).")
    return lines + [""]


def _md_tests(data: dict, named) -> list[str]:
    """The seed test's table: per scheme and column, the difference to the reference with interval, p and verdict."""
    if not data["tests"]:
        return []
    ref, k = named(data["ref"]), data["k"]
    lines = ["", f"Against {ref}, scheme minus {ref} (AUROC: positive is better; FPR95: negative is better), with "
             f"Table 1's seed test: the 95% jackknife interval over seeds and the permutation p-value over seeds, "
             f"for {k}-member ensembles and single members (n/a: undefined for one member, or the interval where "
             f"every ensemble holds every seed of its group).", "",
             "| scheme | score | ensemble diff [95% CI] | p | verdict | single diff [95% CI] | p single | verdict "
             "single |", "|" + "|".join(" --- " for _ in range(8)) + "|"]
    for t in data["tests"]:
        cells = [named(t["scheme"]), f"`{t['score']}`", _interval(t["diff"], t["low"], t["high"]), _p(t["p"]),
                 t["verdict"] or "n/a", _interval(t["single_diff"], t["single_low"], t["single_high"]),
                 _p(t["p_single"]), t["verdict_single"] or "n/a"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _interval(v, low, high) -> str:
    if v is None:
        return "n/a"
    if low is None or high is None or np.isnan(low):
        return f"{v:+.4f} [n/a]"
    return f"{v:+.4f} [{low:+.4f}, {high:+.4f}]"


def _p(p) -> str:
    return "n/a" if p is None or np.isnan(p) else f"{p:.3g}"
