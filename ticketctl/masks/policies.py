"""Pruning policies: one registry of what makes tickets differ, for both search methods.

An IMP policy (``search --method imp``, Kobayashi et al. 2022, arXiv:2205.11833, Section 3) is the coefficient
tensor l_s of the seed-dependent L1 term tau x sum |l_s * w| that IMP adds to every round's loss: BASE-LT has none,
RANDOM-LT draws l_s, ACTIVE-LT takes it from the earlier members' masks. A structured policy (``search --method
structured``, in the spirit of Liang et al. 2021's super tickets) reshapes the importance scores before the one-shot
selection. Each policy is a small object: its name, its help line, its checks of the options it takes, and its
regularizer (IMP) or scoring (structured). ``ticketctl search --policy`` and its shell completion list
:func:`names`; a new policy is one object and one :func:`register` call (``docs/architecture.md``).

numpy only at import; the IMP coefficients are torch tensors (torch imported when they are made).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from ticketctl.errors import InputError, UsageError
from ticketctl.train.seeds import derive_seed

IMP, STRUCTURED = "imp", "structured"
DEFAULT_L1 = 1e-4  # see docs/choices.md: makes random/active masks differ from base's across seeds


# ---------------------------------------------------------------------------------------------- IMP


@dataclass(frozen=True)
class ImpPolicy:
    """An IMP policy. ``coefficients(shapes, sparsity, seed, prior_keeps)`` returns l_s, one float tensor per
    prunable weight of ``shapes`` (name -> shape), or None for no regularizer; ``prior_keeps`` are the earlier
    members' keep masks (name -> bool array), given only to a policy with ``takes_priors``. A policy without
    ``coefficients`` has no regularizer and refuses ``--l1 > 0``. ``default_l1`` is tau when ``--l1`` is not given
    (None: ``DEFAULT_L1`` with coefficients, 0 without)."""

    name: str
    help: str
    coefficients: Callable | None = None
    default_l1: float | None = None
    takes_priors: bool = False
    method: str = IMP

    def check(self, l1: float, prior_paths: Sequence[str]) -> None:
        """Refuse options this policy does not take (UsageError, one line)."""
        if l1 < 0:
            raise UsageError("--l1 (tau) must be >= 0")
        if self.coefficients is None and l1 > 0:
            regularized = " or ".join(n for n in names(IMP) if get(IMP, n).coefficients is not None)
            raise UsageError(f"--policy {self.name} has no regularizer; use --policy {regularized} with --l1")
        if self.takes_priors and not prior_paths:
            raise UsageError(f"--policy {self.name} needs the earlier members' masks: --prior MASK ... (or - for "
                             "stdin), or --prior none for the first member of the sequence")
        if not self.takes_priors and prior_paths:
            raise UsageError(f"--prior is only used by --policy "
                             f"{' or '.join(n for n in names(IMP) if get(IMP, n).takes_priors)}")
        if "none" in prior_paths and list(prior_paths) != ["none"]:
            raise UsageError("--prior none stands alone (the first member of an active sequence)")

    def resolve_l1(self, l1: float | None) -> float:
        if l1 is not None:
            return float(l1)
        if self.default_l1 is not None:
            return self.default_l1
        return DEFAULT_L1 if self.coefficients is not None else 0.0


def random_coefficients(shapes: dict[str, tuple[int, ...]], sparsity: float, seed: int, prior_keeps=()):
    """RANDOM-LT's l_s: Bernoulli per weight with P(0) = target sparsity (a random stand-in for an earlier ticket),
    drawn from the seed's ``random-policy`` stream in sorted parameter order."""
    import torch

    g = torch.Generator().manual_seed(derive_seed(seed, "random-policy"))
    return {n: (torch.rand(shapes[n], generator=g) >= sparsity).float() for n in sorted(shapes)}


def active_coefficients(shapes: dict[str, tuple[int, ...]], sparsity: float, seed: int, prior_keeps=()):
    """ACTIVE-LT's l_s: mean of the earlier members' keep masks, so weights they kept are pushed towards zero; None
    for the first member of a sequence (plain IMP). Raises InputError when the priors do not fit ``shapes``."""
    import numpy as np
    import torch

    if not prior_keeps:
        return None
    total: dict | None = None
    for keep in prior_keeps:
        if total is None:
            total = {n: keep[n].astype(np.float32) for n in keep}
        elif set(keep) != set(total):
            raise InputError("prior masks cover different parameters")
        else:
            for n in keep:
                total[n] += keep[n]
    coef = {n: torch.from_numpy(v / len(prior_keeps)) for n, v in total.items()}
    if set(coef) != set(shapes) or any(tuple(coef[n].shape) != tuple(shapes[n]) for n in shapes):
        raise InputError("prior masks do not fit this model's prunable weights")
    return coef


# ---------------------------------------------------------------------------------------------- structured


