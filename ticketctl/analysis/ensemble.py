"""``ticketctl ensemble``: average member outputs; score every k-member combination (within groups of members in
seed order, the paper's Appendix C)."""

from __future__ import annotations

import dataclasses
from math import comb
from pathlib import Path

import numpy as np

from ticketctl.analysis import ood
from ticketctl.analysis.combine import combination_scores, combined_outputs, member_terms
from ticketctl.analysis.metrics import (Calibration, Options, combination_values, combine_members, evaluate,
                                       get, parse_scores, temperature_fit, with_calibration)
from ticketctl.analysis.members import Members, load_ensemble_members
from ticketctl.analysis.records import Ensemble, EnsembleScore, SizeRow, SizeTable
from ticketctl.analysis.significance import group_combinations, parse_k, sampled_group_combinations, split_groups
from ticketctl.data.tasks import predictions, score
from ticketctl.errors import UsageError


def ensemble(paths: list[str], combine: str = "probs", size: str | None = None, scores: str | None = None,
             options: Options = Options(), ood_split: str | None = None,
             calibration_split: str | None = None) -> Ensemble:
    """The logits artifacts among ``paths`` averaged (``combine``: probs | logits | vote), scored on a labelled
    split; ``size`` (k, a list 2,3,5, a range 2-5, or ``all``) is parsed and checked for :func:`size_table`;
    ``scores`` (``--scores``: names or ``all``, :func:`ticketctl.analysis.metrics.parse_scores`): further registered
    metrics added after the task's own; those undefined under ``combine`` are left out and listed in the record.
    ``ood_split`` (``--ood``): the artifacts of that split are the same members' outputs on out-of-distribution
    texts (:func:`load_ood`); the ensemble's AUROC and FPR at 95% TPR at telling them from the
    evaluation split's texts are added to its metrics (:func:`ticketctl.analysis.ood.task_columns`; regression: of
    the members' spread; classification under ``vote``: left out and listed as undefined).
    ``calibration_split`` (``--calibration-split``): the artifacts of that split are the same members' outputs on a
    labelled calibration split, where ts_nll, ts_ece and temperature fit their temperature (:func:`load_calibration`);
    the record's ``options`` carry it, its ``temperature_fit`` says which fit was used.

    Raises UsageError (a bad --size, --size on an unlabelled split, a bad --combine, an unknown score, --ood on one
    regression member) or InputError (members that must not be mixed, or that do not pair up across the splits)."""
    if calibration_split is not None:
        paths, calibration_paths = split_paths(paths, calibration_split, CALIBRATION_FLAG)
    paired = load_ood(paths, ood_split) if ood_split is not None else None
    members = paired.inside if paired else load_ensemble_members(paths)
    chosen, undefined = parse_scores(scores, members.task.is_regression, combine)
    if calibration_split is not None:
        options = calibration_options(options, chosen, members, calibration_paths, calibration_split, combine)
    if paired and combine == "vote" and not members.task.is_regression:
        undefined, paired = [*undefined, *ood.columns(len(members))], None
    combined = combined_outputs(members.task, members.outputs, combine)
    sizes = parse_k(size.replace("all", f"1-{len(members)}") if size else None)
    scored = None
    if members.labels is not None:
        scored = ensemble_score(members, combine, combined)
        if chosen:
            whole = combine_members(members.outputs, combine, members.task.is_regression)
            extra = evaluate(chosen, with_calibration(whole, len(members), combine, options), members.labels, options)
            scored = dataclasses.replace(scored, metrics={**scored.metrics, **extra})
    elif sizes:
        raise UsageError("--size needs a labelled split")
    if paired:
        scored = scored or EnsembleScore(members.evaluated, len(members), combine, {})
        scored = dataclasses.replace(scored, metrics={**scored.metrics, **ood.any_whole(paired, combine)})
    fit = temperature_fit(options) if any(get(n).fitted for n in chosen) else None
    return Ensemble(members, combine, combined, scored, sizes, chosen, undefined, paired, options, fit)


def load_ood(paths: list[str], split: str) -> ood.Paired:
    """``--ood SPLIT``: the logits artifacts among ``paths`` of split ``split`` are the members' outputs on the OOD
    texts, the others (one evaluation split) on the in-distribution texts; each member must have both
    (:func:`ticketctl.analysis.ood.pairing`), of one task and model.

    Raises UsageError (nothing of ``split`` or nothing else given) or InputError (members that do not
    pair up, another task or model, the same examples on both sides)."""
    in_paths, ood_paths = split_paths(paths, split, "--ood")
    inside = load_ensemble_members(in_paths)
    outside = paired_members(inside, ood_paths, split, "--ood", "the OOD outputs must be of other texts")
    return ood.Paired(inside, outside.outputs, split)


