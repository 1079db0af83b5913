"""``ticketctl iou``: intersection over union of the surviving weights of masks (the paper's Figure 4).

Works on the bit-packed tensors directly (popcount of AND / OR), so comparing BERT-base masks is cheap."""

from __future__ import annotations

import numpy as np

from ticketctl.artifacts import Artifact, read_artifact
from ticketctl.errors import InputError, UsageError
from ticketctl.members import check_compatible

_POP = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount(a: np.ndarray) -> int:
    if hasattr(np, "bitwise_count"):
        return int(np.bitwise_count(a).sum(dtype=np.int64))
    return int(_POP[a].sum(dtype=np.int64))  # pragma: no cover - numpy < 2


def load_masks(paths: list[str], minimum: int = 2) -> list[Artifact]:
    if len(paths) < minimum:
        raise UsageError(f"need at least {minimum} masks, got {len(paths)}")
    arts = [read_artifact(p, "mask") for p in paths]
    check_compatible(arts, ("model_fingerprint",))
    first = arts[0]
    for a in arts[1:]:
        if a.meta["shapes"] != first.meta["shapes"]:
            raise InputError(f"cannot compare masks of different shapes: {first.path} and {a.path}")
    return arts


def pair_iou(a: Artifact, b: Artifact, names: list[str] | None = None) -> float:
    inter = union = 0
    for n in names or a.meta["shapes"]:
        x, y = a.tensors[n], b.tensors[n]
        inter += popcount(x & y)
        union += popcount(x | y)
    return inter / union if union else 1.0


def iou_matrix(arts: list[Artifact], names: list[str] | None = None) -> np.ndarray:
    m = np.eye(len(arts))
    for i in range(len(arts)):
        for j in range(i + 1, len(arts)):
            m[i, j] = m[j, i] = pair_iou(arts[i], arts[j], names)
    return m


def layer_rows(arts: list[Artifact]) -> list[dict]:
    """Per prunable parameter: mean IoU over pairs, and its mean sparsity."""
    rows = []
    iu = np.triu_indices(len(arts), k=1)
    for n, shape in arts[0].meta["shapes"].items():
        m = iou_matrix(arts, [n])
        size = int(np.prod(shape))
        sparsity = float(np.mean([1 - popcount(a.tensors[n]) / size for a in arts]))
        rows.append({"parameter": n, "mean_iou": float(m[iu].mean()), "sparsity": sparsity})
    return rows


def label(a: Artifact) -> str:
    return f"{a.meta.get('policy', '?')}-s{a.meta.get('seed', '?')}"


def plot_heatmap(matrix: np.ndarray, labels: list[str], path: str, title: str) -> None:
    from ticketctl.plots import save_figure, pyplot

    plt = pyplot()
    size = max(4.0, 0.5 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(matrix, cmap="viridis", vmin=float(matrix.min()), vmax=1.0)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    if len(labels) <= 12:
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(j, i, f"{matrix[i, j]:.3f}", ha="center", va="center", fontsize=7,
                        color="white" if matrix[i, j] < (matrix.min() + 1) / 2 else "black")
    fig.colorbar(im, ax=ax, label="IoU of surviving weights")
    ax.set_title(title)
    save_figure(fig, path)
