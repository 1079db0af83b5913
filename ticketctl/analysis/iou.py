"""``ticketctl iou``: intersection over union of the surviving weights of masks (the paper's Figure 4).

Works on the bit-packed tensors directly (popcount of AND / OR), so comparing BERT-base masks is cheap."""

from __future__ import annotations

import numpy as np

from ticketctl.analysis.members import check_compatible, check_distinct
from ticketctl.analysis.records import Importance, IouMatrix, LayerIou, Remaining, UnitImportance
from ticketctl.errors import InputError, UsageError
from ticketctl.store.artifacts import Artifact

_POP = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount(a: np.ndarray) -> int:
    if hasattr(np, "bitwise_count"):
        return int(np.bitwise_count(a).sum(dtype=np.int64))
    return int(_POP[a].sum(dtype=np.int64))  # pragma: no cover - numpy < 2


def load_masks(paths: list[str], minimum: int = 2, tasks: bool = False) -> list[Artifact]:
    """The mask artifacts among ``paths`` (others skipped with a line on stderr), of one model and one method, and
    of one task unless ``tasks`` (masks of several tasks compared on purpose)."""
    from ticketctl.analysis.members import select_artifacts

    arts = select_artifacts(paths, "mask")
    if len(arts) < minimum:
        raise UsageError(f"need at least {minimum} masks, got {len(arts)}")
    check_distinct(arts)
    check_compatible(arts, ("model_fingerprint",) if tasks else ("task", "model_fingerprint"))
    first = arts[0]
    methods = {a.method for a in arts}
    if len(methods) > 1:
        raise InputError(f"cannot compare weight masks with structured (head/FFN) masks: {first.path} is "
                         f"{first.method}, {next(a for a in arts if a.method != first.method).path} is not")
    if first.method == "structured":
        return arts
    for a in arts[1:]:
        if a.meta["shapes"] != first.meta["shapes"]:
            raise InputError(f"cannot compare masks of different shapes: {first.path} and {a.path}")
    return arts


def pair_iou(a: Artifact, b: Artifact, names: list[str] | None = None) -> float:
    if a.method == "structured":  # kept heads and FFN sublayers as one set of units
        x, y = _units(a), _units(b)
        union = int((x | y).sum())
        return int((x & y).sum()) / union if union else 1.0
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


def layer_rows(arts: list[Artifact]) -> list[LayerIou]:
    """Per prunable parameter: mean IoU over pairs, and its mean sparsity."""
    rows = []
    iu = np.triu_indices(len(arts), k=1)
    for n, shape in arts[0].meta["shapes"].items():
        m = iou_matrix(arts, [n])
        size = int(np.prod(shape))
        sparsity = float(np.mean([1 - popcount(a.tensors[n]) / size for a in arts]))
        rows.append(LayerIou(n, float(m[iu].mean()), sparsity))
    return rows


def label(a: Artifact) -> str:
    if a.method == "structured":
        level = round(100 * float(a.meta.get("target_sparsity", a.meta.get("sparsity", 0))))
        return f"{a.meta.get('task', '?')}-{a.meta.get('policy', '?')}-{level}pct-s{a.meta.get('seed', '?')}"
    return f"{a.meta.get('policy', '?')}-s{a.meta.get('seed', '?')}"


def plot_heatmap(matrix: np.ndarray, labels: list[str], path: str, title: str) -> None:
    from ticketctl.analysis.plots import pyplot, save_figure

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


# ---------------------------------------------------------------------------------------------- structured masks


def _units(a: Artifact) -> np.ndarray:
    m = a.structured()
    return np.concatenate([m.heads.ravel(), m.ffn])


def remaining_rows(arts: list[Artifact]) -> list[Remaining]:
    """Per structured mask: what it keeps (the paper's Figure 3 tabulates the weights remaining per task)."""
    rows = []
    for a in arts:
        m = a.structured()
        rows.append(Remaining(a.path.name, a.meta.get("task"), a.meta.get("policy"), a.meta.get("seed"),
                              float(a.meta.get("target_sparsity", m.sparsity)), int(m.heads.sum()),
                              int(m.ffn.sum()), float(a.meta.get("weights_remaining", "nan"))))
    return rows


def task_importance(arts: list[Artifact]) -> tuple[list[str], np.ndarray, list[str]]:
    """Each task's importance of every head and FFN sublayer, normalised so that a task's head scores sum to 1
    and its FFN scores sum to 1 (tasks' losses have different scales), averaged over that task's masks (seeds).
    Returns the tasks, a (tasks, units) array, and the unit names (L0.H3, L0.FFN, ...)."""
    by_task: dict[str, list[np.ndarray]] = {}
    shape = None
    for a in arts:
        if "head_scores" not in a.tensors or "ffn_scores" not in a.tensors:
            raise InputError(f"{a.path}: structured mask without importance scores")
        heads = a.tensors["head_scores"].astype(np.float64)
        ffn = a.tensors["ffn_scores"].astype(np.float64)
        if shape is None:
            shape = heads.shape
        elif heads.shape != shape:
            raise InputError(f"{a.path}: {heads.shape[0]} layers x {heads.shape[1]} heads, others have {shape}")
        units = np.concatenate([(heads / max(heads.sum(), 1e-30)).ravel(), ffn / max(ffn.sum(), 1e-30)])
        by_task.setdefault(str(a.meta.get("task")), []).append(units)
    tasks = sorted(by_task)
    scores = np.stack([np.mean(by_task[t], axis=0) for t in tasks])
    layers, heads = shape
    names = [f"L{i}.H{h}" for i in range(layers) for h in range(heads)] + [f"L{i}.FFN" for i in range(layers)]
    return tasks, scores, names


