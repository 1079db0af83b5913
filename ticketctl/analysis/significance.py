"""The paper's evaluation protocol, and significance tests that treat the seed as the unit of replication.

Protocol (Kobayashi et al., 2022, Appendix "The Combinations of Ensembles"): a scheme's members, in seed order, are
split into G equal groups; every k-member ensemble inside a group is scored; scores are averaged within groups,
then over groups. With G = 1 every k-member combination of all members is scored.

Why not a t-test over those combinations: combinations share members, so their scores are far from independent and
a t-test over them is optimistic (docs/statistics.md measures its false-positive rate). The default test here is a
permutation test over seeds: under the null hypothesis that the two schemes' members come from one distribution,
exchanging scheme A's and scheme B's member of a seed (paired: they share the seed's head, data order and dropout)
or, without pairing, reassigning members to schemes at random, leaves the distribution of the statistic unchanged.
The statistic is the difference of the protocol means; its p-value is exact up to Monte Carlo error, whichever
combinations enter it. The 95% interval for the difference is the leave-one-seed-out jackknife over the same
combinations, with Student's t on (seeds - 1) degrees of freedom (undefined, NaN, where every k-member ensemble holds
every seed: k = number of seeds). ``--bootstrap`` is a separate per-scheme percentile interval over resampled
evaluation examples.

Everything is vectorised: an ensemble's summed outputs are a product of a membership matrix with the members'
outputs, so thousands of ensembles (and resamples of them) are a few matrix products. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from math import comb

import numpy as np

from ticketctl.data.tasks import Task, metric
from ticketctl.errors import InputError, UsageError

RESAMPLES = 1000  # permutations and bootstrap resamples
TEST_COMBINATIONS = 50  # combinations per group in the permutation and bootstrap statistics (all when fewer)
BLOCK_ELEMENTS = 8_000_000  # ensembles x examples scored at once


class Scorer:
    """The task's headline metric for ensembles given as membership weights over members.

    ``terms``: (M, N, C) what each member contributes (``combine.member_terms``). ``weights`` (B, M): ensemble b sums
    ``weights[b, m]`` times member m (0/1 membership; counts for bootstrap resamples)."""

    def __init__(self, task: Task, terms: np.ndarray, labels: np.ndarray):
        self.task, self.labels = task, labels
        self.binary = not task.is_regression and terms.shape[2] == 2
        if self.binary:  # argmax of two classes is the sign of the margin
            self.x = np.ascontiguousarray(terms[..., 1] - terms[..., 0], dtype=np.float32)
        elif task.is_regression:
            self.x = np.ascontiguousarray(terms[..., 0], dtype=np.float32)
        else:
            self.x = np.ascontiguousarray(terms, dtype=np.float32)

    def __len__(self) -> int:
        return self.x.shape[0]

    def _with(self, x: np.ndarray, labels: np.ndarray) -> "Scorer":
        sub = object.__new__(Scorer)
        sub.task, sub.binary, sub.x, sub.labels = self.task, self.binary, x, labels
        return sub

    def on_examples(self, examples: np.ndarray) -> "Scorer":
        """A scorer over these evaluation examples only."""
        return self._with(self.x[:, examples], self.labels[examples])

    def subset(self, members) -> "Scorer":
        """A scorer over these members only (cheaper products when a comparison involves a few of many)."""
        return self._with(self.x[np.asarray(members)], self.labels)

    def scores(self, weights: np.ndarray, examples: np.ndarray | None = None) -> np.ndarray:
        """Headline metric of each ensemble (row of ``weights``), on ``examples`` (indices; default all)."""
        weights = np.asarray(weights, dtype=np.float32)
        x = self.x if examples is None else self.x[:, examples]
        labels = self.labels if examples is None else self.labels[examples]
        positive = labels == 1
        name = self.task.headline
        if name == "pearson":
            return self._pearson(weights, x, labels)
        n = x.shape[1] * (x.shape[2] if x.ndim == 3 else 1)
        per = max(1, BLOCK_ELEMENTS // max(1, n))
        out = []
        for start in range(0, len(weights), per):
            w = weights[start : start + per]
            if x.ndim == 3:
                value = metric(name, np.einsum("bm,mnc->bnc", w, x).argmax(-1), labels)
            elif self.task.is_regression:
                value = metric(name, (w @ x) / w.sum(axis=1, keepdims=True), labels)
            elif name == "accuracy":  # class 1 where the summed margin is > 0 (a tie goes to class 0, as argmax)
                value = np.mean((w @ x > 0) == positive, axis=-1)
            else:
                value = metric(name, (w @ x > 0).astype(np.int64), labels)
            out.append(np.atleast_1d(value))
        return np.concatenate(out) if out else np.zeros(0)

    name = property(lambda self: self.task.headline)  # the metric scored
    higher_is_better = True  # every task metric (accuracy, F1, Matthews, Pearson, Spearman)

    @staticmethod
    def _pearson(weights: np.ndarray, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Pearson's r of each ensemble's mean prediction with the labels, from the members' Gram matrix: with
        P = w x / k, sum(P * yc) = w (x yc) / k and sum(P^2) = w G w / k^2 (G = x x^T), so no ensemble's
        predictions are formed (members x members work instead of ensembles x examples)."""
        w = weights.astype(np.float64)
        x = x.astype(np.float64)
        y = labels.astype(np.float64)
        yc = y - y.mean()
        k = w.sum(axis=1)
        cross = (w @ (x @ yc)) / k
        square = np.einsum("bm,mn,bn->b", w, x @ x.T, w) / k**2
        mean = (w @ x.mean(axis=1)) / k
        spread = np.sqrt(np.maximum(square - len(y) * mean**2, 0.0)) * np.sqrt(yc @ yc)
        return np.where(spread > 0, cross / np.where(spread > 0, spread, 1.0), 0.0)


