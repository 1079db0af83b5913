"""``ticketctl show``: an artifact's metadata and a summary (records; ``render.show`` prints them)."""

from __future__ import annotations

from ticketctl.analysis.records import ArtifactSummary, ParentCheck
from ticketctl.errors import InputError
from ticketctl.store.artifacts import Artifact, read_artifact


def summary(art: Artifact) -> dict | None:
    """What an artifact's tensors hold: for a weight mask its sparsity overall and per layer (fractions pruned); for
    a structured mask the heads and FFN sublayers kept (per layer) and the weights remaining; for logits the examples
    and the outputs' shape. None for other kinds."""
    if art.kind == "mask" and art.method == "structured":
        m = art.structured()
        return {"heads_kept": int(m.heads.sum()), "heads": int(m.heads.size), "ffn_kept": int(m.ffn.sum()),
                "ffn": int(m.ffn.size), "head_sparsity": m.sparsity, "ffn_sparsity": m.ffn_sparsity,
                "weights_remaining": float(art.meta.get("weights_remaining", "nan")),
                "heads_per_layer": m.heads.sum(axis=1).tolist(), "ffn_keep": m.ffn.astype(int).tolist()}
    if art.kind == "mask":
        mask = art.mask()
        return {"prunable": mask.total, "pruned": mask.pruned, "sparsity": mask.sparsity,
                "layer_sparsity": mask.layer_sparsity()}
    if art.kind == "logits":
        return {"examples": int(len(art.tensors["ids"])), "labelled": "labels" in art.tensors,
                "outputs": list(art.tensors["outputs"].shape)}
    return None


def verify(art: Artifact) -> list[ParentCheck]:
    """Recompute each parent's content hash: ok, changed, or missing."""
    from pathlib import Path

    from ticketctl.store.provenance import file_sha256

    rows = []
    for par in art.meta.get("parents") or []:
        path = Path(par["path"])
        if not path.is_absolute() and not path.exists():
            path = art.path.parent / path.name  # moved together with its parents
        if not path.is_file():
            status = "missing"
        else:
            status = "ok" if file_sha256(path) == par["sha256"] else "changed"
        rows.append(ParentCheck(par["path"], status))
    return rows


def describe(paths: list[str], check: bool = False) -> list[ArtifactSummary]:
    """Each artifact's header and summary; with ``check``, each parent's content hash recomputed (see
    :func:`unverified`). Raises InputError for a file that is not an artifact."""
    return [describe_one(p, check) for p in paths]


def describe_one(path: str, check: bool = False) -> ArtifactSummary:
    """One artifact's :class:`ArtifactSummary` (see :func:`describe`)."""
    art = read_artifact(path)
    return ArtifactSummary(str(art.path), art.sha256, dict(art.meta), summary(art), verify(art) if check else None)


def unverified(shown: list[ArtifactSummary]) -> None:
    """Raises InputError when a checked parent changed or is missing."""
    if any(v.status != "ok" for s in shown for v in s.verify or []):
        raise InputError("a parent artifact changed or is missing (see [changed] / [missing] above)")


def plot_curves(paths: list[str], out: str) -> int:
    """Training curves (loss every 10 steps) of logits artifacts, one line each; returns how many were drawn."""
    from ticketctl.analysis.plots import pyplot, save_figure
    from ticketctl.errors import UsageError

    arts = [read_artifact(p, "logits") for p in paths]
    curves = [(a, a.meta.get("loss_curve") or []) for a in arts]
    curves = [(a, c) for a, c in curves if c]
    if not curves:
        raise UsageError("--plot: none of the artifacts has a logged training curve (made by an older ticketctl, or "
                         "an ensemble)")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for a, c in curves:
        label = f"{a.meta.get('task')} {a.meta.get('policy')} s{a.meta.get('seed')}"
        ax.plot([x for x, _ in c], [y for _, y in c], label=label, linewidth=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (batch, every 10 steps)")
    ax.set_title("training curves")
    if len(curves) <= 12:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, out)
    return len(curves)
