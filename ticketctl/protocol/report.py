"""The protocol's report: ``REPORT/report.md`` with its figures, ``REPORT/report.json`` (the same numbers for
programs) and ``REPORT/plan.toml`` (the resolved plan, usable as ``--plan``).

- Table 1 (Kobayashi et al.): per scheme the mean single member, the mean k-member ensemble by the paper's protocol
  (``--groups``), the ensemble gain, and against BASELINE (dense) the difference of ensembles with its 95% interval
  and the calibrated permutation test over seeds; the paper's t-test over combinations beside it, for the same
  difference. Then that difference split into the single-member part (single - BASELINE's single) and the
  ensembling part (gain - BASELINE's gain), each with its interval and permutation p-value: every p-value is for
  the difference printed beside it.
- Probability calibration: per scheme, NLL, Brier, ECE and, after temperature scaling (cross-fitted, or fitted on
  ``--calibration-file``'s outputs), NLL and ECE (docs/calibration.md) of single members and k-member ensembles,
  against BASELINE with the same seed test (``stats --score NAME``'s rows), and a reliability diagram per scheme;
  for regression the Gaussian NLL (the members' spread plus a cross-fitted noise variance) and the correlation of
  spread with error (ensembles only).
- Table 2: the five diversity metrics per scheme (regression: error correlation and ambiguity).
- Figure 3: ensemble gain over BASELINE vs k. Figure 4: IoU of the tickets' masks.
- The cost frontier (``stats --by scheme --cost``'s rows, docs/cost.md): per budget of dense-member equivalents each
  scheme's largest affordable ensemble against BASELINE's, and its figure.
- With ``--distill-from`` (``protocol.distilled``): the students in Table 1, the distillation section, the
  calibration section (single members) and the cost frontier (k = 1 at their own cost), over seed groups.
- Cost: each member's training seconds and inference cost, the run's wall time, members per hour, device, versions.
- With ``--report-score NAME`` (:func:`score_sections`): per registered metric, Table 1, its split, Figure 3 and the
  cost frontier with it as the score (``stats --score NAME``'s numbers, in its units, read by its direction).

Everything here reads artifacts (numpy, scipy, matplotlib): the analysis functions of ``ticketctl.analysis``.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ticketctl.analysis import diversity, grouping, iou, plots, stats
from ticketctl.analysis.ensemble import calibration_options
from ticketctl.analysis.metrics import Options, temperature_fit
from ticketctl.analysis.render import row_of
from ticketctl.analysis.significance import better, compare, compare_gain, pairing
from ticketctl.analysis.tables import format_cell, note
from ticketctl.errors import InputError, UsageError
from ticketctl.protocol import distilled
from ticketctl.protocol import ood as ood_report
from ticketctl.protocol.plan import ENSEMBLE_ONLY, REPORT_COMBINE, Plan, toml_text
from ticketctl.store.artifacts import read_artifact
from ticketctl.store.provenance import versions
from ticketctl.train.seeds import CPU_STREAM

NAMES = {"dense": "BASELINE", "bagging": "BAGGING", "base": "BASE-LT", "active": "ACTIVE-LT", "random": "RANDOM-LT"}


@dataclass
class _Members:
    """The members loaded once for every table: grouped by scheme, the reference group, the scorer, the pairing."""

    loaded: object  # analysis.members.Members
    grouped: dict[str, list[int]]
    ref: str
    scorer: object  # analysis.significance.Scorer
    paired: dict
    fit: "Fit"  # where ts_nll and ts_ece fit their temperature (:func:`temperature_fit_of`), found once

    def vs_ref(self, g: str, k: int, groups: int, resamples: int, gain: bool = False):
        """``g`` against the reference over every combination (not stats' sample of at most 50 per group)."""
        test = compare_gain if gain else compare
        return test(self.scorer, self.grouped[g], self.grouped[self.ref], k, groups, self.paired[g], resamples,
                    limit=None)


def analyse(plan: Plan, members: dict[str, list[Path]], masks: dict[str, list[Path]]) -> dict:
    """The report's numbers from the members' dev logits (scheme -> paths in seed order) and the tickets' masks.
    Raises InputError where a scheme lacks members (a failed job)."""
    want = len(plan.seeds)
    for scheme in plan.member_schemes:
        have = len(members.get(scheme, []))
        if have != want:
            raise InputError(f"report: {scheme} has {have} of {want} members finished (rerun the protocol)")
    loaded, grouped = load_schemes([str(p) for s in plan.member_schemes for p in members[s]])
    ref = grouping.pick_ref(grouped, None)
    m = _Members(loaded, grouped, ref, stats.scorer_of(loaded, "probs"),
                 {g: pairing(grouping.seeds_of(loaded, grouped[g]), grouping.seeds_of(loaded, grouped[ref]))
                  for g in grouped}, temperature_fit_of(plan, loaded))
    figure4 = _iou([str(p) for s in plan.member_schemes if not s.startswith("structured") for p in masks.get(s, [])])
    figure4s = _iou([str(p) for s in plan.member_schemes if s.startswith("structured") for p in masks.get(s, [])])
    return {"task": loaded.task.name, "split": loaded.split, "examples": int(len(loaded.labels)), "ref": ref,
            "k": plan.k, "metric": loaded.task.headline, "table1": _table1(plan, m), "parts": _parts(plan, m),
            "calibration": _calibration(plan, m), "table2": _table2(m), "figure3": _figure3(plan, m),
            "figure4": figure4, "figure4_structured": figure4s, "frontier": cost_frontier(plan, m),
            "scores": score_sections(plan, m),
            "members": _member_rows(plan.member_schemes, members, loaded.task.headline)}


def _table1(plan: Plan, m: _Members) -> list[dict]:
    """Table 1 (``stats``' rows), with vs_ref tested over every combination so the p-value is for it."""
    table1, _, notes = stats.table1_rows(m.loaded, m.grouped, m.ref, plan.k, m.scorer, plan.groups, "permutation",
                                         plan.resamples)
    for line in notes:
        note(line)
    rows = []
    for row in table1:
        g = row.group
        if g != m.ref and min(len(m.grouped[g]), len(m.grouped[m.ref])) >= 2:
            c = m.vs_ref(g, plan.k, plan.groups, plan.resamples)
            row = replace(row, vs_ref=c.diff, diff_low=c.low, diff_high=c.high, p_value=c.p)
        rows.append(row_of(row, drop_none=True))
    return rows


def _parts(plan: Plan, m: _Members) -> list[dict]:
    """vs_ref split into the single-member part and the ensembling part, each with interval and p-value."""
    parts = []
    for g in m.grouped:
        if g == m.ref:
            continue
        single = m.vs_ref(g, 1, 1, plan.resamples)
        gain = m.vs_ref(g, plan.k, plan.groups, plan.resamples, gain=True)
        parts.append({"group": g, "single_diff": single.diff, "single_low": single.low, "single_high": single.high,
                      "p_single": single.p, "ensembling_diff": gain.diff, "ensembling_low": gain.low,
                      "ensembling_high": gain.high, "p_ensembling": gain.p, "test": gain.test})
    return parts


def score_sections(plan: Plan, m: _Members) -> dict[str, dict]:
    """``--report-score``: per named metric (``plan.report_scores``, checked by ``Plan.check_report_scores``) the
    headline analyses with it as the score (``stats --score NAME``'s scorer, :class:`MetricScorer`, combining
    probabilities): ``table1`` (:func:`_table1`'s rows, each with ``verdict`` in words by the metric's direction
    and the p-value printed beside it, p < 0.05), ``parts`` (:func:`_parts`), ``figure3`` (:func:`_figure3`: per
    scheme [k, scheme minus reference, interval low, high], in the metric's units) and ``frontier``
    (:func:`cost_frontier`, with ``on_frontier`` in the metric's direction; None without cost records), with
    ``direction`` ("lower is better" or "higher is better"). Differences are always scheme minus the reference:
    for a lower-is-better metric a negative one favours the scheme. A ``ts_`` metric with fewer than 10 examples
    (its temperature is cross-fitted over 5 folds) has only ``skipped``, the reason. A temperature-fitted metric
    fits where the probability calibration section does (:func:`temperature_fit_of`: on the calibration file where
    every member has outputs on it), and its section's ``temperature_fit`` says where. The students of
    ``--distill-from`` are not in these sections."""
    from ticketctl.analysis.metrics import get

    out, fit = {}, m.fit
    for name in plan.report_scores:
        fitted = get(name).fitted
        if _too_few_to_fit(name, m) and fit.options.calibration is None:
            out[name] = {"metric": name, "skipped": f"{len(m.loaded.labels)} examples: temperature scaling "
                         f"cross-fits over 5 folds, which needs at least 10"}
            continue
        on = replace(m, scorer=stats.scorer_of(m.loaded, REPORT_COMBINE, name, fit.options if fitted else None))
        table1 = _table1(plan, on)
        for row in table1:
            if row["group"] != on.ref:
                row["verdict"] = better(row["vs_ref"], row.get("p_value", math.nan), on.scorer.higher_is_better)
        out[name] = {"metric": name, "direction": on.scorer.metric.direction, "table1": table1,
                     "parts": _parts(plan, on), "figure3": _figure3(plan, on), "frontier": cost_frontier(plan, on),
                     **({"temperature_fit": fit.temperature_fit} if fitted else {})}
    return out


def _too_few_to_fit(name: str, m: _Members) -> bool:
    """A metric after cross-fitted temperature scaling (``ts_``) on fewer than 2 x 5 folds examples."""
    from ticketctl.analysis.metrics import FOLDS

    return name.startswith("ts_") and len(m.loaded.labels) < 2 * FOLDS


CALIBRATION = ("nll", "brier", "ece", "ts_nll", "ts_ece")  # the report's probability calibration section
REGRESSION_CALIBRATION = ("gaussian_nll", "spread_error_corr")  # the same section for a regression task


def _calibration(plan: Plan, m: _Members) -> dict:
    """Probability calibration per scheme: for each metric of :data:`CALIBRATION` (classification) or
    :data:`REGRESSION_CALIBRATION` (regression), Table 1's row with it as the score (``stats --score NAME --size k
    --groups G --resamples R`` gives the same numbers: the mean single member, the mean k-member ensemble, against
    the reference the difference of ensembles, group minus reference, with its jackknife interval, the permutation
    p-values of ensembles and single members, and the verdict by the metric's direction, in ``directions``); and,
    classification only, per scheme the reliability diagram of its k-member ensembles and of its single members
    (``reliability`` None for regression). A metric of :data:`ENSEMBLE_ONLY` (named in ``single_undefined``) has its
    single-member fields (single_mean, single_std, ensemble_gain, p_single) None: undefined, not a number. ts_nll and
    ts_ece fit their temperature on the calibration file's split where the plan has one and every member has
    outputs on it (:func:`temperature_fit_of`: ``stats --calibration-split calibration`` gives the same
    numbers), else cross-fit it over 5 folds of the evaluation split; ``temperature_fit`` says which in words (None
    for regression), ``calibration_file`` the plan's file and ``calibration_missing`` how many members lack its
    outputs. Cross-fitted, ts_nll and ts_ece are left out, and named in ``skipped``, with fewer than 10 examples.
    Raises InputError where the calibration outputs do not pair up with the members."""
    from ticketctl.analysis.metrics import get

    regression = m.loaded.task.is_regression
    wanted = REGRESSION_CALIBRATION if regression else CALIBRATION
    fit = m.fit
    split = fit.options.calibration is not None  # fitted on the calibration file: no folds of the evaluation split
    names = [n for n in wanted if split or not _too_few_to_fit(n, m)]
    rows = []
    for name in names:
        scorer = stats.scorer_of(m.loaded, "probs", name, fit.options if get(name).fitted else None)
        table, _, _ = stats.table1_rows(m.loaded, m.grouped, m.ref, plan.k, scorer, plan.groups, "permutation",
                                        plan.resamples)
        rows += [_calibration_row(name, row_of(r, drop_none=True)) for r in table]
    return {"metrics": names, "skipped": [n for n in wanted if n not in names], "regression": regression,
            "directions": {n: get(n).direction for n in names},
            "single_undefined": [n for n in names if n in ENSEMBLE_ONLY], "rows": rows,
            "temperature_fit": None if regression else fit.temperature_fit,
            "calibration_file": plan.data.calibration_file, "calibration_missing": fit.missing,
            "reliability": None if regression else _reliability(plan, m)}


CALIBRATION_SPLIT = "calibration"  # ticketctl.data.custom.CALIBRATION_SPLIT: protocol --calibration-file's outputs


@dataclass(frozen=True)
class Fit:
    """The metric options the report scores ts_nll and ts_ece with (``options.calibration`` None: cross-fitted),
    ``temperature_fit`` in words (``metrics.temperature_fit``) and ``missing``: how many members have no outputs on
    the calibration file (0 without one)."""

    options: Options
    temperature_fit: str
    missing: int = 0


def temperature_fit_of(plan, members) -> Fit:
    """The temperature fit for the loaded ``members`` (``analysis.members.Members``, any member order): on the
    calibration split of ``plan.data.calibration_file`` where every member has outputs on it, in the members' order;
    cross-fitted otherwise (``missing`` says how many lack them), and for a regression task (no temperature). Raises
    InputError where the calibration outputs do not pair up with the members (``ensemble.load_calibration``)."""
    source = plan.data.calibration_file
    if not source or members.task.is_regression:
        return Fit(Options(), temperature_fit(Options()))
    first = members.arts[0]
    found = ood_report.split_artifacts(Path(first.path).parent, first.meta.get("task"), CALIBRATION_SPLIT, str(source))
    mine = ood_report.partners(found, members.arts)
    if None in mine:
        return Fit(Options(), temperature_fit(Options()), mine.count(None))
    options = calibration_options(Options(), ["ts_nll", "ts_ece"], members, mine, CALIBRATION_SPLIT, "probs")
    return Fit(options, temperature_fit(options))


def _md_temperature_fit(cal: dict) -> str:
    """The calibration section's sentence saying where the temperature was fitted (markdown), from the section's
    ``temperature_fit``, ``calibration_file`` and ``calibration_missing`` (:func:`_calibration`)."""
    source, fit = cal.get("calibration_file"), cal.get("temperature_fit") or ""
    if fit.startswith("calibration split"):
        return (f"`ts_` metrics are after temperature scaling with one temperature per ensemble (and per single "
                f"member) fitted on all of the calibration file `{source}` ({fit}; `temperature_fit` in report.json), "
                f"not on the evaluation split.")
    if cal.get("calibration_missing"):
        return (f"`ts_` metrics are after temperature scaling cross-fitted over 5 folds of the evaluation split, not "
                f"on the calibration file `{source}`: {cal['calibration_missing']} member(s) have no outputs on it "
                f"(finished before --calibration-file was given; they are not retrained for it).")
    return "`ts_` metrics are after temperature scaling cross-fitted over 5 folds."


def _calibration_row(name: str, row: dict) -> dict:
    """One row of the calibration section; for a metric of :data:`ENSEMBLE_ONLY` its single-member fields None."""
    if name in ENSEMBLE_ONLY:
        row.update(single_mean=None, single_std=None, ensemble_gain=None, p_single=None)
    return {"metric": name, **row}


def _reliability(plan: Plan, m: _Members) -> dict[str, dict]:
    """Per scheme, ``metrics.reliability`` of its k-member ensembles (mean of the members' probabilities; at most
    ``significance.TEST_COMBINATIONS`` combinations per seed group, a seeded sample where there are more, as the
    seed test uses) and of its single members, each pooled over all of them."""
    from ticketctl.analysis.combine import softmax
    from ticketctl.analysis.metrics import reliability
    from ticketctl.analysis.significance import TEST_COMBINATIONS, protocol_combinations

    probs = softmax(np.asarray(m.loaded.outputs, dtype=np.float64))
    out = {}
    for g, idx in m.grouped.items():
        k = min(plan.k, len(idx) // plan.groups)
        combos = protocol_combinations(len(idx), k, plan.groups, TEST_COMBINATIONS, np.random.default_rng(0))
        ensembles = np.einsum("bm,mnc->bnc", combos, probs[idx]) / k
        out[g] = {"k": k, "ensemble": reliability(ensembles, m.loaded.labels),
                  "single": reliability(probs[idx], m.loaded.labels)}
    return out


# What may differ between members of one scheme in a protocol besides the seed: the hardware each job ran on
# decides them (ticketctl.protocol.hardware), and the report says which made each member.
HARDWARE_KEYS = frozenset({"precision", "dropout_stream"})


def load_schemes(paths: list[str]):
    """``stats.load_groups(paths, "scheme")``, except that members of one scheme may differ in precision and dropout
    stream (made on different hardware: one scheme all the same). Returns (members, scheme -> indices in seed
    order). Raises UsageError for an unlabelled split, InputError for a scheme that mixes other configurations or
    sparsity levels."""
    from collections import defaultdict

    from ticketctl.analysis.members import load_ensemble_members

    loaded = load_ensemble_members(paths)
    if loaded.labels is None:
        raise UsageError("the artifacts' split is unlabelled: nothing to score")
    grouped: dict[str, list[int]] = defaultdict(list)
    for i, a in enumerate(loaded.arts):
        grouped[grouping.group_value(a, "scheme")].append(i)
    for g, idx in grouped.items():
        grouping.check_same_recipe(g, [loaded.arts[i] for i in idx], ignore=HARDWARE_KEYS)
        grouping.check_same_level(g, [loaded.arts[i] for i in idx])
    return loaded, {g: loaded.in_seed_order(idx) for g, idx in grouped.items()}


def cost_frontier(plan: Plan, m: _Members) -> dict | None:
    """The cost frontier (docs/cost.md; ``stats --by scheme --cost --groups G`` gives the same rows): per budget of
    dense-member equivalents and scheme, its largest affordable ensemble, its cost, protocol mean and difference to
    the reference at the same budget with the jackknife interval (``analysis.frontier``); ``member_costs`` (scheme
    -> its members' mean relative FLOPs) and ``curves`` (scheme -> [cost of k members, protocol mean]). None where
    a member has no cost record (made before ticketctl recorded costs)."""
    from ticketctl.analysis import frontier

    if not all((a.meta.get("cost") or {}).get("relative_flops") is not None for a in m.loaded.arts):
        return None
    costs = frontier.group_costs(m.loaded, m.grouped)
    means = frontier.protocol_means(m.scorer, m.grouped, plan.groups)
    rows = frontier.frontier(m.scorer, m.grouped, costs, m.ref, plan.groups, m.paired, means)
    return {"ref": m.ref, "member_costs": costs, "rows": [row_of(r) for r in rows],
            "curves": {g: [list(p) for p in c] for g, c in frontier.curves(means, costs).items()}}


def _table2(m: _Members) -> dict[str, list[dict]]:
    """Table 2: the diversity metrics of each group of at least two members."""
    table2 = {}
    for g, idx in m.grouped.items():
        if len(idx) < 2:
            continue
        sub = load_schemes([str(m.loaded.arts[i].path) for i in idx])[0]
        table2[g] = [asdict(r) for r in (diversity.regression_summary(sub) if sub.task.is_regression
                                         else diversity.summary(diversity.oracle(sub)))]
    return table2


def _figure3(plan: Plan, m: _Members) -> dict[str, list[list]]:
    """Figure 3: per group, [k, gain over the reference, the jackknife interval of that difference]."""
    figure3 = {}
    for g, curve in stats.gain_curves(m.scorer, m.grouped, m.ref, plan.groups).items():
        figure3[g] = []
        for kk, v in curve:
            c = m.vs_ref(g, kk, plan.groups, 0)
            figure3[g].append([kk, v, c.low, c.high])
    return figure3


def _member_rows(schemes: list[str], members: dict[str, list[Path]], headline: str) -> list[dict]:
    """Each member of ``schemes``: scheme, seed, path, dev metric and inference cost, from its artifact."""
    rows = []
    for scheme in schemes:
        for p in members[scheme]:
            art = read_artifact(p, "logits")
            cost = art.meta.get("cost") or {}
            rows.append({"scheme": scheme, "seed": int(art.meta.get("seed", -1)), "path": str(p), "metric": headline,
                         "dev": (art.meta.get("metrics") or {}).get(headline),
                         "flops_per_example": cost.get("flops_per_example"),
                         "nonzero_parameters": cost.get("nonzero_parameters")})
    return rows


def _iou(mask_paths: list[str]) -> dict | None:
    """Figure 4's IoU matrix of masks of one method (weights, or structured units), None for fewer than two."""
    if len(mask_paths) < 2:
        return None
    matrix = iou.mask_iou(mask_paths)
    return {"labels": matrix.labels, "masks": mask_paths, "iou": matrix.values.round(6).tolist()}


def member_times(members: dict[str, list[Path]], masks: dict[str, list[Path]]) -> list[dict]:
    """Each member's training cost as its artifacts record it: finetune seconds, and for an IMP ticket the seconds
    of its search's rounds (a round reused from the dense finetune costs nothing). A structured ticket's search
    (the importance pass, and the dense finetune where it was not reused) is not recorded in its mask: 0 here."""
    out = []
    for scheme, paths in members.items():
        for i, p in enumerate(paths):
            art = read_artifact(p, "logits")
            search = 0.0
            if scheme in masks and i < len(masks[scheme]):
                rounds = (read_artifact(masks[scheme][i], "mask").meta.get("metrics") or {}).get("rounds", [])
                search = sum(float(r.get("seconds", 0)) for r in rounds)
            config = art.meta.get("config") or {}
            out.append({"scheme": scheme, "seed": int(art.meta.get("seed", -1)),
                        "finetune_seconds": float(art.meta.get("train_seconds", "nan")),
                        "search_seconds": round(search, 1),
                        "made_on": " ".join([(art.meta.get("runtime") or {}).get("device", "cpu"),
                                             config.get("precision", "fp32"),
                                             config.get("dropout_stream", CPU_STREAM)])})
    return out


def _record_line(record: dict) -> str:
    """The report's run section over every invocation that made the members (from their own records)."""
    made = ", ".join(f"{k} ({n})" for k, n in sorted(record["made_on"].items()))
    line = (f"Over every invocation that made them: {record['members']} member(s), {record['job_seconds']:.1f} s of "
            f"training (finetunes and their searches)" + (f", {record['members_per_job_hour']} members per hour of "
                                                         f"job time" if record["members_per_job_hour"] else "")
            + f"; made on (device, precision, dropout stream): {made}.")
    if record["also_present"]:
        line += (" Jobs whose result also exists under other hardware (the report uses the first of CPU fp32, CPU "
                 "bf16, CUDA fp32, CUDA bf16, MPS fp32 that exists, the same on every machine): "
                 + "; ".join(f"{j}: also {', '.join(v)}" for j, v in sorted(record["also_present"].items())) + ".")
    return line


def write_report(plan: Plan, outcome, members: dict[str, list[Path]], masks: dict[str, list[Path]]) -> Path:
    """Write report.md, report.json, the figures and plan.toml into ``plan.report``; returns report.md's path."""
    folder = Path(plan.report)
    folder.mkdir(parents=True, exist_ok=True)
    data = analyse(plan, members, masks)
    _add_students(plan, data, members)
    data["ood"] = ood_report.section(plan, members)
    trained = [r for r in outcome.results.values() if r.get("ran")]
    n_members = sum(1 for r in trained if r["job"].startswith("finetune:"))
    times = member_times(members, masks)
    job_seconds = sum(t["finetune_seconds"] + t["search_seconds"] for t in times
                      if not math.isnan(t["finetune_seconds"]))
    made_on: dict[str, int] = {}
    for t in times:
        made_on[t["made_on"]] = made_on.get(t["made_on"], 0) + 1
    data["members_record"] = {
        "members": len(times), "job_seconds": round(job_seconds, 1),
        "members_per_job_hour": round(len(times) / (job_seconds / 3600), 2) if job_seconds else None,
        "made_on": made_on,
        "also_present": {j: [" ".join(v) for v in vs] for j, vs in outcome.state.also.items()},
    }
    data["run"] = {
        "executor": plan.executor, "workers": outcome.workers, "device": outcome.device,
        "wall_seconds": round(outcome.seconds, 1), "jobs_run": len(trained),
        "members_trained": n_members,
        "members_per_hour": round(n_members / (outcome.seconds / 3600), 2) if n_members and outcome.seconds else None,
        "job_seconds": {r["job"]: r["seconds"] for r in outcome.results.values()},
        "member_times": times, "versions": versions(), "machine": machine(),
        "written": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    data["plan"] = plan.options_dict()
    fig3 = folder / f"{data['task']}-fig3-gain.png"
    if data["figure3"]:
        plots.plot_gain({g: [(x[0], x[1]) for x in c] for g, c in data["figure3"].items()}, data["ref"],
                        data["metric"], str(fig3), f"{data['task']}: ensemble gain over {data['ref']} (95% intervals)",
                        {g: [(x[2], x[3]) for x in c] for g, c in data["figure3"].items()})
    fig4 = folder / f"{data['task']}-fig4-iou.png"
    if data["figure4"]:
        iou.plot_heatmap(np.array(data["figure4"]["iou"]), data["figure4"]["labels"], str(fig4),
                         f"{data['task']}: IoU of surviving weights")
    frontier_png = _plot_frontier(data, folder)
    reliability = folder / f"{data['task']}-reliability.png"
    drawn = bool(data["calibration"] and data["calibration"]["reliability"])  # classification only
    if drawn:
        plots.plot_reliability(data["calibration"]["reliability"], str(reliability),
                               f"{data['task']}: reliability (ensembles solid,\nsingle members dashed)")
    scores_png = _plot_scores(data, folder)
    (folder / "report.json").write_text(json.dumps(_jsonable(data), indent=1) + "\n")
    (folder / "plan.toml").write_text(plan_toml(plan))
    md = folder / "report.md"
    md.write_text(markdown(data, fig3.name if data["figure3"] else None, fig4.name if data["figure4"] else None,
                           reliability.name if drawn else None, frontier_png, scores_png))
    return md


def _plot_scores(data: dict, folder: Path) -> dict[str, dict[str, str | None]]:
    """Draw each ``--report-score`` section's Figure 3 and cost frontier into ``folder`` (``TASK-fig3-gain-NAME.png``,
    ``TASK-frontier-NAME.png``, in the metric's units, its direction on the axis); per metric their file names
    (None: not drawn)."""
    from ticketctl.analysis import frontier

    drawn = {}
    for name, sec in data["scores"].items():
        drawn[name] = {"figure3": None, "frontier": None}
        if sec.get("skipped"):
            continue
        task, ref, direction = data["task"], data["ref"], sec["direction"]
        if sec["figure3"]:
            path = folder / f"{task}-fig3-gain-{name}.png"
            plots.plot_gain({g: [(x[0], x[1]) for x in c] for g, c in sec["figure3"].items()}, ref, name, str(path),
                            f"{task}: {name} of ensembles minus {ref}'s (95% intervals)",
                            {g: [(x[2], x[3]) for x in c] for g, c in sec["figure3"].items()}, points=False,
                            direction=direction)
            drawn[name]["figure3"] = path.name
        if sec["frontier"]:
            path = folder / f"{task}-frontier-{name}.png"
            curves = {g: [tuple(p) for p in c] for g, c in sec["frontier"]["curves"].items()}
            frontier.plot(curves, name, str(path), f"{task}: {name} against inference cost", direction,
                          frontier.on_frontier(curves, direction == "higher is better"))
            drawn[name]["frontier"] = path.name
    return drawn


def _add_students(plan: Plan, data: dict, members: dict[str, list[Path]]) -> None:
    """``--distill-from``: the distillation section (``data["distillation"]``, None without students), the students
    in Table 1 as single members, among the members, in the calibration section (``calibration["students"]``: single
    members only) and on the cost frontier (k = 1 at their own recorded cost), their comparisons over seed groups."""
    students = distilled.load(plan, members, _group_paths(plan, members, data["ref"]))
    data["distillation"] = distilled.distillation(plan, members, students)
    if students is None:
        return
    student = distilled.student_scheme(plan)
    data["table1"].append(distilled.table1_row(data["distillation"], len(members[student])))
    data["members"] += _member_rows([student], members, data["metric"])
    if data["calibration"]:
        cal = data["calibration"]
        single = [n for n in cal["metrics"] if n not in cal["single_undefined"]]  # students are single members
        fit = temperature_fit_of(plan, students.loaded)  # the same rule: their outputs on the calibration file
        cal["students"] = distilled.calibration(students, single, fit.options)
        cal["students_temperature_fit"] = fit.temperature_fit
    front = data.get("frontier")
    if front:
        point = distilled.frontier(students, sorted({r["budget"] for r in front["rows"]}))
        front["rows"] = sorted(front["rows"] + point["rows"], key=lambda r: r["budget"])  # stable: students last
        front["member_costs"][student] = point["cost"]
        front["curves"][student] = [[point["cost"], point["mean"]]]


def _group_paths(plan: Plan, members: dict[str, list[Path]], group: str) -> list[Path]:
    """The dev logits of the report's group ``group`` (a scheme, or ``winning-30%`` for a structured level)."""
    return [p for s in plan.member_schemes for p in members.get(s, [])
            if grouping.scheme_of(read_artifact(p, "logits")) == group]


def plan_toml(plan: Plan) -> str:
    """The resolved plan as a flat TOML table that ``--plan`` reads back."""
    values = plan.options_dict()
    flat = {k: v for k, v in values.items() if k not in ("train", "data", "run", "sizes", "seeds", "schemes",
                                                          "report_scores")}
    flat["report_score"] = ",".join(plan.report_scores) or None
    flat["seeds"] = ",".join(str(s) for s in plan.seeds)
    flat["schemes"] = ",".join(plan.schemes)
    flat["size"] = ",".join(str(s) for s in plan.sizes)
    for group in ("train", "data", "run"):
        for k, v in values[group].items():
            if k not in ("quiet", "verbose", "force"):
                flat[k] = v
    return toml_text(flat, "ticketctl protocol: the resolved plan of this report (ticketctl protocol --plan FILE)")


def machine() -> str:
    from ticketctl.protocol.executors import cores

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {cores()} core(s), {platform.system()} {platform.release()}"


def _jsonable(v):
    if isinstance(v, float):
        return None if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else v)
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.floating, np.integer)):
        return _jsonable(v.item())
    return v