def split_paths(paths: list[str], split: str, flag: str) -> tuple[list[str], list[str]]:
    """``paths`` parted into (the others: one evaluation split, the logits artifacts of split ``split``). Raises
    UsageError (starting ``{flag} {split}:``) when either part is empty."""
    from ticketctl.store.artifacts import read_artifact

    arts = [read_artifact(p) for p in paths]
    of_split = [a.kind == "logits" and a.meta.get("split") == split for a in arts]
    chosen = [p for p, o in zip(paths, of_split) if o]
    others = [p for p, o in zip(paths, of_split) if not o]
    if not chosen:
        splits = sorted({str(a.meta.get("split")) for a in arts if a.kind == "logits"})
        raise UsageError(f"{flag} {split}: no logits artifacts of split {split!r} among those given (splits: "
                         f"{', '.join(splits) or 'none'})")
    if not others:
        raise UsageError(f"{flag} {split}: every artifact given is of split {split!r}; give the members' outputs on "
                         f"the evaluation split too")
    return others, chosen


def paired_members(inside: Members, paths: list[str], split: str, flag: str, other: str) -> Members:
    """The logits artifacts ``paths`` of split ``split`` as members in ``inside``'s order, each the same member
    (:func:`ticketctl.analysis.ood.pairing`), of the same task and model and other examples (``other``: why).
    Raises InputError (starting ``{flag} {split}:``) otherwise."""
    outside = load_ensemble_members(paths, split=split)
    ood.check_sides(inside, outside, split, flag, other)
    order = ood.pairing(inside.arts, outside.arts, split, flag)
    return dataclasses.replace(outside, arts=[outside.arts[j] for j in order], outputs=outside.outputs[order])


CALIBRATION_FLAG = "--calibration-split"


def load_calibration(inside: Members, paths: list[str], split: str, combine: str = "probs") -> Calibration:
    """``--calibration-split SPLIT`` (temperature scaling's calibration split): the logits artifacts ``paths`` (of
    split ``split``, :func:`split_paths`) are the members ``inside``'s outputs on a labelled calibration split, each
    member's paired with its evaluation-split artifact (:func:`paired_members`). Returns the split in ``inside``'s
    member order, for ``metrics.Options.calibration``: ts_nll, ts_ece and temperature then fit one temperature per
    ensemble on all of it instead of cross-fitting over the evaluation split.

    Raises UsageError (``--combine vote``, a regression task, an unlabelled calibration split) or InputError
    (members that do not pair up, another task or model, the same examples on both sides)."""
    flag = CALIBRATION_FLAG
    _check_scalable(inside, combine)
    cal = paired_members(inside, paths, split, flag, "temperature scaling must not fit on the scored examples")
    if cal.labels is None:
        raise UsageError(f"{flag} {split}: the {split!r} artifacts are unlabelled; the temperature is fitted to gold "
                         f"labels")
    return Calibration(split, cal.outputs, cal.labels)


def _check_scalable(inside: Members, combine: str) -> None:
    if combine not in ("probs", "logits"):
        raise UsageError(f"{CALIBRATION_FLAG}: temperature scaling scales probabilities; --combine {combine} gives "
                         f"none")
    if inside.task.is_regression:
        raise UsageError(f"{CALIBRATION_FLAG}: {inside.task.name} is a regression task; temperature scaling needs "
                         f"class probabilities")


def calibration_options(options: Options, chosen: list[str], inside: Members, paths: list[str], split: str,
                        combine: str) -> Options:
    """``options`` with ``inside``'s calibration split (:func:`load_calibration`); UsageError when none of the
    metrics ``chosen`` fits a temperature (and as :func:`load_calibration` does)."""
    _check_scalable(inside, combine)
    if not any(get(n).fitted for n in chosen):
        raise UsageError(f"{CALIBRATION_FLAG} {split}: only ts_nll, ts_ece and temperature fit a temperature; ask "
                         f"for one of them")
    return dataclasses.replace(options, calibration=load_calibration(inside, paths, split, combine))


def calibration_of(paths: list[str], split: str, combine: str, chosen: list[str]) -> tuple[list[str], Options]:
    """The artifacts among ``paths`` not of split ``split`` (:func:`split_paths`), and metric options with temperature
    scaling's calibration split (those of ``split``) in the order of their members (``load_ensemble_members`` of
    them gives it; :func:`calibration_options`), for ``stats``. Raises as those do."""
    rest, calibration_paths = split_paths(paths, split, CALIBRATION_FLAG)
    members = load_ensemble_members(rest)
    return rest, calibration_options(Options(), chosen, members, calibration_paths, split, combine)


