"""``ticketctl search`` (``--method imp``): iterative magnitude pruning (IMP) with rewinding, and the seed-dependent
L1 regularizer of Multi-Ticket Ensemble (the policies of ``ticketctl.masks.policies``: base, active, random).

Each round: rewind every surviving weight to its initial value (pretrained encoder, seed's task head), finetune
with a fresh optimizer whose learning rate decays to zero within the round, then prune the lowest-magnitude
surviving prunable weights globally so that each round removes ``prune_step`` of the original count. Every finished
round is checkpointed (a mask in ``OUT/cache``); a rerun resumes from the last one.

    identity -> finished already? -> setup -> loop (rounds: finished already? -> train -> prune) -> write
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ticketctl.data.sampling import training_subset
from ticketctl.data.tasks import predictions, score
from ticketctl.errors import InputError
from ticketctl.hparams import DataOptions, RunOptions, TrainConfig
from ticketctl.log import format_metrics
from ticketctl.masks import policies
from ticketctl.masks.weights import Mask, magnitude_prune, plan_rounds, pruned_count
from ticketctl.stages import context, inputs, outputs
from ticketctl.stages.context import Context
from ticketctl.store.artifacts import Artifact, existing, write_artifact
from ticketctl.store.identity import RunIdentity


def search(task: str, seed: int = 0, *, policy: str = "base", sparsity: float = 0.3, prune_step: float = 0.1,
           l1: float | None = None, priors: list[str] | None = None, train_fraction: float = 1.0,
           train: TrainConfig | None = None, data: DataOptions | None = None, run: RunOptions | None = None) -> Path:
    """An IMP ticket of ``task``'s model for ``seed``; returns the mask artifact path (reused when finished)."""
    data, run = data or DataOptions(), run or RunOptions()
    ctx, cfg, device = context.start(task, train, data, run)
    return search_context(ctx, cfg, device, seed, run.out, policy=policy, sparsity=float(sparsity),
                          prune_step=float(prune_step), l1=None if l1 is None else float(l1), prior_paths=priors,
                          force=run.force, train_fraction=float(train_fraction),
                          subset_seed=data.subset_seed)


@dataclass
class Search:
    """A resolved search: its identity (the dense first round's, and the search's own), policy, tau and priors."""

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


def plan(ctx: Context, cfg: TrainConfig, seed: int, policy: str = "base", sparsity: float = 0.3,
         prune_step: float = 0.1, l1: float | None = None, prior_paths: list[str] | None = None,
         train_fraction: float = 1.0, subset_seed: int | None = None) -> Search:
    """identity: the policy's checks, the priors loaded, the identity built. Raises UsageError / InputError as the
    search would (bad options, unreadable priors)."""
    ctx = ctx.with_train(training_subset(ctx.train, seed, fraction=train_fraction, subset_seed=subset_seed))
    chosen = policies.get(policies.IMP, policy)
    rounds = plan_rounds(sparsity, prune_step)  # refuses a sparsity the prune step cannot reach
    prior_paths = prior_paths or []
    tau = chosen.resolve_l1(l1)
    chosen.check(tau, prior_paths)
    priors = [] if prior_paths == ["none"] else [load_prior(ctx, p) for p in prior_paths]  # none: ACTIVE-LT's first
    dense = ctx.identity(cfg, seed, train_fraction=train_fraction)
    identity = dense.imp_search(policy, sparsity, prune_step, tau, [p.mask().digest() for p in priors])
    return Search(ctx, cfg, dense, identity, chosen, tau, priors, rounds)


def target(ctx: Context, cfg: TrainConfig, seed: int, out: Path, policy: str = "base", sparsity: float = 0.3,
           prune_step: float = 0.1, l1: float | None = None, prior_paths: list[str] | None = None,
           train_fraction: float = 1.0, subset_seed: int | None = None) -> Path:
    """The path of the mask artifact :func:`search_context` writes for these options (whether or not it exists),
    computed without training: ``ctx`` and ``cfg`` as :func:`ticketctl.stages.context.start` resolves them."""
    s = plan(ctx, cfg, seed, policy, float(sparsity), float(prune_step), None if l1 is None else float(l1),
             prior_paths, float(train_fraction), subset_seed)
    return s.identity.paths(out)[0]


def search_context(ctx: Context, cfg: TrainConfig, device, seed: int, out: Path, policy: str = "base",
                   sparsity: float = 0.3, prune_step: float = 0.1, l1: float | None = None,
                   prior_paths: list[str] | None = None, force: bool = False, train_fraction: float = 1.0,
                   subset_seed: int | None = None) -> Path:
    s = plan(ctx, cfg, seed, policy, sparsity, prune_step, l1, prior_paths, train_fraction, subset_seed)
    final = s.identity.paths(out)[0]
    if context.finished(s.ctx.log, [final], "mask", force):
        return final
    state = _setup(s, device)
    start = time.perf_counter()
    keep, history = state["keep"], []
    for r in range(1, s.rounds + 1):
        keep, history = _round(s, state, device, out, force, r, keep, history)
    mask = Mask({n: k.numpy() for n, k in keep.items()})
    write_mask(s, final, mask, s.identity.sparsity, history)
    s.ctx.log.info(f"ticket: {mask.sparsity:.4%} of prunable weights pruned in {time.perf_counter() - start:.1f}s "
                   f"-> {final}")
    return final


