"""``ticketctl ensemble``: average member outputs; score every k-member combination (within groups)."""

from __future__ import annotations

import sys
from math import comb
from pathlib import Path

import numpy as np

from ticketctl.analysis import tables
from ticketctl.analysis.combine import combination_scores, combined_outputs, member_terms
from ticketctl.analysis.significance import parse_k, split_groups
from ticketctl.analysis.members import Members, load_members
from ticketctl.data.tasks import Task, predictions, score
from ticketctl.errors import UsageError


def ensemble(paths: list[str], combine: str = "probs", size: str | None = None, groups: int = 1,
             out: Path | None = None, submission: Path | None = None, fmt: str = "table") -> None:
    """Print the ensemble's metrics (every k-member combination with ``size``); with ``out`` write its logits
    artifact and print the path; with ``submission`` write GLUE's prediction file."""
    members = load_members(paths)
    task = members.task
    combined = combined_outputs(task, members.outputs, combine)
    sizes = parse_k(size.replace("all", f"1-{len(members)}") if size else None)
    metrics = {}
    if members.labels is not None:
        metrics = all_member_scores(members, combine, combined)
    elif sizes:
        raise UsageError("--size needs a labelled split")
    if submission is not None:
        write_submission(str(submission), task, members.shown_ids, combined)
        tables.note(f"wrote GLUE submission {submission}")
    if out is not None:
        path = write_ensemble(members, combined, combine, metrics, out)
        if metrics:
            tables.note(f"ensemble of {len(members)} ({combine}): " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        sys.stdout.write(f"{path}\n")
        return
    costs = [a.meta.get("cost") for a in members.arts]
    costs = costs if all(costs) else None  # older artifacts have no cost record
    if sizes:
        rows = size_table(members, sizes, combine, groups)
        cols = ["k", "combinations", "mean", "std", "min", "max"] + [f"mean_{m}" for m in task.metrics[1:]]
        if costs:
            mean_cost = float(np.mean([c["relative_flops"] for c in costs]))
            for row in rows:
                row["cost"] = round(row["k"] * mean_cost, 4)
            cols.insert(2, "cost")
        tables.emit(rows, cols, fmt, title=f"{task.name} {members.split}: {task.headline} of k-member ensembles "
                                           f"({combine}, {len(members)} members, {groups} group(s))")
    elif metrics:
        rows = [{"members": len(members), "combine": combine, **metrics}]
        cols = ["members", "combine", *task.metrics]
        if costs:  # the whole ensemble: relative to one dense member, and absolute
            rows[0]["cost"] = round(sum(c["relative_flops"] for c in costs), 4)
            rows[0]["gflops"] = round(sum(c["flops_per_example"] for c in costs) / 1e9, 4)
            cols += ["cost", "gflops"]
        tables.emit(rows, cols, fmt, title=f"{task.name} {members.split} ensemble"
                    + (" (cost: dense-member equivalents; gflops: per example)" if costs else ""))
    elif submission is None:
        tables.note("the split is unlabelled: nothing to score (use --out or --submission)")


def write_ensemble(members: Members, combined: np.ndarray, combine: str, metrics: dict, out: Path) -> Path:
    """The ensemble's outputs as a logits artifact (usable as a member, by ``stats``, ``--submission``)."""
    from ticketctl.store import paths
    from ticketctl.store.artifacts import write_artifact
    from ticketctl.store.provenance import config_hash, provenance

    parents = [a.parent_ref() for a in members.arts]
    h = config_hash({"members": sorted(p["sha256"] for p in parents), "combine": combine})
    first = members.arts[0].meta
    tensors = {"outputs": combined.astype("float32"), "ids": members.ids}
    if members.labels is not None:
        tensors["labels"] = members.labels
    meta = provenance(first.get("task"), first.get("model"), first.get("model_fingerprint"),
                      **{k: first.get(k) for k in ("split", "split_source", "data_fingerprint", "examples")},
                      policy="ensemble", combine=combine, members=str(len(members)), config_hash=h,
                      config={"combine": combine, "members": [p["path"] for p in parents]},
                      metrics=metrics or None, parents=parents)
    return write_artifact(out / paths.ensemble_name(members.task.name, members.split, h), "logits", tensors, meta)


def all_member_scores(members: Members, how: str = "probs", combined: np.ndarray | None = None) -> dict[str, float]:
    """Metrics of the ensemble of all members (pass ``combined`` when its outputs are computed already)."""
    if combined is None:
        combined = combined_outputs(members.task, members.outputs, how)
    return score(members.task, predictions(members.task, combined), members.labels)


def size_table(members: Members, sizes: list[int], how: str, groups: int = 1) -> list[dict]:
    """One row per ensemble size k: the headline metric's mean/std/min/max over all k-member combinations (within
    each group, pooled over groups), and the mean of the task's other metrics."""
    if members.labels is None:
        raise UsageError("the members' split is unlabelled: nothing to score")
    task = members.task
    terms = member_terms(task, members.outputs, how)
    parts = split_groups(len(members), groups)
    rows = []
    for k in sizes:
        if k < 1 or k > len(parts[0]):
            raise UsageError(f"--size {k}: needs between 1 and {len(parts[0])} members per group")
        per_group = [combination_scores(task, terms, members.labels, k, g) for g in parts]
        pooled = {m: np.concatenate([pg[m] for pg in per_group]) for m in task.metrics}
        head = pooled[task.headline]
        row = {"k": k, "combinations": sum(comb(len(g), k) for g in parts), "mean": float(head.mean()),
               "std": float(head.std(ddof=1)) if len(head) > 1 else 0.0, "min": float(head.min()),
               "max": float(head.max())}
        for m in task.metrics[1:]:
            row[f"mean_{m}"] = float(pooled[m].mean())
        rows.append(row)
    return rows


def write_submission(path: str, task: Task, ids, outputs: np.ndarray) -> None:
    """GLUE's submission format: ``index<TAB>prediction`` with a header row; ids as the data wrote them."""
    from ticketctl.store.atomic import atomic_write_bytes

    pred = predictions(task, outputs)
    lines = ["index\tprediction"]
    for i, p in zip(ids.tolist() if isinstance(ids, np.ndarray) else ids, pred.tolist()):
        lines.append(f"{i}\t{p:.3f}" if task.is_regression else f"{i}\t{task.labels[int(p)]}")
    atomic_write_bytes(Path(path), ("\n".join(lines) + "\n").encode())
