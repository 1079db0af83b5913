"""``ticketctl search`` (``--method imp``): iterative magnitude pruning (IMP) with rewinding (Frankle & Carbin, 2019;
for BERT, Chen et al., 2020, "The Lottery Ticket Hypothesis for Pre-trained BERT Networks"), and the seed-dependent
L1 regularizer of Multi-Ticket Ensemble (Kobayashi et al., 2022; the policies of ``ticketctl.masks.policies``: base,
active, random).

Each round: rewind every surviving weight to its initial value (pretrained encoder, seed's task head), finetune
with a fresh optimizer whose learning rate decays to zero within the round, then prune the lowest-magnitude
surviving prunable weights globally so that each round removes ``prune_step`` of the original count. Every finished
round is checkpointed (a mask in ``OUT/cache``); a rerun resumes from the last one.

A search is asked for by a :class:`SearchSpec` (what the command's options say); :func:`resolve` turns it, on a task
with model and data (a ``Context``), into a :class:`Search` (its identities, hence every path it writes); a
:class:`SearchState` is the search in progress (the model, its initial weights, the surviving weights, the rounds'
history). The steps:

    identity (resolve) -> finished already? -> setup (SearchState) -> loop (rounds: finished already? -> train ->
    prune) -> write
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ticketctl.data.sampling import training_subset
from ticketctl.data.tasks import predictions, score
from ticketctl.errors import InputError
from ticketctl.hparams import TrainConfig
from ticketctl.log import format_metrics
from ticketctl.masks import policies
from ticketctl.masks.weights import Mask, magnitude_prune, plan_rounds, pruned_count
from ticketctl.stages import context, inputs, outputs
from ticketctl.stages.context import Context, StageSpec
from ticketctl.store.artifacts import Artifact, existing, write_artifact
from ticketctl.store.identity import RunIdentity


@dataclass(frozen=True)
class SearchSpec(StageSpec):
    """One IMP search as the ``search`` command's options ask for it: everything its identity, paths and run follow
    from. ``task`` a task name (None: the custom task of ``data``), ``seed`` the member's seed (task head, data
    order, the random policy's draw), ``policy`` an IMP policy of ``ticketctl.masks.policies``, ``sparsity`` the
    fraction of prunable weights pruned at the end (0-1), ``prune_step`` the fraction of the original count pruned
    per round, ``l1`` the regularizer's tau (None: the policy's default), ``priors`` the earlier members' mask paths
    (ACTIVE-LT; ``("none",)``: its first member), ``train_fraction`` the fraction of the training set searched on.
    ``train``, ``data``, ``run``: the option dataclasses (``context.StageSpec``). Numbers are stored as floats, so
    ``0`` and ``0.0`` name the same run."""

    task: str | None
    seed: int = 0
    policy: str = "base"
    sparsity: float = 0.3
    prune_step: float = 0.1
    l1: float | None = None
    priors: tuple[str, ...] = ()
    train_fraction: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._set(sparsity=float(self.sparsity), prune_step=float(self.prune_step),
                  l1=None if self.l1 is None else float(self.l1), priors=tuple(str(p) for p in self.priors or ()),
                  train_fraction=float(self.train_fraction))


def search(task: str | None, seed: int = 0, **options) -> Path:
    """An IMP ticket of ``task``'s model for ``seed``; returns the mask artifact path (reused when finished).
    ``options`` are :class:`SearchSpec`'s fields (``policy``, ``sparsity``, ``prune_step``, ``l1``, ``priors``,
    ``train_fraction``, ``train``, ``data``, ``run``). Raises UsageError for options the policy refuses, InputError
    for unreadable or unfitting priors."""
    return run_search(SearchSpec(task, seed, **options))


def run_search(spec: SearchSpec) -> Path:
    """Resolve the device and the task (``context.start``), then :func:`search_context`."""
    ctx, cfg, device = context.start(spec.task, spec.train, spec.data, spec.run)
    return search_context(spec, ctx, cfg, device)


@dataclass
class Search:
    """A search resolved from its :class:`SearchSpec` on a context: its identities (the dense first round's, and the
    search's own, which names the mask and the rounds' checkpoints), policy, tau and loaded priors."""

    spec: SearchSpec
    ctx: Context
    cfg: TrainConfig
    dense: RunIdentity
    identity: RunIdentity
    policy: policies.ImpPolicy
    l1: float
    priors: list[Artifact]
    rounds: int

    @property
    def seed(self) -> int:
        return self.identity.seed

    @property
    def out(self) -> Path:
        return self.spec.run.out

    @property
    def mask_path(self) -> Path:
        """The ticket's mask artifact (``store/paths.py``)."""
        return self.identity.paths(self.out)[0]

    def round_path(self, r: int) -> Path:
        """Round ``r``'s checkpoint mask, in ``OUT/cache``."""
        return self.identity.round_path(self.out, r)


