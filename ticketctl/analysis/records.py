"""What the analysis functions return: plain records (frozen dataclasses) of numbers and names, computed without
printing. ``ticketctl.analysis.render`` turns each into the command line's table, TSV, JSON or markdown.

Metrics are fractions (accuracy 0.8125, not 81.25) in the task's headline metric unless a field says otherwise;
costs are in dense-member equivalents (a member's analytic FLOPs per example over one dense member's, from
``ticketctl.model.cost``); NaN marks a number that does not exist (a one-seed group's spread, a test with one seed).
Which function returns which record:

====================================================  ==========================================================
``ensemble.ensemble``                                 :class:`Ensemble` (its ``score``: :class:`EnsembleScore`)
``ensemble.size_table``                               :class:`SizeTable` of :class:`SizeRow`
``diversity.diversity``                               :class:`Diversity` of :class:`DiversityRow` /
                                                      :class:`PairDiversity`
``iou.mask_iou`` / ``layer_iou``                      :class:`IouMatrix` / :class:`LayerIou` list
``iou.remaining`` / ``iou.importance``                :class:`Remaining` list / :class:`Importance`
``stats.table1``                                      :class:`Table1` of :class:`Table1Row`
``phase.phase_transition`` / ``phase.super_ticket``   :class:`PhaseTable` of :class:`PhaseRow` / :class:`SuperTicket`
``stats.cost_frontier``                               :class:`CostFrontier` of :class:`FrontierRow`
``show.describe``                                     :class:`ArtifactSummary` list
====================================================  ==========================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# the ticket kinds of the phase transition, in the order tables and figures show them
KIND_ORDER = ("winning", "random", "losing")
PIVOTS = ("sparsity", "train_fraction")  # --by keys that print metric vs the key, one column per scheme


@dataclass(frozen=True)
class EvalSplit:
    """What the numbers are measured on: the task, the evaluation split, and the task's headline metric."""

    task: str  # "mrpc"
    split: str  # "dev"
    metric: str  # the headline metric: "accuracy", "pearson", "matthews", ...


# ---------------------------------------------------------------------------------------------- ensemble


@dataclass(frozen=True)
class EnsembleScore:
    """The ensemble of all members: every metric of the task, and its inference cost where the members record one."""

    on: EvalSplit
    members: int
    combine: str  # probs | logits | vote
    metrics: dict[str, float]  # every metric of the task, headline first
    cost: float | None = None  # the members' summed relative FLOPs (dense-member equivalents), rounded to 4 places
    gflops: float | None = None  # GFLOPs per example of all members together, rounded to 4 places


@dataclass(frozen=True)
class Ensemble:
    """Members averaged (``ensemble.ensemble``): the ensemble's outputs and, on a labelled split, its score."""

    members: object  # ticketctl.analysis.members.Members
    combine: str
    outputs: np.ndarray  # (N, C): log mean probability (probs), mean logits, vote share; (N, 1) regression
    score: EnsembleScore | None  # None on an unlabelled split
    sizes: list[int] = field(default_factory=list)  # the ensemble sizes --size asked for (k, all spelled out)
    scores: list[str] = field(default_factory=list)  # further registered metrics asked for (--scores), computed
    undefined: list[str] = field(default_factory=list)  # those asked for but undefined under this combine: left out
    ood: object = None  # ticketctl.analysis.ood.Paired: the members' outputs on --ood texts too (None: not given)
    options: object = None  # ticketctl.analysis.metrics.Options the scores used (--calibration-split's split in it)
    temperature_fit: str | None = None  # where ts_nll, ts_ece, temperature fitted it, in words (None: none asked for)


@dataclass(frozen=True)
class SizeRow:
    """Every k-member combination (within groups) scored: the headline metric's mean, spread and range."""

    k: int
    combinations: int
    mean: float
    std: float  # over combinations (ddof 1; 0 for one combination)
    min: float
    max: float
    other_means: dict[str, float]  # the mean of each further metric of the task ("f1": ...)
    cost: float | None = None  # k x the members' mean relative FLOPs, rounded to 4 places
    # the temperature-fitted metrics whose mean is over a seeded sample of the combinations (ensemble --fit-sample):
    # {"ts_nll": {"combinations": scored, "of": all (both summed over groups), "mc_se": the mean's Monte Carlo SE}}
    sampled: dict[str, dict] = field(default_factory=dict)


