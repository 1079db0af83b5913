"""The one place where analysis records become text: each ``*_table`` function turns a record of
``ticketctl.analysis.records`` into a :class:`ticketctl.analysis.tables.Table` (rows, columns, title), which
``tables.emit`` writes as a rich table, TSV, JSON lines or markdown; the writers (``ensemble``, ``diversity``,
``table1``, ...) do what the command line prints: the table on stdout, notes for people on stderr.

    from ticketctl.analysis import render, tables
    from ticketctl.analysis.diversity import diversity

    print(tables.text(render.diversity_table(diversity(paths)), "markdown"))
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys

from ticketctl.analysis.records import (ArtifactSummary, CostFrontier, Diversity, Ensemble, EnsembleScore,
                                        Importance, IouMatrix, LayerIou, PhaseRow, PhaseTable, Remaining, SizeTable,
                                        SuperTicket, Table1)
from ticketctl.analysis.tables import Table, emit, format_cell, note


def row_of(record, drop_none: bool = False) -> dict:
    """A record's fields as a row keyed by field name, in field order (dict-valued fields left out; with
    ``drop_none`` also the fields that are None: not computed, an empty cell)."""
    out = {}
    for f in dataclasses.fields(record):
        v = getattr(record, f.name)
        if not isinstance(v, dict) and not (drop_none and v is None):
            out[f.name] = v
    return out


# ---------------------------------------------------------------------------------------------- ensemble


def ensemble_table(result: EnsembleScore | SizeTable) -> Table:
    """The whole ensemble's metrics (and cost), or one row per ensemble size k."""
    if isinstance(result, SizeTable):
        on = result.on
        others = [f"mean_{m}" for m in result.rows[0].other_means] if result.rows else []
        rows = [{**row_of(r, drop_none=True), **{f"mean_{m}": v for m, v in r.other_means.items()}}
                for r in result.rows]
        costs = bool(result.rows) and result.rows[0].cost is not None
        columns = ["k", "combinations", *(["cost"] if costs else []), "mean", "std", "min", "max", *others]
        return Table(columns, rows, f"{on.task} {on.split}: {on.metric} of k-member ensembles ({result.combine}, "
                                    f"{result.members} members, {result.groups} group(s))")
    on, costs = result.on, result.cost is not None
    row = {"members": result.members, "combine": result.combine, **result.metrics, "cost": result.cost,
           "gflops": result.gflops}
    columns = ["members", "combine", *result.metrics] + (["cost", "gflops"] if costs else [])
    return Table(columns, [row], f"{on.task} {on.split} ensemble"
                 + (" (cost: dense-member equivalents; gflops: per example)" if costs else ""))


def ensemble(result: Ensemble, sizes: SizeTable | None, fmt: str = "table", submission: bool = False) -> None:
    """``ensemble``'s table: per size with ``sizes``, else the whole ensemble; a note on an unlabelled split
    (unless a submission was written)."""
    if sizes is not None or result.score is not None:
        table = with_fit(ensemble_table(sizes if sizes is not None else result.score), result.temperature_fit)
        sampled = sizes is not None and any(r.sampled for r in sizes.rows)
        emit(with_sampled(table, sizes) if sampled and fmt == "json" else table, fmt)
        if sampled:
            note(sampled_note(sizes))
    elif not submission:
        note("the split is unlabelled: nothing to score (use --out or --submission)")


def with_sampled(table: Table, sizes: SizeTable) -> Table:
    """The size table ``table`` (rows in ``sizes``' order) with a ``sampled`` column: each row's
    ``SizeRow.sampled`` (the metrics averaged over a sample of the combinations; {} for none; a NaN error as
    None), for JSON."""
    def clean(sampled: dict) -> dict:
        return {m: {**v, "mc_se": None if math.isnan(v["mc_se"]) else v["mc_se"]} for m, v in sampled.items()}

    return Table([*table.columns, "sampled"],
                 [{**r, "sampled": clean(s.sampled)} for r, s in zip(table.rows, sizes.rows)], table.title)


