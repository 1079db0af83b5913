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

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ticketctl.analysis.significance import Scorer
from ticketctl.data.tasks import metric as prediction_metric
from ticketctl.errors import UsageError

ECE_BINS = 15  # Guo et al. (2017)
FOLDS = 5  # cross-fitting folds for the temperature and the regression noise variance
EPS = 1e-12  # probabilities are clipped here before a log: a member that gives the gold class 0 costs -log(1e-12)



def _csum(a: np.ndarray) -> np.ndarray:
    """Sum over the last (class) axis, slice by slice when it is short: numpy's reduction over a last axis of 2 or 3
    is several times slower than adding the slices."""
    if a.shape[-1] > 8:
        return a.sum(axis=-1)
    out = a[..., 0].copy()
    for j in range(1, a.shape[-1]):
        out += a[..., j]
    return out


def _top(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(max, argmax) over the last (class) axis; a tie goes to the lower class, as argmax does."""
    if a.shape[-1] > 8:
        return a.max(axis=-1), a.argmax(axis=-1)
    best, arg = a[..., 0].copy(), np.zeros(a.shape[:-1], dtype=np.int64)
    for j in range(1, a.shape[-1]):
        better = a[..., j] > best
        best = np.where(better, a[..., j], best)
        arg[better] = j
    return best, arg


# ---------------------------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Combined:
    """What a metric may look at (see the module docstring for shapes); fields a combine does not give are None."""

    predictions: np.ndarray
    probs: np.ndarray | None = None
    member_probs_mean: np.ndarray | None = None
    member_entropy: np.ndarray | None = None
    spread: np.ndarray | None = None


@dataclass(frozen=True)
class Options:
    ece_bins: int = ECE_BINS
    folds: int = FOLDS


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[Combined, np.ndarray, Options], np.ndarray]
    higher_is_better: bool | None  # None: a quantity reported, not a quality (temperature, mutual information)
    kind: str  # "classification" | "regression"
    combines: tuple[str, ...]  # the --combine modes under which it is defined
    source: str  # the paper that defines it

    @property
    def direction(self) -> str:
        if self.higher_is_better is None:
            return "reported"
        return "higher is better" if self.higher_is_better else "lower is better"


REGISTRY: dict[str, Metric] = {}
ALL_COMBINES = ("probs", "logits", "vote")
PROBABILISTIC = ("probs", "logits")


def register(name: str, *, higher_is_better: bool | None, kind: str, combines: tuple[str, ...] = ALL_COMBINES,
             source: str = ""):
    """Decorator: add ``fn(combined, gold, options) -> value over leading axes`` to the registry as ``name``."""

    def add(fn):
        REGISTRY[name] = Metric(name, fn, higher_is_better, kind, combines, source)
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


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats over the last axis: (..., C) -> (...)."""
    p = np.asarray(probs, dtype=np.float64)
    return -_csum(p * np.log(np.clip(p, EPS, None)))


def _gold_prob(probs: np.ndarray, gold: np.ndarray) -> np.ndarray:
    gold = np.asarray(gold, dtype=np.int64)
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


def ece(probs: np.ndarray, gold: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Expected calibration error (Naeini et al., 2015; Guo et al., 2017): top-label confidence in ``bins`` equal-width
    bins of [0, 1] (bin i holds (i/B, (i+1)/B], the first also 0), sum over bins of |bin|/n * |accuracy - mean
    confidence|. probs (..., n, C), gold (n,) -> (...). Raises UsageError for bins < 1."""
    if bins < 1:
        raise UsageError(f"--ece-bins {bins}: needs at least 1 bin")
    conf, top = _top(np.asarray(probs, dtype=np.float64))
    correct = top == np.asarray(gold)
    bin_of = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    return _binned_gap(conf, correct, bin_of, bins)


def adaptive_ece(probs: np.ndarray, gold: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Adaptive (equal-mass) ECE (Nixon et al., 2019): the examples sorted by top-label confidence and cut into
    ``bins`` bins of as equal size as possible (sizes differ by at most one; example of rank r goes to bin
    floor(r * B / n)), then as :func:`ece`. (..., n, C), (n,) -> (...)."""
    if bins < 1:
        raise UsageError(f"--ece-bins {bins}: needs at least 1 bin")
    conf, top = _top(np.asarray(probs, dtype=np.float64))
    correct = top == np.asarray(gold)
    n = conf.shape[-1]
    order = np.argsort(conf, axis=-1, kind="stable")
    rank_bin = (np.arange(n) * bins) // n
    bin_of = np.empty(conf.shape, dtype=np.int64)
    np.put_along_axis(bin_of, order, np.broadcast_to(rank_bin, conf.shape), axis=-1)
    return _binned_gap(conf, correct, bin_of, bins)


def aurc(confidence: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Area under the risk-coverage curve (Geifman & El-Yaniv, 2017): examples accepted in order of decreasing
    confidence; at coverage i/n the risk is the error rate of the i accepted; AURC is the mean of those n risks.
    Ties in confidence are broken by example order (stable sort). confidence, correct (..., n) -> (...)."""
    conf = np.asarray(confidence, dtype=np.float64)
    err = 1.0 - np.asarray(correct, dtype=np.float64)
    order = np.argsort(-conf, axis=-1, kind="stable")
    errs = np.take_along_axis(np.broadcast_to(err, conf.shape), order, axis=-1)
    n = conf.shape[-1]
    return (np.cumsum(errs, axis=-1) / np.arange(1, n + 1)).mean(axis=-1)


def oracle_aurc(correct: np.ndarray) -> np.ndarray:
    """The AURC of a confidence that ranks every error last (Geifman et al., 2019): (..., n) -> (...)."""
    c = np.asarray(correct, dtype=np.float64)
    n = c.shape[-1]
    errors = n - c.sum(axis=-1, keepdims=True)
    i = np.arange(1, n + 1)
    wrong_accepted = np.maximum(i - (n - errors), 0)
    return (wrong_accepted / i).mean(axis=-1)


def ood_auroc(score_in: np.ndarray, score_out: np.ndarray) -> float:
    """AUROC of a score meant to be higher on out-of-distribution inputs (Hendrycks & Gimpel, 2017): the probability
    that an OOD example scores above an in-distribution one, ties counting half (Mann-Whitney U / (n_in n_out))."""
    a = np.asarray(score_in, dtype=np.float64)
    b = np.asarray(score_out, dtype=np.float64)
    both = np.concatenate([a, b])
    order = np.argsort(both, kind="stable")
    ranks = np.empty(len(both))
    ranks[order] = np.arange(1, len(both) + 1)
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + 1 + ends) / 2)[inverse]  # average ranks for ties
    u = ranks[len(a):].sum() - len(b) * (len(b) + 1) / 2
    return float(u / (len(a) * len(b)))


def fpr_at_tpr(score_in: np.ndarray, score_out: np.ndarray, tpr: float = 0.95) -> float:
    """False-positive rate at ``tpr`` true-positive rate (OOD = positive, higher score = more OOD): the fraction of
    in-distribution examples scoring at or above the threshold that flags ``tpr`` of the OOD examples (the largest
    threshold t with mean(score_out >= t) >= tpr)."""
    out = np.sort(np.asarray(score_out, dtype=np.float64))[::-1]
    t = out[int(np.ceil(tpr * len(out))) - 1]
    return float(np.mean(np.asarray(score_in, dtype=np.float64) >= t))


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
        step = np.where(hess > 1e-12, grad / np.where(hess > 1e-12, hess, 1.0), np.sign(grad) * 0.5)
        new = np.clip(beta - np.clip(step, -beta / 2, beta), 1e-3, 1e3)  # at most halve or double per step
        done = np.all(np.abs(new - beta) <= 1e-9 * beta)
        beta = new
        if done:  # Newton converges quadratically from beta = 1: a handful of steps in practice
            break
    return 1.0 / beta


def fold_of(n: int, folds: int) -> np.ndarray:
    """Example i's cross-fitting fold: i mod ``folds`` (deterministic, needs no seed)."""
    return np.arange(n) % folds


def cross_fitted_scaling(log_probs: np.ndarray, gold: np.ndarray, folds: int = FOLDS, reported: bool = True):
    """Temperature-scaled probabilities where each example's temperature was fitted on the other folds only (so no
    scored example fits its own temperature; Ashukha et al., 2020 compare methods after this). log_probs (..., n, C)
    -> (scaled probs (..., n, C), the temperature fitted on all examples (...), reported; None with ``reported``
    False, which saves that fit where only the scaled probabilities are wanted). Raises UsageError when
    n < 2 * folds."""
    z = np.asarray(log_probs, dtype=np.float64)
    n = z.shape[-2]
    if folds < 2 or n < 2 * folds:
        raise UsageError(f"temperature scaling cross-fits over {folds} folds: needs at least {2 * folds} examples")
    fold = fold_of(n, folds)
    scaled = np.empty_like(z)
    for f in range(folds):
        t = fit_temperature(z, gold, (fold != f).astype(np.float64))
        s = z[..., fold == f, :] / t[..., None, None]
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        scaled[..., fold == f, :] = s / s.sum(axis=-1, keepdims=True)
    return scaled, fit_temperature(z, gold) if reported else None


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


@register("nll", higher_is_better=False, kind="classification", combines=PROBABILISTIC,
          source="Lakshminarayanan et al. (2017); Ovadia et al. (2019)")
def _nll(c, gold, o):
    return nll(c.probs, gold)


@register("brier", higher_is_better=False, kind="classification", combines=PROBABILISTIC, source="Brier (1950)")
def _brier(c, gold, o):
    return brier(c.probs, gold)


@register("ece", higher_is_better=False, kind="classification", combines=PROBABILISTIC,
          source="Naeini et al. (2015); Guo et al. (2017)")
def _ece(c, gold, o):
    return ece(c.probs, gold, o.ece_bins)


@register("adaptive_ece", higher_is_better=False, kind="classification", combines=PROBABILISTIC,
          source="Nixon et al. (2019)")
def _adaptive_ece(c, gold, o):
    return adaptive_ece(c.probs, gold, o.ece_bins)


def _same(key, cached) -> bool:
    """Whether a cache entry was made for these very objects (held by the entry, so their ids cannot be reused)."""
    return cached is not None and len(key) == len(cached) and all(a is b for a, b in zip(key, cached))


_SCALED: list = [None, None]  # the last (inputs, result) of _scaled: ts_nll and ts_ece of one ensemble share a fit


def _scaled(c, gold, o):
    key = (c.probs, gold, o)
    if not _same(key, _SCALED[0]):
        _SCALED[:] = [key, cross_fitted_scaling(np.log(np.clip(c.probs, EPS, None)), gold, o.folds, False)]
    return _SCALED[1]


@register("temperature", higher_is_better=None, kind="classification", combines=PROBABILISTIC,
          source="Guo et al. (2017)")
def _temperature(c, gold, o):
    return fit_temperature(np.log(np.clip(c.probs, EPS, None)), gold)


@register("ts_nll", higher_is_better=False, kind="classification", combines=PROBABILISTIC,
          source="Ashukha et al. (2020)")
def _ts_nll(c, gold, o):
    return nll(_scaled(c, gold, o)[0], gold)


@register("ts_ece", higher_is_better=False, kind="classification", combines=PROBABILISTIC,
          source="Guo et al. (2017); Ashukha et al. (2020)")
def _ts_ece(c, gold, o):
    return ece(_scaled(c, gold, o)[0], gold, o.ece_bins)


def _confidence_correct(c, gold):
    conf, top = _top(c.probs)
    return conf, top == np.asarray(gold)


_AURC: list = [None, None]  # the last (key, (aurc, correct)): aurc and eaurc of one ensemble share a sort


def _aurc_and_correct(c, gold):
    key = (c.probs, gold)
    if not _same(key, _AURC[0]):
        conf, correct = _confidence_correct(c, gold)
        _AURC[:] = [key, (aurc(conf, correct), correct)]
    return _AURC[1]


@register("aurc", higher_is_better=False, kind="classification", combines=PROBABILISTIC,
          source="Geifman & El-Yaniv (2017)")
def _aurc(c, gold, o):
    return _aurc_and_correct(c, gold)[0]


@register("eaurc", higher_is_better=False, kind="classification", combines=PROBABILISTIC,
          source="Geifman et al. (2019)")
def _eaurc(c, gold, o):
    value, correct = _aurc_and_correct(c, gold)
    return value - oracle_aurc(correct)


@register("total_entropy", higher_is_better=None, kind="classification", combines=PROBABILISTIC,
          source="Depeweg et al. (2018); Malinin & Gales (2018)")
def _total_entropy(c, gold, o):
    return entropy(c.member_probs_mean).mean(axis=-1)


@register("expected_entropy", higher_is_better=None, kind="classification", combines=PROBABILISTIC,
          source="Depeweg et al. (2018); Malinin & Gales (2018)")
def _expected_entropy(c, gold, o):
    return np.asarray(c.member_entropy, dtype=np.float64).mean(axis=-1)


@register("mutual_information", higher_is_better=None, kind="classification", combines=PROBABILISTIC,
          source="Depeweg et al. (2018); Malinin & Gales (2018)")
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
    ensembles are the weights times them (one matrix product). The one path that scores registered metrics of
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
        member_entropy = entropy(member)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    per = max(1, CHUNK_ELEMENTS // max(1, n * c))
    for start in range(0, len(weights), per):
        w = weights[start : start + per]
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
                pred = _top(probs)[1]
            combined = Combined(pred, probs, mean, w @ member_entropy)
        for name, v in evaluate(names, combined, labels, options).items():
            parts[name].append(np.atleast_1d(v))
    return {name: np.concatenate(v) for name, v in parts.items()}


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
               score: str | None = None) -> Scorer:
    """The scorer of ``stats``: the task's headline metric (:class:`Scorer`), or with ``score`` a registered metric
    (:class:`MetricScorer`). Raises UsageError as those do."""
    from ticketctl.analysis.combine import member_terms

    if score is None:
        return Scorer(task, member_terms(task, outputs, combine), labels)
    return MetricScorer(task, outputs, labels, score, combine)


def vote_note(undefined: list[str]) -> str:
    """The notice for metrics left out under ``--combine vote``; "" when none."""
    if not undefined:
        return ""
    return (f"{', '.join(undefined)} undefined under --combine vote (vote shares are not probabilities: the NLL of "
            "a zero share is infinite): left out")
