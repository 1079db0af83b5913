"""``ticketctl search`` (``--method imp``): iterative magnitude pruning (IMP) with rewinding, and the seed-dependent
L1 regularizer of Multi-Ticket Ensemble (policies ``base``, ``active``, ``random``).

Each round: rewind every surviving weight to its initial value (pretrained encoder, seed's task head), finetune
with a fresh optimizer whose learning rate decays to zero within the round, then prune the lowest-magnitude
surviving prunable weights globally so that each round removes ``prune_step`` of the original count. Every finished
round is checkpointed (a mask in ``OUT/cache``); a rerun resumes from the last one.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ticketctl.data.sampling import training_subset
from ticketctl.data.tasks import predictions, score
from ticketctl.errors import InputError, UsageError
from ticketctl.hparams import DataOptions, RunOptions, TrainConfig
from ticketctl.masks.weights import Mask, magnitude_prune, plan_rounds, pruned_count
from ticketctl.stages import setup
from ticketctl.stages.setup import Context
from ticketctl.store import paths
from ticketctl.store.artifacts import Artifact, existing, write_artifact
from ticketctl.store.provenance import IDENTITY_DEFAULTS, config_hash
from ticketctl.train.seeds import derive_seed

POLICIES = ("base", "active", "random")
DEFAULT_L1 = 1e-4  # see README "Choices": makes random/active masks differ from base's across seeds
SEARCH_DEFAULTS = {**IDENTITY_DEFAULTS, "prune_step": 0.1, "l1": 0.0, "priors": []}


def search(task: str, seed: int = 0, *, policy: str = "base", sparsity: float = 0.3, prune_step: float = 0.1,
           l1: float | None = None, priors: list[str] | None = None, train_fraction: float = 1.0,
           train: TrainConfig | None = None, data: DataOptions | None = None, run: RunOptions | None = None) -> Path:
    """An IMP ticket of ``task``'s model for ``seed``; returns the mask artifact path (reused when finished)."""
    data, run = data or DataOptions(), run or RunOptions()
    ctx, cfg, device = setup.start(task, train, data, run)
    return search_context(ctx, cfg, device, seed, run.out, policy=policy, sparsity=float(sparsity),
                          prune_step=float(prune_step), l1=None if l1 is None else float(l1), prior_paths=priors,
                          force=run.force, train_fraction=float(train_fraction),
                          subset_seed=data.subset_seed)


def random_coefficients(shapes: dict[str, tuple[int, ...]], sparsity: float, seed: int):
    """RANDOM-LT's l_s: Bernoulli per weight with P(0) = target sparsity (a random stand-in for an earlier ticket)."""
    import torch

    g = torch.Generator().manual_seed(derive_seed(seed, "random-policy"))
    return {n: (torch.rand(shapes[n], generator=g) >= sparsity).float() for n in sorted(shapes)}


def active_coefficients(priors: list[Artifact]):
    """ACTIVE-LT's l_s: mean of the earlier members' keep-masks, so weights they kept are pushed towards zero."""
    import torch

    total = None
    for art in priors:
        keep = art.mask().keep
        if total is None:
            total = {n: keep[n].astype(np.float32) for n in keep}
        else:
            if set(keep) != set(total):
                raise InputError(f"{art.path}: prior masks cover different parameters")
            for n in keep:
                total[n] += keep[n]
    return {n: torch.from_numpy(v / len(priors)) for n, v in total.items()}


def search_context(ctx: Context, cfg: TrainConfig, device, seed: int, out: Path, policy: str = "base",
                   sparsity: float = 0.3, prune_step: float = 0.1, l1: float | None = None,
                   prior_paths: list[str] | None = None, force: bool = False, train_fraction: float = 1.0,
                   subset_seed: int | None = None) -> Path:
    ctx = ctx.with_train(training_subset(ctx.train, seed, fraction=train_fraction, subset_seed=subset_seed))
    final, identity, h, dense_identity, priors, l1 = _identity(ctx, cfg, seed, out, policy, sparsity, prune_step, l1,
                                                               prior_paths, train_fraction)
    if setup.finished(ctx.log, [final], "mask", force):
        return final
    rounds = plan_rounds(sparsity, prune_step)
    return _search(ctx, cfg, device, seed, out, policy, sparsity, prune_step, l1, priors, force, train_fraction,
                   final, identity, h, dense_identity, rounds)


