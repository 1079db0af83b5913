"""Loading logits artifacts as ensemble members, refusing what must not be mixed. numpy only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ticketctl.analysis.records import EvalSplit
from ticketctl.analysis.tables import note
from ticketctl.data.tasks import Task, task_of
from ticketctl.errors import InputError, UsageError
from ticketctl.store.artifacts import Artifact, read_artifact


@dataclass
class Members:
    """Logits artifacts that may be averaged: one task, split, evaluation data (and model), in the order given."""

    task: Task
    split: str
    arts: list[Artifact]
    outputs: np.ndarray  # (M, N, C) float64
    labels: np.ndarray | None  # (N,)
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.arts)

    @property
    def names(self) -> list[str]:
        return [a.path.name for a in self.arts]

    @property
    def evaluated(self) -> EvalSplit:
        """The task, split and headline metric the members are scored on."""
        return EvalSplit(self.task.name, str(self.split), self.task.headline)

    def in_seed_order(self, idx=None) -> list[int]:
        """Member indices ``idx`` (default all) in seed order: see :func:`in_seed_order`."""
        return in_seed_order(self.arts, range(len(self.arts)) if idx is None else idx)

    @property
    def shown_ids(self) -> list:
        """The examples' ids as the data file wrote them (strings such as ``r101``), else the integer ids."""
        names = self.arts[0].meta.get("id_names")
        return list(names) if isinstance(names, list) and len(names) == len(self.ids) else self.ids.tolist()


def in_seed_order(arts: list[Artifact], idx) -> list[int]:
    """Indices into ``arts`` sorted by the members' seed as a number (then file name; a seed that is not a number
    counts as 0): the order of the paper's protocol groups and of pairing by seed, whatever order the files came in
    (a shell glob puts s10 before s2)."""
    def key(i):
        seed = str(arts[i].meta.get("seed", "0"))
        return int(seed) if seed.isdigit() else 0, arts[i].path.name

    return sorted(idx, key=key)


def check_compatible(arts: list[Artifact], keys=("task", "split", "data_fingerprint", "model_fingerprint")) -> None:
    first = arts[0]
    what = {"task": "tasks", "task_spec": "task definitions (labels, columns or metrics)", "split": "splits",
            "data_fingerprint": "evaluation data", "model_fingerprint": "models", "examples": "example counts"}
    for a in arts[1:]:
        for k in keys:
            if a.meta.get(k) != first.meta.get(k):
                raise InputError(f"cannot mix {what.get(k, k)}: {first.path} has {k}={_short(first.meta.get(k))}, "
                                 f"{a.path} has {_short(a.meta.get(k))}")


def check_same_examples(arts: list[Artifact]) -> None:
    """Logits artifacts must list the same examples in the same order, with outputs of the same shape."""
    first = arts[0]
    for a in arts[1:]:
        if not np.array_equal(a.tensors["ids"], first.tensors["ids"]):
            raise InputError(f"cannot mix example ids: {a.path} and {first.path} list different examples")
        if a.tensors["outputs"].shape != first.tensors["outputs"].shape:
            raise InputError(f"{a.path}: outputs have shape {a.tensors['outputs'].shape}, "
                             f"{first.path} has {first.tensors['outputs'].shape}")


def _short(v) -> str:
    s = str(v)
    return s[:12] if len(s) > 40 else s


def check_distinct(arts: list[Artifact]) -> None:
    """The same artifact must not count twice, however it is spelled: ``./x``, a symlink or a byte-identical copy
    (same resolved path, or same content hash)."""
    by_path: dict = {}
    by_hash: dict = {}
    for a in arts:
        real = a.path.resolve()
        if real in by_path:
            raise UsageError(f"{a.path} and {by_path[real].path} are the same file: a member counts once")
        if a.sha256 in by_hash:
            raise UsageError(f"{a.path} and {by_hash[a.sha256].path} have the same content: a member counts once")
        by_path[real], by_hash[a.sha256] = a, a


def check_labels(task: Task, arts: list[Artifact]) -> np.ndarray | None:
    """Every member of a comparison carries the same labels (or none does), and they are valid for the task:
    class indices in range, finite regression scores."""
    first = arts[0]
    labels = first.tensors.get("labels")
    for a in arts[1:]:
        other = a.tensors.get("labels")
        if (labels is None) != (other is None):
            lab, unlab = (first, a) if other is None else (a, first)
            raise InputError(f"cannot mix labelled and unlabelled members: {lab.path} has labels, {unlab.path} has "
                             f"none")
        if labels is not None and not np.array_equal(labels, other):
            raise InputError(f"{a.path} and {first.path} carry different labels for the same examples")
    if labels is None:
        return None
    if task.is_regression:
        if not np.isfinite(labels).all():
            raise InputError(f"{first.path}: labels contain NaN or inf")
    elif labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= task.num_labels:
        raise InputError(f"{first.path}: labels are not class indices 0..{task.num_labels - 1} of {task.name}")
    return labels


