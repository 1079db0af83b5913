"""``ticketctl share``: multi-task ticket sharing (Liang et al., 2021, Section 6).

One encoder, one classification head per task, mixed task batches. Each task's batches run through that task's
structured mask (gates on heads and FFN sublayers), and after every optimizer step the parameters the task's ticket
does not keep are put back as they were, optimizer moments included: a structure kept by several tasks is updated by
exactly those tasks, one kept by a single task only by it, one kept by none never changes and is never used. Without
masks this is the dense multi-task baseline.

The training is the one loop (``ticketctl.train.loop.Loop``) over a task plan; ``ticketctl.train.sharing`` holds what
sharing adds to it (the task plan, and ``TicketHooks``: the task's gates before the forward pass, the restore after
the update).

Task sampling: ``proportional`` (default; every task's batches of an epoch are shuffled together, so a task is drawn
in proportion to its number of examples, as in MT-DNN) or ``equal`` (each step draws a task uniformly, cycling
through its batches).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ticketctl.errors import InputError, UsageError
from ticketctl.hparams import TrainConfig
from ticketctl.stages import context, inputs, outputs
from ticketctl.stages.context import Context, StageSpec
from ticketctl.store.atomic import atomic_folder
from ticketctl.store.identity import RunIdentity, share_scheme
from ticketctl.train.seeds import derive_seed
from ticketctl.train.sharing import TicketHooks, task_batches, task_plan

SAMPLING = ("proportional", "equal")


def mean_example_loss(logits, target, global_batch: int):
    """Mean over the batch of each example's loss (share runs as one process: the batch is the global batch)."""
    from ticketctl.train.importance import example_losses

    return example_losses(logits, target).mean()

@dataclass(frozen=True)
class ShareSpec(StageSpec):
    """One multi-task sharing run as the ``share`` command's options ask for it: everything its identities, paths
    and run follow from. ``tasks`` two or more task names, ``masks`` one structured mask path per task, in order
    (empty: the dense multi-task baseline), ``seed`` the run's seed (encoder heads, data and task order),
    ``sampling`` proportional | equal, ``save_model`` a folder for the shared model (None: not saved); ``train``,
    ``data``, ``run``: the option dataclasses (``context.StageSpec``)."""

    tasks: tuple[str, ...]
    masks: tuple[str, ...] = ()
    seed: int = 0
    sampling: str = "proportional"
    save_model: Path | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self._set(tasks=tuple(self.tasks), masks=tuple(self.masks or ()))


def share(tasks: list[str], masks: list[str] | None = None, seed: int = 0, **options) -> list[Path]:
    """Train ``tasks`` on one encoder, each through its structured mask (one per task, in order; none: the dense
    multi-task baseline); returns one logits artifact path per task and evaluation split. ``options`` are
    :class:`ShareSpec`'s other fields (``sampling``, ``save_model``, ``train``, ``data``, ``run``). Raises
    UsageError (fewer than two tasks, a task twice, a mask count that does not match), InputError (masks that are
    not structured or are for another task)."""
    return run_share(ShareSpec(tasks, masks, seed, **options))


def run_share(spec: ShareSpec) -> list[Path]:
    """Resolve the device and the tasks (``context.start``, one process), read the masks, then
    :func:`share_contexts`."""
    contexts, cfg, device = context.start(list(spec.tasks), spec.train, spec.data, spec.run, data_parallel=False)
    return share_contexts(spec, load_members(contexts, list(spec.masks)), cfg, device)


@dataclass
class Member:
    ctx: Context
    mask_art: object | None  # a structured mask artifact, or None (dense)

    @property
    def name(self) -> str:
        return self.ctx.task.name


@dataclass
class Sharing:
    """A sharing run resolved from its :class:`ShareSpec` on the tasks' contexts: the members, each task's
    ``StructuredMask`` (None: dense), identity and (split, logits path, config hash) rows, and every logits path."""

    spec: ShareSpec
    members: list[Member]
    masks: dict
    identities: dict[str, RunIdentity]
    rows: dict
    every: list[Path]


def resolve(spec: ShareSpec, members: list[Member], cfg: TrainConfig) -> Sharing:
    """The identity step, before any training: the options checked (UsageError), the identities and paths built."""
    _check(members, spec.sampling, spec.save_model)
    masks = {m.name: (m.mask_art.structured() if m.mask_art else None) for m in members}
    identities = run_identities(members, masks, cfg, spec.seed, spec.sampling)
    rows = {m.name: m.ctx.logits_rows(identities[m.name], spec.run.out) for m in members}
    return Sharing(spec, members, masks, identities, rows, [p for r in rows.values() for _, p, _ in r])