@dataclass(frozen=True)
class SizeTable:
    on: EvalSplit
    combine: str
    members: int
    groups: int
    rows: list[SizeRow]


# ---------------------------------------------------------------------------------------------- diversity


@dataclass(frozen=True)
class DiversityRow:
    """One diversity metric averaged over member pairs (Kuncheva & Whitaker, 2003; regression: Krogh & Vedelsby,
    1995), and which direction means more diverse."""

    metric: str
    value: float
    direction: str


@dataclass(frozen=True)
class PairDiversity:
    a: str  # file names of the two members
    b: str
    values: dict[str, float]  # q_statistic, correlation, disagreement, negative_double_fault, ratio_errors


@dataclass(frozen=True)
class Diversity:
    on: EvalSplit
    members: int
    rows: list  # DiversityRow (averages; regression: error correlation and the ambiguity decomposition), or
    #             PairDiversity (every pair, classification with matrix=True)
    regression: bool


# ---------------------------------------------------------------------------------------------- masks


@dataclass(frozen=True)
class IouMatrix:
    """Intersection over union of what masks keep, every pair (the paper's Figure 4)."""

    labels: list[str]  # one distinct label per mask (policy-seed, else file name, else path)
    values: np.ndarray  # (M, M), 1 on the diagonal
    structured: bool  # True: kept heads and FFN sublayers; False: surviving weights
    task: str


@dataclass(frozen=True)
class LayerIou:
    parameter: str  # a prunable weight's name
    mean_iou: float  # over mask pairs
    sparsity: float  # mean fraction pruned


@dataclass(frozen=True)
class Remaining:
    """What one structured mask keeps (Super Tickets' Figure 3)."""

    mask: str
    task: str
    ticket: str
    seed: str
    sparsity: float  # target fraction of heads (and of FFN sublayers) pruned
    heads_kept: int
    ffn_kept: int
    weights_remaining: float  # fraction of the encoder layers' weights kept


@dataclass(frozen=True)
class UnitImportance:
    """One head or FFN sublayer across tasks (Super Tickets' Figure 6)."""

    unit: str  # L0.H3, L0.FFN
    mean_importance: float  # mean over tasks of each task's normalised importance
    shares: dict[str, float]  # task -> its share of the unit's importance (sum 1)
    dominated_by: str  # a task with at least half the share, else ""


@dataclass(frozen=True)
class Importance:
    tasks: list[str]
    rows: list[UnitImportance]


# ---------------------------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Table1Row:
    """One group of Table 1 (Kobayashi et al., 2022) and its comparison with the reference group. ``p_paper``,
    ``ci_low``/``ci_high``, ``cost``/``gflops`` are None where not computed (the reference row, --test paper, no
    --bootstrap, members without cost records)."""

    group: str
    members: int
    single_mean: float
    single_std: float
    k: int
    combinations: int
    ensemble_mean: float  # protocol mean of k-member ensembles
    ensemble_gain: float  # ensemble_mean - single_mean
    vs_ref: float  # ensemble_mean - the reference group's
    diff_low: float  # 95% interval of vs_ref (leave-one-seed-out jackknife)
    diff_high: float
    p_value: float  # permutation test over seeds (or the paper's t-test with --test paper)
    test: str  # which test gave p_value: "paired permutation (seeds)", "ref", "n/a (one seed)", ...
    p_single: float  # the same test for single members (k = 1)
    p_paper: float | None = None  # the paper's t-test over combinations beside the permutation test
    ci_low: float | None = None  # --bootstrap: percentile interval of ensemble_mean over resampled examples
    ci_high: float | None = None
    cost: float | None = None  # the k-member ensemble's relative FLOPs (dense-member equivalents)
    gflops: float | None = None  # its GFLOPs per example
    verdict: str | None = None  # --score: "better", "worse" (p < 0.05, by the metric's direction), "no significant
    # difference" or "ref"


@dataclass(frozen=True)
class Table1:
    on: EvalSplit
    by: str  # the metadata key the groups are of
    ref: str
    k: int
    combine: str
    groups: int  # the protocol's seed groups
    test: str  # permutation | paper
    bootstrap: int  # resamples of the examples for ci_low/ci_high (0: none)
    rows: list[Table1Row]  # the reference group first
    notes: list[str]  # caveats for people (a test that cannot reach p < 0.05 with these seeds)
    gain_curves: dict[str, list[tuple[int, float]]] | None = None  # Figure 3: group -> (k, gain over ref)
    direction: str | None = None  # --score: "lower is better" or "higher is better" (None: the task's metric)
    temperature_fit: str | None = None  # --score ts_nll/ts_ece: where the temperature was fitted, in words


