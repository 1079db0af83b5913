"""Headless matplotlib helpers: PNG or SVG by the file's extension, written atomically."""

from __future__ import annotations

import io
import math
from pathlib import Path

from ticketctl.analysis.records import KIND_ORDER, PhaseTable
from ticketctl.errors import UsageError


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str) -> None:
    from ticketctl.store.atomic import atomic_write_bytes

    p = Path(path)
    fmt = p.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg", "pdf"):
        raise UsageError(f"--plot {path}: use a .png, .svg or .pdf file name")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format=fmt, dpi=150)
    pyplot().close(fig)
    atomic_write_bytes(p, buf.getvalue())


# ---------------------------------------------------------------------------------------------- figures


def plot_gain(curves: dict[str, list[tuple[int, float]]], ref: str, metric: str, path: str, title: str,
              intervals: dict[str, list[tuple[float, float]]] | None = None, points: bool = True,
              direction: str | None = None) -> None:
    """Figure 3: each group's gain over ``ref`` vs k; with ``intervals`` (per group, a (low, high) per point of its
    curve; NaN where there is none) a shaded 95% band. ``points``: the metric is a fraction, drawn x 100 (points);
    False draws it in its own units (nll, brier, ...). ``direction`` (a registered metric's: "lower is better",
    ...): named on the axis with the sign that favours a group, so the figure reads right for any metric; None
    (the task's headline metric) leaves the axis as it was."""
    scale = 100 if points else 1
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for g, pts in sorted(curves.items()):
        line = ax.plot([k for k, _ in pts], [scale * v for _, v in pts], marker="o", label=g)[0]
        if intervals and g in intervals:
            lows, highs = zip(*intervals[g])
            ax.fill_between([k for k, _ in pts], [scale * v for v in lows], [scale * v for v in highs],
                            color=line.get_color(), alpha=0.15, linewidth=0)
    ks = sorted({k for pts in curves.values() for k, _ in pts})
    ax.set_xticks(ks)
    ax.axhline(0, color="grey", linewidth=1, linestyle="--", label=f"{ref} (reference)")
    ax.set_xlabel("ensemble members k")
    label = f"{metric} gain over {ref} (points)" if points else f"{metric} minus {ref}'s"
    if direction:
        label += f"\n({direction}: {'below' if direction.startswith('lower') else 'above'} 0 favours the group)"
    ax.set_ylabel(label)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_reliability(curves: dict[str, dict], path: str, title: str) -> None:
    """The reliability diagram: per group (``curves[g]["ensemble"]`` and ``["single"]``, each
    ``metrics.reliability``'s bins) accuracy against mean confidence in the non-empty bins, ensembles solid and
    single members dashed in the group's colour, and the diagonal of perfect calibration."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linewidth=1, linestyle=":", label="perfect calibration")
    for g, curve in sorted(curves.items()):
        line = None
        for which, style in (("ensemble", "-"), ("single", "--")):
            bins = curve[which]
            xs = [c for c, n in zip(bins["confidence"], bins["count"]) if n]
            ys = [a for a, n in zip(bins["accuracy"], bins["count"]) if n]
            line = ax.plot(xs, ys, marker="o", markersize=3, linestyle=style,
                           color=None if line is None else line.get_color(),
                           label=f"{g} (k={curve['k']})" if which == "ensemble" else None)[0]
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean top-label confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_phase(table: PhaseTable, path: str, title: str) -> None:
    """Each column's mean (±std over seeds) against the sparsity level or training fraction: the task's headline
    metric in percent, a registered metric (``table.direction`` set) in its own units with its direction on the
    axis."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [100 * r.value for r in table.rows]
    scale = 100 if table.direction is None else 1
    for k in table.columns:
        ys = [scale * r.cells[k].mean for r in table.rows]
        err = [0 if math.isnan(r.cells[k].std) else scale * r.cells[k].std for r in table.rows]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=f"{k} tickets" if k in KIND_ORDER else k)
    if table.by == "sparsity" and not math.isnan(table.rows[0].full.mean):
        ax.axhline(scale * table.rows[0].full.mean, color="grey", linestyle="--", linewidth=1, label="full model")
    if table.by == "train_fraction":
        ax.set_xscale("log")
        ax.set_xlabel("training data used (%)")
    else:
        ax.set_xticks(xs)
        ax.set_xlabel("sparsity (% pruned)")
    ax.set_ylabel(f"dev {table.on.metric} (mean over seeds)" if table.direction is None
                  else f"{table.on.split} {table.on.metric} (mean over seeds; {table.direction})")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)
