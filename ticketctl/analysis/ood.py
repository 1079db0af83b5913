"""Out-of-distribution detection by an ensemble's uncertainty (``ensemble --ood SPLIT``): how well three
uncertainty scores of the members' outputs tell texts from another distribution (the ``--ood-file`` split) from the
evaluation split's texts, as AUROC and FPR at 95% TPR (Hendrycks & Gimpel, 2017), for the ensemble of all members
and for every k-member combination. numpy only.

Scores, each higher for an input the ensemble is less sure of (``p``: the ensemble's probabilities, the mean of the
members' under ``--combine probs``, the softmax of their mean logits under ``logits``):

- ``msp``: 1 - max_c p_c (the maximum softmax probability baseline; Hendrycks & Gimpel, 2017);
- ``entropy``: the entropy of ``p`` (nats);
- ``mi``: mutual information, the entropy of the mean of the members' own probabilities minus the mean of their
  entropies (the members' disagreement; Depeweg et al., 2018; Malinin & Gales, 2018); only for more than one member.

For a regression task the ensemble's uncertainty is its members' spread (:func:`spread`, :func:`task_columns`:
``auroc_spread``, ``fpr95_spread``; more than one member only). :class:`OodScorer` puts one column under the seed
test of ``ticketctl.analysis.significance`` (``stats --ood``, the protocol report's OOD section).

Members are paired across the two splits by their identity (:func:`member_keys`, :func:`pairing`), never by position
or file name; ``ticketctl.analysis.ensemble.load_ood`` loads both sides.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ticketctl.analysis.combine import softmax
from ticketctl.analysis.numerics import auroc_rows, detection_rows, entropy, fpr_rows, top_value
from ticketctl.analysis.significance import Scorer
from ticketctl.errors import InputError, UsageError
from ticketctl.store.artifacts import Artifact

SCORES = ("msp", "entropy", "mi")
CHUNK_ELEMENTS = 2_000_000  # bound on the (ensembles x examples x classes) block held at once


def columns(members: int) -> list[str]:
    """The classification column names of :func:`any_whole` and :func:`any_combinations`: ``auroc_<score>``,
    ``fpr95_<score>`` for each score (``mi`` only where an ensemble has more than one member)."""
    scores = SCORES if members > 1 else SCORES[:2]
    return [f"{what}_{s}" for s in scores for what in ("auroc", "fpr95")]


@dataclass(frozen=True)
class Paired:
    """Members' outputs on an evaluation split (``inside``) and on out-of-distribution texts (``outside``: (m,
    n_out, C) float64 logits, row i from the same member as ``inside``'s member i)."""

    inside: object  # ticketctl.analysis.members.Members (not imported: this module sits below it)
    outside: np.ndarray
    split: str  # the OOD split's name


def member_keys(art: Artifact) -> set[str]:
    """What identifies the member an artifact comes from, whatever split it scores: the run identity (the
    ``config`` every training artifact records, the same for each of its splits), and for ``predict``'s artifacts
    the saved member's content fingerprint and the config hash ``finetune --save-model`` recorded in its folder
    (the hash of that member's first evaluation split's artifact, so it pairs with the finetune's dev artifact)."""
    from ticketctl.store.provenance import config_hash

    meta, keys = art.meta, set()
    if meta.get("produced_by") == "predict":
        keys.add(f"member:{meta.get('member_fingerprint')}")
        if meta.get("member_config_hash"):
            keys.add(f"hash:{meta['member_config_hash']}")
        return keys
    if isinstance(meta.get("config"), dict):
        keys.add(f"run:{config_hash(meta['config'])}")
    if meta.get("config_hash"):
        keys.add(f"hash:{meta['config_hash']}")
    return keys


def check_sides(inside, outside, split: str, flag: str = "--ood",
                other: str = "the OOD outputs must be of other texts") -> None:
    """The two sides (``Members``) are of one task, task definition and model, of different examples, with as many
    classes; InputError otherwise, starting ``{flag} {split}:`` (``other``: why the examples must differ)."""
    a, b = inside.arts[0], outside.arts[0]
    for key, what in (("task", "tasks"), ("task_spec", "task definitions"), ("model_fingerprint", "models")):
        if a.meta.get(key) != b.meta.get(key):
            raise InputError(f"{flag} {split}: cannot mix {what}: {a.path} has {key}={str(a.meta.get(key))[:12]}, "
                             f"{b.path} has {str(b.meta.get(key))[:12]}")
    if a.meta.get("data_fingerprint") is not None and a.meta.get("data_fingerprint") == b.meta.get("data_fingerprint"):
        raise InputError(f"{flag} {split}: {b.path} scores the same examples as {a.path}; {other}")
    if inside.outputs.shape[-1] != outside.outputs.shape[-1]:
        raise InputError(f"{flag} {split}: {b.path} has {outside.outputs.shape[-1]} classes, {a.path} "
                         f"{inside.outputs.shape[-1]}")