def sampled_note(sizes: SizeTable) -> str:
    """One line on the sizes whose temperature-fitted metrics were averaged over a sample of the combinations
    (``ensemble --fit-sample``): the metrics, and per k how many combinations of how many and each mean's Monte Carlo
    standard error."""
    rows = [r for r in sizes.rows if r.sampled]
    parts = []
    for r in rows:
        first = next(iter(r.sampled.values()))
        parts.append(f"k = {r.k} ({first['combinations']:,} of {first['of']:,}; Monte Carlo SE "
                     f"{', '.join(format_cell(v['mc_se']) for v in r.sampled.values())})")
    per_group = " (equal numbers per group)" if sizes.groups > 1 else ""
    return (f"{', '.join(rows[0].sampled)}: mean over a seeded random sample of the combinations{per_group} at "
            + ", ".join(parts) + "; --fit-sample 0 scores them all")


def with_fit(table: Table, fit: str | None) -> Table:
    """``table`` with a ``temperature_fit`` column (where ts_nll, ts_ece and temperature fitted their temperature:
    ``metrics.temperature_fit``), in the title too; unchanged for None."""
    if fit is None:
        return table
    return Table([*table.columns, "temperature_fit"], [{**r, "temperature_fit": fit} for r in table.rows],
                 f"{table.title}; temperature fitted: {fit}")


def ensemble_written(result: Ensemble, path) -> None:
    """``ensemble --out``: the artifact's path on stdout, its metrics in a note."""
    if result.score is not None:
        note(f"ensemble of {result.score.members} ({result.combine}): "
             + " ".join(f"{k}={v:.4f}" for k, v in result.score.metrics.items()))
    sys.stdout.write(f"{path}\n")


# ---------------------------------------------------------------------------------------------- diversity


def diversity_table(result: Diversity) -> Table:
    """Averages (metric, value, direction), or every pair (a, b and the five metrics)."""
    title = f"{result.on.task} {result.on.split}: diversity of {result.members} members"
    if result.regression:
        return Table(["metric", "value", "direction"], [row_of(r) for r in result.rows], title)
    if result.rows and hasattr(result.rows[0], "values"):
        metrics = list(result.rows[0].values)
        return Table(["a", "b", *metrics], [{"a": r.a, "b": r.b, **r.values} for r in result.rows], title)
    return Table(["metric", "value", "direction"], [row_of(r) for r in result.rows], title + " (mean over pairs)")


# ---------------------------------------------------------------------------------------------- masks


def iou_table(result: IouMatrix) -> Table:
    """The IoU matrix: a row per mask, a column per mask."""
    labels, m = result.labels, result.values
    rows = [{"mask": labels[i], **{labels[j]: float(m[i, j]) for j in range(len(labels))}} for i in range(len(labels))]
    return Table(["mask", *labels], rows, f"IoU of {iou_what(result)}")


def iou_what(result: IouMatrix) -> str:
    return "kept heads and FFN sublayers" if result.structured else "surviving weights"


def layer_iou_table(rows: list[LayerIou]) -> Table:
    return Table(["parameter", "mean_iou", "sparsity"], [row_of(r) for r in rows],
                 "IoU of surviving weights per parameter (mean over pairs)")


def remaining_table(rows: list[Remaining]) -> Table:
    return Table(["mask", "task", "ticket", "seed", "sparsity", "heads_kept", "ffn_kept", "weights_remaining"],
                 [row_of(r) for r in rows], "weights remaining in the encoder layers per structured ticket")


def importance_table(result: Importance) -> Table:
    shares = [f"share_{t}" for t in result.tasks]
    rows = [{"unit": r.unit, "mean_importance": r.mean_importance,
             **{f"share_{t}": v for t, v in r.shares.items()}, "dominated_by": r.dominated_by} for r in result.rows]
    return Table(["unit", "mean_importance", *shares, "dominated_by"], rows,
                 "importance of heads and FFN sublayers: mean over tasks (each task normalised to sum 1 over heads and "
                 "over FFNs) and each task's share")