def better(diff: float, p: float, higher_is_better: bool, alpha: float = 0.05) -> str:
    """The word for a difference A - B of a metric with this direction and its p-value: "better" or "worse" where
    p < ``alpha`` (lower is better: a negative difference is better), else "no significant difference"."""
    if not (p < alpha) or diff == 0:
        return "no significant difference"
    return "better" if (diff > 0) == higher_is_better else "worse"


# ---------------------------------------------------------------------------------------------- the protocol


def parse_k(spec: str | int | None) -> list[int]:
    """Ensemble sizes: ``5``, ``2,3,5``, ``2-5``; a range must ascend and every k be >= 1."""
    if spec is None:
        return []
    out: list[int] = []
    for part in str(spec).split(","):
        part = part.strip()
        try:
            if "-" in part or ".." in part:
                a, b = (int(x) for x in part.replace("..", "-").split("-"))
                if a > b:
                    raise UsageError(f"--size {spec!r}: a range goes up (2-5, not 5-2)")
                out.extend(range(a, b + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise UsageError(f"--size {spec!r}: give k, a list 2,3,5 or a range 2-5") from None
    if any(k < 1 for k in out):
        raise UsageError(f"--size {spec!r}: an ensemble has at least one member")
    return out


def split_groups(n: int, groups: int) -> list[list[int]]:
    """Positions 0..n-1 (members in seed order) split into ``groups`` equal consecutive groups."""
    if groups < 1:
        raise UsageError(f"--groups {groups}: must be >= 1")
    if n % groups:
        raise InputError(f"--groups {groups}: {n} members do not split into {groups} equal groups (give a multiple "
                         f"of {groups} seeds per scheme)")
    size = n // groups
    return [list(range(g * size, (g + 1) * size)) for g in range(groups)]


def group_combinations(order: list[int], groups: int, k: int) -> np.ndarray:
    """(B, k) member indices: every k-member combination inside each of ``groups`` equal consecutive groups of
    ``order`` (member indices in seed order; :func:`split_groups`), groups concatenated in order, combinations in
    ``itertools.combinations`` order. Zero rows where k exceeds a group's size; raises as :func:`split_groups`."""
    parts = [[order[i] for i in part] for part in split_groups(len(order), groups)]
    return np.asarray([c for g in parts for c in combinations(g, k)], dtype=np.int64).reshape(-1, k)


def sampled_group_combinations(order: list[int], groups: int, k: int, limit: int,
                               rng: np.random.Generator) -> np.ndarray:
    """(B, k) member indices as :func:`group_combinations` gives them, except that a group with more than ``limit``
    k-member combinations gives ``limit`` of them, drawn uniformly without replacement from ``rng`` (each row's
    members in seed order; rows in the order drawn); every group gives as many rows, so the mean over rows is the
    mean over groups of the means within groups. ``limit`` 0: every combination (:func:`group_combinations`).
    Raises as :func:`split_groups`."""
    parts = [[order[i] for i in part] for part in split_groups(len(order), groups)]
    if not limit or comb(len(parts[0]), k) <= limit:
        return group_combinations(order, groups, k)
    return np.concatenate([np.asarray(g)[_sample_combinations(len(g), k, limit, rng)] for g in parts])


def protocol_combinations(n: int, k: int, groups: int, limit: int | None = None,
                          rng: np.random.Generator | None = None) -> np.ndarray:
    """Membership matrix (combinations, n) of every k-member combination inside each group, groups concatenated
    in equal numbers (so the mean over rows is the mean over groups of the means within groups). With ``limit``,
    at most that many combinations per group, drawn without replacement (seeded)."""
    parts = split_groups(n, groups)
    if k > len(parts[0]):
        raise UsageError(f"--size {k}: a group has {len(parts[0])} members (n={n}, --groups {groups})")
    total = comb(len(parts[0]), k)
    rows = []
    for part in parts:
        if limit is not None and total > limit:
            chosen = _sample_combinations(len(part), k, limit, rng)
        else:
            chosen = np.asarray(list(combinations(range(len(part)), k)), dtype=np.int64).reshape(-1, k)
        m = np.zeros((len(chosen), n))
        np.put_along_axis(m, np.asarray(part)[chosen], 1.0, axis=1)
        rows.append(m)
    return np.concatenate(rows)


def _sample_combinations(n: int, k: int, count: int, rng: np.random.Generator) -> np.ndarray:
    seen: set[tuple[int, ...]] = set()
    out = []
    while len(out) < count:
        c = tuple(sorted(rng.choice(n, size=k, replace=False).tolist()))
        if c not in seen:
            seen.add(c)
            out.append(c)
    return np.asarray(out, dtype=np.int64)


def protocol_scores(scorer: Scorer, members: list[int], k: int, groups: int) -> np.ndarray:
    """Scores of every k-member combination within each group of ``members`` (indices into the scorer, seed
    order), groups concatenated."""
    k_matrix = protocol_combinations(len(members), k, groups)
    weights = np.zeros((len(k_matrix), len(scorer)))
    weights[:, members] = k_matrix
    return scorer.scores(weights)


# ---------------------------------------------------------------------------------------------- tests


@dataclass
class Comparison:
    """Scheme A against scheme B at ensemble size k."""

    diff: float  # protocol mean of A minus that of B
    low: float  # 95% interval of the difference
    high: float
    p: float
    test: str


def pairing(seeds_a: list[str], seeds_b: list[str]) -> bool:
    """Members pair by seed when both schemes have the same seeds (in the same order)."""
    return len(seeds_a) == len(seeds_b) and list(seeds_a) == list(seeds_b) and len(set(seeds_a)) == len(seeds_a)


def difference(x: float, y: float, scale: float | None = None) -> float:
    """``x - y``, or exactly 0.0 where the two differ by rounding only: within 4 units in the last place of
    ``scale`` (default the larger of |x|, |y|; give the largest magnitude that went into x and y where they are
    themselves differences). Two means of the same scores summed in another order differ by ~2.2e-16, which is no
    difference; a real difference of two protocol means is at least 1 / (examples x combinations), far above it."""
    d = float(x) - float(y)
    scale = max(abs(float(x)), abs(float(y))) if scale is None else scale
    return 0.0 if abs(d) <= 4 * np.finfo(np.float64).eps * scale else d


def compare(scorer: Scorer, a: list[int], b: list[int], k: int, groups: int, paired: bool,
            resamples: int = RESAMPLES, seed: int = 0, limit: int | None = TEST_COMBINATIONS) -> Comparison:
    """Permutation test over seeds, and the jackknife interval, for A's protocol mean minus B's.

    ``a``, ``b``: member indices into ``scorer`` in seed order. Paired: the member of one seed is exchanged between
    the schemes (each seed independently, with probability 1/2); unpaired: the pooled members are reassigned to the
    schemes at random. The statistic uses at most ``limit`` combinations per group (the same ones throughout), so a
    test costs the same at 20 seeds as at 5; the permutation p-value is exact for it up to Monte Carlo error.
    ``limit=None``: every combination, so the statistic is the protocol mean difference itself. Raises UsageError
    for a paired comparison of unequal seed counts."""
    return _compare(scorer, a, b, k, groups, paired, resamples, [seed, k, groups, len(a), len(b)], limit, False)


def compare_gain(scorer: Scorer, a: list[int], b: list[int], k: int, groups: int, paired: bool,
                 resamples: int = RESAMPLES, seed: int = 0, limit: int | None = TEST_COMBINATIONS) -> Comparison:
    """The ensembling part of A's difference to B: (A's protocol mean of k-member ensembles - A's mean single
    member) - (the same for B), with :func:`compare`'s permutation test over seeds and :func:`jackknife_interval`
    for that statistic (the p-value is for this difference, not for the ensembles' difference).

    ``a``, ``b``: member indices into ``scorer`` in seed order. Returns a :class:`Comparison` whose ``diff`` is the
    statistic (in the headline metric's units); NaN interval where every ensemble of a group holds every seed of it
    (k = a group's size), or with fewer than two seeds. Raises UsageError as :func:`compare`."""
    return _compare(scorer, a, b, k, groups, paired, resamples, [seed, k, groups, len(a), len(b), 1], limit, True)


def _compare(scorer: Scorer, a: list[int], b: list[int], k: int, groups: int, paired: bool, resamples: int,
             seed: list[int], limit: int | None, gain: bool) -> Comparison:
    """:func:`compare` (``gain`` False: the ensembles' means) and :func:`compare_gain` (True: each side's
    ensemble mean minus its mean single member): one permutation loop, one jackknife."""
    if paired and len(a) != len(b):
        raise UsageError("a paired comparison needs the same seeds in both schemes")
    rng = np.random.default_rng(seed)
    na, nb = len(a), len(b)
    n = na + nb
    sub = scorer.subset(list(a) + list(b))  # columns: A's members, then B's
    ka = protocol_combinations(na, k, groups, limit, rng)
    kb = ka if nb == na else protocol_combinations(nb, k, groups, limit, rng)

    def means(k_matrix: np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(R,) the mean score of ``k_matrix``'s ensembles of the members at ``columns`` (R, n_side), one value per
        relabelling, and (gain only; else None) their mean single member."""
        r, m = columns.shape
        onehot = np.zeros((r, m, n))
        np.put_along_axis(onehot, columns[:, :, None], 1.0, axis=2)
        ensembles = sub.scores(np.einsum("ci,rij->rcj", k_matrix, onehot).reshape(-1, n)).reshape(r, -1).mean(1)
        return ensembles, (sub.scores(onehot.reshape(-1, n)).reshape(r, -1).mean(1) if gain else None)

    def side(k_matrix: np.ndarray, columns: np.ndarray) -> np.ndarray:
        ensembles, singles = means(k_matrix, columns)
        return ensembles if singles is None else ensembles - singles

    a_cols, b_cols = np.arange(na)[None], np.arange(na, n)[None]
    parts = [float(v[0]) for v in (*means(ka, a_cols), *means(kb, b_cols)) if v is not None]
    observed = difference(side(ka, a_cols)[0], side(kb, b_cols)[0], scale=max(map(abs, parts)))
    scored = (len(ka) + len(kb) + (n if gain else 0)) * len(sub.labels)  # scores computed per relabelling
    p = permutation_p(lambda pa, pb: side(ka, pa) - side(kb, pb), observed, na, nb, paired, rng, resamples,
                      chunk=max(1, BLOCK_ELEMENTS // max(1, scored)))
    low, high = jackknife_interval(sub, ka, kb, na, nb, groups, paired, singles=gain)
    name = "paired permutation (seeds)" if paired else "permutation (seeds)"
    return Comparison(observed, low, high, float(p), name)


def permutation_p(statistic, observed: float, na: int, nb: int, paired: bool, rng: np.random.Generator,
                  resamples: int, chunk: int) -> float:
    """Two-sided permutation p-value of ``observed``, (1 + #{|t| >= |observed|}) / (1 + resamples).

    ``statistic(pa, pb)``: (R,) the statistic for R relabellings, ``pa`` (R, na) and ``pb`` (R, nb) the columns
    (0..na-1 A's members, na..na+nb-1 B's) each scheme gets. Paired: each seed's two members are exchanged with
    probability 1/2; unpaired: the pooled members are reassigned at random. ``chunk`` relabellings at a time."""
    a_cols, b_cols = np.arange(na)[None], np.arange(na, na + nb)[None]
    extreme, done = 0, 0
    while done < resamples:
        r = min(chunk, resamples - done)
        if paired:
            swap = rng.random((r, na)) < 0.5
            pa, pb = np.where(swap, b_cols, a_cols), np.where(swap, a_cols, b_cols)
        else:
            pool = np.argsort(rng.random((r, na + nb)), axis=1)
            pa, pb = pool[:, :na], pool[:, na:]
        extreme += int(np.sum(np.abs(statistic(pa, pb)) >= abs(observed) - 1e-12))
        done += r
    return (1 + extreme) / (1 + resamples)


def jackknife_interval(sub: Scorer, ka: np.ndarray, kb: np.ndarray, na: int, nb: int, groups: int,
                       paired: bool, level: float = 0.95, singles: bool = False) -> tuple[float, float]:
    """Interval for the difference of protocol means (A's combinations ``ka`` over ``sub``'s first ``na``
    members, B's ``kb`` over the next ``nb``; they may be of other sizes) from its leave-one-seed-out jackknife
    standard error and Student's t with (seeds - 1) degrees of freedom (Efron & Tibshirani 1993, ch. 11).
    ``singles``: each side's statistic is its protocol mean minus its mean single member (the ensembling part).

    Leaving a seed out drops the combinations that contain it (every ensemble keeps distinct members, unlike a
    bootstrap that draws seeds with replacement), and the scores are those already computed: no ensemble is
    scored again. Paired: a seed leaves both schemes. Conditional on the evaluation examples, as the permutation
    test is. NaN where every ensemble of a seed's group holds it (k = the group's size: leaving it out would
    compare other groups only, undefined rather than narrower), or with fewer than two seeds."""
    from scipy import stats

    if min(na, nb) < 2:
        return float("nan"), float("nan")
    sa = sub.scores(np.hstack([ka, np.zeros((len(ka), nb))]))
    sb = sub.scores(np.hstack([np.zeros((len(kb), na)), kb]))
    single = sub.scores(np.eye(na + nb)) if singles else None
    group_a, group_b = _group_of(ka, na, groups), _group_of(kb, nb, groups)

    def mean_without(scores, k_matrix, group, seed, single_scores=None):
        """The protocol mean (minus the mean single member) with ``seed`` left out (None: with every seed)."""
        keep = k_matrix[:, seed] == 0 if seed is not None else np.ones(len(k_matrix), bool)
        means = []
        for g in range(groups):
            if not (group == g).any():
                continue
            if not (keep & (group == g)).any():  # k = group size: every ensemble of the seed's group holds it
                return float("nan")
            means.append(scores[keep & (group == g)].mean())
        if single_scores is None:
            return float(np.mean(means))
        rest = np.delete(single_scores, seed) if seed is not None else single_scores
        return float(np.mean(means)) - float(rest.mean())

    def side_a(s):
        return mean_without(sa, ka, group_a, s, None if single is None else single[:na])

    def side_b(s):
        return mean_without(sb, kb, group_b, s, None if single is None else single[na:])

    if paired and ka is kb and single is None:
        d = sa - sb  # the same combinations of the same seeds
        full = mean_without(d, ka, group_a, None)
        leave = np.array([mean_without(d, ka, group_a, s) for s in range(na)])
        var, dof = (na - 1) / na * np.sum((leave - leave.mean()) ** 2), na - 1
    elif paired:  # a seed leaves both schemes
        full = side_a(None) - side_b(None)
        leave = np.array([side_a(s) - side_b(s) for s in range(na)])
        var, dof = (na - 1) / na * np.sum((leave - leave.mean()) ** 2), na - 1
    else:
        la, lb = np.array([side_a(s) for s in range(na)]), np.array([side_b(s) for s in range(nb)])
        full = side_a(None) - side_b(None)
        var = (na - 1) / na * np.sum((la - la.mean()) ** 2) + (nb - 1) / nb * np.sum((lb - lb.mean()) ** 2)
        dof = min(na, nb) - 1
    if not np.isfinite(var):
        return float("nan"), float("nan")
    half = stats.t.ppf((1 + level) / 2, max(1, dof)) * np.sqrt(var)
    return float(full - half), float(full + half)


def budget_interval(scorer: Scorer, a: list[int], b: list[int], k_a: int, k_b: int, groups: int, paired: bool,
                    limit: int = TEST_COMBINATIONS, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """95% interval of A's protocol mean at k_a members minus B's at k_b (ensembles of equal cost):
    :func:`jackknife_interval` over at most ``limit`` combinations per group (paired: a seed leaves both schemes).
    NaN where every ensemble holds every seed (k = the group's size), or with fewer than two seeds."""
    na, nb = len(a), len(b)
    if min(na, nb) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng([seed, k_a, k_b, groups, na, nb])
    ka = protocol_combinations(na, k_a, groups, limit, rng)
    kb = protocol_combinations(nb, k_b, groups, limit, rng)
    return jackknife_interval(scorer.subset(list(a) + list(b)), ka, kb, na, nb, groups, paired, level)


def _group_of(k_matrix: np.ndarray, n: int, groups: int) -> np.ndarray:
    """The group of each combination row (members of a combination are in one group)."""
    first = k_matrix.argmax(axis=1)
    return first // (n // groups)


def smallest_p(na: int, nb: int, paired: bool) -> float:
    """The smallest p-value an exact two-sided permutation test can give with these seeds: the observed labelling
    and its mirror image among 2^n sign flips (paired), or among the C(na + nb, na) reassignments (unpaired)."""
    return 2 / 2**na if paired else 2 / comb(na + nb, na)


def paper_ttest(a_scores: np.ndarray, b_scores: np.ndarray) -> float:
    """The paper's test (Kobayashi et al. 2022): Student's t-test over the two schemes' within-group combination
    scores. Optimistic: combinations share members, so they are not independent samples. NaN with fewer than two
    scores a side, or where every score of both sides is the same (no spread: t is undefined).

    Where one side's scores are all equal and the other's are not, scipy warns of "precision loss ... catastrophic
    cancellation": that side's variance, exactly 0, comes out as rounding residue (~1e-32) beside the other's, so
    the p-value is right to many digits. The warning says nothing about the number and is not shown."""
    import warnings

    from scipy import stats

    a_scores, b_scores = np.asarray(a_scores), np.asarray(b_scores)
    if len(a_scores) < 2 or len(b_scores) < 2 or (np.ptp(a_scores) == 0 and np.ptp(b_scores) == 0):
        return float("nan")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Precision loss occurred in moment calculation",
                                category=RuntimeWarning)
        return float(stats.ttest_ind(a_scores, b_scores, equal_var=True).pvalue)