def pairing(inside: list[Artifact], outside: list[Artifact], split: str, flag: str = "--ood") -> np.ndarray:
    """For each evaluation-split member, the index of its artifact of split ``split`` (:func:`member_keys`);
    InputError (starting ``{flag} {split}:``) naming the first member without exactly one partner, or a count
    mismatch."""
    if len(inside) != len(outside):
        raise InputError(f"{flag} {split}: {len(inside)} members on the evaluation split and {len(outside)} on "
                         f"{split!r}: each member needs its outputs on both")
    keys = [member_keys(a) for a in outside]
    order = []
    for art in inside:
        mine = member_keys(art)
        hits = [j for j, k in enumerate(keys) if mine & k]
        if len(hits) != 1:
            why = "no artifact" if not hits else f"{len(hits)} artifacts"
            raise InputError(f"{flag} {split}: {art.path} has {why} of the same member (seed, scheme, config) among "
                             f"the {split!r} artifacts")
        order.append(hits[0])
    if len(set(order)) != len(order):
        twice = next(j for j in order if order.count(j) > 1)
        raise InputError(f"{flag} {split}: {outside[twice].path} pairs with more than one member")
    return np.asarray(order, dtype=np.int64)


# ---------------------------------------------------------------------------------------------- the numbers


def _members(logits: np.ndarray, combine: str) -> tuple:
    """What every ensemble of a side is a weighted sum of, computed once per side (not per chunk of ensembles): the
    members' probabilities (m, n * C), their logits (m, n * C) under ``logits`` (else None), their entropies (m, n)."""
    m, n, c = logits.shape
    member = softmax(logits)
    return member.reshape(m, n * c), logits.reshape(m, n * c) if combine == "logits" else None, entropy(member)


def _scores(side: tuple, shape: tuple, weights: np.ndarray, mi: bool) -> dict[str, np.ndarray]:
    """:func:`scores` from a side's :func:`_members`; ``mi`` False leaves mutual information out."""
    flat, logits, member_entropy = side
    n, c = shape
    mean = (weights @ flat).reshape(-1, n, c)
    probs = mean if logits is None else softmax((weights @ logits).reshape(-1, n, c))
    total = entropy(probs)
    out = {"msp": 1.0 - top_value(probs), "entropy": total}
    if mi:
        out["mi"] = (total if logits is None else entropy(mean)) - weights @ member_entropy
    return out


def scores(logits: np.ndarray, weights: np.ndarray, combine: str) -> dict[str, np.ndarray]:
    """The three scores (see the module docstring) of every ensemble given as a row of ``weights`` (B, m) (1/k on
    a k-member ensemble's members) on the members' logits (m, n, C): each (B, n)."""
    return _scores(_members(logits, combine), logits.shape[1:], weights, True)