# ---------------------------------------------------------------------------------------------- statistics

PAPER_NOTE = ("note: --test paper is the t-test of Kobayashi et al. over k-member combinations; combinations share "
              "members, so its p-values are optimistic, too small (docs/statistics.md)")


def table1_table(result: Table1, fmt: str = "table") -> Table:
    """Table 1: a row per group, the reference first; cost columns where members record costs, p_paper beside the
    permutation test, the bootstrap interval with --bootstrap; with a registered metric (``--score``) a verdict
    column and, for programs (tsv, json), the metric's name and direction in every row."""
    costs = bool(result.rows) and result.rows[0].cost is not None
    columns = (["group", "members", "single_mean", "single_std", "k"] + (["cost", "gflops"] if costs else [])
               + ["combinations", "ensemble_mean", "ensemble_gain", "vs_ref", "diff_low", "diff_high", "p_value",
                  "test", "p_single"]
               + (["p_paper"] if result.test == "permutation" else []) + (["ci_low", "ci_high"] if result.bootstrap
                                                                         else [])
               + (["verdict"] if result.direction else []))
    what = ("permutation test over seeds" if result.test == "permutation" else
            "the paper's t-test over combinations, optimistic: combinations share members")
    on = result.on
    metric = on.metric
    if result.direction:  # --score: the convention, in words
        sign = "negative" if result.direction.startswith("lower") else "positive"
        metric += f" ({result.direction}; differences are group minus {result.ref}: {sign} favours the group)"
    rows = [row_of(r, drop_none=True) for r in result.rows]
    if result.direction:
        columns, rows = _named_metric(columns, rows, on.metric, result.direction, fmt)
    return Table(columns, rows,
                 f"{on.task} {on.split}: {metric} by {result.by} (k={result.k}, {result.combine}, {result.groups} "
                 f"seed group(s); vs {result.ref}: difference, 95% interval, {what})")


def table1(result: Table1, fmt: str = "table") -> None:
    for line in result.notes:
        note(line)
    emit(with_fit(table1_table(result, fmt), result.temperature_fit), fmt)
    if result.test == "paper":
        note(PAPER_NOTE)


def frontier_table(result: CostFrontier, fmt: str = "table") -> Table:
    """The frontier at equal cost: a row per budget and scheme. With a registered metric (``result.direction``) an
    ``on_frontier`` column, the direction and sign convention in the title, and for programs (tsv, json) the
    metric's name and direction in every row."""
    on = result.on
    columns = ["budget", "group", "k", "cost", "mean", "vs_ref", "diff_low", "diff_high"]
    rows = [row_of(r) for r in result.rows]
    title = (f"{on.task} {on.split}: {on.metric} of the largest ensemble within each inference budget "
             f"(dense-member equivalents, analytic FLOPs; {result.combine}, {result.groups} seed group(s); vs "
             f"{result.ref} at the same budget: difference and 95% jackknife interval)")
    if result.direction:
        columns.append("on_frontier")
        title += (f"; {direction_words(result.direction, result.ref)}; on_frontier: no ensemble that costs at most "
                  f"as much has a better {on.metric}")
        columns, rows = _named_metric(columns, rows, on.metric, result.direction, fmt)
    return Table(columns, rows, title)


def direction_words(direction: str, ref: str) -> str:
    """A registered metric's direction and what the sign of a difference to ``ref`` means, in words."""
    sign = "negative" if direction.startswith("lower") else "positive"
    return f"{direction}; vs_ref = group minus {ref}: {sign} favours the group"


