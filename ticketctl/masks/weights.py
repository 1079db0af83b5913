"""Weight masks (unstructured tickets): the keep-mask type, and iterative magnitude pruning's schedule and step.

The mask type is numpy only (the analysis commands read masks without torch); ``magnitude_prune`` imports torch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ticketctl.errors import InputError, UsageError

if TYPE_CHECKING:
    import torch


@dataclass
class Mask:
    """Keep-masks (True = weight survives) for the prunable parameters of one model."""

    keep: dict[str, np.ndarray]  # parameter name -> bool array of the parameter's shape

    def __post_init__(self) -> None:
        for name, m in self.keep.items():
            if m.dtype != np.bool_:
                uniq = np.unique(m)
                if not np.isin(uniq, (0, 1)).all():
                    raise InputError(f"mask for {name} has values other than 0 and 1")
                self.keep[name] = m.astype(bool)

    @property
    def total(self) -> int:
        return sum(m.size for m in self.keep.values())

    @property
    def pruned(self) -> int:
        return sum(int(m.size - np.count_nonzero(m)) for m in self.keep.values())

    @property
    def sparsity(self) -> float:
        return self.pruned / self.total

    def layer_sparsity(self) -> dict[str, float]:
        return {n: 1.0 - np.count_nonzero(m) / m.size for n, m in self.keep.items()}

    def flat(self) -> np.ndarray:
        return np.concatenate([self.keep[n].ravel() for n in sorted(self.keep)])

    def digest(self) -> str:
        """Content hash of the mask bits alone (not of the file): the mask's identity in config hashes."""
        h = hashlib.sha256()
        for n in sorted(self.keep):
            h.update(f"{n}:{list(self.keep[n].shape)}\n".encode())
            h.update(np.packbits(self.keep[n].ravel(), bitorder="little").tobytes())
        return h.hexdigest()

    def pack(self) -> tuple[dict[str, np.ndarray], dict[str, list[int]]]:
        tensors = {n: np.packbits(m.ravel(), bitorder="little") for n, m in self.keep.items()}
        shapes = {n: list(m.shape) for n, m in self.keep.items()}
        return tensors, shapes

    @classmethod
    def unpack(cls, tensors: dict[str, np.ndarray], shapes: dict[str, list[int]]) -> "Mask":
        keep = {}
        for n, shape in shapes.items():
            if n not in tensors:
                raise InputError(f"mask has no tensor for {n}")
            size = int(np.prod(shape))
            bits = np.unpackbits(tensors[n], count=size, bitorder="little")
            keep[n] = bits.astype(bool).reshape(shape)
        return cls(keep)


def plan_rounds(sparsity: float, prune_step: float) -> int:
    if not 0 < sparsity < 1:
        raise UsageError(f"--sparsity must be in (0, 1), got {sparsity}")
    if not 0 < prune_step < 1:
        raise UsageError(f"--prune-step must be in (0, 1), got {prune_step}")
    rounds = round(sparsity / prune_step)
    if rounds < 1 or abs(rounds * prune_step - sparsity) > 1e-6:
        raise UsageError(f"--sparsity {sparsity} is not reachable with --prune-step {prune_step}: it must be a "
                         f"whole multiple of the step")
    return rounds


def pruned_count(total: int, round_: int, rounds: int, sparsity: float, prune_step: float) -> int:
    """Weights pruned after ``round_``: ``round_ * prune_step`` of the original count, exactly ``sparsity`` at the
    end."""
    frac = sparsity if round_ == rounds else round_ * prune_step
    return int(round(frac * total))


def magnitude_prune(weights: dict[str, "torch.Tensor"], keep: dict[str, "torch.Tensor"], n_pruned: int):
    """Global magnitude pruning: the ``n_pruned`` smallest |w| over all prunable weights, counting the already pruned
    ones first; ties broken by position (stable sort), so the result is deterministic."""
    import torch

    names = sorted(weights)
    mags = torch.cat([torch.where(keep[n].bool(), weights[n].detach().abs().float().cpu(), torch.tensor(-1.0)).ravel()
                      for n in names])
    flat_keep = torch.ones(mags.numel(), dtype=torch.bool)
    if n_pruned > 0:
        # Selection, not a full sort: the n-th smallest magnitude, everything below it, then the first ties by
        # position. Same result as a stable argsort, 10x faster on 10M weights.
        threshold = torch.kthvalue(mags, n_pruned).values
        below = mags < threshold
        ties = torch.nonzero(mags == threshold).ravel()
        flat_keep[below] = False
        flat_keep[ties[: n_pruned - int(below.sum())]] = False
    out, start = {}, 0
    for n in names:
        size = weights[n].numel()
        out[n] = flat_keep[start : start + size].view(weights[n].shape).clone()
        start += size
    return out
