"""``ticketctl show``: an artifact's metadata and a summary."""

from __future__ import annotations

import json
import sys

from ticketctl.artifacts import Artifact, read_artifact


def summary(art: Artifact) -> dict:
    meta = {k: v for k, v in art.meta.items()}
    out = {"path": str(art.path), "sha256": art.sha256, **meta}
    if art.kind == "mask":
        mask = art.mask()
        out["summary"] = {"prunable": mask.total, "pruned": mask.pruned, "sparsity": mask.sparsity,
                          "layer_sparsity": mask.layer_sparsity()}
    elif art.kind == "logits":
        out["summary"] = {"examples": int(len(art.tensors["ids"])), "labelled": "labels" in art.tensors,
                          "outputs": list(art.tensors["outputs"].shape)}
    return out


def show(paths: list[str], as_json: bool) -> None:
    for p in paths:
        art = read_artifact(p)
        info = summary(art)
        if as_json:
            sys.stdout.write(json.dumps(info, sort_keys=True) + "\n")
            continue
        sys.stdout.write(f"{info['path']}\n")
        for k in ("kind", "task", "split", "policy", "seed", "sparsity", "bagging", "model", "config_hash", "sha256"):
            if k in info:
                sys.stdout.write(f"  {k:12} {info[k]}\n")
        if art.meta.get("metrics"):
            sys.stdout.write(f"  {'metrics':12} {json.dumps(art.meta['metrics'], sort_keys=True)}\n")
        s = info.get("summary", {})
        if art.kind == "mask":
            sys.stdout.write(f"  {'pruned':12} {s['pruned']:,} of {s['prunable']:,} prunable weights "
                             f"({s['sparsity']:.4%})\n")
            for name, sp in s["layer_sparsity"].items():
                sys.stdout.write(f"    {sp:7.2%}  {name}\n")
        elif art.kind == "logits":
            sys.stdout.write(f"  {'examples':12} {s['examples']} ({'labelled' if s['labelled'] else 'unlabelled'})\n")
        parents = art.meta.get("parents") or []
        for par in parents:
            sys.stdout.write(f"  {'parent':12} {par['path']} ({par['sha256'][:12]})\n")
    sys.stdout.flush()