def _named_metric(columns: list[str], rows: list[dict], metric: str, direction: str,
                  fmt: str) -> tuple[list[str], list[dict]]:
    """For programs (tsv, json) every row names the metric and its direction (people read them in the title)."""
    if fmt not in ("tsv", "json"):
        return columns, rows
    return columns + ["metric", "direction"], [{**r, "metric": metric, "direction": direction} for r in rows]


def cost_frontier(result: CostFrontier, fmt: str = "table") -> None:
    emit(frontier_table(result, fmt), fmt)
    costs = result.member_costs
    note("member cost (x dense): " + ", ".join(f"{g} {costs[g]:.3f}" for g in sorted(costs))
         + "; unstructured tickets cost a dense member (no sparse kernel)")


def phase_table(result: PhaseTable, fmt: str = "table") -> Table:
    """The pivot table. For people (table, markdown) each cell reads ``mean ±std (n)`` and levels are percentages;
    for programs (tsv, json) each column's mean, std and n are separate columns."""
    by, kinds, full = result.by, result.columns, result.by == "sparsity"
    on = result.on
    said = ""  # with a registered metric: its direction, and which sign of winning vs full favours the tickets
    if result.direction:
        sign = "negative" if result.direction.startswith("lower") else "positive"
        said = f"; {result.direction}" + (f", winning vs full = winning minus full: {sign} favours the tickets"
                                          if full else "")
    if fmt in ("table", "markdown"):
        extra = ["heads/FFN pruned", "winning vs full (p)"] if full else []
        return Table([by, *kinds, *(["full"] if full else []), *extra],
                     [_phase_shown(r, by, kinds) for r in result.rows],
                     f"{on.task} {on.split}: {on.metric} by {by} (mean ±std over seeds (n))"
                     + ("; full = unpruned model; p: permutation test over seeds" if full else "") + said)
    columns = [by] + [c for k in kinds for c in (k, f"{k}_std", f"{k}_n")]
    columns += ["full", "full_n", "heads_pruned", "ffn_pruned", "vs_full", "p_vs_full"] if full else []
    rows = [_phase_values(r, by) for r in result.rows]
    if result.direction:
        columns, rows = _named_metric(columns, rows, on.metric, result.direction, fmt)
    return Table(columns, rows, f"{on.task} {on.split}: {on.metric} by {by}" + said)


def phase(result: PhaseTable, fmt: str = "table") -> None:
    emit(phase_table(result, fmt), fmt)


def _phase_values(r: PhaseRow, by: str) -> dict:
    row = {by: r.value}
    for k, c in r.cells.items():
        row.update({k: c.mean, f"{k}_std": c.std, f"{k}_n": c.n})
    if r.full is not None:
        row.update({"full": r.full.mean, "full_n": r.full.n, "heads_pruned": r.heads_pruned,
                    "ffn_pruned": r.ffn_pruned, "vs_full": r.vs_full, "p_vs_full": r.p_vs_full})
    return row


def _phase_shown(r: PhaseRow, by: str, kinds: list[str]) -> dict:
    row = {by: f"{r.value:.0%}" if by == "sparsity" else f"{r.value:g}"}
    for k in kinds:
        c = r.cells[k]
        row[k] = "" if math.isnan(c.mean) else (f"{c.mean:.4f}" + ("" if math.isnan(c.std) else f" ±{c.std:.4f}")
                                                + f" ({c.n})")
    if r.full is not None:
        row["full"] = "" if math.isnan(r.full.mean) else f"{r.full.mean:.4f} ({r.full.n})"
        row["heads/FFN pruned"] = f"{r.heads_pruned:.1%} / {r.ffn_pruned:.1%}"
        row["winning vs full (p)"] = "" if math.isnan(r.vs_full) else (
            f"{r.vs_full:+.4f}" + ("" if math.isnan(r.p_vs_full) else f" ({r.p_vs_full:.3g})"))
    return row