def target(ctx: Context, cfg: TrainConfig, seed: int, out: Path, policy: str = "base", sparsity: float = 0.3,
           prune_step: float = 0.1, l1: float | None = None, prior_paths: list[str] | None = None,
           train_fraction: float = 1.0, subset_seed: int | None = None) -> Path:
    """The path of the mask artifact :func:`search_context` writes for these options (whether or not it exists),
    computed without training: ``ctx`` and ``cfg`` as :func:`ticketctl.stages.setup.start` resolves them. Raises
    UsageError / InputError as the search would (bad options, unreadable priors)."""
    ctx = ctx.with_train(training_subset(ctx.train, seed, fraction=train_fraction, subset_seed=subset_seed))
    return _identity(ctx, cfg, seed, out, policy, float(sparsity), float(prune_step),
                     None if l1 is None else float(l1), prior_paths, float(train_fraction))[0]


def _identity(ctx: Context, cfg: TrainConfig, seed: int, out: Path, policy: str, sparsity: float, prune_step: float,
              l1: float | None, prior_paths: list[str] | None, train_fraction: float):
    """identity -> (final mask path, identity, its hash, the dense round's identity, loaded priors, resolved tau)."""
    if policy not in POLICIES:
        raise UsageError(f"--policy must be one of {', '.join(POLICIES)}")
    plan_rounds(sparsity, prune_step)  # refuses a sparsity the prune step cannot reach
    prior_paths = prior_paths or []
    if l1 is None:
        l1 = 0.0 if policy == "base" else DEFAULT_L1
    if l1 < 0:
        raise UsageError("--l1 (tau) must be >= 0")
    if policy == "base" and l1 > 0:
        raise UsageError("--policy base has no regularizer; use --policy random or active with --l1")
    if policy == "active" and not prior_paths:
        raise UsageError("--policy active needs the earlier members' masks: --prior MASK ... (or - for stdin), or "
                         "--prior none for the first member of the sequence")
    if policy != "active" and prior_paths:
        raise UsageError("--prior is only used by --policy active")
    first = prior_paths == ["none"]  # ACTIVE-LT's first member: nothing to push away from, plain IMP
    if "none" in prior_paths and not first:
        raise UsageError("--prior none stands alone (the first member of an active sequence)")
    priors = [] if first else [load_prior(ctx, p) for p in prior_paths]
    dense_identity = setup.training_identity(ctx, cfg, seed, ctx.train, train_fraction=train_fraction)
    identity = {**dense_identity, "policy": policy, "sparsity": sparsity, "prune_step": prune_step, "l1": l1,
                "priors": sorted(p.mask().digest() for p in priors)}
    h = config_hash(identity, SEARCH_DEFAULTS)
    return out / paths.mask_name(ctx.task.name, policy, seed, sparsity, h), identity, h, dense_identity, priors, l1


