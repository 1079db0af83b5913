"""Which training examples a run sees: bagging (a random fraction per seed) and nested training fractions.

The one place that cuts a training set: ``finetune --bagging``, ``--train-fraction`` of every training command,
and nothing else, draw their subsets here."""

from __future__ import annotations

import numpy as np

from ticketctl.errors import UsageError


def bagging_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    """A seed-dependent subset of round(fraction * n) training examples, drawn without replacement, in file order."""
    if fraction >= 1.0:
        return np.arange(n)
    k = max(1, int(round(fraction * n)))
    rng = np.random.default_rng([seed, 0xBA6])
    return np.sort(rng.choice(n, size=k, replace=False))


def fraction_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    """A seed-dependent subset of max(1, round(fraction * n)) training examples, in file order. Nested: for one seed,
    a smaller fraction's examples are a subset of a larger one's (prefixes of one permutation), so a few-shot curve
    moves by adding data, not by redrawing it."""
    if fraction >= 1.0:
        return np.arange(n)
    k = max(1, int(round(fraction * n)))
    rng = np.random.default_rng([seed, 0xF4AC])
    return np.sort(rng.permutation(n)[:k])


def check_fraction(fraction: float) -> None:
    if not 0 < fraction <= 1:
        raise UsageError("--train-fraction values must be in (0, 1]")


def check_subsample(bagging: float, fraction: float) -> None:
    """A bagging fraction and a training fraction (each in (0, 1]) that :func:`training_subset` takes: at most one
    of them below 1. Raises UsageError."""
    if not 0 < bagging <= 1:
        raise UsageError("--bagging must be in (0, 1]")
    check_fraction(fraction)
    if bagging < 1 and fraction < 1:
        raise UsageError("--bagging and --train-fraction both subsample the training set: use one")


def training_subset(split, seed: int, bagging: float = 1.0, fraction: float = 1.0, subset_seed: int | None = None):
    """The training split a run sees: all of it, a bagging sample, or a nested fraction (not both). The fraction is
    drawn from ``subset_seed`` when given (the same data for every training seed), else from the run's seed.
    Raises UsageError (:func:`check_subsample`)."""
    check_subsample(bagging, fraction)
    if bagging < 1:
        return split.subset(bagging_indices(len(split), bagging, seed))
    if fraction < 1:
        return split.subset(fraction_indices(len(split), fraction, seed if subset_seed is None else subset_seed))
    return split


def parse_fractions(text: str | None) -> list[float]:
    """``--train-fraction 0.01,0.1,1``: one run per value."""
    if text is None:
        return [1.0]
    try:
        fractions = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--train-fraction {text!r}: expected a number or a comma-separated list") from None
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise UsageError("--train-fraction values must be in (0, 1]")
    if len(set(fractions)) != len(fractions):
        raise UsageError(f"--train-fraction {text!r}: a value is given twice")
    return fractions