def resolve(spec: SearchSpec, ctx: Context, cfg: TrainConfig) -> Search:
    """The identity step, before any training: the training subset cut, the policy's checks, the priors loaded, the
    identities built. ``ctx`` and ``cfg`` as :func:`ticketctl.stages.context.start` resolves them. Raises
    UsageError / InputError as the search would (bad options, unreadable priors)."""
    ctx = ctx.with_train(training_subset(ctx.train, spec.seed, fraction=spec.train_fraction,
                                         subset_seed=spec.data.subset_seed))
    chosen = policies.get(policies.IMP, spec.policy)
    rounds = plan_rounds(spec.sparsity, spec.prune_step)  # refuses a sparsity the prune step cannot reach
    prior_paths = list(spec.priors)
    tau = chosen.resolve_l1(spec.l1)
    chosen.check(tau, prior_paths)
    priors = [] if prior_paths == ["none"] else [load_prior(ctx, p) for p in prior_paths]  # none: ACTIVE-LT's first
    dense = ctx.identity(cfg, spec.seed, train_fraction=spec.train_fraction)
    identity = dense.imp_search(spec.policy, spec.sparsity, spec.prune_step, tau,
                                [p.mask().digest() for p in priors])
    return Search(spec, ctx, cfg, dense, identity, chosen, tau, priors, rounds)


def target(spec: SearchSpec, ctx: Context, cfg: TrainConfig) -> Path:
    """The path of the mask artifact :func:`search_context` writes for ``spec`` (whether or not it exists), computed
    without training: ``ctx`` and ``cfg`` as :func:`ticketctl.stages.context.start` resolves them."""
    return resolve(spec, ctx, cfg).mask_path


def search_context(spec: SearchSpec, ctx: Context, cfg: TrainConfig, device) -> Path:
    """The search on a resolved context: resolve -> finished already? -> setup -> rounds -> write. Returns the mask
    artifact path."""
    s = resolve(spec, ctx, cfg)
    final = s.mask_path
    if context.finished(s.ctx.log, [final], "mask", spec.run.force):
        return final
    state = _setup(s, device)
    start = time.perf_counter()
    for r in range(1, s.rounds + 1):
        _round(s, state, r)
    mask = Mask({n: k.numpy() for n, k in state.keep.items()})
    write_mask(s, final, mask, s.identity.sparsity, state.history)
    s.ctx.log.info(f"ticket: {mask.sparsity:.4%} of prunable weights pruned in {time.perf_counter() - start:.1f}s "
                   f"-> {final}")
    return final


@dataclass
class SearchState:
    """A search in progress: the seeded model and its tokenizer on ``device``, its prunable weights (``shapes``:
    name -> shape; ``total`` their count), the initial state every round rewinds to, the policy's L1 term (None
    without one), the tokenised training and dev splits, the surviving weights (``keep``: name -> bool tensor of the
    weight's shape) and the finished rounds' history (one dict per round, as the mask records it)."""

    device: object
    model: object
    tokenizer: object
    prunable: dict
    shapes: dict
    total: int
    initial: dict
    regularizer: object | None
    enc: object
    dev_enc: object
    keep: dict
    history: list = field(default_factory=list)


def _setup(s: Search, device) -> SearchState:
    """The seeded model and its initial state (every round rewinds to it), the policy's L1 term, the tokens."""
    import torch

    from ticketctl.model.units import prunable_parameters
    from ticketctl.train.loop import L1Regularizer

    ctx, cfg = s.ctx, s.cfg
    model = inputs.load_model(ctx, cfg, s.seed, device)
    tokenizer = inputs.load_tokenizer(ctx, cfg, model)
    prunable = prunable_parameters(model)
    shapes = {n: tuple(p.shape) for n, p in prunable.items()}
    coef = None
    if s.policy.coefficients is not None:
        keeps = [p.mask().keep for p in s.priors]
        for prior, keep in zip(s.priors, keeps):  # named here, where the files are known
            if set(keep) != set(shapes):
                raise InputError(f"{prior.path}: prior mask covers other parameters than this model's prunable "
                                 f"weights")
        coef = s.policy.coefficients(shapes, s.identity.sparsity, s.seed, keeps)
    total = sum(p.numel() for p in prunable.values())
    ctx.log.info(f"search {ctx.task.name} policy={s.policy.name} seed={s.seed}: {s.rounds} rounds to "
                 f"{s.identity.sparsity:.0%} of {total:,} prunable weights (tau={s.l1:g}), {ctx.model_name}, "
                 f"{device.type}/{cfg.precision}")
    return SearchState(device=device, model=model, tokenizer=tokenizer, prunable=prunable, shapes=shapes, total=total,
                       initial={k: v.detach().clone() for k, v in model.state_dict().items()},
                       regularizer=L1Regularizer(s.l1, coef) if coef is not None and s.l1 > 0 else None,
                       enc=ctx.encoded(tokenizer, ctx.train, cfg.max_length),
                       dev_enc=ctx.encoded(tokenizer, ctx.evals[0], cfg.max_length),
                       keep={n: torch.ones(shapes[n], dtype=torch.bool) for n in sorted(shapes)})