def weighted(paired: Paired, weights: np.ndarray, combine: str) -> dict[str, np.ndarray]:
    """AUROC and FPR at 95% TPR of each score for every ensemble given as a row of ``weights`` (B, m): arrays of B
    values named as :func:`columns` (``mi`` NaN for a one-member row), computed in chunks of ensembles. Each side's
    member probabilities and entropies are computed once; each score's OOD side is sorted once for both figures."""
    inside, outside = paired.inside.outputs, paired.outside
    n = inside.shape[1] + outside.shape[1]
    step = max(1, CHUNK_ELEMENTS // (n * outside.shape[-1]))
    sides = (_members(inside, combine), inside.shape[1:]), (_members(outside, combine), outside.shape[1:])
    out: dict[str, list] = {c: [] for c in columns(2)}
    single = (weights > 0).sum(axis=1) == 1
    for lo in range(0, len(weights), step):
        w, one = weights[lo:lo + step], single[lo:lo + step]
        s_in, s_out = (_scores(side, shape, w, not one.all()) for side, shape in sides)
        for s in SCORES:
            if s == "mi" and one.all():
                auroc = fpr = np.full(len(w), np.nan)
            else:
                auroc, fpr = detection_rows(s_in[s], s_out[s])
            if s == "mi":
                auroc, fpr = np.where(one, np.nan, auroc), np.where(one, np.nan, fpr)
            out[f"auroc_{s}"].append(auroc)
            out[f"fpr95_{s}"].append(fpr)
    return {c: np.concatenate(v) for c, v in out.items()}


# ---------------------------------------------------------------------------------------------- regression

REGRESSION_SCORES = ("spread",)


def task_columns(regression: bool, members: int) -> list[str]:
    """The OOD columns of a task kind for an ensemble of ``members``: :func:`columns` for classification; for
    regression ``auroc_spread``, ``fpr95_spread`` (the members' spread: :func:`spread`), none for one member (a
    single prediction has no spread)."""
    if not regression:
        return columns(members)
    return [f"{what}_{s}" for s in REGRESSION_SCORES for what in ("auroc", "fpr95")] if members > 1 else []


def spread(predictions: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The members' spread under each ensemble, the regression ensemble's uncertainty (Lakshminarayanan et al.,
    2017; ``metrics``' ``spread``): ``predictions`` (m, n) float64, ``weights`` (B, m) rows summing to 1 -> (B, n),
    sqrt(sum_i w_i (x_i - mean)^2), the standard deviation of the members' predictions (ddof 0; 0 for one member).
    The predictions are first centred per example on all members' mean (the spread is unchanged by a shift, the
    rounding of the difference of squares is smaller)."""
    centred = predictions - predictions.mean(axis=0)
    mean = weights @ centred
    return np.sqrt(np.maximum(weights @ centred**2 - mean**2, 0.0))


def spread_weighted(paired: Paired, weights: np.ndarray) -> dict[str, np.ndarray]:
    """AUROC and FPR at 95% TPR of the members' spread (higher: less sure) at telling the OOD texts from the
    evaluation split's, for every regression ensemble given as a row of ``weights`` (B, m) summing to 1: arrays of
    B values named as :func:`task_columns`, NaN for a one-member row (no spread), in chunks of ensembles."""
    x_in = np.asarray(paired.inside.outputs, dtype=np.float64)[..., 0]
    x_out = np.asarray(paired.outside, dtype=np.float64)[..., 0]
    step = max(1, CHUNK_ELEMENTS // (x_in.shape[1] + x_out.shape[1]))
    single = (weights > 0).sum(axis=1) == 1
    out: dict[str, list] = {c: [np.zeros(0)] for c in task_columns(True, 2)}
    for lo in range(0, len(weights), step):
        w, one = weights[lo:lo + step], single[lo:lo + step]
        auroc, fpr = detection_rows(spread(x_in, w), spread(x_out, w))
        out["auroc_spread"].append(np.where(one, np.nan, auroc))
        out["fpr95_spread"].append(np.where(one, np.nan, fpr))
    return {c: np.concatenate(v) for c, v in out.items()}


def any_weighted(paired: Paired, weights: np.ndarray, combine: str) -> dict[str, np.ndarray]:
    """:func:`weighted` (classification) or :func:`spread_weighted` (regression: ``combine`` plays no part), by
    the task of ``paired``'s members: every column of :func:`task_columns` for ensembles of more than one member."""
    if paired.inside.task.is_regression:
        return spread_weighted(paired, weights)
    return weighted(paired, weights, combine)


def any_combinations(paired: Paired, combos: np.ndarray, combine: str) -> dict[str, np.ndarray]:
    """:func:`any_weighted` of every ensemble whose members are a row of ``combos`` (B, k) member indices (equal
    weights)."""
    combos = np.asarray(combos, dtype=np.int64)
    weights = np.zeros((len(combos), len(paired.inside)))
    np.put_along_axis(weights, combos, 1.0 / max(1, combos.shape[1]), axis=1)
    return any_weighted(paired, weights, combine)


def any_whole(paired: Paired, combine: str) -> dict[str, float]:
    """The columns of :func:`task_columns` for the ensemble of all members. Raises UsageError for one regression
    member: its prediction has no spread, so no OOD score."""
    m, regression = len(paired.inside), paired.inside.task.is_regression
    if regression and m < 2:
        raise UsageError(f"--ood {paired.split}: one member of a regression task has no OOD score (its uncertainty "
                         f"is the members' spread); give at least two members")
    values = any_weighted(paired, np.full((1, m), 1.0 / m), combine)
    return {c: float(values[c][0]) for c in task_columns(regression, m)}


# ---------------------------------------------------------------------------------------------- the seed test


class OodScorer(Scorer):
    """One OOD column (``auroc_msp``, ``fpr95_entropy``, ``auroc_mi``, ...; regression ``auroc_spread``,
    ``fpr95_spread``: :func:`task_columns`) of ensembles given as membership weights over the paired members, with
    :class:`ticketctl.analysis.significance.Scorer`'s interface, so the protocol's seed test (permutation over seeds,
    jackknife interval) runs on it unchanged: an ensemble's value is the one ``ensemble --ood`` gives it.

    AUROC is higher-is-better, FPR at 95% TPR lower-is-better. ``labels`` (n_in + n_out,): 0 for an evaluation
    example, 1 for an OOD one (what is detected). Columns undefined for one member (``mi``, ``spread``) are NaN for
    single members. Every distinct ensemble is computed once, all its columns together; scorers made by
    :meth:`column` and :meth:`subset` share what was computed. Raises UsageError for a column not of the task's
    kind, and under ``--combine vote`` for classification (vote shares are not probabilities)."""

    def __init__(self, paired: Paired, score: str, combine: str = "probs"):
        regression = paired.inside.task.is_regression
        if combine == "vote" and not regression:
            raise UsageError("--ood: the OOD scores are undefined under --combine vote (vote shares are not "
                             "probabilities)")
        self.task, self.paired, self.combine, self.regression = paired.inside.task, paired, combine, regression
        self.labels = np.r_[np.zeros(paired.inside.outputs.shape[1]), np.ones(paired.outside.shape[1])].astype(int)
        self._known: dict[bytes, dict[str, float]] = {}
        self._subsets: dict[tuple, tuple] = {}
        self.score = self._checked(score)

    def _checked(self, score: str) -> str:
        names = task_columns(self.regression, 2)
        if score not in names:
            raise UsageError(f"--score {score}: with --ood give one of {', '.join(names)} "
                             f"({'regression' if self.regression else 'classification'})")
        return score

    name = property(lambda self: self.score)
    higher_is_better = property(lambda self: self.score.startswith("auroc"))
    direction = property(lambda self: "higher is better" if self.higher_is_better else "lower is better")

    def __len__(self) -> int:
        return len(self.paired.inside)

    def column(self, score: str) -> "OodScorer":
        """The scorer of another column of the same members, sharing what is computed."""
        sub = object.__new__(OodScorer)
        sub.__dict__.update(self.__dict__)
        sub.score = self._checked(score)
        return sub

    def subset(self, members) -> "OodScorer":
        """A scorer over these members only (remembered: every column's scorer of these members shares it)."""
        key = tuple(int(i) for i in members)
        if key not in self._subsets:
            idx, inside = list(key), self.paired.inside
            sides = replace(inside, arts=[inside.arts[i] for i in idx], outputs=inside.outputs[idx])
            self._subsets[key] = (Paired(sides, self.paired.outside[idx], self.paired.split), {}, {})
        sub = object.__new__(OodScorer)
        sub.__dict__.update(self.__dict__)
        sub.paired, sub._known, sub._subsets = self._subsets[key]
        return sub

    def on_examples(self, examples: np.ndarray) -> "OodScorer":
        raise UsageError("--bootstrap resamples the labelled evaluation examples: not with --ood")

    def scores(self, weights: np.ndarray, examples: np.ndarray | None = None) -> np.ndarray:
        """The column's value of each ensemble (row of ``weights``, membership; normalised to sum to 1)."""
        if examples is not None:
            self.on_examples(examples)
        weights = np.asarray(weights, dtype=np.float64)
        keys = [row.tobytes() for row in weights]
        missing = list(dict.fromkeys(k for k in keys if k not in self._known))
        if missing:
            rows = np.frombuffer(b"".join(missing), dtype=np.float64).reshape(len(missing), -1)
            values = any_weighted(self.paired, rows / rows.sum(axis=1, keepdims=True), self.combine)
            for i, k in enumerate(missing):
                self._known[k] = {c: float(v[i]) for c, v in values.items()}
        return np.fromiter((self._known[k][self.score] for k in keys), dtype=np.float64, count=len(keys))


# auroc_rows, detection_rows, entropy, fpr_rows: ticketctl.analysis.numerics' (one copy, shared with metrics)
__all__ = ["SCORES", "OodScorer", "Paired", "any_combinations", "any_weighted", "any_whole", "auroc_rows",
           "check_sides", "columns", "detection_rows", "entropy", "fpr_rows", "member_keys",
           "pairing", "scores", "spread", "spread_weighted", "task_columns", "weighted"]
