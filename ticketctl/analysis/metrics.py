"""The metric seam: one registry of metrics, each a function of the members' combined outputs and the gold labels,
with its direction and the ``--combine`` modes under which it is defined. Adding a metric is one function plus one
``@register(...)`` line.

Inputs (:class:`Combined`), for one ensemble or a batch of them (leading axes ``...``):

- ``predictions`` (..., n): class indices (classification) or predicted scores (regression);
- ``probs`` (..., n, C): the ensemble's probabilities (mean of member probabilities under ``--combine probs``,
  softmax of the mean logits under ``logits``; None under ``vote``, where vote shares are not probabilities);
- ``member_probs_mean`` (..., n, C) and ``member_entropy`` (..., n): the mean of the members' own probabilities and
  the mean of their entropies (nats), for the entropy decomposition (always from the members' own probabilities);
- ``spread`` (..., n): the standard deviation of the members' regression predictions.

The metric functions below (``nll``, ``brier``, ``ece``, ...) are plain vectorised numpy and can be used alone.
numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from ticketctl.analysis.numerics import EPS, auroc_rows, entropy, fpr_rows
from ticketctl.analysis.numerics import class_sum as _csum
from ticketctl.analysis.numerics import top as _top
from ticketctl.analysis.significance import Scorer
from ticketctl.data.tasks import metric as prediction_metric
from ticketctl.errors import UsageError

ECE_BINS = 15  # Guo et al. (2017)
NEWTON_TOL = 1e-4  # a fit stops after a step below this fraction of beta: measured within 1e-8 of a fit to 1e-9
SUBSAMPLE_START = 50  # temperature fits start on every 8th example where that leaves at least this many
FOLDS = 5  # cross-fitting folds for the temperature and the regression noise variance
# EPS (ticketctl.analysis.numerics): probabilities are clipped at 1e-12 before a log


# ---------------------------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Combined:
    """What a metric may look at (see the module docstring for shapes); fields a combine does not give are None."""

    predictions: np.ndarray
    probs: np.ndarray | None = None
    member_probs_mean: np.ndarray | None = None
    member_entropy: np.ndarray | None = None
    spread: np.ndarray | None = None
    calibration_probs: np.ndarray | None = None  # (..., n_cal, C): the same ensembles on Options.calibration's split


@dataclass(frozen=True, eq=False)
class Calibration:
    """Temperature scaling's calibration split (``--calibration-split``): the members' raw outputs on it (m, n_cal,
    C), member i the same member as the evaluation split's member i, and its gold labels (n_cal,)."""

    split: str
    outputs: np.ndarray
    labels: np.ndarray

    def subset(self, members) -> "Calibration":
        """The same split for these members only (indices into the members)."""
        return Calibration(self.split, self.outputs[np.asarray(members)], self.labels)


@dataclass(frozen=True)
class Options:
    ece_bins: int = ECE_BINS
    folds: int = FOLDS
    calibration: Calibration | None = None  # fit ts_nll's, ts_ece's and temperature's temperature there, not by folds


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[Combined, np.ndarray, Options], np.ndarray]
    higher_is_better: bool | None  # None: a quantity reported, not a quality (temperature, mutual information)
    kind: str  # "classification" | "regression"
    combines: tuple[str, ...]  # the --combine modes under which it is defined
    source: str  # the paper that defines it
    fitted: bool = False  # fits a parameter per ensemble (a temperature): scored on several threads (metric_threads)
    member_entropy: bool = False  # reads Combined.member_entropy (batch paths compute it only for such metrics)

    @property
    def direction(self) -> str:
        if self.higher_is_better is None:
            return "reported"
        return "higher is better" if self.higher_is_better else "lower is better"


REGISTRY: dict[str, Metric] = {}
ALL_COMBINES = ("probs", "logits", "vote")
PROBABILISTIC = ("probs", "logits")


def register(name: str, *, higher_is_better: bool | None, kind: str, combines: tuple[str, ...] = ALL_COMBINES,
             source: str = "", fitted: bool = False, member_entropy: bool = False):
    """Decorator: add ``fn(combined, gold, options) -> value over leading axes`` to the registry as ``name``;
    ``member_entropy``: ``fn`` reads ``combined.member_entropy`` (:func:`weighted_values` leaves it None
    otherwise)."""

    def add(fn):
        REGISTRY[name] = Metric(name, fn, higher_is_better, kind, combines, source, fitted, member_entropy)
        return fn

    return add


def get(name: str) -> Metric:
    """The registered metric ``name``; UsageError naming the choices otherwise."""
    if name not in REGISTRY:
        raise UsageError(f"unknown score {name!r}; choose from {', '.join(REGISTRY)}")
    return REGISTRY[name]


def parse_scores(spec: str | None, regression: bool, combine: str) -> tuple[list[str], list[str]]:
    """``--scores``: a comma-separated list of registered names, or ``all`` (every metric of the task's kind).
    Returns (names to compute, names left out because they are undefined under ``combine``). Raises UsageError for
    an unknown name or one of the other task kind."""
    if not spec:
        return [], []
    kind = "regression" if regression else "classification"
    if spec.strip() == "all":
        names = [n for n, m in REGISTRY.items() if m.kind == kind and n not in _PREDICTION_METRICS]
    else:
        names = [s.strip() for s in spec.split(",") if s.strip()]
    for n in names:
        if get(n).kind != kind:
            raise UsageError(f"--scores {n}: a {get(n).kind} metric, and this task is {kind}")
    return [n for n in names if combine in REGISTRY[n].combines], [n for n in names if combine not in
                                                                     REGISTRY[n].combines]


def evaluate(names: list[str], combined: Combined, gold: np.ndarray, options: Options = Options()) -> dict:
    """Each named metric of ``combined`` against ``gold`` (n,): floats for one ensemble, arrays over leading axes."""
    out = {}
    for n in names:
        v = get(n).fn(combined, gold, options)
        out[n] = float(v) if np.ndim(v) == 0 else v
    return out


# ---------------------------------------------------------------------------------------------- metric functions


