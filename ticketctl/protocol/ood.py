"""The report's out-of-distribution section (``protocol --ood-file FILE``, docs/calibration.md "In the protocol
report"): per scheme, how well single members and k-member ensembles tell the OOD texts from the evaluation split's
texts, as ``ensemble --ood ood`` computes it (``ticketctl.analysis.ood``): AUROC and FPR at 95% TPR of 1 - max
probability and entropy, for single members and ensembles, and of mutual information for ensembles. Descriptive:
no seed test.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from ticketctl.analysis import ood
from ticketctl.analysis.members import load_ensemble_members
from ticketctl.analysis.significance import split_groups
from ticketctl.store import paths
from ticketctl.store.artifacts import read_artifact

SPLIT = "ood"  # ticketctl.data.custom.OOD_SPLIT


def section(plan, members: dict[str, list[Path]]) -> dict | None:
    """The section's numbers for a plan with ``--ood-file`` (None without one, or for a regression task): ``rows``,
    one per scheme with all its members' OOD outputs: ``single_<column>`` (mean over members) and
    ``ensemble_<column>`` (mean over the k-member combinations within each seed group, Table 1's), the columns of
    :func:`ticketctl.analysis.ood.columns`; ``missing``: scheme -> how many members have no OOD outputs (finished
    before ``--ood-file`` was given: docs/calibration.md)."""
    if not plan.data.ood_file or not members:
        return None
    found = _ood_artifacts(plan, next(iter(members.values()))[0])
    rows, missing = [], {}
    for scheme in plan.member_schemes:
        inside = load_ensemble_members([str(p) for p in members.get(scheme, [])])
        if inside.task.is_regression:
            return None
        outs = [next((p for p, keys in found if keys & ood.member_keys(a)), None) for a in inside.arts]
        if None in outs:
            missing[scheme] = outs.count(None)
            continue
        outside = load_ensemble_members(outs, split=SPLIT)
        ood.check_sides(inside, outside, SPLIT)
        rows.append(_row(scheme, ood.Paired(inside, outside.outputs, SPLIT), plan.k, plan.groups))
    return {"file": str(plan.data.ood_file), "k": plan.k, "rows": rows, "missing": missing}


def _ood_artifacts(plan, member: Path) -> list[tuple[str, set[str]]]:
    """(path, member keys) of the OOD logits artifacts of ``--ood-file`` in the members' folder."""
    task = read_artifact(member).meta.get("task")
    out = []
    for path in sorted(Path(member).parent.glob(paths.logits_name(task, SPLIT, "*", "*", "*"))):
        art = read_artifact(path)
        if art.kind == "logits" and art.meta.get("split_source") == str(plan.data.ood_file):
            out.append((str(path), ood.member_keys(art)))
    return out


def _row(scheme: str, paired: ood.Paired, k: int, groups: int) -> dict:
    order = paired.inside.in_seed_order()
    parts = [[order[i] for i in part] for part in split_groups(len(order), groups)]
    single = ood.combination_values(paired, np.arange(len(order))[:, None], "probs")
    combos = np.asarray([c for g in parts for c in itertools.combinations(g, k)], dtype=np.int64)
    ensemble = ood.combination_values(paired, combos, "probs")
    row = {"scheme": scheme, "members": len(order)}
    row.update({f"single_{c}": float(single[c].mean()) for c in ood.columns(1)})
    row.update({f"ensemble_{c}": float(ensemble[c].mean()) for c in ood.columns(k)})
    return row


def markdown(data: dict | None, named) -> list[str]:
    """The section's markdown lines (none without ``--ood-file``)."""
    if not data:
        return []
    k = data["k"]
    lines = ["## Out-of-distribution detection", "",
             f"How well each scheme's uncertainty tells the texts of `{data['file']}` from the evaluation split's "
             f"(docs/calibration.md): AUROC (0.5: chance; higher is better) and FPR at 95% TPR (lower is better) of "
             f"1 - max probability (`msp`), entropy and mutual information (`mi`, ensembles only), for single members "
             f"(mean over members) and {k}-member ensembles (mean over the combinations of Table 1). Descriptive: no "
             f"seed test. Numbers in report.json's `ood`.", ""]
    columns = ["auroc_msp", "auroc_entropy", "auroc_mi", "fpr95_msp", "fpr95_entropy", "fpr95_mi"]
    head = ["scheme", *[f"{who} {c}" for c in columns for who in ("single", "ensemble") if
                        not (who == "single" and c.endswith("_mi"))]]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    for r in data["rows"]:
        values = [r.get(f"{who}_{c}", float("nan")) for c in columns for who in ("single", "ensemble")
                  if not (who == "single" and c.endswith("_mi"))]
        cells = [named(r["scheme"])] + ["" if np.isnan(v) else f"{v:.4f}" for v in values]
        lines.append("| " + " | ".join(cells) + " |")
    for scheme, n in data["missing"].items():
        lines.append(f"\n{named(scheme)}: left out, {n} member(s) without OOD outputs (finished before --ood-file "
                     f"was given; they are not retrained for it).")
    return lines + [""]