@dataclass(frozen=True)
class Cell:
    """Members of one column at one row of a pivot table: their mean metric, its spread over seeds, their number."""

    mean: float
    std: float  # ddof 1; NaN for fewer than two members
    n: int


@dataclass(frozen=True)
class PhaseRow:
    """One sparsity level (or training fraction): each column's members (Super Tickets, Liang et al., 2021)."""

    value: float  # the sparsity level (fraction pruned) or the training fraction
    cells: dict[str, Cell]  # column (ticket kind, or scheme) -> its members
    full: Cell | None = None  # by sparsity: the unpruned model (the same in every row; std NaN)
    heads_pruned: float | None = None  # by sparsity: fractions the tickets of this level really prune
    ffn_pruned: float | None = None
    vs_full: float | None = None  # winning tickets' mean minus the full model's
    p_vs_full: float | None = None  # permutation test over seeds of vs_full (NaN without resamples or seeds)


@dataclass(frozen=True)
class PhaseTable:
    on: EvalSplit  # on.metric: the metric compared (a registered one with --score)
    by: str  # sparsity | train_fraction
    columns: list[str]  # ticket kinds (winning, random, losing) or schemes
    rows: list[PhaseRow]
    direction: str | None = None  # --score: "lower is better" or "higher is better" (None: the task's metric)


@dataclass(frozen=True)
class SuperTicket:
    """The best winning level chosen on part of the examples (selection) and scored on the rest (report)."""

    on: EvalSplit
    level: float  # the sparsity level chosen
    masks: list[str]  # the mask paths of that level's winning members
    fraction: float  # the fraction of the examples the level was chosen on
    chosen_on: int  # examples
    examples: int
    reported_on: int
    winning: float  # the winning tickets' mean on the report examples
    full: float  # the full model's mean there (NaN without full members)
    direction: str | None = None  # --score: the metric's direction, which "best" followed (None: the task's metric)


@dataclass(frozen=True)
class FrontierRow:
    """A scheme's largest ensemble within an inference budget, against the reference at that budget."""

    budget: int  # dense-member equivalents
    group: str
    k: int
    cost: float  # k x the scheme's member cost
    mean: float  # protocol mean of k-member ensembles
    vs_ref: float  # minus the reference's at the same budget (NaN for the reference, or where it affords none)
    diff_low: float  # 95% jackknife interval of vs_ref
    diff_high: float
    on_frontier: bool | None = None  # no ensemble of any scheme that costs at most as much is better (in the
    # metric's direction)


@dataclass(frozen=True)
class CostFrontier:
    on: EvalSplit  # on.metric: the metric compared (a registered one with --score)
    by: str
    ref: str
    combine: str
    groups: int
    rows: list[FrontierRow]
    member_costs: dict[str, float]  # group -> its members' relative FLOPs
    curves: dict[str, list[tuple[float, float]]]  # group -> (cost of k members, protocol mean), k = 1, 2, ...
    direction: str | None = None  # --score: "lower is better" or "higher is better" (None: the task's metric)


# ---------------------------------------------------------------------------------------------- show


@dataclass(frozen=True)
class ParentCheck:
    path: str
    status: str  # ok | changed | missing


@dataclass(frozen=True)
class ArtifactSummary:
    """An artifact's header and a summary of its tensors (``show``)."""

    path: str
    sha256: str
    meta: dict  # the whole header: kind, task, policy, config, metrics, parents, ...
    summary: dict | None  # masks: sparsity per layer (or heads/FFNs kept); logits: examples, labelled, shape
    verify: list[ParentCheck] | None = None  # with check=True: each parent's content hash recomputed

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    def as_dict(self) -> dict:
        """``show --json``'s object: path, sha256, the header's keys, summary and verify where present."""
        out = {"path": self.path, "sha256": self.sha256, **self.meta}
        if self.summary is not None:
            out["summary"] = self.summary
        if self.verify is not None:
            out["verify"] = [{"path": v.path, "status": v.status} for v in self.verify]
        return out