def _gold_prob(probs: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """The gold class's entry of each example: (..., n, C), (n,) -> (..., n)."""
    gold = np.asarray(gold, dtype=np.int64)
    if probs.shape[-1] <= 8 and gold.ndim == 1:  # class by class: several times faster than a gather
        out = probs[..., 0].copy()
        for j in range(1, probs.shape[-1]):
            np.copyto(out, probs[..., j], where=gold == j)
        return out
    idx = np.broadcast_to(gold, probs.shape[:-1])[..., None]
    return np.take_along_axis(probs, idx, axis=-1)[..., 0]


def nll(probs: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Mean negative log-likelihood (nats) of the gold classes: probs (..., n, C), gold (n,) -> (...). Probabilities
    are clipped at 1e-12 first."""
    p = _gold_prob(np.asarray(probs, dtype=np.float64), gold)
    return -np.log(np.clip(p, EPS, None)).mean(axis=-1)


def brier(probs: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Multi-class Brier score (Brier, 1950): the squared distance of the probabilities from the one-hot gold, summed
    over the C classes and averaged over examples; (..., n, C), (n,) -> (...), in [0, 2]."""
    p = np.asarray(probs, dtype=np.float64)
    onehot = np.eye(p.shape[-1])[np.asarray(gold, dtype=np.int64)]
    return _csum((p - onehot) ** 2).mean(axis=-1)


def _binned_gap(confidence: np.ndarray, correct: np.ndarray, bin_of: np.ndarray, bins: int) -> np.ndarray:
    """sum over bins of |bin| / n * |mean confidence - accuracy| for bin indices ``bin_of`` (..., n)."""
    lead = confidence.shape[:-1]
    n = confidence.shape[-1]
    conf = confidence.reshape(-1, n)
    corr = correct.reshape(-1, n).astype(np.float64)
    b = bin_of.reshape(-1, n) + bins * np.arange(len(conf))[:, None]
    size = len(conf) * bins
    gap = np.bincount(b.ravel(), conf.ravel(), size) - np.bincount(b.ravel(), corr.ravel(), size)
    return (np.abs(gap).reshape(len(conf), bins).sum(axis=-1) / n).reshape(lead)


def _ece_of(conf: np.ndarray, correct: np.ndarray, bins: int) -> np.ndarray:
    """ECE of top-label confidences and correctness (..., n) in ``bins`` equal-width bins (:func:`ece`)."""
    if bins < 1:
        raise UsageError(f"--ece-bins {bins}: needs at least 1 bin")
    return _binned_gap(conf, correct, np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1), bins)


def ece(probs: np.ndarray, gold: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Expected calibration error (Naeini et al., 2015; Guo et al., 2017): top-label confidence in ``bins`` equal-width
    bins of [0, 1] (bin i holds (i/B, (i+1)/B], the first also 0), sum over bins of |bin|/n * |accuracy - mean
    confidence|. probs (..., n, C), gold (n,) -> (...). Raises UsageError for bins < 1."""
    conf, top = _top(np.asarray(probs, dtype=np.float64))
    return _ece_of(conf, top == np.asarray(gold), bins)


def adaptive_ece(probs: np.ndarray, gold: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Adaptive (equal-mass) ECE (Nixon et al., 2019): the examples sorted by top-label confidence and cut into
    ``bins`` bins of as equal size as possible (sizes differ by at most one; example of rank r goes to bin
    floor(r * B / n)), then as :func:`ece`. (..., n, C), (n,) -> (...)."""
    conf, top = _top(np.asarray(probs, dtype=np.float64))
    return _adaptive_gap(conf, top == np.asarray(gold), stable_argsort(conf), bins)


def _adaptive_gap(conf: np.ndarray, correct: np.ndarray, order: np.ndarray, bins: int) -> np.ndarray:
    """Adaptive ECE of confidences (..., n) whose ascending order (ties in example order) is ``order``."""
    if bins < 1:
        raise UsageError(f"--ece-bins {bins}: needs at least 1 bin")
    n = conf.shape[-1]
    rank_bin = (np.arange(n) * bins) // n
    bin_of = np.empty(conf.shape, dtype=np.int64)
    np.put_along_axis(bin_of, order, np.broadcast_to(rank_bin, conf.shape), axis=-1)
    return _binned_gap(conf, correct, bin_of, bins)


def stable_argsort(key: np.ndarray) -> np.ndarray:
    """``np.argsort(key, axis=-1, kind="stable")`` (ties in index order), faster: an unstable sort first, and a
    stable one again only for the rows where two keys are equal. (..., n) -> (..., n) int64."""
    key = np.asarray(key)
    order = np.argsort(key, axis=-1)
    ordered = np.take_along_axis(key, order, axis=-1)
    tied = np.any(ordered[..., 1:] == ordered[..., :-1], axis=-1)
    if np.any(tied):
        order[tied] = np.argsort(key[tied], axis=-1, kind="stable")
    return order


def aurc(confidence: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Area under the risk-coverage curve (Geifman & El-Yaniv, 2017): examples accepted in order of decreasing
    confidence; at coverage i/n the risk is the error rate of the i accepted; AURC is the mean of those n risks.
    Ties in confidence are broken by example order (stable sort). confidence, correct (..., n) -> (...)."""
    conf = np.asarray(confidence, dtype=np.float64)
    return _curve_area(np.broadcast_to(np.asarray(correct), conf.shape), stable_argsort(-conf))


def _curve_area(correct: np.ndarray, order: np.ndarray) -> np.ndarray:
    """AURC of examples accepted in ``order`` (..., n): mean over i of (errors among the first i) / i, which is
    sum over acceptance positions p of err_p w_p (:func:`_area_weights`)."""
    err = 1.0 - np.take_along_axis(np.asarray(correct, dtype=np.float64), order, axis=-1)
    return err @ _area_weights(err.shape[-1])


def _area_weights(n: int) -> np.ndarray:
    """w_p = (H_n - H_p) / n for acceptance positions p = 0 .. n-1 (H the harmonic numbers): the weight of the p-th
    accepted example's error in the AURC; the weights sum to 1."""
    return np.cumsum((1.0 / np.arange(1, n + 1))[::-1])[::-1] / n


def oracle_aurc(correct: np.ndarray) -> np.ndarray:
    """The AURC of a confidence that ranks every error last (Geifman et al., 2019): (..., n) -> (...)."""
    c = np.asarray(correct)
    n = c.shape[-1]
    errors = n - np.count_nonzero(c, axis=-1)
    # the i-th accepted is wrong once i > n - e: mean over i of (i - (n - e)) / i = (e - (n - e)(H_n - H_{n-e})) / n
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1))])
    return (errors - (n - errors) * (harmonic[n] - harmonic[n - errors])) / n


def ood_auroc(score_in: np.ndarray, score_out: np.ndarray) -> float:
    """AUROC of a score meant to be higher on out-of-distribution inputs (Hendrycks & Gimpel, 2017): the probability
    that an OOD example scores above an in-distribution one, ties counting half (Mann-Whitney U / (n_in n_out)).
    score_in (n_in,), score_out (n_out,): :func:`ticketctl.analysis.numerics.auroc_rows` of one row."""
    return float(auroc_rows(np.ravel(score_in)[None], np.ravel(score_out)[None])[0])


def fpr_at_tpr(score_in: np.ndarray, score_out: np.ndarray, tpr: float = 0.95) -> float:
    """False-positive rate at ``tpr`` true-positive rate (OOD = positive, higher score = more OOD): the fraction of
    in-distribution examples scoring at or above the threshold that flags ``tpr`` of the OOD examples (the largest
    threshold t with mean(score_out >= t) >= tpr). score_in (n_in,), score_out (n_out,):
    :func:`ticketctl.analysis.numerics.fpr_rows` of one row."""
    return float(fpr_rows(np.ravel(score_in)[None], np.ravel(score_out)[None], tpr)[0])