def cost_records(members: Members) -> list[dict] | None:
    """Each member's inference cost record (``ticketctl.model.cost``), or None when any member has none (artifacts
    made before costs were recorded)."""
    costs = [a.meta.get("cost") for a in members.arts]
    return costs if all(costs) else None


def ensemble_score(members: Members, combine: str = "probs", combined: np.ndarray | None = None) -> EnsembleScore:
    """Every metric of the ensemble of all members, and its cost: relative FLOPs summed over members (dense-member
    equivalents) and GFLOPs per example (None without cost records). Needs labels."""
    metrics = all_member_scores(members, combine, combined)
    costs = cost_records(members)
    cost = gflops = None
    if costs:
        cost = round(sum(c["relative_flops"] for c in costs), 4)
        gflops = round(sum(c["flops_per_example"] for c in costs) / 1e9, 4)
    return EnsembleScore(members.evaluated, len(members), combine, metrics, cost, gflops)


def write_ensemble(ens: Ensemble, out: Path) -> Path:
    """The ensemble's outputs as a logits artifact in folder ``out`` (usable as a member, by ``stats``,
    ``--submission``); returns its path."""
    from ticketctl.store import paths
    from ticketctl.store.artifacts import write_artifact
    from ticketctl.store.provenance import provenance

    members, combined, combine = ens.members, ens.outputs, ens.combine
    metrics = ens.score.metrics if ens.score else None

    parents = [a.parent_ref() for a in members.arts]
    h = _ensemble_hash(parents, combine)
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


def _ensemble_hash(parents: list[dict], combine: str) -> str:
    from ticketctl.store.provenance import config_hash

    return config_hash({"members": sorted(p["sha256"] for p in parents), "combine": combine})


def ensemble_path(paths: list[str], out: Path, combine: str = "probs") -> Path:
    """The path :func:`write_ensemble` gives the ensemble of the logits artifacts ``paths`` in folder ``out``
    (named by the members' content hashes and ``combine``), computed without combining them. Raises InputError
    (members that must not be mixed)."""
    from ticketctl.store import paths as names

    members = load_ensemble_members(paths)
    h = _ensemble_hash([a.parent_ref() for a in members.arts], combine)
    return Path(out) / names.ensemble_name(members.task.name, members.split, h)


def all_member_scores(members: Members, how: str = "probs", combined: np.ndarray | None = None) -> dict[str, float]:
    """Metrics of the ensemble of all members (pass ``combined`` when its outputs are computed already)."""
    if combined is None:
        combined = combined_outputs(members.task, members.outputs, how)
    return score(members.task, predictions(members.task, combined), members.labels)


FIT_SAMPLE = 1000  # ensemble --fit-sample's default: combinations per group scored by the temperature-fitted metrics
FIT_SAMPLE_SEED = 33  # with k, seeds the sample (np.random.default_rng([FIT_SAMPLE_SEED, k]))


def check_fit_sample(fit_sample: int) -> None:
    """Raises UsageError unless ``fit_sample`` (``--fit-sample``) is 0 (every combination) or at least 2 (a sample's
    Monte Carlo error needs two values)."""
    if fit_sample < 0 or fit_sample == 1:
        raise UsageError(f"--fit-sample {fit_sample}: give 0 (score every combination) or at least 2 combinations")