@dataclass
class SharingState:
    """A sharing run in progress: one classifier per task on one encoder (``models``: task -> model), the tokenizer,
    the tasks' ticket hooks (None: dense) and every task's tokenised training set (``encs``: task -> Encoded)."""

    models: dict
    tokenizer: object
    hooks: TicketHooks | None
    encs: dict


def share_contexts(spec: ShareSpec, members: list[Member], cfg: TrainConfig, device) -> list[Path]:
    """The run on resolved contexts: resolve -> finished already? -> setup -> the loop -> write each task's logits
    (and the shared model). Returns every logits path (task, then split)."""
    s = resolve(spec, members, cfg)
    seed, masks, identities, log = spec.seed, s.masks, s.identities, members[0].ctx.log
    if spec.save_model is None and context.finished(log, s.every, "logits", spec.run.force):
        return s.every
    state = _setup(members, masks, cfg, seed, device)
    train_time = _train(s, state, cfg, device)
    for m in members:
        if state.hooks is not None:
            state.hooks.before_forward(m.name)
        meta = {"seed": str(seed), "policy": identities[m.name].scheme, "sparsity": f"{masks[m.name].sparsity:.6f}"
                if masks[m.name] is not None else "0", "bagging": "1.0", "config": identities[m.name].as_dict(),
                "method": "share", "tasks": [n.name for n in members], "sampling": spec.sampling,
                "train_seconds": f"{train_time:.1f}", "parents": [m.mask_art.parent_ref()] if m.mask_art else []}
        outputs.write_outputs(m.ctx, state.models[m.name], state.tokenizer, cfg, device, s.rows[m.name], meta,
                              masks[m.name])
    if spec.save_model is not None:
        names = [m.name for m in members]
        save_shared(log, state.models, names, state.models[names[0]].base_model, state.tokenizer, masks,
                    spec.save_model)
    return s.every


def _check(members: list[Member], sampling: str, save_model: Path | None) -> None:
    if sampling not in SAMPLING:
        raise UsageError(f"--sampling must be one of {', '.join(SAMPLING)}")
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise UsageError(f"--task {sorted(n for n in names if names.count(n) > 1)[0]} is given twice")
    if len(members) < 2:
        raise UsageError("share needs at least two --task")
    if save_model is not None:
        outputs.check_model_folder(save_model)


def run_identities(members: list[Member], masks: dict, cfg: TrainConfig, seed: int,
                   sampling: str) -> dict[str, RunIdentity]:
    """Each task's identity: its own training run, plus every task's data and ticket (``share``) and the sampling."""
    digest = {n: None if m is None else m.digest() for n, m in masks.items()}
    shared = [{"task": m.name, "train_data": m.ctx.train.fingerprint, "mask": digest[m.name]}
              for m in sorted(members, key=lambda m: m.name)]
    scheme = share_scheme(members[0].mask_art is not None)
    return {m.name: m.ctx.identity(cfg, seed, m.ctx.train, digest[m.name], scheme=scheme, share=shared,
                                   sampling=sampling) for m in members}


def _setup(members: list[Member], masks: dict, cfg: TrainConfig, seed: int, device) -> SharingState:
    """One encoder, a head per task, each task's gates and frozen positions, and every task's tokens."""
    from ticketctl.train import distributed

    if distributed.world_size() > 1:
        raise UsageError("share does not run data-parallel (torchrun) yet; run it as one process")
    models = build_models(members, cfg, seed, device)
    first = models[members[0].name]
    tokenizer = inputs.load_tokenizer(members[0].ctx, cfg, first)
    hooks = TicketHooks(first, masks, device) if masks[members[0].name] is not None else None
    if hooks is not None:
        report_overlap(members[0].ctx.log, masks)
    encs = {m.name: m.ctx.encoded(tokenizer, m.ctx.train, cfg.max_length) for m in members}
    return SharingState(models, tokenizer, hooks, encs)