def _table(rows: list[dict], columns: list[str], headers: list[str] | None = None) -> str:
    out = ["| " + " | ".join(headers or columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    for r in rows:
        out.append("| " + " | ".join(format_cell(r.get(c, ""), blank_nan=True) if r.get(c) is not None else ""
                                     for c in columns) + " |")
    return "\n".join(out)


def _interval(v: float, low, high) -> str:
    if low is None or high is None or (isinstance(low, float) and math.isnan(low)):
        return f"{100 * v:+.2f}"
    return f"{100 * v:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]"


def markdown(data: dict, fig3: str | None, fig4: str | None, reliability: str | None = None,
             frontier: str | None = None, scores: dict[str, dict] | None = None) -> str:
    ref, k, metric = data["ref"], data["k"], data["metric"]
    plan = data["plan"]
    named = lambda g: f"{g} ({NAMES[g]})" if g in NAMES else g  # noqa: E731
    lines = [f"# Multi-Ticket Ensemble: {data['task']} {data['split']} ({data['examples']} examples)", "",
             f"Seeds {plan['seeds'][0]}..{plan['seeds'][-1]} ({len(plan['seeds'])}), schemes "
             f"{', '.join(plan['schemes'])}; {plan['groups']} seed group(s), k = {k} (sizes "
             f"{', '.join(map(str, plan['sizes']))}); metric: {metric}. The resolved plan is `plan.toml` beside this "
             f"file (`ticketctl protocol --plan plan.toml` reruns it).", "",
             f"## Table 1: single members and {k}-member ensembles", "",
             f"`vs_ref`: the scheme's mean {k}-member ensemble minus {ref}'s (the paper's protocol: every "
             f"combination within each seed group); `diff_low`/`diff_high`: its 95% interval (leave-one-seed-out "
             f"jackknife); `p_value`: the permutation test over seeds of that same statistic, over every combination "
             f"(`ticketctl stats` tests a sample of at most 50 per group); `p_paper`: the paper's t-test over the "
             f"combinations' scores for that same difference (optimistic: combinations share members).", ""]
    lines += (_md_table1(data, named) + md_calibration(data, named, reliability)
              + distilled.markdown(data.get("distillation")) + ood_report.markdown(data.get("ood"), named)
              + md_frontier(data, named, frontier) + md_scores(data, named, scores or {})
              + _md_diversity_figures(data, named, fig3, fig4)
              + _md_cost(data))
    return "\n".join(lines)


def _md_table1(data: dict, named) -> list[str]:
    """Table 1 and, where computed, where its difference to the reference comes from (markdown lines)."""
    ref, lines = data["ref"], []
    t1 = [{**r, "group": named(r["group"])} for r in data["table1"]]
    lines += [_table(t1, ["group", "members", "single_mean", "single_std", "ensemble_mean", "ensemble_gain",
                          "vs_ref", "diff_low", "diff_high", "p_value", "p_paper"]), ""]
    if data["parts"]:
        lines += [f"### Where the difference to {ref} comes from", "",
                  f"`vs_ref` = single-member part + ensembling part. Single-member part: the scheme's mean single "
                  f"member minus {ref}'s (interval, and `p_single` the permutation test for it). Ensembling part: the "
                  f"scheme's ensemble gain (ensemble minus single) minus {ref}'s (interval, and `p_ensembling` the "
                  f"permutation test for it).", "",
                  _table([{**r, "group": named(r["group"])} for r in data["parts"]],
                         ["group", "single_diff", "single_low", "single_high", "p_single", "ensembling_diff",
                          "ensembling_low", "ensembling_high", "p_ensembling"]), ""]
    return lines


def md_calibration(data: dict, named, figure: str | None) -> list[str]:
    """The probability calibration section (markdown lines): classification's or regression's
    (:func:`_md_calibration_intro`); a metric of ``single_undefined`` shows n/a in the single-member columns."""
    cal, ref = data.get("calibration"), data["ref"]
    if not cal:
        return []
    lines = ["## Probability calibration", "", _md_calibration_intro(cal, data["k"], ref), ""]
    undefined = {"single_mean": "n/a", "ensemble_gain": "n/a", "p_single": "n/a"}
    rows = [{**r, "group": named(r["group"]), "ensemble_vs_ref": r["vs_ref"],
             **(undefined if r["metric"] in cal.get("single_undefined", []) else {})} for r in cal["rows"]]
    lines += [_table(rows, ["metric", "group", "single_mean", "ensemble_mean", "ensemble_gain", "ensemble_vs_ref",
                            "diff_low", "diff_high", "p_value", "p_single", "verdict"]), ""]
    if cal.get("students"):
        d = data["distillation"]
        lines += distilled.calibration_markdown(cal["students"], ref, d["scheme"], _table)
        if cal.get("students_temperature_fit") not in (None, cal.get("temperature_fit")):
            lines += [f"The students' `ts_` metrics: temperature {cal['students_temperature_fit']} (not every member "
                      f"compared with them has outputs on the calibration file).", ""]
    if cal["skipped"]:
        lines += [f"Left out: {', '.join(cal['skipped'])} (temperature scaling cross-fits over 5 folds: it needs "
                  f"at least 10 examples).", ""]
    if figure:
        lines += ["Reliability diagram: accuracy against mean top-label confidence in 15 equal-width bins, pooled "
                  "over each scheme's ensembles (solid) and single members (dashed); the diagonal is perfect "
                  "calibration. Its numbers are `calibration.reliability` in report.json.", "",
                  f"![Reliability diagram]({figure})", ""]
    return lines


def _md_calibration_intro(cal: dict, k: int, ref: str) -> str:
    """The calibration section's first paragraph: what its rows are, and per task kind what its metrics mean."""
    common = (f"per scheme and metric, the mean single member, the mean {k}-member ensemble and its gain, and against "
              f"{ref} `ensemble_vs_ref` (the scheme's ensembles minus {ref}'s, in the metric's units) with its 95% "
              f"jackknife interval and the permutation test over seeds (`p_value`; `p_single` for single members), "
              f"over at most 50 combinations per seed group, as `ticketctl stats --score NAME` prints them.")
    if not cal.get("regression"):
        return (f"How good the probabilities are (docs/calibration.md; not the calibrated level of the seed test): "
                f"{common} Ensembles average the members' probabilities. All five are lower-is-better: a negative "
                f"difference favours the scheme, and `verdict` says it in words (p < 0.05). "
                f"{_md_temperature_fit(cal)}")
    return (f"How good the predictive distribution is (docs/calibration.md; not the calibrated level of the seed "
            f"test): {common} `gaussian_nll` (lower is better: a negative difference favours the scheme): the NLL "
            f"(nats) of the gold score under a normal with the members' mean prediction and variance spread^2 + s^2, "
            f"spread the members' standard deviation and s^2 a noise variance cross-fitted over 5 folds; a single "
            f"member has spread 0, so its variance is s^2 alone. `spread_error_corr` (higher is better: a positive "
            f"difference favours the scheme): Pearson's r of the spread with the absolute error, for ensembles "
            f"only: one member has no spread, so its single-member columns are n/a. `verdict` says it in words "
            f"(p < 0.05). No reliability diagram: it bins class probabilities, which a regression has none of.")


def _plot_frontier(data: dict, folder: Path) -> str | None:
    """Draw the cost frontier's curves (students: one point) into ``folder``; its file name, None without one."""
    from ticketctl.analysis import frontier

    if not data.get("frontier"):
        return None
    path = folder / f"{data['task']}-frontier.png"
    frontier.plot({g: [tuple(p) for p in c] for g, c in data["frontier"]["curves"].items()}, data["metric"],
                  str(path), f"{data['task']}: {data['metric']} against inference cost")
    return path.name


def md_frontier(data: dict, named, figure: str | None) -> list[str]:
    """The cost frontier section (markdown lines; none where a member has no cost record)."""
    front, ref = data.get("frontier"), data["ref"]
    if not front:
        return []
    costs = ", ".join(f"{named(g)} {c:.4g}" for g, c in front["member_costs"].items())
    lines = ["## Cost frontier: equal inference cost", "",
             f"Per budget of dense-member equivalents (analytic FLOPs per example, docs/cost.md), each scheme's "
             f"largest affordable ensemble (`k`, at most a seed group's members), its `cost`, its protocol `mean`, "
             f"and `vs_ref` against {ref}'s largest affordable ensemble at the same budget with its 95% interval "
             f"(leave-one-seed-out jackknife; no p-value: at different sizes the members are not exchangeable), as "
             f"`ticketctl stats --by scheme --cost` gives them. Member cost: {costs}."]
    if data.get("distillation"):
        d = data["distillation"]
        lines[-1] += (f" `{d['student']}`: one model per seed, never ensembled: k = 1 at its own recorded cost at "
                      f"every budget that affords it; its interval takes the seed group as the unit (students of a "
                      f"group share their teacher, docs/distillation.md).")
    rows = [{**r, "group": named(r["group"])} for r in front["rows"]]
    lines += ["", _table(rows, ["budget", "group", "k", "cost", "mean", "vs_ref", "diff_low", "diff_high"]), ""]
    if figure:
        lines += [f"![Cost frontier]({figure})", ""]
    return lines


def _units_interval(v: float, low, high) -> str:
    """A difference in a metric's own units with its interval (none where it has none: one seed)."""
    if low is None or high is None or (isinstance(low, float) and math.isnan(low)):
        return f"{v:+.4f}"
    return f"{v:+.4f} [{low:+.4f}, {high:+.4f}]"


def md_scores(data: dict, named, figures: dict[str, dict]) -> list[str]:
    """The ``--report-score`` sections (markdown lines): per metric, Table 1, the split of its difference, Figure 3
    and the cost frontier on it (:func:`score_sections`), with ``figures`` (per metric, its drawn files)."""
    lines = []
    for name, sec in (data.get("scores") or {}).items():
        if sec.get("skipped"):
            lines += [f"## On {name}", "", f"Left out: {sec['skipped']}.", ""]
            continue
        ref, k, direction = data["ref"], data["k"], sec["direction"]
        sign = "negative" if direction.startswith("lower") else "positive"
        lines += [f"## On {name} ({direction})", "",
                  f"Table 1, where its difference to {ref} comes from, Figure 3 and the cost frontier with {name} as "
                  f"the score instead of {data['metric']} (`--report-score`), in {name}'s own units (not points): "
                  f"the same protocol, intervals and permutation tests as above, as `ticketctl stats --score {name}` "
                  f"computes them (the frontier: `stats --by scheme --cost --score {name}`). Every difference is the "
                  f"scheme minus {ref}: {direction}, so a {sign} difference favours the scheme; `verdict` says it in "
                  f"words (p < 0.05). Students of --distill-from are not in this section."
                  + (f" Its temperature is fitted: {sec['temperature_fit']} (`temperature_fit`)."
                     if sec.get("temperature_fit") else ""), "",
                  f"### Table 1 on {name}: single members and {k}-member ensembles", "",
                  _table([{**r, "group": named(r["group"])} for r in sec["table1"]],
                         ["group", "members", "single_mean", "single_std", "ensemble_mean", "ensemble_gain", "vs_ref",
                          "diff_low", "diff_high", "p_value", "p_single", "p_paper", "verdict"]), ""]
        if sec["parts"]:
            lines += [f"Where the difference to {ref} comes from (single-member part + ensembling part = `vs_ref`):",
                      "", _table([{**r, "group": named(r["group"])} for r in sec["parts"]],
                                 ["group", "single_diff", "single_low", "single_high", "p_single", "ensembling_diff",
                                  "ensembling_low", "ensembling_high", "p_ensembling"]), ""]
        lines += _md_score_figure3(sec, named, ref, (figures.get(name) or {}).get("figure3"))
        lines += _md_score_frontier(sec, named, ref, (figures.get(name) or {}).get("frontier"))
    return lines


def _md_score_figure3(sec: dict, named, ref: str, figure: str | None) -> list[str]:
    """A ``--report-score`` section's Figure 3 (markdown lines): per scheme and k, scheme minus reference [interval]."""
    f3, name = sec["figure3"], sec["metric"]
    if not f3:
        return []
    rows = [{"group": named(g), **{f"k={x[0]}": _units_interval(x[1], x[2], x[3]) for x in pts}}
            for g, pts in f3.items()]
    lines = [f"### Figure 3 on {name}: k-member ensembles minus {ref}'s", "",
             f"Protocol mean of k-member ensembles' {name} minus {ref}'s, with the 95% jackknife interval.", "",
             _table(rows, ["group", *[f"k={x[0]}" for x in next(iter(f3.values()))]]), ""]
    return lines + ([f"![Figure 3 on {name}]({figure})", ""] if figure else [])


def _md_score_frontier(sec: dict, named, ref: str, figure: str | None) -> list[str]:
    """A ``--report-score`` section's cost frontier (markdown lines; none without cost records)."""
    front, name = sec["frontier"], sec["metric"]
    if not front:
        return []
    rows = [{**r, "group": named(r["group"])} for r in front["rows"]]
    lines = [f"### Cost frontier on {name}", "",
             f"Per budget of dense-member equivalents, each scheme's largest affordable ensemble, its protocol `mean` "
             f"{name} and `vs_ref` against {ref}'s at the same budget with its 95% interval, as in the cost frontier "
             f"above; `on_frontier`: no ensemble of any scheme that costs at most as much has a better {name}.", "",
             _table(rows, ["budget", "group", "k", "cost", "mean", "vs_ref", "diff_low", "diff_high", "on_frontier"]),
             ""]
    return lines + ([f"![Cost frontier on {name}]({figure})", ""] if figure else [])


def _md_diversity_figures(data: dict, named, fig3: str | None, fig4: str | None) -> list[str]:
    """Table 2, Figure 3 and Figure 4 (markdown lines; the figures where drawn)."""
    ref, lines = data["ref"], []
    lines += ["## Table 2: diversity of each scheme's members (mean over pairs)", ""]
    if data["table2"]:
        groups = list(data["table2"])
        metrics = [r["metric"] for r in data["table2"][groups[0]]]
        rows = [{"metric": m, **{g: data["table2"][g][i]["value"] for g in groups},
                 "direction": data["table2"][groups[0]][i]["direction"]} for i, m in enumerate(metrics)]
        lines += [_table(rows, ["metric", *groups, "direction"]), ""]
    if fig3:
        f3 = data["figure3"]
        rows = [{"group": named(g), **{f"k={x[0]}": _interval(x[1], x[2], x[3]) for x in pts}} for g, pts in f3.items()]
        ks = [f"k={x[0]}" for x in next(iter(f3.values()))]
        lines += [f"## Figure 3: ensemble gain over {ref} vs members", "",
                  f"Protocol mean of k-member ensembles minus {ref}'s, points, with the 95% jackknife interval.", "",
                  _table(rows, ["group", *ks]), "", f"![Figure 3]({fig3})", ""]
    if data["figure4"]:
        f4 = data["figure4"]
        rows = [{"mask": a, **{b: f4["iou"][i][j] for j, b in enumerate(f4["labels"])}}
                for i, a in enumerate(f4["labels"])]
        lines += ["## Figure 4: IoU of the tickets' surviving weights", "", _table(rows, ["mask", *f4["labels"]]), "",
                  f"![Figure 4]({fig4})", ""]
    if data.get("figure4_structured"):
        f4 = data["figure4_structured"]
        rows = [{"mask": a, **{b: f4["iou"][i][j] for j, b in enumerate(f4["labels"])}}
                for i, a in enumerate(f4["labels"])]
        lines += ["### IoU of the structured tickets' kept heads and FFN sublayers", "",
                  _table(rows, ["mask", *f4["labels"]]), ""]
    return lines


def _md_cost(data: dict) -> list[str]:
    """The cost section: this run, every invocation that made the members, each member's cost (markdown lines)."""
    run = data["run"]
    lines = []
    lines += ["## Cost", "",
              f"This run: {run['jobs_run']} job(s) trained ({run['members_trained']} member(s)) in "
              f"{run['wall_seconds']:.1f} s wall time on {run['device']} ({run['workers']}, executor "
              f"{run['executor']}); " + (f"{run['members_per_hour']} members per hour." if run["members_per_hour"]
                                         else "nothing to train: every member was finished already."),
              f"Machine: {run['machine']}. Versions: "
              + ", ".join(f"{k} {v}" for k, v in run["versions"].items()) + ".",
              "", _record_line(data["members_record"]),
              "", "Each member's training cost (from its artifacts) and inference cost:", ""]
    times = {(t["scheme"], t["seed"]): t for t in run["member_times"]}
    rows = [{**m, **times.get((m["scheme"], m["seed"]), {})} for m in data["members"]]
    lines += [_table(rows, ["scheme", "seed", "dev", "finetune_seconds", "search_seconds", "made_on",
                            "flops_per_example"]), ""]
    return lines