def _search(ctx: Context, cfg: TrainConfig, device, seed: int, out: Path, policy: str, sparsity: float,
            prune_step: float, l1: float, priors: list, force: bool, train_fraction: float, final: Path,
            identity: dict, h: str, dense_identity: dict, rounds: int) -> Path:
    # setup
    import torch

    from ticketctl.model.units import prunable_parameters
    from ticketctl.train.loop import L1Regularizer, predict

    model = setup.load_model(ctx, cfg, seed, device)
    tokenizer = setup.load_tokenizer(ctx, cfg, model)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    prunable = prunable_parameters(model)
    shapes = {n: tuple(p.shape) for n, p in prunable.items()}
    total = sum(p.numel() for p in prunable.values())
    coef = None
    if policy == "random":
        coef = random_coefficients(shapes, sparsity, seed)
    elif policy == "active" and priors:
        coef = active_coefficients(priors)
        if set(coef) != set(shapes) or any(tuple(coef[n].shape) != shapes[n] for n in shapes):
            raise InputError("prior masks do not fit this model's prunable weights")
    reg = L1Regularizer(l1, coef) if coef is not None and l1 > 0 else None
    enc = setup.encoded(ctx, tokenizer, ctx.train, cfg.max_length)
    dev = ctx.evals[0]
    dev_enc = setup.encoded(ctx, tokenizer, dev, cfg.max_length)

    # loop: rounds of train -> prune -> rewind, each checkpointed
    keep = {n: torch.ones(shapes[n], dtype=torch.bool) for n in sorted(shapes)}
    history: list[dict] = []
    ctx.log.info(f"search {ctx.task.name} policy={policy} seed={seed}: {rounds} rounds to {sparsity:.0%} of {total:,} "
                 f"prunable weights (tau={l1:g}), {ctx.model_name}, {device.type}/{cfg.precision}")
    start = time.perf_counter()
    for r in range(1, rounds + 1):
        ckpt = out / paths.CACHE_DIR / paths.round_mask_name(ctx.task.name, policy, seed, r, h)
        done = None if force else existing(ckpt, "mask")
        if done is not None:
            keep = {n: torch.from_numpy(m) for n, m in done.mask().keep.items()}
            history = list(done.meta.get("metrics", {}).get("rounds", []))
            ctx.log.info(f"round {r}/{rounds}: finished already, resuming from {ckpt}")
            continue
        n_pruned = pruned_count(total, r, rounds, sparsity, prune_step)
        trained = None
        reusable = policy == "base" and r == 1  # round 1 of base is the dense finetune of this seed
        cached = setup.reuse_dense_weights(ctx, dense_identity, seed, out, force, shapes) if reusable else None
        if cached is not None:
            trained = {n: torch.from_numpy(cached.tensors[n]) for n in shapes}
            ctx.log.info(f"round 1/{rounds}: reusing the dense finetune of seed {seed} ({cached.path})")
            history.append({"round": 1, "sparsity": 0.0, "reused": str(cached.path)})
        if trained is None:
            model.load_state_dict(initial)  # rewind
            _, curve, seconds = setup.dense_train(ctx, model, tokenizer, cfg, seed, device, f"round {r}/{rounds}",
                                                  keep={n: k.float() for n, k in keep.items()}, l1=reg, enc=enc)
            if reusable:  # write its outputs as `finetune` would, so `finetune --seed S` costs nothing afterwards
                metrics = setup.write_dense_finetune(ctx, model, tokenizer, cfg, seed, out, dense_identity, device,
                                                     setup.dense_round_meta(ctx, seed, dense_identity, curve))[0]
            else:
                metrics = {}
                if dev.labels is not None:
                    outputs = predict(model, dev_enc, device, setup.pad_id(tokenizer), cfg.precision)
                    metrics = score(ctx.task, predictions(ctx.task, outputs), dev.labels)
            sp = 1 - sum(int(k.sum()) for k in keep.values()) / total
            history.append({"round": r, "sparsity": round(sp, 6), "seconds": round(seconds, 1),
                            **{f"dev_{k}": round(v, 6) for k, v in metrics.items()}})
            ctx.log.info(f"round {r}/{rounds}: trained at sparsity {sp:.1%}: dev {setup.format_metrics(metrics)}")
            trained = {n: p.detach() for n, p in prunable.items()}
        keep = magnitude_prune(trained, keep, n_pruned)
        round_mask = Mask({n: k.numpy() for n, k in keep.items()})
        write_mask(ctx, ckpt, round_mask, seed, policy, r * prune_step if r < rounds else sparsity, identity, h,
                   priors, history, round_=r)

    # write
    mask = Mask({n: k.numpy() for n, k in keep.items()})
    write_mask(ctx, final, mask, seed, policy, sparsity, identity, h, priors, history)
    ctx.log.info(f"ticket: {mask.sparsity:.4%} of prunable weights pruned in {time.perf_counter() - start:.1f}s "
                 f"-> {final}")
    return final


def load_prior(ctx: Context, path: str) -> Artifact:
    art = setup.load_mask(ctx, path)
    if art.meta.get("task") != ctx.task.name:
        raise InputError(f"{path}: prior mask is for task {art.meta.get('task')}, not {ctx.task.name}")
    return art


def write_mask(ctx: Context, path: Path, mask: Mask, seed: int, policy: str, target: float, identity: dict, h: str,
               priors: list, history: list, round_: int | None = None) -> None:
    tensors, shapes = mask.pack()
    meta = ctx.meta(method="imp", seed=str(seed), policy=policy, sparsity=f"{mask.sparsity:.6f}",
                    target_sparsity=f"{target:.6f}", prune_step=str(identity["prune_step"]), l1=str(identity["l1"]),
                    config=identity, config_hash=h, shapes=shapes, parents=[p.parent_ref() for p in priors],
                    metrics={"rounds": history}, prunable_total=str(mask.total))
    if round_ is not None:
        meta["round"] = str(round_)
    write_artifact(path, "mask", tensors, meta)
