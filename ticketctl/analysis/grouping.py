"""Members grouped by a metadata key, as ``stats``, the phase transition, the cost frontier and the protocol report
group them: the scheme a member belongs to and its sparsity level, the checks that a group's members differ only by
what the seed decides, the reference group, and the scorer of the task's headline metric. Reads artifacts' metadata
only (``stats.load_groups`` loads members and groups them)."""

from __future__ import annotations

from ticketctl.analysis.combine import member_terms
from ticketctl.analysis.significance import Scorer
from ticketctl.errors import InputError, UsageError
from ticketctl.store.artifacts import Artifact
from ticketctl.store.identity import IDENTITY_DEFAULTS

REF_PREFERENCE = ("dense", "base")


def scheme_of(art: Artifact) -> str:
    """The scheme a member belongs to: its policy, with the level for structured tickets (``winning-50%``), which
    ``--by policy`` alone would put in one group."""
    policy = str(art.meta.get("policy", "?"))
    if art.meta.get("method") == "structured":
        level = art.meta.get("target_sparsity", art.meta.get("sparsity", "0"))
        return f"{policy}-{round(float(level) * 100)}%"
    return policy


def group_value(art: Artifact, key: str) -> str:
    if key == "scheme":
        return scheme_of(art)
    if key in art.meta:
        return str(art.meta[key])
    config = art.meta.get("config") or {}
    if key in config:
        return str(config[key])
    raise UsageError(f"--by {key}: {art.path} has no metadata key {key!r}")


def seeds_of(members, idx: list[int]) -> list[str]:
    """The seeds of ``members``' (``Members``) members at ``idx``, as their artifacts record them."""
    return [str(members.arts[i].meta.get("seed", "?")) for i in idx]


PER_MEMBER_KEYS = {"seed", "mask", "train_data"}  # what may differ between members of one group
# Config fields added after the first release, at the value that older artifacts (which lack them) were made with.
ADDED_LATER = {k: IDENTITY_DEFAULTS[k] for k in ("computation", "train_fraction", "init", "max_grad_norm")}


def check_same_recipe(group: str, members: list[Artifact], ignore: set[str] = frozenset()) -> None:
    """Members of a group must differ only by seed (and what the seed decides): a quick run and a full run, or two
    learning rates, in one group would make a silently wrong table. ``ignore``: further keys that may differ (the
    ones a pivot table lays out)."""
    skip = PER_MEMBER_KEYS | set(ignore)

    def recipe(a):
        config = {**ADDED_LATER, **(a.meta.get("config") or {})}
        return {k: v for k, v in config.items() if k not in skip}

    first = recipe(members[0])
    for a in members[1:]:
        other = recipe(a)
        diff = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
        if diff:
            k = diff[0]
            raise InputError(f"group {group!r} mixes configurations: {members[0].path.name} has {k}={first.get(k)}, "
                             f"{a.path.name} has {k}={other.get(k)}")


def check_same_level(group: str, members: list[Artifact]) -> None:
    """A mask's digest differs per member, so the config cannot tell a 10% ticket from a 50% one: compare levels."""
    levels = {level_of(a): a for a in members}
    if len(levels) > 1:
        (l1, a1), (l2, a2) = sorted(levels.items())[:2]
        raise InputError(f"group {group!r} mixes sparsity levels: {a1.path.name} is at {l1:.0%}, {a2.path.name} at "
                         f"{l2:.0%} (group --by scheme or --by sparsity, or pass one level)")


def pick_ref(groups: dict, ref: str | None) -> str:
    if ref is not None:
        if ref not in groups:
            raise UsageError(f"--ref {ref}: no such group (groups: {', '.join(sorted(groups))})")
        return ref
    for g in REF_PREFERENCE:
        if g in groups:
            return g
    return sorted(groups)[0]


def level_of(art: Artifact) -> float:
    """The sparsity level a member was trained at: the mask's target level (IMP rounds and structured levels land
    near it, e.g. 7 of 72 heads for 10%), read from the member or, for artifacts that predate the field, from its
    parent mask's header; else the measured sparsity."""
    if "target_sparsity" in art.meta:
        return round(float(art.meta["target_sparsity"]), 6)
    for par in art.meta.get("parents") or []:
        if par.get("kind") == "mask":
            target = _parent_target(par["path"])
            if target is not None:
                return round(target, 6)
    return round(float(art.meta.get("sparsity", 0.0)), 6)


def _parent_target(path: str) -> float | None:
    from ticketctl.store.artifacts import read_artifact

    try:
        value = read_artifact(path, "mask").meta.get("target_sparsity")
    except InputError:
        return None
    return float(value) if value is not None else None



def headline_scorer(members, how: str = "probs") -> Scorer:
    """The scorer of the task's headline metric over ``members`` (``ticketctl.analysis.members.Members``) combined
    by ``how`` (probs | logits | vote): what Table 1, the phase transition and the report score ensembles by."""
    return Scorer(members.task, member_terms(members.task, members.outputs, how), members.labels)
