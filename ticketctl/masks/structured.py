"""Structured masks (Super Tickets, Liang et al., 2021): which attention heads and FFN sublayers a ticket keeps,
and how a ticket is chosen from importance scores (winning / random / losing, one shot per level).

numpy only: the analysis commands read structured masks without torch. Applying a mask to a model (element masks,
physical pruning, gates) is ``ticketctl.model.units``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ticketctl.errors import InputError, UsageError

TICKETS = ("winning", "random", "losing")


@dataclass
class StructuredMask:
    heads: np.ndarray  # (layers, heads) bool, True = kept
    ffn: np.ndarray  # (layers,) bool

    def __post_init__(self) -> None:
        self.heads = np.asarray(self.heads, dtype=bool)
        self.ffn = np.asarray(self.ffn, dtype=bool)
        if self.heads.ndim != 2 or self.ffn.shape != (self.heads.shape[0],):
            raise InputError("structured mask: heads must be (layers, heads) and ffn (layers,)")

    @property
    def sparsity(self) -> float:
        """Fraction of heads pruned (the fraction of FFNs pruned is ``ffn_sparsity``)."""
        return 1.0 - self.heads.mean()

    @property
    def ffn_sparsity(self) -> float:
        return 1.0 - self.ffn.mean()

    def digest(self) -> str:
        import hashlib

        h = hashlib.sha256(b"structured\n")
        h.update(f"{list(self.heads.shape)}\n".encode())
        h.update(np.packbits(self.heads.ravel()).tobytes() + b"|" + np.packbits(self.ffn).tobytes())
        return h.hexdigest()



def select(scores: np.ndarray, n_pruned: int, min_keep: int = 0) -> np.ndarray:
    """Prune the ``n_pruned`` lowest-scoring units of ``scores`` (rows = layers), keeping at least ``min_keep`` per
    row; ties by position. Returns the keep mask."""
    keep = np.ones(scores.shape, dtype=bool)
    left = np.full(scores.shape[0], scores.shape[1] if scores.ndim == 2 else 1)
    flat = scores.reshape(len(left), -1)
    done = 0
    for i in np.argsort(flat.ravel(), kind="stable"):
        if done == n_pruned:
            break
        row = i // flat.shape[1]
        if left[row] > min_keep:
            keep.reshape(len(left), -1)[row, i % flat.shape[1]] = False
            left[row] -= 1
            done += 1
    if done < n_pruned:
        raise UsageError(f"cannot prune {n_pruned} units while keeping {min_keep} per layer")
    return keep


def ticket(head_scores: np.ndarray, ffn_scores: np.ndarray, sparsity: float, kind: str,
           rng: np.random.Generator | None = None) -> StructuredMask:
    """One-shot structured ticket: prune ``sparsity`` of the heads (at least one kept per layer) and of the FFN
    sublayers. ``winning`` prunes the least important, ``losing`` the most important, ``random`` a uniformly random
    set of the same size."""
    if kind not in TICKETS:
        raise UsageError(f"--ticket must be one of {', '.join(TICKETS)}")
    layers, heads = head_scores.shape
    n_heads, n_ffn = level_counts(sparsity, layers, heads)
    if n_heads > layers * (heads - 1):
        raise UsageError(f"--sparsity {sparsity}: at most {layers * (heads - 1)} of {layers * heads} heads can go "
                         f"(one is kept per layer)")
    if kind == "random":
        assert rng is not None
        hs, fs = rng.random(head_scores.shape), rng.random(ffn_scores.shape)
    else:
        sign = 1.0 if kind == "winning" else -1.0
        hs, fs = sign * head_scores, sign * ffn_scores
    return StructuredMask(select(hs, n_heads, 1), select(fs[:, None], n_ffn, 0).ravel())


def level_counts(sparsity: float, layers: int, heads: int) -> tuple[int, int]:
    """Heads and FFN sublayers a level prunes: ``round(level x layers x heads)`` and ``round(level x layers)``,
    to the nearest count (Python's round: a tie goes to the even count). Liang et al.'s code truncates
    (``int(total * percent / 100)``), so e.g. 10% of 6 FFN sublayers prunes one here and none there."""
    return int(round(sparsity * layers * heads)), int(round(sparsity * layers))


def check_distinct_levels(levels: list[float], layers: int, heads: int) -> None:
    """Two levels that prune the same numbers of heads and FFNs give the same tickets: refuse the second."""
    seen: dict[tuple[int, int], float] = {}
    for level in levels:
        counts = level_counts(level, layers, heads)
        if counts in seen:
            raise UsageError(f"--sparsity {seen[counts]:g} and {level:g} both prune {counts[0]} of {layers * heads} "
                             f"heads and {counts[1]} of {layers} FFN sublayers: the same ticket; give one of them")
        seen[counts] = level


def parse_levels(text: str | float | list | tuple, option: str = "--sparsity") -> list[float]:
    """``"0.3,0.5"`` (or a number, or a list of numbers, as a TOML plan gives them) -> structured levels, each in
    (0, 1), none twice; UsageError naming ``option`` otherwise."""
    text = ",".join(map(str, text)) if isinstance(text, (list, tuple)) else str(text)
    try:
        levels = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected a number or a comma-separated list") from None
    if not levels:
        raise UsageError(f"{option}: no level given")
    for s in levels:
        if not 0 < s < 1:
            raise UsageError(f"{option} must be in (0, 1), got {s:g}")
    if len(set(levels)) != len(levels):
        raise UsageError(f"{option} {text!r}: a level is given twice")
    return levels


def weights_remaining(mask: StructuredMask, sizes: dict[str, int]) -> float:
    """Fraction of the encoder layers' parameters a structured ticket keeps, from ``unit_sizes``."""
    per_head, per_ffn, per_layer_rest = sizes["per_head"], sizes["per_ffn"], sizes["per_layer_rest"]
    layers = mask.heads.shape[0]
    total = layers * (mask.heads.shape[1] * per_head + per_ffn + per_layer_rest)
    kept = mask.heads.sum() * per_head + mask.ffn.sum() * per_ffn + layers * per_layer_rest
    return float(kept / total)


def normalize_heads(scores: np.ndarray) -> np.ndarray:
    """Head scores divided by their layer's L2 norm (Michel et al.; Liang et al.), so layers compare."""
    norm = np.linalg.norm(scores, axis=1, keepdims=True)
    return scores / np.where(norm > 0, norm, 1.0)
