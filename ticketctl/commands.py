"""Bodies of the analysis commands (numpy/scipy only): load, compute, print."""

from __future__ import annotations

import sys
from pathlib import Path

from ticketctl import output


def _log(msg: str) -> None:
    sys.stderr.write(msg + "\n")


def ensemble(paths: list[str], combine: str, size: str | None, groups: int, out: Path | None,
             submission: Path | None, fmt: str) -> None:
    from ticketctl import artifacts, ensemble as ens
    from ticketctl.members import load_members

    members = load_members(paths)
    task = members.task
    combined = ens.combined_outputs(task, members.outputs, combine)
    sizes = ens.parse_sizes(size, len(members))
    metrics = {}
    if members.labels is not None:
        metrics = ens.all_member_scores(members, combine, combined)
    elif sizes:
        from ticketctl.errors import UsageError

        raise UsageError("--size needs a labelled split")
    if submission is not None:
        ens.write_submission(str(submission), task, members.ids, combined)
        _log(f"wrote GLUE submission {submission}")
    if out is not None:
        parents = [a.parent_ref() for a in members.arts]
        h = artifacts.config_hash({"members": sorted(p["sha256"] for p in parents), "combine": combine})
        first = members.arts[0].meta
        tensors = {"outputs": combined.astype("float32"), "ids": members.ids}
        if members.labels is not None:
            tensors["labels"] = members.labels
        path = artifacts.write_artifact(
            out / artifacts.ensemble_name(task.name, members.split, h), "logits", tensors,
            {k: first.get(k) for k in ("task", "split", "split_source", "data_fingerprint", "model",
                                       "model_fingerprint", "examples")}
            | {"policy": "ensemble", "combine": combine, "members": str(len(members)), "config_hash": h,
               "config": {"combine": combine, "members": [p["path"] for p in parents]},
               "metrics": metrics or None, "parents": parents, "versions": artifacts.versions()})
        if metrics:
            _log(f"ensemble of {len(members)} ({combine}): " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        sys.stdout.write(f"{path}\n")
        return
    if sizes:
        rows = ens.size_table(members, sizes, combine, groups)
        cols = ["k", "combinations", "mean", "std", "min", "max"] + [f"mean_{m}" for m in task.metrics[1:]]
        output.emit(rows, cols, fmt, title=f"{task.name} {members.split}: {task.headline} of k-member ensembles "
                                           f"({combine}, {len(members)} members, {groups} group(s))")
    elif metrics:
        rows = [{"members": len(members), "combine": combine, **metrics}]
        output.emit(rows, ["members", "combine", *task.metrics], fmt, title=f"{task.name} {members.split} ensemble")
    elif submission is None:
        _log("the split is unlabelled: nothing to score (use --out or --submission)")


def diversity(paths: list[str], matrix: bool, fmt: str) -> None:
    from ticketctl import diversity as div
    from ticketctl.errors import UsageError
    from ticketctl.members import load_members

    members = load_members(paths, minimum=2)
    if members.labels is None:
        raise UsageError("diversity needs a labelled split")
    title = f"{members.task.name} {members.split}: diversity of {len(members)} members"
    if members.task.is_regression:
        output.emit(div.regression_summary(members), ["metric", "value", "direction"], fmt, title)
        return
    correct = div.oracle(members)
    if matrix:
        output.emit(div.pair_rows(correct, members.names), ["a", "b", *div.DIRECTIONS], fmt, title)
    else:
        output.emit(div.summary(correct), ["metric", "value", "direction"], fmt, title + " (mean over pairs)")


def iou(paths: list[str], layers: bool, plot: str | None, fmt: str, importance: bool = False,
        remaining: bool = False) -> None:
    from ticketctl import iou as iou_mod
    from ticketctl.errors import UsageError

    if layers + importance + remaining > 1:
        raise UsageError("--layers, --importance and --remaining are different views: pick one")
    arts = iou_mod.load_masks(paths, minimum=1 if remaining else 2)
    structured = arts[0].method == "structured"
    if (importance or remaining) and not structured:
        raise UsageError("--importance and --remaining read structured masks (search --method structured)")
    if layers and structured:
        raise UsageError("--layers compares weight masks; structured masks are compared per head/FFN already")
    if remaining:
        output.emit(iou_mod.remaining_rows(arts), ["mask", "task", "ticket", "seed", "sparsity", "heads_kept",
                                                   "ffn_kept", "weights_remaining"], fmt,
                    "weights remaining in the encoder layers per structured ticket")
        return
    if importance:
        rows = iou_mod.importance_rows(arts)
        tasks = sorted({str(a.meta.get("task")) for a in arts})
        output.emit(rows, ["unit", "mean_importance", *[f"share_{t}" for t in tasks], "dominated_by"], fmt,
                    "importance of heads and FFN sublayers: mean over tasks (each task normalised to sum 1 over "
                    "heads and over FFNs) and each task's share")
        if plot:
            iou_mod.plot_importance(rows, tasks, plot, "importance across tasks")
            _log(f"wrote {plot}")
        return
    labels = [iou_mod.label(a) for a in arts]
    if len(set(labels)) != len(labels):
        labels = [a.path.name for a in arts]
    if len(set(labels)) != len(labels):
        labels = [str(a.path) for a in arts]
    if layers:
        output.emit(iou_mod.layer_rows(arts), ["parameter", "mean_iou", "sparsity"], fmt,
                    "IoU of surviving weights per parameter (mean over pairs)")
        return
    m = iou_mod.iou_matrix(arts)
    rows = [{"mask": labels[i], **{labels[j]: float(m[i, j]) for j in range(len(arts))}} for i in range(len(arts))]
    what = "kept heads and FFN sublayers" if structured else "surviving weights"
    output.emit(rows, ["mask", *labels], fmt, f"IoU of {what}")
    if plot:
        task = arts[0].meta.get("task", "")
        iou_mod.plot_heatmap(m, labels, plot, f"{task}: IoU of {what}")
        _log(f"wrote {plot}")


def stats(paths: list[str], by: str, ref: str | None, size: int | None, combine: str, plot: str | None,
          fmt: str, bootstrap: int = 0, select: str | None = None) -> None:
    from ticketctl import stats as st
    from ticketctl.errors import UsageError

    if bootstrap < 0:
        raise UsageError("--bootstrap must be >= 0")
    if select is not None and select != "best":
        raise UsageError("--select must be best")
    if by in ("sparsity", "train_fraction"):
        if select is not None and by != "sparsity":
            raise UsageError("--select best needs --by sparsity")
        return phase(paths, plot, fmt, select, by)
    if select is not None:
        raise UsageError("--select best needs --by sparsity")
    groups, arts = st.load_groups(paths, by)
    ref = st.pick_ref(groups, ref)
    rows, k = st.table(groups, ref, size, combine, bootstrap)
    task = next(iter(groups.values())).task
    cols = ["group", "members", "single_mean", "single_std", "k", "combinations", "ensemble_mean", "ensemble_gain",
            "vs_ref", "p_value", "test", "p_single"] + (["ci_low", "ci_high"] if bootstrap else [])
    output.emit(rows, cols, fmt, f"{task.name} {arts[0].meta.get('split')}: {task.headline} by {by} "
                                 f"(k={k}, {combine}; t-test of k-member ensembles vs {ref})")
    if plot:
        curves = st.gain_curves(groups, ref, combine)
        st.plot_gain(curves, ref, task.headline, plot, f"{task.name}: ensemble gain over {ref}")
        _log(f"wrote {plot}")


def phase(paths: list[str], plot: str | None, fmt: str, select: str | None, by: str = "sparsity") -> None:
    """``stats --by sparsity``: the phase-transition table (metric vs sparsity per ticket kind); with
    ``--select best`` only the super ticket's mask path(s). ``--by train_fraction``: metric vs training data per
    scheme (transfer)."""
    import math

    from ticketctl import stats as st

    rows, kinds, members, cells = st.phase_table(paths, by)
    task = members.task
    if select:
        best = st.best_level(rows)
        for i in cells[("winning", best["sparsity"])]:
            for par in members.arts[i].meta.get("parents") or []:
                sys.stdout.write(f"{par['path']}\n")
        _log(f"super ticket: winning at {best['sparsity']:.0%}, dev {task.headline} {best['winning']:.4f} "
             f"(full model {best['full']:.4f})")
        return
    full = ["full"] if by == "sparsity" else []
    if fmt == "table" or fmt == "markdown":
        shown = [{by: f"{r[by]:.0%}" if by == "sparsity" else f"{r[by]:g}",
                  **{k: "" if math.isnan(r[k]) else f"{r[k]:.4f}" + (f" ±{r[k + '_std']:.4f}" if not math.isnan(
                      r[k + "_std"]) else "") + f" ({r[k + '_n']})" for k in kinds},
                  **({"full": "" if math.isnan(r["full"]) else f"{r['full']:.4f} ({r['full_n']})"} if full else {})}
                 for r in rows]
        output.emit(shown, [by, *kinds, *full], fmt,
                    f"{task.name} {members.split}: {task.headline} by {by} (mean ±std over seeds (n))"
                    + ("; full = unpruned model" if full else ""))
    else:
        cols = [by] + [c for k in kinds for c in (k, f"{k}_std", f"{k}_n")] + (["full", "full_n"] if full else [])
        output.emit(rows, cols, fmt, f"{task.name} {members.split}: {task.headline} by {by}")
    if plot:
        st.plot_phase(rows, kinds, task.headline, plot,
                      f"{task.name}: {'phase transition' if full else 'metric vs training data'}", by)
        _log(f"wrote {plot}")
