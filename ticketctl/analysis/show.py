"""``ticketctl show``: an artifact's metadata and a summary."""

from __future__ import annotations

import json
import sys

from ticketctl.analysis.tables import note
from ticketctl.errors import InputError
from ticketctl.store.artifacts import Artifact, read_artifact


def summary(art: Artifact) -> dict:
    meta = {k: v for k, v in art.meta.items()}
    out = {"path": str(art.path), "sha256": art.sha256, **meta}
    if art.kind == "mask" and art.method == "structured":
        m = art.structured()
        out["summary"] = {"heads_kept": int(m.heads.sum()), "heads": int(m.heads.size), "ffn_kept": int(m.ffn.sum()),
                          "ffn": int(m.ffn.size), "head_sparsity": m.sparsity, "ffn_sparsity": m.ffn_sparsity,
                          "weights_remaining": float(art.meta.get("weights_remaining", "nan")),
                          "heads_per_layer": m.heads.sum(axis=1).tolist(), "ffn_keep": m.ffn.astype(int).tolist()}
    elif art.kind == "mask":
        mask = art.mask()
        out["summary"] = {"prunable": mask.total, "pruned": mask.pruned, "sparsity": mask.sparsity,
                          "layer_sparsity": mask.layer_sparsity()}
    elif art.kind == "logits":
        out["summary"] = {"examples": int(len(art.tensors["ids"])), "labelled": "labels" in art.tensors,
                          "outputs": list(art.tensors["outputs"].shape)}
    return out


def cost_line(c: dict) -> str:
    """A member's inference cost in words (``ticketctl.model.cost``)."""
    zeros = c["params"] - c["nonzero_params"]
    sparse = f", {zeros:,} of them zero (computed densely: no sparse kernel)" if zeros > 0.01 * c["params"] else ""
    return (f"{c['relative_flops']:.3f} x a dense member: {c['flops_per_example'] / 1e9:.3f} GFLOPs per example at "
            f"{c['mean_tokens']:.1f} tokens, {c['params']:,} parameters{sparse}")


def verify(art: Artifact) -> list[dict]:
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
        rows.append({"path": par["path"], "status": status})
    return rows


def show(paths: list[str], as_json: bool = False, check: bool = False, plot: str | None = None) -> None:
    """Print each artifact; with ``check``, verify its parents (an InputError if any changed or is missing); with
    ``plot``, draw the logits artifacts' training curves to that file instead."""
    if plot:
        n = plot_curves(paths, plot)
        note(f"wrote {plot} ({n} training curves)")
        return
    all_ok = True
    for p in paths:
        art = read_artifact(p)
        info = summary(art)
        if check:
            info["verify"] = verify(art)
            all_ok &= all(r["status"] == "ok" for r in info["verify"])
        if as_json:
            sys.stdout.write(json.dumps(info, sort_keys=True) + "\n")
            continue
        sys.stdout.write(f"{info['path']}\n")
        for k in ("kind", "method", "task", "split", "policy", "seed", "sparsity", "bagging", "model", "config_hash", "sha256"):
            if k in info:
                sys.stdout.write(f"  {k:12} {info[k]}\n")
        spec = art.meta.get("task_spec")
        if spec:
            kind = "regression" if spec.get("labels") is None else "labels " + ", ".join(spec["labels"])
            sys.stdout.write(f"  {'task_spec':12} {kind}; text {', '.join(spec['text_columns'])}; metrics "
                             f"{', '.join(spec['metrics'])}\n")
        if art.meta.get("metrics"):
            sys.stdout.write(f"  {'metrics':12} {json.dumps(art.meta['metrics'], sort_keys=True)}\n")
        if art.meta.get("cost"):
            sys.stdout.write(f"  {'cost':12} {cost_line(art.meta['cost'])}\n")
        s = info.get("summary", {})
        if art.kind == "mask" and "heads_kept" in s:
            sys.stdout.write(f"  {'heads':12} {s['heads_kept']} of {s['heads']} kept ({s['head_sparsity']:.1%} pruned)"
                             f"; FFN sublayers {s['ffn_kept']} of {s['ffn']} kept\n")
            sys.stdout.write(f"  {'weights':12} {s['weights_remaining']:.2%} of the encoder layers' weights remain\n")
            for i, (h, f) in enumerate(zip(s["heads_per_layer"], s["ffn_keep"])):
                sys.stdout.write(f"    layer {i:2}: {h:2} heads, FFN {'kept' if f else 'pruned'}\n")
        elif art.kind == "mask":
            sys.stdout.write(f"  {'pruned':12} {s['pruned']:,} of {s['prunable']:,} prunable weights "
                             f"({s['sparsity']:.4%})\n")
            for name, sp in s["layer_sparsity"].items():
                sys.stdout.write(f"    {sp:7.2%}  {name}\n")
        elif art.kind == "logits":
            sys.stdout.write(f"  {'examples':12} {s['examples']} ({'labelled' if s['labelled'] else 'unlabelled'})\n")
        parents = art.meta.get("parents") or []
        status = {r["path"]: r["status"] for r in info.get("verify", [])}
        for par in parents:
            mark = f" [{status[par['path']]}]" if par["path"] in status else ""
            sys.stdout.write(f"  {'parent':12} {par['path']} ({par['sha256'][:12]}){mark}\n")
    sys.stdout.flush()
    if not all_ok:
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
