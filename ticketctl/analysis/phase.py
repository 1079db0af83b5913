"""``stats --by sparsity`` and ``--by train_fraction``: metric vs the sparsity level per ticket kind, the full model
as reference (the phase transition of Super Tickets, Liang et al., 2021), or vs the training fraction per scheme
(transfer, their Table 4), by the task's headline metric or any registered metric with a direction (``--score``);
:func:`super_ticket` picks the best winning level on held-apart examples and reports it on the others."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import replace

import numpy as np

from ticketctl.analysis.grouping import check_same_recipe, group_value, headline_scorer, level_of, seeds_of
from ticketctl.analysis.members import Members, load_ensemble_members
from ticketctl.analysis.metrics import scorer_for
from ticketctl.analysis.records import KIND_ORDER, Cell, PhaseRow, PhaseTable, SuperTicket
from ticketctl.analysis.significance import RESAMPLES, Scorer, compare, pairing
from ticketctl.errors import UsageError
from ticketctl.store.artifacts import Artifact

FULL = {"dense", "share-dense"}


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
                resamples: int = 0, score: str | None = None) -> tuple[PhaseTable, dict[tuple[str, float], list[int]]]:
    """Metric vs ``by`` (rows), one column per scheme. ``--by sparsity`` is the Super Tickets phase transition
    (Liang et al., 2021): columns are the ticket kinds, the full (unpruned) model is the reference column, each row
    gives the head and FFN fractions its tickets really prune and (with ``resamples``) the winning tickets'
    difference to the full model with the calibrated test over seeds. ``--by train_fraction`` is the transfer table
    (paper's Table 4): columns are the schemes and the models they started from. Scores on ``examples`` (default
    all) by the task's headline metric, or with ``score`` by that registered metric with a direction
    (``metrics.scorer_for``: nll, brier, ece, ...; each cell then in its units, the table's ``direction`` set).
    Returns the table and {(column, row value): member indices in seed order}. Raises UsageError when no member is
    pruned or for an unknown or undirected score, InputError when members differ in more than seed, mask and the
    pivot key."""
    scorer = headline_scorer(members, "probs") if score is None else scorer_for(
        members.task, members.outputs, members.labels, "probs", score)  # a bad score is refused first
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
    if score is None:
        return PhaseTable(members.evaluated, by, kinds, rows), cells
    on = replace(members.evaluated, metric=scorer.name)
    return PhaseTable(on, by, kinds, rows, scorer.metric.direction), cells


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
    """The super ticket: the level where ``kind`` scores best in the table's direction (highest for the task's
    metric, lowest for a lower-is-better ``--score`` such as nll; ties: the sparser one). Raises UsageError when no
    level has ``kind`` tickets."""
    scored = [r for r in table.rows if kind in r.cells and not math.isnan(r.cells[kind].mean)]
    if not scored:
        raise UsageError(f"--select best: no {kind} tickets among the artifacts")
    sign = -1.0 if (table.direction or "").startswith("lower") else 1.0
    return max(scored, key=lambda r: (sign * r.cells[kind].mean, r.value))


def _labelled(paths: list[str]) -> Members:
    members = load_ensemble_members(paths)
    if members.labels is None:
        raise UsageError("the artifacts' split is unlabelled: nothing to score")
    return members


def phase_transition(paths: list[str], by: str = "sparsity", resamples: int = RESAMPLES,
                     score: str | None = None) -> PhaseTable:
    """``stats --by sparsity``: the phase-transition table (metric vs sparsity per ticket kind, the full model as
    reference; Liang et al., 2021); ``--by train_fraction``: metric vs training data per scheme (transfer); with
    ``score`` (``stats --score NAME``) by that registered metric. See :func:`phase_table`."""
    return phase_table(_labelled(paths), by, resamples=resamples, score=score)[0]


def super_ticket(paths: list[str], fraction: float = 0.5, score: str | None = None) -> SuperTicket:
    """``stats --by sparsity --select best``: the sparsity level whose winning tickets score best on a seeded
    ``fraction`` of the evaluation examples, its mask paths (the winning members' parents), and its score on the
    other examples (so that the choice does not flatter it); by the task's headline metric, or with ``score`` by
    that registered metric in its direction (the lowest nll). Raises UsageError for a fraction outside (0, 1), no
    winning tickets, or an unknown or undirected score."""
    members = _labelled(paths)
    if not 0 < fraction < 1:
        raise UsageError("--select-fraction must be in (0, 1)")
    n = len(members.ids)
    order = np.random.default_rng(SELECT_SEED).permutation(n)
    cut = max(1, min(n - 1, int(round(fraction * n))))
    choose, report = np.sort(order[:cut]), np.sort(order[cut:])
    chosen, cells = phase_table(members, "sparsity", choose, score=score)
    best = best_level(chosen)
    held = next(r for r in phase_table(members, "sparsity", report, score=score)[0].rows if r.value == best.value)
    masks = [par["path"] for i in cells[("winning", best.value)] for par in members.arts[i].meta.get("parents") or []]
    return SuperTicket(chosen.on, best.value, masks, fraction, len(choose), n, len(report),
                       held.cells["winning"].mean, held.full.mean, chosen.direction)


SELECT_SEED = 0  # the split of the evaluation examples into selection and report halves for --select best