def _setup(s: Search, device) -> dict:
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
    return {"model": model, "tokenizer": tokenizer, "prunable": prunable, "shapes": shapes, "total": total,
            "initial": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "reg": L1Regularizer(s.l1, coef) if coef is not None and s.l1 > 0 else None,
            "enc": ctx.encoded(tokenizer, ctx.train, cfg.max_length),
            "dev_enc": ctx.encoded(tokenizer, ctx.evals[0], cfg.max_length),
            "keep": {n: torch.ones(shapes[n], dtype=torch.bool) for n in sorted(shapes)}}


def _round(s: Search, state: dict, device, out: Path, force: bool, r: int, keep: dict, history: list):
    """One round: finished already? (its checkpoint) -> train from the rewound weights (or reuse the dense finetune
    for round 1 of base) -> prune -> checkpoint. Returns (keep, history)."""
    import torch

    ckpt = s.identity.round_path(out, r)
    done = None if force else existing(ckpt, "mask")
    if done is not None:
        s.ctx.log.info(f"round {r}/{s.rounds}: finished already, resuming from {ckpt}")
        return ({n: torch.from_numpy(m) for n, m in done.mask().keep.items()},
                list(done.meta.get("metrics", {}).get("rounds", [])))
    reusable = s.policy.name == "base" and r == 1  # round 1 of base is the dense finetune of this seed
    cached = inputs.reuse_dense_weights(s.dense, out, force, state["shapes"]) if reusable else None
    if cached is not None:
        trained = {n: torch.from_numpy(cached.tensors[n]) for n in state["shapes"]}
        s.ctx.log.info(f"round 1/{s.rounds}: reusing the dense finetune of seed {s.seed} ({cached.path})")
        history.append({"round": 1, "sparsity": 0.0, "reused": str(cached.path)})
    else:
        trained = _train_round(s, state, device, out, r, keep, history, reusable)
    n_pruned = pruned_count(state["total"], r, s.rounds, s.identity.sparsity, s.identity.fields["prune_step"])
    keep = magnitude_prune(trained, keep, n_pruned)
    level = r * s.identity.fields["prune_step"] if r < s.rounds else s.identity.sparsity
    write_mask(s, ckpt, Mask({n: k.numpy() for n, k in keep.items()}), level, history, round_=r)
    return keep, history


def _train_round(s: Search, state: dict, device, out: Path, r: int, keep: dict, history: list, reusable: bool):
    """Rewind, train with the surviving weights, score on dev (round 1 of base: write it as `finetune` would, so
    `finetune --seed S` costs nothing afterwards); returns the trained prunable weights."""
    from ticketctl.model.loading import pad_id
    from ticketctl.train.loop import predict

    ctx, cfg, model, tokenizer = s.ctx, s.cfg, state["model"], state["tokenizer"]
    model.load_state_dict(state["initial"])  # rewind
    _, curve, seconds = context.dense_train(ctx, model, tokenizer, cfg, s.seed, device, f"round {r}/{s.rounds}",
                                            keep={n: k.float() for n, k in keep.items()}, l1=state["reg"],
                                            enc=state["enc"])
    dev, metrics = ctx.evals[0], {}
    if reusable:
        metrics = outputs.write_dense_finetune(ctx, model, tokenizer, cfg, out, s.dense, device,
                                               outputs.dense_round_meta(ctx, s.dense, curve))[0]
    elif dev.labels is not None:
        logits = predict(model, state["dev_enc"], device, pad_id(tokenizer), cfg.precision)
        metrics = score(ctx.task, predictions(ctx.task, logits), dev.labels)
    sp = 1 - sum(int(k.sum()) for k in keep.values()) / state["total"]
    history.append({"round": r, "sparsity": round(sp, 6), "seconds": round(seconds, 1),
                    **{f"dev_{k}": round(v, 6) for k, v in metrics.items()}})
    ctx.log.info(f"round {r}/{s.rounds}: trained at sparsity {sp:.1%}: dev {format_metrics(metrics)}")
    return {n: p.detach() for n, p in state["prunable"].items()}


def load_prior(ctx: Context, path: str) -> Artifact:
    art = inputs.load_mask(ctx, path)
    if art.meta.get("task") != ctx.task.name:
        raise InputError(f"{path}: prior mask is for task {art.meta.get('task')}, not {ctx.task.name}")
    return art


def write_mask(s: Search, path: Path, mask: Mask, target: float, history: list, round_: int | None = None) -> None:
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
