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

Members are paired across the two splits by their identity (:func:`member_keys`, :func:`pairing`), never by position
or file name; ``ticketctl.analysis.ensemble.load_ood`` loads both sides.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ticketctl.analysis.combine import softmax
from ticketctl.errors import InputError
from ticketctl.store.artifacts import Artifact

EPS = 1e-12  # probabilities clipped before a log, as ticketctl.analysis.metrics clips them

SCORES = ("msp", "entropy", "mi")
TPR = 0.95
CHUNK_ELEMENTS = 2_000_000  # bound on the (ensembles x examples x classes) block held at once


def columns(members: int) -> list[str]:
    """The column names of :func:`whole` and :func:`combination_values`: ``auroc_<score>``, ``fpr95_<score>`` for
    each score (``mi`` only where an ensemble has more than one member)."""
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


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats over the last axis (``metrics.entropy``'s formula, without importing the metric
    registry): (..., C) -> (...)."""
    out = np.zeros(probs.shape[:-1])
    for j in range(probs.shape[-1]):  # class by class: numpy's reduction over a short last axis is slow
        p = probs[..., j]
        out -= p * np.log(np.clip(p, EPS, None))
    return out


def _top(probs: np.ndarray) -> np.ndarray:
    """max over the last (class) axis, class by class."""
    out = probs[..., 0].copy()
    for j in range(1, probs.shape[-1]):
        np.maximum(out, probs[..., j], out=out)
    return out


def auroc_rows(score_in: np.ndarray, score_out: np.ndarray) -> np.ndarray:
    """AUROC of each row: (B, a) in-distribution and (B, b) OOD scores -> (B,), the probability that an OOD example
    scores above an in-distribution one, ties counting half (Mann-Whitney U / (a b), average ranks within ties), as
    ``metrics.ood_auroc`` computes it for one row."""
    a, b = score_in.shape[1], score_out.shape[1]
    both = np.concatenate([score_in, score_out], axis=1)
    order = np.argsort(both, axis=1)
    ranked = np.take_along_axis(both, order, axis=1)
    n = both.shape[1]
    pos = np.broadcast_to(np.arange(n), both.shape)
    first = np.ones(both.shape, dtype=bool)
    first[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    last = np.ones(both.shape, dtype=bool)
    last[:, :-1] = first[:, 1:]
    start = np.maximum.accumulate(np.where(first, pos, 0), axis=1)
    end = np.minimum.accumulate(np.where(last, pos, n - 1)[:, ::-1], axis=1)[:, ::-1]
    out_ranks = np.where(order >= a, (start + end) / 2 + 1, 0.0).sum(axis=1)  # the OOD examples' rank sum
    return (out_ranks - b * (b + 1) / 2) / (a * b)


def fpr_rows(score_in: np.ndarray, score_out: np.ndarray, tpr: float = TPR) -> np.ndarray:
    """False-positive rate at ``tpr`` of each row ((B, a), (B, b) -> (B,)), as ``metrics.fpr_at_tpr``: the fraction
    of in-distribution scores at or above the largest threshold that flags ``tpr`` of the OOD examples."""
    ranked = np.sort(score_out, axis=1)[:, ::-1]
    t = ranked[:, int(np.ceil(tpr * score_out.shape[1])) - 1]
    return (score_in >= t[:, None]).mean(axis=1)


def scores(logits: np.ndarray, weights: np.ndarray, combine: str) -> dict[str, np.ndarray]:
    """The three scores (see the module docstring) of every ensemble given as a row of ``weights`` (B, m) (1/k on
    a k-member ensemble's members) on the members' logits (m, n, C): each (B, n)."""
    m, n, c = logits.shape
    member = softmax(logits)
    mean = (weights @ member.reshape(m, n * c)).reshape(-1, n, c)
    probs = softmax((weights @ logits.reshape(m, n * c)).reshape(-1, n, c)) if combine == "logits" else mean
    return {"msp": 1.0 - _top(probs), "entropy": entropy(probs),
            "mi": entropy(mean) - weights @ entropy(member)}


def weighted(paired: Paired, weights: np.ndarray, combine: str) -> dict[str, np.ndarray]:
    """AUROC and FPR at 95% TPR of each score for every ensemble given as a row of ``weights`` (B, m): arrays of B
    values named as :func:`columns` (``mi`` NaN for a one-member row), computed in chunks of ensembles."""
    n = paired.inside.outputs.shape[1] + paired.outside.shape[1]
    step = max(1, CHUNK_ELEMENTS // (n * paired.outside.shape[-1]))
    out: dict[str, list] = {c: [] for c in columns(2)}
    single = (weights > 0).sum(axis=1) == 1
    for lo in range(0, len(weights), step):
        w = weights[lo:lo + step]
        s_in, s_out = scores(paired.inside.outputs, w, combine), scores(paired.outside, w, combine)
        for s in SCORES:
            auroc, fpr = auroc_rows(s_in[s], s_out[s]), fpr_rows(s_in[s], s_out[s])
            if s == "mi":
                auroc, fpr = np.where(single[lo:lo + step], np.nan, auroc), np.where(single[lo:lo + step], np.nan, fpr)
            out[f"auroc_{s}"].append(auroc)
            out[f"fpr95_{s}"].append(fpr)
    return {c: np.concatenate(v) for c, v in out.items()}


def whole(paired: Paired, combine: str) -> dict[str, float]:
    """The columns of :func:`columns` for the ensemble of all members."""
    m = len(paired.inside)
    values = weighted(paired, np.full((1, m), 1.0 / m), combine)
    return {c: float(values[c][0]) for c in columns(m)}


def combination_values(paired: Paired, combos: np.ndarray, combine: str) -> dict[str, np.ndarray]:
    """The columns (all six; ``mi`` NaN for k = 1) of every ensemble whose members are a row of ``combos`` (B, k)
    indices into the members."""
    combos = np.asarray(combos, dtype=np.int64)
    weights = np.zeros((len(combos), len(paired.inside)))
    np.put_along_axis(weights, combos, 1.0 / combos.shape[1], axis=1)
    return weighted(paired, weights, combine)
