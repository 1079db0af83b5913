"""What the analysis commands print, from their options: ``show``, ``diversity``, ``iou`` and ``stats`` choose among
their views here (the command line only declares the options; Python code can call these the same way). Each reads
artifact paths (- reads them from stdin), writes its tables or JSON to stdout and notes to stderr; no torch."""

from __future__ import annotations


def show_artifacts(artifacts: list[str], json_output: bool = False, verify: bool = False,
                   plot: str | None = None) -> None:
    """``show``: each artifact's metadata and summary, printed as it is read (or, with ``plot``, the training
    curves drawn to that file)."""
    from ticketctl.analysis import render
    from ticketctl.analysis import show as data
    from ticketctl.analysis.tables import note
    from ticketctl.store.artifacts import read_paths

    if plot:
        note(f"wrote {plot} ({data.plot_curves(read_paths(artifacts), plot)} training curves)")
        return
    shown = []
    for p in read_paths(artifacts):  # each printed as it is read, as far as the first unreadable one
        shown.append(data.describe_one(p, verify))
        render.show(shown[-1:], json_output)
    data.unverified(shown)


def print_diversity(members: list[str], matrix: bool = False, format: str = "table") -> None:
    """``diversity``: the pairwise diversity of ``members``, averaged (or every pair with ``matrix``)."""
    from ticketctl.analysis import render
    from ticketctl.analysis.diversity import diversity as data
    from ticketctl.analysis.tables import emit
    from ticketctl.store.artifacts import read_paths

    emit(render.diversity_table(data(read_paths(members), matrix)), format)


def print_iou(masks: list[str], layers: bool = False, importance: bool = False, remaining: bool = False,
              plot: str | None = None, cross_task: bool = False, format: str = "table") -> None:
    """``iou``: the pairwise IoU matrix of ``masks`` (with ``plot`` its heatmap), or per layer (``layers``), the
    importance across tasks (``importance``) or what structured masks keep (``remaining``)."""
    from ticketctl.analysis import iou as data
    from ticketctl.analysis import render
    from ticketctl.analysis.tables import emit, note
    from ticketctl.store.artifacts import read_paths

    data.check_views(layers, importance, remaining)
    paths = read_paths(masks)
    if remaining:
        emit(render.remaining_table(data.remaining(paths)), format)
    elif layers:
        emit(render.layer_iou_table(data.layer_iou(paths, cross_task)), format)
    elif importance:
        result = data.importance(paths)
        emit(render.importance_table(result), format)
        if plot:
            data.plot_importance(result, plot, "importance across tasks")
            note(f"wrote {plot}")
    else:
        result = data.mask_iou(paths, cross_task)
        emit(render.iou_table(result), format)
        if plot:
            data.plot_heatmap(result.values, result.labels, plot, f"{result.task}: IoU of {render.iou_what(result)}")
            note(f"wrote {plot}")


def print_stats(artifacts: list[str], *, by: str = "policy", ref: str | None = None, size: int | None = None,
                combine: str = "probs", plot: str | None = None, groups: int = 1, test: str = "permutation",
                resamples: int = 1000, bootstrap: int = 0, select: str | None = None, select_fraction: float = 0.5,
                cost: bool = False, score: str | None = None, format: str = "table", ood: str | None = None,
                calibration_split: str | None = None) -> None:
    """``stats``: Table 1 (``ticketctl.analysis.stats.table1``), the phase transition for a pivot ``by``
    (sparsity, train_fraction), the super ticket (``select`` best) or the frontier at equal cost (``cost``);
    ``plot`` draws the matching figure; ``score`` compares Table 1, the phase tables and the frontier, and picks
    the super ticket, by a registered metric with a direction; ``ood`` (a split): Table 1 of an OOD column
    (``stats.table1``'s ``paired``; UsageError as ``stats.check_options`` says);
    ``calibration_split``: Table 1's ts_nll or ts_ece fit their temperature on that split's artifacts among
    ``artifacts`` (``stats.table1``)."""
    from ticketctl.analysis import phase, plots, render
    from ticketctl.analysis.records import PIVOTS
    from ticketctl.analysis import stats as data
    from ticketctl.analysis.ensemble import load_ood
    from ticketctl.analysis.tables import note
    from ticketctl.store.artifacts import read_paths

    paths = read_paths(artifacts)
    data.check_options(by, size, bootstrap, select, cost, calibration_split, ood)
    if select:
        render.super_ticket(phase.super_ticket(paths, select_fraction, score))
        return
    if by in PIVOTS:
        table = phase.phase_transition(paths, by, resamples, score)
        render.phase(table, format)
        if plot:
            plots.plot_phase(table, plot, f"{table.on.task}: "
                            + ("phase transition" if by == "sparsity" else "metric vs training data"))
    elif cost:
        from ticketctl.analysis import frontier

        result = data.cost_frontier(paths, by, ref, combine, groups, score)
        render.cost_frontier(result, format)
        if plot:
            ringed = None if score is None else frontier.on_frontier(result.curves,
                                                                     result.direction == "higher is better")
            frontier.plot(result.curves, result.on.metric, plot,
                          f"{result.on.task}: {result.on.metric} vs inference cost, by {by}", result.direction, ringed)
    else:
        paired = load_ood(paths, ood) if ood is not None else None
        paths, options = _calibration(paths, calibration_split, combine, score)
        result = data.table1(paths, by, ref, size, combine, groups, test, resamples, bootstrap, curves=bool(plot),
                             score=score, paired=paired, options=options)
        render.table1(result, format)
        if plot:
            plots.plot_gain(result.gain_curves, result.ref, result.on.metric, plot,
                           f"{result.on.task}: ensemble gain over {result.ref}", points=score is None and ood is None,
                           direction=result.direction)
    if plot:
        note(f"wrote {plot}")


def _calibration(paths: list[str], split: str | None, combine: str, score: str | None):
    """``stats --calibration-split``: (the artifacts not of ``split``, the metric options with temperature scaling's
    calibration split paired with their members: ``ensemble.calibration_of``); (``paths``, None) without ``split``.
    Raises UsageError without a ``score`` that fits a temperature, and as ``calibration_of`` does."""
    from ticketctl.analysis.ensemble import CALIBRATION_FLAG, calibration_of
    from ticketctl.errors import UsageError

    if split is None:
        return paths, None
    if score is None:
        raise UsageError(f"{CALIBRATION_FLAG} {split}: give --score ts_nll or ts_ece (the task's own metric fits no "
                         f"temperature)")
    return calibration_of(paths, split, combine, [score])