def device_of(art: Artifact) -> str | None:
    """Where a member was computed: ``cuda (NVIDIA H100)``, ``cpu``, ``mps``; None for an artifact made before
    devices were recorded."""
    runtime = art.meta.get("runtime")
    if not isinstance(runtime, dict):
        return None
    device = str(runtime.get("device", "?"))
    return f"{device} ({runtime['device_name']})" if device == "cuda" and runtime.get("device_name") else device


def mixed_devices(arts: list[Artifact]) -> str | None:
    """A one-line note when the members were computed on different devices (their dropout came from different
    random streams and their arithmetic differs), else None. Members that record no device are not counted."""
    counts: dict[str, int] = {}
    for a in arts:
        device = device_of(a)
        if device is not None:
            counts[device] = counts.get(device, 0) + 1
    if len(counts) < 2:
        return None
    return ("note: members were trained on different devices (" + ", ".join(f"{k}: {v}" for k, v in counts.items())
            + "); their dropout streams and arithmetic differ")


def _names(arts: list[Artifact], limit: int = 3) -> str:
    shown = ", ".join(a.path.name for a in arts[:limit])
    return shown + (f" and {len(arts) - limit} more" if len(arts) > limit else "")


def select_artifacts(paths: list[str], kind: str, split: str | None = None, note=None) -> list[Artifact]:
    """The artifacts of ``kind`` among ``paths`` (a shell glob over a runs folder holds masks, logits and more):
    the others are skipped with one line on stderr saying which and why. For logits, one split: ``split`` where
    given, else the only split there is, else the only labelled one (an ``--eval-file`` test split beside dev).

    Raises InputError when nothing of ``kind`` is left, or the split is not clear."""
    from ticketctl.analysis.tables import note as stderr_note

    note = note or stderr_note
    arts = [read_artifact(p) for p in paths]
    keep = [a for a in arts if a.kind == kind]
    other = [a for a in arts if a.kind != kind]
    if not keep:
        kinds = ", ".join(sorted({a.kind for a in other}))
        raise InputError(f"no {kind} artifacts among the {len(arts)} given (they are: {kinds})")
    if other:
        kinds = " and ".join(sorted({a.kind for a in other}))
        note(f"skipped {len(other)} {kinds} artifact{'s' if len(other) > 1 else ''} (this command reads {kind} "
             f"artifacts): {_names(other)}")
    if kind != "logits":
        return keep
    splits = list(dict.fromkeys(str(a.meta.get("split")) for a in keep))
    if split is not None:
        chosen = split
        if chosen not in splits:
            raise InputError(f"no logits artifacts of split {split!r} (splits given: {', '.join(splits)})")
    elif len(splits) == 1:
        return keep
    else:
        labelled = [s for s in splits if all("labels" in a.tensors for a in keep if a.meta.get("split") == s)]
        if len(labelled) != 1:
            raise InputError(f"cannot mix splits: the logits are of splits {', '.join(splits)}; pass the files of "
                             f"one split")
        chosen = labelled[0]
    left = [a for a in keep if a.meta.get("split") != chosen]
    if left:
        why = "--split" if split is not None else "the only labelled split"
        note(f"skipped {len(left)} logits artifact{'s' if len(left) > 1 else ''} of other splits (using {chosen!r}, "
             f"{why}): {_names(left)}")
    return [a for a in keep if a.meta.get("split") == chosen]


def load_ensemble_members(paths: list[str], minimum: int = 1, same_model: bool = True,
                          split: str | None = None) -> Members:
    """The logits artifacts among ``paths`` (see :func:`select_artifacts`) as ensemble members, after refusing
    what must not be mixed (tasks, task definitions, splits, evaluation data, models; the same member twice).

    Raises UsageError (too few members, duplicates) or InputError (mixed or invalid artifacts)."""
    arts = select_artifacts(paths, "logits", split)
    if len(arts) < minimum:
        raise UsageError(f"need at least {minimum} logits artifacts, got {len(arts)}")
    check_distinct(arts)
    keys = ("task", "task_spec", "split", "data_fingerprint") + (("model_fingerprint",) if same_model else ())
    check_compatible(arts, keys)
    check_same_examples(arts)
    mixed = mixed_devices(arts)
    if mixed:
        note(mixed)
    first = arts[0]
    task = task_of(first.meta)
    labels = check_labels(task, arts)
    outputs = np.stack([a.tensors["outputs"].astype(np.float64) for a in arts])
    return Members(task, first.meta.get("split", "?"), arts, outputs, labels, first.tensors["ids"])