def _train(s: Sharing, state: SharingState, cfg: TrainConfig, device) -> float:
    """The one loop over the task plan; returns its seconds."""
    from ticketctl.model.loading import pad_id
    from ticketctl.train.loop import Loop

    members, seed, sampling, encs = s.members, s.spec.seed, s.spec.sampling, state.encs
    names, log = [m.name for m in members], members[0].ctx.log
    data = {m.name: (encs[m.name], m.ctx.train.labels) for m in members}
    loop = Loop(state.models, data, cfg, seed, device, pad_id(state.tokenizer), hooks=state.hooks,
                loss=mean_example_loss)
    rng = np.random.default_rng(derive_seed(seed, "data-order"))
    n_batches = {n: math.ceil(len(encs[n]) / cfg.batch_size) for n in names}
    plan = task_plan(n_batches, cfg.epochs, sampling, np.random.default_rng(derive_seed(seed, "task-order")))
    total = len(plan)
    log.info(f"share {'+'.join(names)} seed={seed} ({s.identities[names[0]].scheme}, {sampling} sampling): {total} "
             "steps over " + ", ".join(f"{n} {len(encs[n])}" for n in names)
             + f" examples, {device.type}/{cfg.precision}")
    start = time.perf_counter()
    with log.progress(f"share s{seed}", total, cfg.batch_size) as advance:
        loop.run(task_batches(plan, {n: encs[n].lengths for n in names}, cfg.batch_size, rng), total, advance)
    train_time = time.perf_counter() - start
    log.info(f"trained in {train_time:.1f}s")
    return train_time


def build_models(members: list[Member], cfg: TrainConfig, seed: int, device) -> dict:
    """A classifier per task, all on the first one's encoder; each task's head from its own seeded stream."""
    models = {}
    for m in members:
        models[m.name] = inputs.load_model(m.ctx, cfg, seed, device, head_seed=derive_seed(seed, f"head:{m.name}"),
                                          move=False)
    first = models[members[0].name]
    for name in list(models)[1:]:  # one encoder: every task's classifier runs on the first one's
        setattr(models[name], models[name].base_model_prefix, first.base_model)
    for model in models.values():
        model.to(device)
    return models


def report_overlap(log, masks) -> None:
    heads = np.stack([m.heads for m in masks.values()])
    ffn = np.stack([m.ffn for m in masks.values()])
    counts = heads.sum(0)
    some = int(((counts > 0) & (counts < len(masks))).sum())
    log.info(f"heads kept by all tasks {int((counts == len(masks)).sum())}, by some {some}, "
             f"by none (pruned) {int((counts == 0).sum())} of {counts.size}; FFNs kept by none "
             f"{int((ffn.sum(0) == 0).sum())} of {ffn.shape[1]}")


def save_shared(log, models, names, encoder, tokenizer, masks, folder: Path) -> None:
    """The shared encoder as a transformers folder (usable as ``--model``), each task's head in
    ``task_heads.safetensors`` and the tasks' masks in ``ticketctl_share.json``."""
    from safetensors.torch import save_file

    with atomic_folder(folder) as tmp:
        encoder.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        heads = {}
        prefix = models[names[0]].base_model_prefix + "."
        for n in names:
            for k, v in models[n].state_dict().items():
                if not k.startswith(prefix):
                    heads[f"{n}.{k}"] = v.detach().cpu().contiguous()
        save_file(heads, str(tmp / "task_heads.safetensors"))
        spec = {n: None if masks[n] is None else {"heads": masks[n].heads.astype(int).tolist(),
                                                  "ffn": masks[n].ffn.astype(int).tolist()} for n in names}
        (tmp / "ticketctl_share.json").write_text(json.dumps({"tasks": names, "masks": spec}, indent=1) + "\n")
    log.info(f"saved the shared model -> {folder}")


def load_members(contexts: list[Context], mask_paths: list[str]) -> list[Member]:
    if mask_paths and len(mask_paths) != len(contexts):
        raise UsageError(f"give one --mask per --task ({len(contexts)} tasks, {len(mask_paths)} masks), or none for "
                         f"the dense multi-task baseline")
    members = []
    for i, ctx in enumerate(contexts):
        art = inputs.load_mask(ctx, mask_paths[i]) if mask_paths else None
        if art is not None and art.method != "structured":
            raise InputError(f"{art.path}: share needs structured masks (search --method structured)")
        if art is not None and art.meta.get("task") != ctx.task.name:
            raise InputError(f"{art.path}: mask is for {art.meta.get('task')}, given for --task {ctx.task.name}")
        members.append(Member(ctx, art))
    return members