def reliability(probs: np.ndarray, gold: np.ndarray, bins: int = ECE_BINS) -> dict[str, list]:
    """The reliability diagram (DeGroot & Fienberg, 1983; Guo et al., 2017) of top-label confidence, in :func:`ece`'s
    equal-width bins, pooled over leading axes (several ensembles' examples count together): probs (..., n, C),
    gold (n,) -> {"count": examples per bin, "confidence": their mean confidence, "accuracy": their accuracy} (lists
    of ``bins``; NaN in an empty bin). Σ count/total · |accuracy - confidence| over bins is :func:`ece` of the
    pooled examples. Raises UsageError for bins < 1."""
    if bins < 1:
        raise UsageError(f"--ece-bins {bins}: needs at least 1 bin")
    conf, top = _top(np.asarray(probs, dtype=np.float64))
    correct = (top == np.asarray(gold)).astype(np.float64).ravel()
    conf = conf.ravel()
    bin_of = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(bin_of, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(bin_of, conf, bins) / count
        accuracy = np.bincount(bin_of, correct, bins) / count
    return {"count": count.astype(int).tolist(), "confidence": confidence.tolist(), "accuracy": accuracy.tolist()}


# ---------------------------------------------------------------------------------------------- temperature scaling


def fit_temperature(log_probs: np.ndarray, gold: np.ndarray, weights: np.ndarray | None = None,
                    steps: int = 30) -> np.ndarray:
    """The temperature T minimising the NLL of softmax(log_probs / T) (Guo et al., 2017), by Newton's method on
    beta = 1/T (the NLL is convex in beta). log_probs (..., n, C); ``weights`` (..., n) or (n,) weigh the examples
    (0 leaves one out of the fit). Returns T (...), with beta kept in [1e-3, 1e3]."""
    z = np.asarray(log_probs, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    zy = _gold_prob(z, gold)
    w = np.ones(z.shape[:-1]) if weights is None else np.broadcast_to(np.asarray(weights, dtype=np.float64),
                                                                        z.shape[:-1])
    total = w.sum(axis=-1)
    beta = np.ones(z.shape[:-2])
    cols = [np.ascontiguousarray(z[..., j]) for j in range(z.shape[-1])]  # sums over a few classes: slice by slice
    for _ in range(steps):
        b = beta[..., None]
        top = np.maximum.reduce([b * col for col in cols])
        e = [np.exp(b * col - top) for col in cols]
        norm = sum(e)
        ez = sum(ei * col for ei, col in zip(e, cols)) / norm
        ez2 = sum(ei * col * col for ei, col in zip(e, cols)) / norm
        var = ez2 - ez**2
        grad = (w * (ez - zy)).sum(axis=-1) / total
        hess = (w * var).sum(axis=-1) / total
        new = _step(beta, np.stack([grad, hess]))
        done = np.all(np.abs(new - beta) <= 1e-9 * beta)
        beta = new
        if done:  # Newton converges quadratically from beta = 1: a handful of steps in practice
            break
    return 1.0 / beta


def fold_of(n: int, folds: int) -> np.ndarray:
    """Example i's cross-fitting fold: i mod ``folds`` (deterministic, needs no seed)."""
    return np.arange(n) % folds


def _shifted(log_probs: np.ndarray, gold: np.ndarray):
    """``log_probs`` (..., n, C) shifted so that each example's largest is 0: (the shifted values (..., n, C), the
    C - 1 columns of each example's other classes (a list of (..., n), all <= 0, in no particular order), the top
    class (..., n), the gold class's shifted value (..., n)). With beta > 0 the largest of beta * z is 0 as well, so
    softmax(beta z) needs no further shift and its top-label probability is 1 / (1 + sum_others exp(beta z))."""
    z = np.asarray(log_probs, dtype=np.float64)
    if z.shape[-1] == 2:
        return (z - np.maximum(z[..., 0], z[..., 1])[..., None],) + _two_class_shifted(z[..., 0], z[..., 1], gold)
    top_value, top = _top(z)
    z = z - top_value[..., None]
    others = list(np.moveaxis(np.sort(z, axis=-1)[..., :-1], -1, 0))
    return z, others, top, _gold_prob(z, gold)


def _two_class_shifted(z0: np.ndarray, z1: np.ndarray, gold: np.ndarray):
    """:func:`_shifted` of two classes' log-probabilities (..., n) each, less the shifted values: (the other class's
    column [-|z0 - z1|], the top class (..., n), the gold class's shifted value (..., n): 0 where it is the top)."""
    top = z1 > z0
    d = z0 - z1
    np.negative(np.abs(d, out=d), out=d)
    return [d], top.astype(np.int64), np.where(top == (np.asarray(gold) == 1), 0.0, d)


def _moments(beta: np.ndarray, others: list[np.ndarray], third: bool = False):
    """For softmax(beta z) of shifted values given by the other classes' columns (:func:`_shifted`): (E[z], Var[z],
    the third central moment or None), each (..., n); ``beta`` broadcasts against (..., n). The derivatives in beta
    of an example's NLL log(1 + sum_others exp(beta z)) - beta z_y are E[z] - z_y, Var[z] and the third central
    moment."""
    norm = m1 = m2 = m3 = None
    for d in others:
        e = beta * d
        np.exp(e, out=e)
        ed = e * d
        ed2 = ed * d
        if norm is None:
            norm, m1, m2, m3 = e + 1.0, ed, ed2, ed2 * d if third else None
        else:
            norm += e
            m1 += ed
            m2 += ed2
            if third:
                m3 += ed2 * d
    m1 /= norm
    m2 /= norm
    var = m2 - m1 * m1
    if third:
        m3 /= norm
        m3 = m3 - 3 * m1 * m2 + 2 * m1**3
    return m1, var, m3


def _log_normaliser(beta: np.ndarray, others: list[np.ndarray]) -> np.ndarray:
    """log(1 + sum_others exp(beta z)) (..., n): the log-sum-exp of beta times the shifted values."""
    total = None
    for d in others:
        e = beta * d
        np.exp(e, out=e)
        total = e if total is None else total + e
    return np.log1p(total)


ROW_BLOCK = 65_536  # elements per row block of the moment sums: a block's temporaries stay in a core's cache

# One fold's examples, leading axes flattened to rows: (the other classes' shifted columns, each (R, n_f) and
# contiguous; with two classes their squares (R, n_f), else None; the gold class's shifted values summed (R,)).
Block = tuple[list[np.ndarray], "np.ndarray | None", np.ndarray]


def _blocks(cols: list[np.ndarray], zy: np.ndarray, folds: int, every: int = 1) -> list[Block]:
    """The examples of each cross-fitting fold (:func:`fold_of`), gathered once into contiguous rows; ``every`` > 1
    keeps every ``every``-th example of each fold (the full fit's start)."""
    n = zy.shape[-1]
    cols, zy = [col.reshape(-1, n) for col in cols], zy.reshape(-1, n)
    blocks = []
    for f in range(folds):
        part = [np.ascontiguousarray(c[:, f :: folds * every]) for c in cols]
        blocks.append((part, part[0] * part[0] if len(part) == 1 else None, zy[:, f :: folds * every].sum(-1)))
    return blocks


def _two_class_sums(beta: np.ndarray, d: np.ndarray, sq: np.ndarray, out: np.ndarray, buf: np.ndarray) -> None:
    """:func:`_sums` of one row block with two classes: the other class is taken with probability s = sigmoid(beta d)
    (d <= 0), so E[z] = d s, Var[z] = d^2 s (1 - s) and the third central moment d^3 s (1 - s) (1 - 2 s). Writes
    ``out`` (order, k); ``buf`` (2, >= k, n) holds the temporaries."""
    k = len(d)
    s, w = buf[0, :k], buf[1, :k]
    np.multiply(d, beta[:, None], out=s)
    np.exp(s, out=s)
    np.add(s, 1.0, out=w)
    np.divide(s, w, out=s)  # s = e / (1 + e)
    np.divide(s, w, out=w)  # w = s (1 - s) = e / (1 + e)^2
    out[0] = np.einsum("ij,ij->i", d, s)
    out[1] = np.einsum("ij,ij->i", sq, w)
    if len(out) > 2:
        np.multiply(s, -2.0, out=s)
        s += 1.0
        s *= w
        s *= d
        out[2] = np.einsum("ij,ij->i", sq, s)


def _sums(beta: np.ndarray, block: Block, rows: np.ndarray | None, order: int) -> np.ndarray:
    """The first ``order`` (2 or 3) derivatives in beta of the NLL summed over ``block``'s examples, for its rows
    ``rows`` (all where None) at ``beta`` (k,): (order, k): sum(E[z] - z_y), sum(Var[z]), sum(third central
    moment) (:func:`_moments`). Computed a block of rows at a time."""
    cols, sq, zy_sum = block
    n, k = cols[0].shape[-1], len(beta)
    per = max(1, ROW_BLOCK // max(n, 1))
    out = np.empty((order, k))
    buf = np.empty((2, min(per, k), n)) if sq is not None else None
    for s in range(0, k, per):
        at = slice(s, s + per) if rows is None else rows[s : s + per]
        if sq is not None:
            _two_class_sums(beta[s : s + per], cols[0][at], sq[at], out[:, s : s + per], buf)
            continue
        m1, var, m3 = _moments(beta[s : s + per, None], [c[at] for c in cols], third=order > 2)
        out[0, s : s + per], out[1, s : s + per] = m1.sum(-1), var.sum(-1)
        if order > 2:
            out[2, s : s + per] = m3.sum(-1)
    out[0] -= zy_sum if rows is None else zy_sum[rows]
    return out


def _fitted_betas(cols: list[np.ndarray], zy: np.ndarray, folds: int, steps: int = 30):
    """1/T of the temperature fitted on all examples (Newton's method, as :func:`fit_temperature`), and of each
    fold's cross-fitting temperature (fitted on the other folds): (...), (..., folds). ``cols``, ``zy``: the shifted
    values of :func:`_shifted`, (..., n).

    The full fit starts from beta = 1 on every 8th example of each fold (when n >= ``8 * SUBSAMPLE_START``) and
    finishes on all, by Halley's method (the nearer root of the second-order expansion of the gradient, from the
    first three derivatives; cubic convergence), stopping once a step is below ``NEWTON_TOL`` beta (the error left
    after such a step is of the order of its cube). Its last pass over the examples also gives the per-fold first,
    second and third derivatives the fold fits start from: the NLL of the other folds differs from the full NLL by
    one fold's terms, so its minimum is usually a small step away (the nearer root of the second-order expansion of
    the leave-fold-out gradient); Newton's method on the other folds goes on from there to the same tolerance
    (usually one step, which verifies the start). Only the fits still moving are computed, each fold's examples
    are gathered once, and two classes (one other class) take one exponential per example and pass.
    Temperatures within 1e-8 (relative) of separate fits run to 1e-9 (``tests/test_metrics.py``)."""
    beta, state = _full_fit(cols, zy, folds if folds >= 2 else 1, steps)
    if folds < 2:
        return beta, beta[..., None]
    return beta, _fold_fits(state, zy.shape[:-1], steps)


def _full_fit(cols: list[np.ndarray], zy: np.ndarray, folds: int = 1, steps: int = 30):
    """beta = 1/T of the temperature fitted on all examples (:func:`_fitted_betas`' full fit), (...), and what the
    fold fits start from: (the ``folds`` blocks, the beta of the last evaluation (R,), the per-fold derivative sums
    there (3, R, folds))."""
    blocks = _blocks(cols, zy, folds)
    beta = np.ones(len(blocks[0][2]))
    if zy.shape[-1] >= 8 * SUBSAMPLE_START:  # most of the way on every 8th example, the last steps on all
        beta = _fit(beta, _blocks(cols, zy, folds, every=8), steps, 1e-3, order=3, grow=3.0)[0]
    beta, at, sums = _fit(beta, blocks, steps, NEWTON_TOL, order=3)
    return beta.reshape(zy.shape[:-1]), (blocks, at, sums)


def _fold_fits(state, lead: tuple, steps: int = 30) -> np.ndarray:
    """beta of each fold's temperature, fitted on the other folds from the full fit's ``state`` (:func:`_full_fit`,
    :func:`_fitted_betas`): (lead..., folds)."""
    blocks, at, sums = state
    folds = len(blocks)
    g, h, t = sums.sum(-1, keepdims=True) - sums  # the other folds' derivatives at ``at``
    disc = np.maximum(h * h - 2 * t * g, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.where(h > 1e-12, -2 * g / (h + np.sqrt(disc)), 0.0)
    start = np.clip(at[:, None] + np.clip(step, -at[:, None] / 2, at[:, None]), 1e-3, 1e3)
    fold_beta = np.stack([_fit(start[:, f], blocks[:f] + blocks[f + 1 :], steps, NEWTON_TOL, order=2)[0]
                          for f in range(folds)], axis=-1)
    return fold_beta.reshape(tuple(lead) + (folds,))


def _fit(beta: np.ndarray, blocks: list[Block], steps: int, tol: float, order: int, grow: float = 0.5):
    """Guarded Newton's (``order`` 2) or Halley's (3) method on each row's beta (R,) for the NLL of the examples of
    ``blocks`` (a step adds at most ``grow`` times beta, :func:`_step`); a row stops once its step is at most
    ``tol * beta``; at most ``steps`` steps. Only the rows still moving are computed. Returns (beta (R,), the beta
    of each row's last evaluation (R,), the per-block derivative sums there (order, R, blocks))."""
    beta, at = beta.copy(), beta.copy()
    kept = np.zeros((order, len(beta), len(blocks)))
    active = None  # all rows
    for _ in range(steps):
        rows = beta if active is None else beta[active]
        per_block = np.stack([_sums(rows, block, active, order) for block in blocks], axis=-1)
        new = _step(rows, per_block.sum(-1), grow)
        moving = np.abs(new - rows) > tol * rows
        if active is None:
            at, kept, beta, active = rows.copy(), per_block, new, np.flatnonzero(moving)
        else:
            at[active], kept[:, active], beta[active], active = rows, per_block, new, active[moving]
        if not len(active):
            break
    return beta, at, kept


def _step(beta: np.ndarray, sums: np.ndarray, grow: float = 0.5) -> np.ndarray:
    """One guarded step on beta from the NLL's derivative sums (2 or 3, R): Newton's, or with the third derivative
    Halley's (the nearer root of the second-order expansion of the gradient; Newton's where it has none); it adds at
    most ``grow`` times beta and leaves at least 0, and the result is kept in [1e-3, 1e3]. The fits' start on a
    subsample may grow beta fourfold a step, the others by half (as :func:`fit_temperature`)."""
    g, h = sums[0], sums[1]
    safe = np.where(h > 1e-12, h, 1.0)
    step = g / safe
    if len(sums) > 2:
        disc = h * h - 2 * sums[2] * g
        step = np.where(disc > 0, 2 * g / (safe + np.sqrt(np.maximum(disc, 0.0))), step)
    step = np.where(h > 1e-12, step, np.sign(g) * 0.5)
    return np.clip(beta - np.clip(step, -grow * beta, beta), 1e-3, 1e3)


def _scaled_terms(log_probs: np.ndarray, gold: np.ndarray, folds: int):
    """Cross-fitted temperature scaling of ``log_probs`` (..., n, C) in the terms the metrics need: (the scaled
    log-probability of the gold class (..., n), the scaled top-label probability (..., n), the top class (..., n),
    the full fit's beta (...), the per-example beta (..., n), the shifted values (..., n, C))."""
    z, others, top, zy = _shifted(log_probs, gold)
    beta, fold_beta = _fitted_betas(others, zy, folds)
    gold_log_p, conf = _scaled_values(fold_beta, others, zy)
    return gold_log_p, conf, top, beta, fold_beta[..., fold_of(zy.shape[-1], folds)], z


def _scaled_values(fold_beta: np.ndarray, others: list[np.ndarray], zy: np.ndarray):
    """The scaled log-probability of the gold class and the scaled top-label probability 1 / (1 + sum_others
    exp(beta z)), each (..., n), of the shifted values of :func:`_shifted` with each example scaled by its fold's
    beta (``fold_beta`` (..., folds), folds by :func:`fold_of`)."""
    n, folds = zy.shape[-1], fold_beta.shape[-1]
    fold = fold_of(n, folds)
    if len(others) != 1:
        per_example = fold_beta[..., fold]
        log_norm = _log_normaliser(per_example, others)
        return per_example * zy - log_norm, np.exp(-log_norm)
    d, y, b = others[0].reshape(-1, n), zy.reshape(-1, n), fold_beta.reshape(-1, folds)
    gold_log_p, conf = np.empty_like(d), np.empty_like(d)
    per = max(1, ROW_BLOCK // max(n, 1))
    for s in range(0, len(d), per):  # two classes, a block of rows at a time: one exponential per example
        rows, at = b[s : s + per][:, fold], slice(s, s + per)
        e = np.multiply(rows, d[at], out=conf[at])
        np.exp(e, out=e)
        np.log1p(e, out=gold_log_p[at])
        np.subtract(np.multiply(rows, y[at], out=rows), gold_log_p[at], out=gold_log_p[at])
        e += 1.0
        np.reciprocal(e, out=e)
    return gold_log_p.reshape(zy.shape), conf.reshape(zy.shape)


def _check_folds(n: int, folds: int) -> None:
    if folds < 2 or n < 2 * folds:
        raise UsageError(f"temperature scaling cross-fits over {folds} folds: needs at least {2 * folds} examples")


def cross_fitted_scaling(log_probs: np.ndarray, gold: np.ndarray, folds: int = FOLDS, reported: bool = True):
    """Temperature-scaled probabilities where each example's temperature was fitted on the other folds only (so no
    scored example fits its own temperature; Ashukha et al., 2020 compare methods after this). log_probs (..., n, C)
    -> (scaled probs (..., n, C), the temperature fitted on all examples (...), reported; None with ``reported``
    False). Raises UsageError when n < 2 * folds."""
    z = np.asarray(log_probs, dtype=np.float64)
    _check_folds(z.shape[-2], folds)
    _, _, _, beta, per_example, shifted = _scaled_terms(z, gold, folds)
    e = np.exp(per_example[..., None] * shifted)
    return e / e.sum(axis=-1, keepdims=True), 1.0 / beta if reported else None


# ---------------------------------------------------------------------------------------------- regression


def gaussian_nll(pred: np.ndarray, spread: np.ndarray, gold: np.ndarray, folds: int = FOLDS) -> np.ndarray:
    """Mean Gaussian NLL (nats) of gold scores under N(pred, spread^2 + s^2), where the noise variance s^2 is fitted
    on the other folds (cross-fitting) as the mean of max((y - pred)^2 - spread^2, 0) there (Lakshminarayanan et al.,
    2017 use the members' spread as the predictive variance). pred, spread (..., n), gold (n,) -> (...)."""
    pred = np.asarray(pred, dtype=np.float64)
    var_m = np.asarray(spread, dtype=np.float64) ** 2
    sq = (np.asarray(gold, dtype=np.float64) - pred) ** 2
    n = pred.shape[-1]
    fold = fold_of(n, folds)
    extra = np.maximum(sq - var_m, 0.0)
    noise = np.empty_like(pred)
    for f in range(folds):
        noise[..., fold == f] = extra[..., fold != f].mean(axis=-1, keepdims=True)
    var = np.maximum(var_m + noise, 1e-6)
    return (0.5 * np.log(2 * np.pi * var) + sq / (2 * var)).mean(axis=-1)


# ---------------------------------------------------------------------------------------------- registrations

_PREDICTION_METRICS = ("accuracy", "f1", "matthews", "pearson", "spearman")
for _name in _PREDICTION_METRICS:  # the task metrics of predictions: ticketctl.data.tasks.metric computes them
    register(_name, higher_is_better=True, kind="regression" if _name in ("pearson", "spearman") else "classification",
             source="GLUE (Wang et al., 2019)")(
        lambda c, gold, o, _n=_name: prediction_metric(_n, c.predictions, gold))


def _memo(c: Combined, key: str, gold, compute):
    """``compute()`` once per ensemble batch ``c`` and gold labels: the metrics of one batch share their sorts, fits
    and derived arrays (held on ``c`` itself, so they go with it)."""
    store = c.__dict__.setdefault("_memo", {})
    entry = store.get(key)
    if entry is None or entry[0] is not gold:
        entry = store[key] = (gold, compute())
    return entry[1]


def _confidence_correct(c: Combined, gold):
    """Top-label probability and whether the top class is the gold one, (..., n) each."""
    def compute():
        conf, top = _top(c.probs)
        return conf, top == np.asarray(gold)
    return _memo(c, "confidence", gold, compute)


def _gold_p(c: Combined, gold):
    return _memo(c, "gold_prob", gold, lambda: _gold_prob(c.probs, gold))


def _gold_log_prob(c: Combined, gold):
    return _memo(c, "gold_log_prob", gold, lambda: np.log(np.clip(_gold_p(c, gold), EPS, None)))


def _shifted_of(c: Combined, gold):
    """:func:`_shifted` of the ensemble's log-probabilities, once per batch."""
    def compute():
        p = c.probs
        if p.shape[-1] != 2:
            return _shifted(np.log(np.clip(p, EPS, None)), gold)
        return (None,) + _two_class_shifted(np.log(np.maximum(p[..., 0], EPS)), np.log(np.maximum(p[..., 1], EPS)),
                                            gold)
    return _memo(c, "shifted", gold, compute)


def _full_fit_of(c: Combined, gold, folds: int):
    """:func:`_full_fit` of the ensemble (examples gathered by ``folds`` cross-fitting folds where there are at
    least 2 x ``folds`` examples), once per batch: its beta is ``temperature``'s value, its last pass is where the
    folds' fits start."""
    def compute():
        _, others, _, zy = _shifted_of(c, gold)
        return _full_fit(others, zy, folds if zy.shape[-1] >= 2 * folds else 1)
    return _memo(c, f"full_fit{folds}", gold, compute)


def _scaled(c: Combined, gold, o: Options):
    """Cross-fitted temperature scaling of the ensemble's probabilities: (scaled gold log-probability, scaled
    top-label probability, top class), shared by ts_nll and ts_ece."""
    def compute():
        _check_folds(c.probs.shape[-2], o.folds)
        _, others, top, zy = _shifted_of(c, gold)
        fold_beta = _fold_fits(_full_fit_of(c, gold, o.folds)[1], zy.shape[:-1])
        gold_log_p, conf = _scaled_values(fold_beta, others, zy)
        return gold_log_p, conf, top
    return _memo(c, f"scaled{o.folds}", gold, compute)


def _calibration_beta(c: Combined, o: Options):
    """1/T of each ensemble's one temperature fitted (:func:`fit_temperature`) on all of the calibration split
    (``o.calibration``): its combined log-probabilities there (``c.calibration_probs``) and the split's gold labels;
    (...). No evaluation example takes part in the fit."""
    def compute():
        if c.calibration_probs is None:
            raise ValueError("Options.calibration is set but the ensembles have no calibration_probs: combine them "
                             "with weighted_values or with_calibration")
        return 1.0 / fit_temperature(np.log(np.clip(c.calibration_probs, EPS, None)), o.calibration.labels)
    return _memo(c, "calibration_beta", o.calibration.labels, compute)


def _calibration_scaled(c: Combined, gold, o: Options):
    """:func:`_scaled`'s terms with the calibration split's temperature (:func:`_calibration_beta`) for every
    evaluation example: (scaled gold log-probability, scaled top-label probability, top class), (..., n) each; the
    same shifted values and scaling as the cross-fitted path (:func:`_shifted_of`, :func:`_scaled_values`), with
    one temperature for all examples."""
    def compute():
        _, others, top, zy = _shifted_of(c, gold)  # beta > 0: the top class is the unscaled one's
        gold_log_p, conf = _scaled_values(np.asarray(_calibration_beta(c, o))[..., None], others, zy)  # one "fold"
        return gold_log_p, conf, top
    return _memo(c, "calibration_scaled", gold, compute)


def temperature_fit(options: Options) -> str:
    """Where ts_nll's, ts_ece's and temperature's temperature is fitted, in words (the tables' ``temperature_fit``)."""
    if options.calibration is not None:
        return f"calibration split {options.calibration.split} ({len(options.calibration.labels)} examples)"
    return f"cross-fitted over {options.folds} folds"


def _calibration_combiner(options: Options, combine: str, regression: bool):
    """``w`` (B, m) -> the ensembles of those weights combined as ``combine`` combines them, on the calibration split
    (B, n_cal, C); None for every ``w`` without a calibration split (or for regression, vote)."""
    from ticketctl.analysis.combine import softmax

    if options.calibration is None or regression or combine not in PROBABILISTIC:
        return lambda w: None
    x = np.asarray(options.calibration.outputs, dtype=np.float64)
    m, n, c = x.shape
    flat = x.reshape(m, n * c) if combine == "logits" else softmax(x).reshape(m, n * c)
    if combine == "logits":
        return lambda w: softmax((w @ flat).reshape(len(w), n, c))
    return lambda w: (w @ flat).reshape(len(w), n, c)


def with_calibration(combined: Combined, m: int, combine: str, options: Options) -> Combined:
    """``combined`` (the ensemble of all ``m`` members, :func:`combine_members`) with its probabilities on
    ``options.calibration``'s split attached (unchanged without one), for :func:`evaluate`'s temperature metrics."""
    probs = _calibration_combiner(options, combine, False)(np.full((1, m), 1.0 / m))
    return combined if probs is None else replace(combined, calibration_probs=probs[0])


def _sorted(c: Combined, gold):
    """Each row's confidences and correctness in ascending order of confidence, ties in example order (a stable
    sort), and which rows have tied confidences: (conf (..., n), correct (..., n), tied (...)). Adaptive ECE and the
    risk-coverage curve share it."""
    return _memo(c, "sorted", gold, lambda: _sorted_pairs(*_confidence_correct(c, gold)))


def _sorted_pairs(conf: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_sorted`'s (conf ascending, correct in that order, rows with tied confidences) of confidences >= 0
    and correctness (..., n), as :func:`stable_argsort` orders them, without an argsort and its gathers where a row
    has no two confidences within one unit in the last place: non-negative floats sort like their bit patterns read
    as integers, so each confidence's lowest bit is replaced by its correctness and the integers are sorted; the
    bits above it keep the order unless two confidences differ in that bit alone, and those rows (and rows with
    equal confidences) take the stable argsort. Bit for bit the stable argsort's order."""
    conf = np.ascontiguousarray(conf, dtype=np.float64)
    ordered = np.sort(conf, axis=-1)
    tied = np.any(ordered[..., 1:] == ordered[..., :-1], axis=-1)
    packed = (conf.view(np.int64) & ~np.int64(1)) | correct
    packed.sort(axis=-1)
    high = packed >> 1
    slow = tied | np.any(high[..., 1:] == high[..., :-1], axis=-1)
    correct_sorted = (packed & 1).astype(bool)
    if np.any(slow):
        order = np.argsort(conf[slow], axis=-1, kind="stable")
        correct_sorted[slow] = np.take_along_axis(np.broadcast_to(correct, conf.shape)[slow], order, axis=-1)
    return ordered, correct_sorted, tied


@register("nll", higher_is_better=False, kind="classification", combines=PROBABILISTIC,
          source="Lakshminarayanan et al. (2017); Ovadia et al. (2019)")
def _nll(c, gold, o):
    return -_gold_log_prob(c, gold).mean(axis=-1)


@register("brier", higher_is_better=False, kind="classification", combines=PROBABILISTIC, source="Brier (1950)")
def _brier(c, gold, o):
    # sum_j (p_j - [j = y])^2 = sum_j p_j^2 - 2 p_y + 1; with two classes (p_other = 1 - p_y) 2 (1 - p_y)^2
    p, gold_p = c.probs, _gold_p(c, gold)
    if p.shape[-1] == 2:
        miss = 1.0 - gold_p
        return 2.0 * (miss * miss).mean(axis=-1)
    return (_csum(p * p) - 2 * gold_p + 1.0).mean(axis=-1)


@register("ece", higher_is_better=False, kind="classification", combines=PROBABILISTIC,
          source="Naeini et al. (2015); Guo et al. (2017)")
def _ece(c, gold, o):
    return _ece_of(*_confidence_correct(c, gold), o.ece_bins)


@register("adaptive_ece", higher_is_better=False, kind="classification", combines=PROBABILISTIC,
          source="Nixon et al. (2019)")
def _adaptive_ece(c, gold, o):
    bins = o.ece_bins
    conf, correct, _ = _sorted(c, gold)
    n = conf.shape[-1]
    if bins < 1 or n < bins:  # empty bins: the general path
        conf, correct = _confidence_correct(c, gold)
        return _adaptive_gap(conf, correct, stable_argsort(conf), bins)
    starts = -((-np.arange(bins) * n) // bins)  # rank r is in bin floor(r * bins / n): bin b starts at ceil(b n / B)
    gap = np.add.reduceat(conf, starts, axis=-1) - np.add.reduceat(correct.astype(np.float64), starts, axis=-1)
    return np.abs(gap).sum(axis=-1) / n


@register("temperature", higher_is_better=None, kind="classification", combines=PROBABILISTIC,
          source="Guo et al. (2017)", fitted=True)
def _temperature(c, gold, o):
    if o.calibration is not None:
        return 1.0 / _calibration_beta(c, o)
    return 1.0 / _full_fit_of(c, gold, o.folds)[0]


@register("ts_nll", higher_is_better=False, kind="classification", combines=PROBABILISTIC,
          source="Ashukha et al. (2020)", fitted=True)
def _ts_nll(c, gold, o):
    return -(_calibration_scaled if o.calibration is not None else _scaled)(c, gold, o)[0].mean(axis=-1)


@register("ts_ece", higher_is_better=False, kind="classification", combines=PROBABILISTIC,
          source="Guo et al. (2017); Ashukha et al. (2020)", fitted=True)
def _ts_ece(c, gold, o):
    _, conf, top = (_calibration_scaled if o.calibration is not None else _scaled)(c, gold, o)
    return _ece_of(conf, top == np.asarray(gold), o.ece_bins)


def _aurc_of(c, gold):
    def compute():
        # The ascending sort read backwards is the acceptance order (the weights sum to 1); not where equal
        # confidences must keep example order in descending order too: those rows are sorted again.
        _, correct, tied = _sorted(c, gold)
        value = 1.0 - correct.astype(np.float64) @ _area_weights(correct.shape[-1])[::-1]
        if np.any(tied):
            raw_conf, raw_correct = _confidence_correct(c, gold)
            value[tied] = _curve_area(raw_correct[tied], np.argsort(-raw_conf[tied], axis=-1, kind="stable"))
        return value
    return _memo(c, "aurc", gold, compute)


@register("aurc", higher_is_better=False, kind="classification", combines=PROBABILISTIC,
          source="Geifman & El-Yaniv (2017)")
def _aurc(c, gold, o):
    return _aurc_of(c, gold)


@register("eaurc", higher_is_better=False, kind="classification", combines=PROBABILISTIC,
          source="Geifman et al. (2019)")
def _eaurc(c, gold, o):
    return _aurc_of(c, gold) - oracle_aurc(_confidence_correct(c, gold)[1])


@register("total_entropy", higher_is_better=None, kind="classification", combines=PROBABILISTIC,
          source="Depeweg et al. (2018); Malinin & Gales (2018)")
def _total_entropy(c, gold, o):
    return _memo(c, "total_entropy", None, lambda: entropy(c.member_probs_mean).mean(axis=-1))


@register("expected_entropy", higher_is_better=None, kind="classification", combines=PROBABILISTIC,
          source="Depeweg et al. (2018); Malinin & Gales (2018)", member_entropy=True)
def _expected_entropy(c, gold, o):
    return np.asarray(c.member_entropy, dtype=np.float64).mean(axis=-1)


@register("mutual_information", higher_is_better=None, kind="classification", combines=PROBABILISTIC,
          source="Depeweg et al. (2018); Malinin & Gales (2018)", member_entropy=True)
def _mutual_information(c, gold, o):
    return _total_entropy(c, gold, o) - _expected_entropy(c, gold, o)


@register("gaussian_nll", higher_is_better=False, kind="regression", source="Lakshminarayanan et al. (2017)")
def _gaussian_nll(c, gold, o):
    return gaussian_nll(c.predictions, c.spread, gold, o.folds)


@register("spread_error_corr", higher_is_better=True, kind="regression",
          source="Pearson's r of the members' spread with the absolute error")
def _spread_error_corr(c, gold, o):
    from ticketctl.data.tasks import _pearson

    return _pearson(c.spread, np.abs(np.asarray(c.predictions, dtype=np.float64) - np.asarray(gold)))


# ---------------------------------------------------------------------------------------------- from member outputs


def combine_members(outputs: np.ndarray, combine: str, regression: bool) -> Combined:
    """The :class:`Combined` of members stacked (m, n, C) raw outputs (logits; regression: (m, n, 1) scores), or of a
    batch of ensembles stacked (..., m, n, C)."""
    from ticketctl.analysis.combine import softmax

    x = np.asarray(outputs, dtype=np.float64)
    if regression:
        v = x[..., 0]
        return Combined(v.mean(axis=-2), spread=v.std(axis=-2) if v.shape[-2] > 1 else np.zeros(v.shape[:-2] +
                                                                                                  v.shape[-1:]))
    member = softmax(x)
    mean = member.mean(axis=-3)
    probs = softmax(x.mean(axis=-3)) if combine == "logits" else mean if combine == "probs" else None
    if combine == "vote":
        shares = np.eye(x.shape[-1])[x.argmax(-1)].mean(axis=-3)
        pred = (shares + 1e-4 * mean).argmax(-1)
    else:
        pred = probs.argmax(-1)
    return Combined(pred, probs, mean, entropy(member).mean(axis=-2))


CHUNK_ELEMENTS = 2_000_000  # bound on the (ensembles x members x examples x classes) block held at once


def combination_values(outputs: np.ndarray, labels: np.ndarray, combos: np.ndarray, names: list[str], combine: str,
                       regression: bool, options: Options = Options()) -> dict[str, np.ndarray]:
    """Each named metric of every ensemble whose members are a row of ``combos`` (B, k) indices into the members'
    raw outputs (m, n, C): arrays of B values (:func:`weighted_values` with weight 1/k on each member of a row)."""
    if not names:
        return {}
    combos = np.asarray(combos, dtype=np.int64)
    weights = np.zeros((len(combos), len(outputs)))
    np.put_along_axis(weights, combos, 1.0 / combos.shape[1], axis=1)
    return weighted_values(outputs, labels, weights, names, combine, regression, options)


def weighted_values(outputs: np.ndarray, labels: np.ndarray, weights: np.ndarray, names: list[str], combine: str,
                    regression: bool, options: Options = Options()) -> dict[str, np.ndarray]:
    """Each named metric of every ensemble given as a row of ``weights`` (B, m), each row summing to 1 (1/k on a
    k-member ensemble's members; other weights average members unequally), over the members' raw outputs (m, n, C):
    arrays of B values, computed in chunks. Each member's probabilities and entropy are computed once; a chunk's
    ensembles are the weights times them (one matrix product); the entropies only where a named metric reads them
    (``Metric.member_entropy``). The one path that scores registered metrics of
    ensembles: ``ensemble --scores`` and ``stats --score`` (``significance.MetricScorer``) both come here."""
    from ticketctl.analysis.combine import softmax

    if not names:
        return {}
    weights = np.asarray(weights, dtype=np.float64)
    x = np.asarray(outputs, dtype=np.float64)
    m, n, c = x.shape
    if regression:
        flat = x[..., 0]
        squares = flat**2
    else:
        member = softmax(x)
        flat = member.reshape(m, n * c)
        logits = x.reshape(m, n * c) if combine == "logits" else None
        member_entropy = entropy(member) if any(get(name).member_entropy for name in names) else None
    per = max(1, CHUNK_ELEMENTS // max(1, n * c))
    calibrated = _calibration_combiner(options, combine, regression)

    def chunk(w: np.ndarray) -> dict:
        if regression:
            mean = w @ flat
            var = np.maximum(w @ squares - mean**2, 0.0)
            combined = Combined(mean, spread=np.sqrt(var))
        else:
            mean = (w @ flat).reshape(len(w), n, c)
            if combine == "vote":
                probs = None
                shares = (w @ np.eye(c)[x.argmax(-1)].reshape(m, n * c)).reshape(len(w), n, c)
                pred = (shares + 1e-4 * mean).argmax(-1)
            else:
                probs = mean if combine == "probs" else softmax((w @ logits).reshape(len(w), n, c))
                conf, pred = _top(probs)
            combined = Combined(pred, probs, mean, None if member_entropy is None else w @ member_entropy,
                                calibration_probs=calibrated(w))
            if probs is not None:
                combined.__dict__["_memo"] = {"confidence": (labels, (conf, pred == np.asarray(labels)))}
        return {name: np.atleast_1d(v) for name, v in evaluate(names, combined, labels, options).items()}

    chunks = [weights[start : start + per] for start in range(0, len(weights), per)]
    parts = _map_chunks(chunk, chunks, threaded=any(get(name).fitted for name in names))
    return {name: np.concatenate([p[name] for p in parts]) for name in names}


def metric_threads() -> int:
    """Threads that score chunks of ensembles at once (numpy releases the GIL in its loops): ``OMP_NUM_THREADS``
    where set (as for the BLAS), else the CPUs this process may run on, at most 8."""
    import os

    given = os.environ.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) > 0:
        return min(int(given), 8)
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8))


def _map_chunks(fn, chunks: list, threaded: bool) -> list:
    """``[fn(c) for c in chunks]``; ``threaded`` (a fitted metric is asked for), on :func:`metric_threads` threads
    where there are several chunks. Each chunk is computed alone (its own arrays, its own shared fits), so the values
    do not depend on the threads. Only fitted metrics: for the others the threads' matrix products contend with the
    BLAS's own threads (``benchmarks/bench_scores.py --cli`` on 2 cores: nll,brier,ece 1.71 s with threads, 1.40 s
    in the run before without them; ts_nll,ts_ece 7.8 s against 11.4 s)."""
    threads = min(metric_threads(), len(chunks)) if threaded else 1
    if threads <= 1:
        return [fn(c) for c in chunks]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, chunks))


# ---------------------------------------------------------------------------------------------- the seed test


class MetricScorer(Scorer):
    """A registered metric (``ticketctl.analysis.metrics``: nll, brier, ece, ts_nll, ...) for ensembles given as
    membership weights, with :class:`Scorer`'s interface, so the protocol, the permutation test and the jackknife
    take any metric. Scores through :func:`weighted_values`, the path of ``ensemble --scores``: an ensemble's
    value here is the one ``ensemble --size k --scores NAME`` averages.

    ``outputs`` (M, N, C): the members' raw outputs (logits; regression (M, N, 1)); ``combine``: probs | logits |
    vote. Raises UsageError for an unknown name, one of the other task kind, one undefined under ``combine`` (nll
    under vote) or one that is reported rather than better or worse (temperature, entropies): it has no direction
    to test."""

    def __init__(self, task, outputs: np.ndarray, labels: np.ndarray, name: str, combine: str = "probs",
                 options=None):
        chosen, undefined = parse_scores(name, task.is_regression, combine)
        if undefined:
            raise UsageError(f"--score {name}: undefined under --combine {combine} (vote shares are not "
                             "probabilities)")
        if len(chosen) != 1:
            raise UsageError(f"--score {name!r}: give one registered metric")
        entry = get(chosen[0])
        if entry.higher_is_better is None:
            raise UsageError(f"--score {entry.name}: a quantity reported, neither better nor worse: nothing to test")
        self.task, self.labels, self.x = task, labels, np.asarray(outputs, dtype=np.float64)
        self.metric, self.combine = entry, combine
        self.options = options if options is not None else Options()

    name = property(lambda self: self.metric.name)
    higher_is_better = property(lambda self: self.metric.higher_is_better)

    def _with(self, x: np.ndarray, labels: np.ndarray) -> "MetricScorer":
        sub = object.__new__(type(self))
        sub.__dict__.update(self.__dict__)
        sub.x, sub.labels, sub._known = x, labels, {}
        return sub

    def subset(self, members) -> "MetricScorer":
        """A scorer over these members only; their outputs on the calibration split too, where there is one."""
        sub = super().subset(members)
        if self.options.calibration is not None:
            sub.options = replace(self.options, calibration=self.options.calibration.subset(members))
        return sub

    def scores(self, weights: np.ndarray, examples: np.ndarray | None = None) -> np.ndarray:
        """The metric of each ensemble (row of ``weights``: membership, or counts), on ``examples`` (default all).
        On all examples each distinct row is computed once per scorer and remembered: a permutation test meets the
        same ensembles again and again (a paired test of k-member ensembles only 2^k variants of each), which for
        the cross-fitted ``ts_*`` metrics is most of its cost."""
        weights = np.asarray(weights, dtype=np.float64)
        if not len(weights):
            return np.zeros(0)
        if examples is not None:
            return self._compute(weights, self.x[:, examples], self.labels[examples])
        known = self.__dict__.setdefault("_known", {})
        keys = [row.tobytes() for row in weights]
        missing = list(dict.fromkeys(k for k in keys if k not in known))
        if missing:
            rows = np.frombuffer(b"".join(missing), dtype=np.float64).reshape(len(missing), -1)
            known.update(zip(missing, self._compute(rows, self.x, self.labels)))
        return np.fromiter((known[k] for k in keys), dtype=np.float64, count=len(keys))

    def _compute(self, weights: np.ndarray, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return weighted_values(x, labels, weights / weights.sum(axis=1, keepdims=True), [self.name], self.combine,
                               self.task.is_regression, self.options)[self.name]


def scorer_for(task, outputs: np.ndarray, labels: np.ndarray, combine: str = "probs",
               score: str | None = None, options: Options | None = None) -> Scorer:
    """The scorer of ``stats``: the task's headline metric (:class:`Scorer`), or with ``score`` a registered metric
    (:class:`MetricScorer`, scored with ``options``). Raises UsageError as those do."""
    from ticketctl.analysis.combine import member_terms

    if score is None:
        return Scorer(task, member_terms(task, outputs, combine), labels)
    return MetricScorer(task, outputs, labels, score, combine, options)


def vote_note(undefined: list[str]) -> str:
    """The notice for metrics left out under ``--combine vote``; "" when none."""
    if not undefined:
        return ""
    return (f"{', '.join(undefined)} undefined under --combine vote (vote shares are not probabilities: the NLL of "
            "a zero share is infinite): left out")