@dataclass(frozen=True)
class StructuredPolicy:
    """A structured policy. ``scores(head, ffn, strength, seed, priors)`` reshapes the normalised head scores
    (layers, heads) and FFN scores (layers,) so that winning tickets of different seeds differ; ``priors`` are the
    earlier members' ``StructuredMask``s (``takes_priors`` only). ``diversity`` is the default strength (None: the
    policy takes no ``--diversity``)."""

    name: str
    help: str
    scores: Callable | None = None
    diversity: float | None = None
    takes_priors: bool = False
    method: str = STRUCTURED

    def check(self, kinds: Sequence[str], prior_paths: Sequence[str], diversity: float | None) -> None:
        if self.scores is not None and list(kinds) != ["winning"]:
            raise UsageError(f"--policy {self.name} makes diverse winning tickets: give --ticket winning")
        if prior_paths and not self.takes_priors:
            raise UsageError("--prior belongs to --policy active")
        if diversity is not None and (self.diversity is None or not diversity >= 0):
            raise UsageError("--diversity takes a value >= 0, with --policy perturbed or active")

    def strength(self, diversity: float | None) -> float:
        return (self.diversity or 0.0) if diversity is None else float(diversity)

    def identity(self, strength: float, prior_digests: Sequence[str]) -> dict:
        """The fields this policy adds to a ticket's identity (none for plain winning tickets)."""
        if self.scores is None:
            return {}
        return {"structured_policy": self.name, "diversity": strength, "priors": sorted(prior_digests)}

    def apply(self, head, ffn, strength: float, seed: int, priors: Sequence = ()):
        return (head, ffn) if self.scores is None else self.scores(head, ffn, strength, seed, list(priors))


def perturbed_scores(head, ffn, strength: float, seed: int, priors=()):
    """Every score times exp(strength x z), z ~ N(0, 1) drawn from the seed once (tickets stay nested across levels):
    strength 0.5 swaps units whose scores are within a factor of about 1.6 and keeps the clearly important ones
    (in the spirit of RANDOM-LT)."""
    import numpy as np

    rng = np.random.default_rng(derive_seed(seed, "structured-perturb"))
    noise_h, noise_f = rng.standard_normal(head.shape), rng.standard_normal(ffn.shape)
    return head * np.exp(strength * noise_h), ffn * np.exp(strength * noise_f)


def active_scores(head, ffn, strength: float, seed: int, priors=()):
    """Every score times (1 + strength x the fraction of earlier members that dropped the unit), so units they
    pruned are kept now where their importance is close (in the spirit of ACTIVE-LT); unchanged without priors."""
    import numpy as np

    if not priors:
        return head, ffn
    dropped_h = 1.0 - np.mean([p.heads for p in priors], axis=0)
    dropped_f = 1.0 - np.mean([p.ffn for p in priors], axis=0)
    return head * (1.0 + strength * dropped_h), ffn * (1.0 + strength * dropped_f)


# ---------------------------------------------------------------------------------------------- the registry

_REGISTRY: dict[str, dict] = {IMP: {}, STRUCTURED: {}}


def register(policy):
    """Add ``policy`` (an :class:`ImpPolicy` or :class:`StructuredPolicy`) under its name; returns it. Raises
    ValueError when its method has a policy of that name already."""
    table = _REGISTRY[policy.method]
    if policy.name in table:
        raise ValueError(f"{policy.method} policy {policy.name!r} is registered already")
    table[policy.name] = policy
    return policy


def unregister(method: str, name: str) -> None:
    """Remove a registered policy (tests register examples and remove them again)."""
    del _REGISTRY[method][name]


def names(method: str | None = None) -> tuple[str, ...]:
    """The registered policy names of ``method`` (imp, structured), or of both (each once) in registration order."""
    tables = [_REGISTRY[method]] if method else list(_REGISTRY.values())
    return tuple(dict.fromkeys(n for t in tables for n in t))


def get(method: str, name: str):
    """The policy ``name`` of ``method``; UsageError listing the registered ones when there is none."""
    table = _REGISTRY[method]
    if name not in table:
        where = "" if method == IMP else "--method structured: "
        raise UsageError(f"{where}--policy must be one of {', '.join(table)}")
    return table[name]


register(ImpPolicy("base", "BASE-LT: plain IMP, no regularizer"))
register(ImpPolicy("active", "ACTIVE-LT: L1 towards zero on the weights the earlier members (--prior) kept",
                   active_coefficients, takes_priors=True))
register(ImpPolicy("random", "RANDOM-LT: L1 towards zero on a seed-drawn Bernoulli(1 - sparsity) set of weights",
                   random_coefficients))
register(StructuredPolicy("base", "plain winning tickets"))
register(StructuredPolicy("perturbed", "seed-perturbed importance", perturbed_scores, diversity=0.5))
register(StructuredPolicy("active", "prefer the heads and FFNs --prior masks dropped", active_scores, diversity=1.0,
                          takes_priors=True))