def _round(s: Search, state: SearchState, r: int) -> None:
    """One round: finished already? (its checkpoint) -> train from the rewound weights (or reuse the dense finetune
    for round 1 of base) -> prune -> checkpoint. Updates ``state.keep`` and ``state.history``."""
    import torch

    ckpt = s.round_path(r)
    force = s.spec.run.force
    done = None if force else existing(ckpt, "mask")
    if done is not None:
        s.ctx.log.info(f"round {r}/{s.rounds}: finished already, resuming from {ckpt}")
        state.keep = {n: torch.from_numpy(m) for n, m in done.mask().keep.items()}
        state.history = list(done.meta.get("metrics", {}).get("rounds", []))
        return
    reusable = s.policy.name == "base" and r == 1  # round 1 of base is the dense finetune of this seed
    cached = inputs.reuse_dense_weights(s.dense, s.out, force, state.shapes) if reusable else None
    if cached is not None:
        trained = {n: torch.from_numpy(cached.tensors[n]) for n in state.shapes}
        s.ctx.log.info(f"round 1/{s.rounds}: reusing the dense finetune of seed {s.seed} ({cached.path})")
        state.history.append({"round": 1, "sparsity": 0.0, "reused": str(cached.path)})
    else:
        trained = _train_round(s, state, r, reusable)
    n_pruned = pruned_count(state.total, r, s.rounds, s.identity.sparsity, s.identity.fields["prune_step"])
    state.keep = magnitude_prune(trained, state.keep, n_pruned)
    level = r * s.identity.fields["prune_step"] if r < s.rounds else s.identity.sparsity
    write_mask(s, ckpt, Mask({n: k.numpy() for n, k in state.keep.items()}), level, state.history, round_=r)


def _train_round(s: Search, state: SearchState, r: int, reusable: bool):
    """Rewind, train with the surviving weights, score on dev (round 1 of base: write it as `finetune` would, so
    `finetune --seed S` costs nothing afterwards); appends the round to ``state.history`` and returns the trained
    prunable weights."""
    from ticketctl.model.loading import pad_id
    from ticketctl.train.loop import predict

    ctx, cfg, model, tokenizer, device = s.ctx, s.cfg, state.model, state.tokenizer, state.device
    model.load_state_dict(state.initial)  # rewind
    _, curve, seconds = context.train_model(ctx, model, tokenizer, cfg, s.seed, device, f"round {r}/{s.rounds}",
                                            keep={n: k.float() for n, k in state.keep.items()},
                                            l1=state.regularizer, enc=state.enc)
    dev, metrics = ctx.evals[0], {}
    if reusable:
        metrics = outputs.write_dense_finetune(ctx, model, tokenizer, cfg, s.out, s.dense, device,
                                               outputs.dense_round_meta(ctx, s.dense, curve))[0]
    elif dev.labels is not None:
        logits = predict(model, state.dev_enc, device, pad_id(tokenizer), cfg.precision)
        metrics = score(ctx.task, predictions(ctx.task, logits), dev.labels)
    sp = 1 - sum(int(k.sum()) for k in state.keep.values()) / state.total
    state.history.append({"round": r, "sparsity": round(sp, 6), "seconds": round(seconds, 1),
                          **{f"dev_{k}": round(v, 6) for k, v in metrics.items()}})
    ctx.log.info(f"round {r}/{s.rounds}: trained at sparsity {sp:.1%}: dev {format_metrics(metrics)}")
    return {n: p.detach() for n, p in state.prunable.items()}


def load_prior(ctx: Context, path: str) -> Artifact:
    """An earlier member's mask (``--prior``), checked to be for this model and task. Raises InputError."""
    art = inputs.load_mask(ctx, path)
    if art.meta.get("task") != ctx.task.name:
        raise InputError(f"{path}: prior mask is for task {art.meta.get('task')}, not {ctx.task.name}")
    return art


def write_mask(s: Search, path: Path, mask: Mask, target: float, history: list, round_: int | None = None) -> None:
    """Write ``mask`` (the ticket, or round ``round_``'s checkpoint) with its provenance: ``target`` the sparsity the
    round aimed at, ``history`` the rounds so far."""
    identity = s.identity
    tensors, shapes = mask.pack()
    meta = s.ctx.meta(method="imp", seed=str(s.seed), policy=identity.scheme, sparsity=f"{mask.sparsity:.6f}",
                      target_sparsity=f"{target:.6f}", prune_step=str(identity.fields["prune_step"]),
                      l1=str(identity.fields["l1"]), config=identity.as_dict(), config_hash=identity.hash(),
                      shapes=shapes, parents=[p.parent_ref() for p in s.priors], metrics={"rounds": history},
                      prunable_total=str(mask.total))
    if round_ is not None:
        meta["round"] = str(round_)
    write_artifact(path, "mask", tensors, meta)