def super_ticket(result: SuperTicket) -> None:
    """The super ticket's mask paths on stdout (one per line, for ``finetune --mask``), how it was chosen on stderr."""
    for path in result.masks:
        sys.stdout.write(f"{path}\n")
    on = result.on
    note(f"super ticket: winning at {result.level:.0%}, chosen on {result.chosen_on} of {result.examples} {on.split} "
         f"examples (a seeded {result.fraction:g} of them); on the other {result.reported_on}: {on.split} {on.metric} "
         f"{result.winning:.4f} (full model {result.full:.4f})" + (f"; {result.direction}" if result.direction else ""))


# ---------------------------------------------------------------------------------------------- show

SHOWN_KEYS = ("kind", "method", "task", "split", "policy", "seed", "sparsity", "bagging", "model", "config_hash",
              "sha256")


def show(shown: list[ArtifactSummary], as_json: bool = False) -> None:
    """Each artifact: one JSON object per line (``as_json``), else a block of aligned lines."""
    for s in shown:
        sys.stdout.write(json.dumps(s.as_dict(), sort_keys=True) + "\n" if as_json else show_text(s))
    sys.stdout.flush()


def show_text(s: ArtifactSummary) -> str:
    """An artifact for people: its main header keys, task definition, metrics, cost, summary and parents."""
    info, meta = s.as_dict(), s.meta
    lines = [info["path"]] + [f"  {k:12} {info[k]}" for k in SHOWN_KEYS if k in info]
    spec = meta.get("task_spec")
    if spec:
        kind = "regression" if spec.get("labels") is None else "labels " + ", ".join(spec["labels"])
        lines.append(f"  {'task_spec':12} {kind}; text {', '.join(spec['text_columns'])}; metrics "
                     f"{', '.join(spec['metrics'])}")
    if meta.get("metrics"):
        lines.append(f"  {'metrics':12} {json.dumps(meta['metrics'], sort_keys=True)}")
    if meta.get("cost"):
        lines.append(f"  {'cost':12} {cost_line(meta['cost'])}")
    lines += _summary_lines(s.kind, s.summary or {})
    status = {v.path: v.status for v in s.verify or []}
    for par in meta.get("parents") or []:
        mark = f" [{status[par['path']]}]" if par["path"] in status else ""
        lines.append(f"  {'parent':12} {par['path']} ({par['sha256'][:12]}){mark}")
    return "".join(line + "\n" for line in lines)


def _summary_lines(kind: str, s: dict) -> list[str]:
    if kind == "mask" and "heads_kept" in s:
        return ([f"  {'heads':12} {s['heads_kept']} of {s['heads']} kept ({s['head_sparsity']:.1%} pruned); FFN "
                 f"sublayers {s['ffn_kept']} of {s['ffn']} kept",
                 f"  {'weights':12} {s['weights_remaining']:.2%} of the encoder layers' weights remain"]
                + [f"    layer {i:2}: {h:2} heads, FFN {'kept' if f else 'pruned'}"
                   for i, (h, f) in enumerate(zip(s["heads_per_layer"], s["ffn_keep"]))])
    if kind == "mask":
        return ([f"  {'pruned':12} {s['pruned']:,} of {s['prunable']:,} prunable weights ({s['sparsity']:.4%})"]
                + [f"    {sp:7.2%}  {name}" for name, sp in s["layer_sparsity"].items()])
    if kind == "logits":
        return [f"  {'examples':12} {s['examples']} ({'labelled' if s['labelled'] else 'unlabelled'})"]
    return []


def cost_line(c: dict) -> str:
    """A member's inference cost in words (``ticketctl.model.cost``)."""
    zeros = c["params"] - c["nonzero_params"]
    sparse = f", {zeros:,} of them zero (computed densely: no sparse kernel)" if zeros > 0.01 * c["params"] else ""
    return (f"{c['relative_flops']:.3f} x a dense member: {c['flops_per_example'] / 1e9:.3f} GFLOPs per example at "
            f"{c['mean_tokens']:.1f} tokens, {c['params']:,} parameters{sparse}")