def importance_rows(arts: list[Artifact], dominance: float = 0.5) -> Importance:
    """The paper's Figure 6: per head and FFN, the importance averaged over tasks and each task's share of it;
    ``dominated_by`` names a task whose share is at least ``dominance``."""
    tasks, scores, names = task_importance(arts)
    if len(tasks) < 2:
        raise UsageError("--importance compares tasks: give structured masks of at least two tasks")
    total = scores.sum(axis=0)
    shares = scores / np.where(total > 0, total, 1.0)
    rows = []
    for u, name in enumerate(names):
        top = int(np.argmax(shares[:, u]))
        rows.append(UnitImportance(name, float(scores[:, u].mean()),
                                   {t: float(shares[i, u]) for i, t in enumerate(tasks)},
                                   tasks[top] if shares[top, u] >= dominance else ""))
    return Importance(tasks, rows)


def plot_importance(importance: Importance, path: str, title: str) -> None:
    """Stacked bars: each unit's mean importance split into the tasks' shares; heads and FFN sublayers in separate
    panels (each task's scores are normalised per kind, so the two scales differ)."""
    from ticketctl.analysis.plots import pyplot, save_figure

    plt = pyplot()
    heads = [r for r in importance.rows if not r.unit.endswith("FFN")]
    ffn = [r for r in importance.rows if r.unit.endswith("FFN")]
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 0.12 * len(heads) + 4), 4),
                             gridspec_kw={"width_ratios": [max(1, len(heads)), max(4, 3 * len(ffn))]})
    for ax, part, what in ((axes[0], heads, "heads"), (axes[1], ffn, "FFN sublayers")):
        x = np.arange(len(part))
        bottom = np.zeros(len(part))
        for t in importance.tasks:
            height = np.array([r.mean_importance * r.shares[t] for r in part])
            ax.bar(x, height, bottom=bottom, label=t, width=0.85)
            bottom += height
        step = max(1, len(part) // 24)
        ax.set_xticks(x[::step], [r.unit for r in part][::step], rotation=70, fontsize=7)
        ax.set_title(what)
    axes[0].set_ylabel("importance (mean over tasks)")
    axes[0].legend()
    fig.suptitle(title)
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------- the views


def check_views(layers: bool = False, importance: bool = False, remaining: bool = False) -> None:
    """The command's views are exclusive: raises UsageError when more than one is asked for."""
    if layers + importance + remaining > 1:
        raise UsageError("--layers, --importance and --remaining are different views: pick one")


def _structured_masks(paths: list[str], minimum: int) -> list[Artifact]:
    arts = load_masks(paths, minimum=minimum, tasks=True)
    if arts[0].method != "structured":
        raise UsageError("--importance and --remaining read structured masks (search --method structured)")
    return arts


def remaining(paths: list[str]) -> list[Remaining]:
    """What each structured mask among ``paths`` keeps (Super Tickets' Figure 3); masks of several tasks welcome.
    Raises UsageError for weight masks or none, InputError for masks of different models."""
    return remaining_rows(_structured_masks(paths, 1))


def importance(paths: list[str]) -> Importance:
    """Importance of every head and FFN sublayer across the tasks of the structured masks among ``paths`` (Super
    Tickets' Figure 6). Raises UsageError for weight masks or masks of fewer than two tasks."""
    return importance_rows(_structured_masks(paths, 2))


def layer_iou(paths: list[str], cross_task: bool = False) -> list[LayerIou]:
    """Per prunable parameter, the mean IoU over pairs of the weight masks among ``paths`` (at least two) and their
    mean sparsity. Raises UsageError for structured masks, InputError for masks that must not be compared."""
    arts = load_masks(paths, minimum=2, tasks=cross_task)
    if arts[0].method == "structured":
        raise UsageError("--layers compares weight masks; structured masks are compared per head/FFN already")
    return layer_rows(arts)


def mask_iou(paths: list[str], cross_task: bool = False) -> IouMatrix:
    """The IoU of every pair of the masks among ``paths`` (at least two): of surviving weights, or of kept heads
    and FFN sublayers for structured masks (the paper's Figure 4). Masks of different tasks are refused (InputError)
    unless ``cross_task``."""
    arts = load_masks(paths, minimum=2, tasks=cross_task)
    labels = [label(a) for a in arts]
    if len(set(labels)) != len(labels):
        labels = [a.path.name for a in arts]
    if len(set(labels)) != len(labels):
        labels = [str(a.path) for a in arts]
    return IouMatrix(labels, iou_matrix(arts), arts[0].method == "structured", str(arts[0].meta.get("task", "")))