def size_table(members: Members, sizes: list[int], how: str = "probs", groups: int = 1, scores: list[str] = (),
               options: Options = Options(), paired: "ood.Paired | None" = None,
               fit_sample: int = FIT_SAMPLE) -> SizeTable:
    """One row per ensemble size k: the headline metric's mean/std/min/max over all k-member combinations (within
    each of ``groups`` equal groups of the members in seed order, pooled over groups: Kobayashi et al., 2022,
    Appendix C), the mean of the task's other metrics, and the ensemble's cost (k x the mean member's relative
    FLOPs) where members record it; ``scores``: the mean of further registered metrics over the same combinations,
    except the temperature-fitted ones (ts_nll, ts_ece, temperature): where a group has more than ``fit_sample``
    k-member combinations, their mean is over a seeded sample of ``fit_sample`` per group, recorded in the row's
    ``sampled`` with its Monte Carlo standard error (:func:`fitted_columns`; 0: every combination);
    ``paired`` (:func:`load_ood`): the mean OOD AUROC and FPR95 over them (mutual information, and regression's
    spread, NaN at k = 1).
    Raises UsageError on an unlabelled split, a k a group cannot hold or a bad ``fit_sample``
    (:func:`check_fit_sample`), InputError when the members do not split into equal groups."""
    if members.labels is None:
        raise UsageError("the members' split is unlabelled: nothing to score")
    check_fit_sample(fit_sample)
    task = members.task
    terms = member_terms(task, members.outputs, how)
    order = members.in_seed_order()
    parts = [[order[i] for i in part] for part in split_groups(len(members), groups)]
    costs = cost_records(members)
    mean_cost = float(np.mean([c["relative_flops"] for c in costs])) if costs else None
    fitted = [name for name in scores if get(name).fitted]
    rest = [name for name in scores if name not in fitted]
    rows = []
    for k in sizes:
        if k < 1 or k > len(parts[0]):
            raise UsageError(f"--size {k}: needs between 1 and {len(parts[0])} members per group")
        per_group = [combination_scores(task, terms, members.labels, k, g) for g in parts]
        pooled = {m: np.concatenate([pg[m] for pg in per_group]) for m in task.metrics}
        combos = group_combinations(order, groups, k)
        pooled.update(combination_values(members.outputs, members.labels, combos, rest, how, task.is_regression,
                                         options))
        values, sampled = fitted_columns(members, order, groups, k, fitted, how, options, fit_sample)
        pooled.update(values)
        extra = [*scores, *(ood.task_columns(task.is_regression, 2) if paired else [])]
        if paired:
            pooled.update(ood.any_combinations(paired, combos, how))
        head = pooled[task.headline]
        rows.append(SizeRow(k, sum(comb(len(g), k) for g in parts), float(head.mean()),
                            float(head.std(ddof=1)) if len(head) > 1 else 0.0, float(head.min()), float(head.max()),
                            {m: float(pooled[m].mean()) for m in [*task.metrics[1:], *extra]},
                            round(k * mean_cost, 4) if costs else None, sampled))
    return SizeTable(members.evaluated, how, len(members), groups, rows)


def fitted_combinations(order: list[int], groups: int, k: int, fit_sample: int = FIT_SAMPLE) -> np.ndarray:
    """(B, k) member indices: the k-member combinations the temperature-fitted metrics score at size k
    (:func:`ticketctl.analysis.significance.sampled_group_combinations` with limit ``fit_sample``, seeded by
    ``[FIT_SAMPLE_SEED, k]``, so the same whatever other sizes are asked for). Raises as ``split_groups``."""
    return sampled_group_combinations(order, groups, k, fit_sample, np.random.default_rng([FIT_SAMPLE_SEED, k]))


def fitted_columns(members: Members, order: list[int], groups: int, k: int, names: list[str], how: str,
                   options: Options, fit_sample: int) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """The temperature-fitted metrics ``names`` of the combinations :func:`fitted_combinations` gives ({name: (B,)
    values}), and for each, where those are a sample, {"combinations": B, "of": every combination (both summed over
    the groups), "mc_se": :func:`sample_se`}; ({}, {}) without ``names``."""
    if not names:
        return {}, {}
    combos = fitted_combinations(order, groups, k, fit_sample)
    values = combination_values(members.outputs, members.labels, combos, names, how, members.task.is_regression,
                                options)
    every = groups * comb(len(order) // groups, k)
    if len(combos) == every:
        return values, {}
    return values, {n: {"combinations": len(combos), "of": every, "mc_se": sample_se(values[n], groups, every)}
                    for n in names}


def sample_se(values: np.ndarray, groups: int, every: int) -> float:
    """The Monte Carlo standard error of the mean of ``values`` (B,): equal consecutive samples of each of
    ``groups`` groups, drawn without replacement from the group's ``every / groups`` values, the mean being the mean
    of the group means: sqrt(sum over groups of (1 - b/M) s_g^2 / b) / groups, with b values of M per group and
    s_g their standard deviation (ddof 1; the finite-population correction (1 - b/M)). NaN with one value a group."""
    per = np.asarray(values, dtype=np.float64).reshape(groups, -1)
    b, population = per.shape[1], every // groups
    if b < 2:
        return float("nan")
    variances = (1.0 - b / population) * per.var(axis=1, ddof=1) / b
    return float(np.sqrt(variances.sum()) / groups)


def write_submission(path: str, ens: Ensemble) -> None:
    """The ensemble's predictions in GLUE's submission format: ``index<TAB>prediction`` with a header row; ids as
    the data wrote them, labels by name (regression: 3 decimals)."""
    from ticketctl.store.atomic import atomic_write_bytes

    task, ids, outputs = ens.members.task, ens.members.shown_ids, ens.outputs

    pred = predictions(task, outputs)
    lines = ["index\tprediction"]
    for i, p in zip(ids.tolist() if isinstance(ids, np.ndarray) else ids, pred.tolist()):
        lines.append(f"{i}\t{p:.3f}" if task.is_regression else f"{i}\t{task.labels[int(p)]}")
    atomic_write_bytes(Path(path), ("\n".join(lines) + "\n").encode())
