"""``ticketctl search --method structured``: Super Tickets (Liang et al., 2021).

Finetune the dense model (or reuse the dense finetune of the same seed and config), score every attention head and
FFN sublayer by its expected |dL/d gate| over the training set, normalise head scores within each layer, and write
one structured mask per requested sparsity level and ticket kind (winning / random / losing). Scores are computed
once per seed and kept in ``OUT/cache``, so more levels or kinds later cost nothing but the selection.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ticketctl.data.sampling import training_subset
from ticketctl.errors import UsageError
from ticketctl.hparams import DataOptions, RunOptions, TrainConfig
from ticketctl.masks.structured import TICKETS, check_distinct_levels, normalize_heads, ticket, weights_remaining
from ticketctl.stages import setup
from ticketctl.stages.setup import Context
from ticketctl.store import paths
from ticketctl.store.artifacts import existing, read_artifact, write_artifact
from ticketctl.store.provenance import IDENTITY_DEFAULTS, config_hash
from ticketctl.train.seeds import derive_seed

# Bump when the importance computation changes its numbers.
IMPORTANCE_VERSION = 1


def parse_tickets(text: str) -> list[str]:
    kinds = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in kinds if t not in TICKETS]
    if not kinds or bad:
        raise UsageError(f"--ticket must be one or more of {', '.join(TICKETS)} (comma-separated)")
    if len(set(kinds)) != len(kinds):
        raise UsageError(f"--ticket {text!r}: a kind is given twice")
    return kinds


POLICIES = ("base", "perturbed", "active")
DIVERSITY_DEFAULTS = {"perturbed": 0.5, "active": 1.0}


def structured_search(task: str, seed: int = 0, *, levels: list[float], kinds: list[str] = ("winning",),
                      train_fraction: float = 1.0, policy: str = "base", diversity: float | None = None,
                      priors: list[str] = (), train: TrainConfig | None = None, data: DataOptions | None = None,
                      run: RunOptions | None = None) -> list[Path]:
    """Structured tickets of ``task``'s model for ``seed``, one mask per kind and level; returns their paths.
    ``policy`` perturbed / active makes winning tickets deliberately diverse (:func:`diverse_scores`)."""
    data, run = data or DataOptions(), run or RunOptions()
    check_policy(policy, kinds, priors, diversity)
    ctx, cfg, device = setup.start(task, train, data, run)
    return structured_context(ctx, cfg, device, seed, run.out, [float(x) for x in levels], list(kinds),
                              force=run.force, train_fraction=float(train_fraction),
                              subset_seed=data.subset_seed, policy=policy, diversity=diversity, priors=list(priors))


def check_policy(policy: str, kinds, priors, diversity) -> None:
    if policy not in POLICIES:
        raise UsageError(f"--method structured: --policy must be one of {', '.join(POLICIES)}")
    if policy != "base" and list(kinds) != ["winning"]:
        raise UsageError(f"--policy {policy} makes diverse winning tickets: give --ticket winning")
    if priors and policy != "active":
        raise UsageError("--prior belongs to --policy active")
    if diversity is not None and (policy == "base" or not diversity >= 0):
        raise UsageError("--diversity takes a value >= 0, with --policy perturbed or active")


def diverse_scores(head: np.ndarray, ffn: np.ndarray, policy: str, strength: float, seed: int,
                   priors: list) -> tuple[np.ndarray, np.ndarray]:
    """Importance scores reshaped so that winning tickets of different seeds differ more than their dense finetunes
    make them, at the same size. ``perturbed`` (in the spirit of RANDOM-LT): every score times exp(strength x z),
    z ~ N(0, 1) drawn from the seed, once per seed (tickets stay nested across levels); strength 0.5 swaps units
    whose scores are within a factor of about 1.6 of each other and keeps the clearly important ones. ``active``
    (in the spirit of ACTIVE-LT): every score times (1 + strength x the fraction of earlier members that dropped the
    unit), so units the earlier members pruned are kept now where their importance is close."""
    if policy == "perturbed":
        rng = np.random.default_rng(derive_seed(seed, "structured-perturb"))
        noise_h, noise_f = rng.standard_normal(head.shape), rng.standard_normal(ffn.shape)
        return head * np.exp(strength * noise_h), ffn * np.exp(strength * noise_f)
    if policy == "active" and priors:
        dropped_h = 1.0 - np.mean([p.heads for p in priors], axis=0)
        dropped_f = 1.0 - np.mean([p.ffn for p in priors], axis=0)
        return head * (1.0 + strength * dropped_h), ffn * (1.0 + strength * dropped_f)
    return head, ffn


def structured_context(ctx: Context, cfg: TrainConfig, device, seed: int, out: Path, levels: list[float],
                       kinds: list[str], force: bool = False, train_fraction: float = 1.0,
                       subset_seed: int | None = None, policy: str = "base", diversity: float | None = None,
                       priors: list[str] = ()) -> list[Path]:
    from ticketctl.model.loading import encoder_shape

    ctx = ctx.with_train(training_subset(ctx.train, seed, fraction=train_fraction, subset_seed=subset_seed))
    layers, heads_per_layer = encoder_shape(ctx.model_dir)
    check_distinct_levels(levels, layers, heads_per_layer)  # before any training
    prior_arts = [setup.load_mask(ctx, p) for p in priors]
    for a in prior_arts:
        if a.method != "structured" or a.structured().heads.shape != (layers, heads_per_layer):
            raise UsageError(f"--prior {a.path}: --policy active takes structured masks of this model")
    prior_masks = [a.structured() for a in prior_arts]
    strength = DIVERSITY_DEFAULTS.get(policy, 0.0) if diversity is None else float(diversity)
    diverse = {} if policy == "base" else {"structured_policy": policy, "diversity": strength,
                                           "priors": sorted(m.digest() for m in prior_masks)}

    # identity -> finished already?
    dense_identity, score_identity, targets = _identities(ctx, cfg, seed, out, levels, kinds, train_fraction,
                                                          policy, diverse)
    if setup.finished(ctx.log, [t[-1] for t in targets], "mask", force):
        return [t[-1] for t in targets]

    # setup and loop: the importance scores (cached per seed), after the dense finetune
    sh = config_hash(score_identity, IDENTITY_DEFAULTS)
    cache = out / paths.CACHE_DIR / paths.importance_name(ctx.task.name, seed, sh)
    scores = None if force else existing(cache, "weights")
    if scores is None:
        head_raw, ffn, layers_info = compute_scores(ctx, cfg, seed, out, dense_identity, device, force)
        write_artifact(cache, "weights", {"head_scores_raw": head_raw.astype(np.float32),
                                          "ffn_scores": ffn.astype(np.float32)},
                       ctx.meta(seed=str(seed), config=score_identity, **layers_info))
        scores = read_artifact(cache, "weights")
    else:
        ctx.log.info(f"importance scores of seed {seed}: reusing {cache}")
    head_raw = scores.tensors["head_scores_raw"].astype(np.float64)
    ffn = scores.tensors["ffn_scores"].astype(np.float64)
    head = normalize_heads(head_raw)
    weights_info = scores.meta.get("weights") or {}
    chosen_head, chosen_ffn = diverse_scores(head, ffn, policy, strength, seed, prior_masks)

    # write: one mask per kind and level
    written = []
    for kind, level, identity, h, path in targets:
        rng = np.random.default_rng(derive_seed(seed, f"random-ticket:{level!r}")) if kind == "random" else None
        mask = ticket(chosen_head, chosen_ffn, level, kind, rng)
        remaining = weights_remaining(mask, weights_info)
        tensors = {"heads_keep": mask.heads.astype(np.uint8), "ffn_keep": mask.ffn.astype(np.uint8),
                   "head_scores": head.astype(np.float32), "head_scores_raw": head_raw.astype(np.float32),
                   "ffn_scores": ffn.astype(np.float32)}
        meta = ctx.meta(method="structured", seed=str(seed), policy=kind if policy == "base" else f"{kind}-{policy}",
                        sparsity=f"{mask.sparsity:.6f}",
                        target_sparsity=f"{level:.6f}", ffn_sparsity=f"{mask.ffn_sparsity:.6f}",
                        weights_remaining=f"{remaining:.6f}", heads_kept=str(int(mask.heads.sum())),
                        heads_total=str(mask.heads.size), ffn_kept=str(int(mask.ffn.sum())), config=identity,
                        config_hash=h, parents=[scores.parent_ref()] + [a.parent_ref() for a in prior_arts],
                        importance_examples=scores.meta.get("importance_examples"))
        write_artifact(path, "mask", tensors, meta)
        ctx.log.info(f"{kind} ticket at {level:.0%}: {int(mask.heads.sum())}/{mask.heads.size} heads, "
                     f"{int(mask.ffn.sum())}/{mask.ffn.size} FFNs, {remaining:.1%} of encoder weights -> {path}")
        written.append(path)
    return written


def targets(ctx: Context, cfg: TrainConfig, seed: int, out: Path, levels: list[float], kinds=("winning",),
            train_fraction: float = 1.0, subset_seed: int | None = None) -> list[Path]:
    """The paths of the masks :func:`structured_context` writes with ``policy="base"`` (one per kind, then level),
    whether or not they exist, computed without training: ``ctx`` and ``cfg`` as
    :func:`ticketctl.stages.setup.start` resolves them."""
    ctx = ctx.with_train(training_subset(ctx.train, seed, fraction=train_fraction, subset_seed=subset_seed))
    return [t[-1] for t in _identities(ctx, cfg, seed, out, [float(x) for x in levels], list(kinds),
                                       float(train_fraction), "base", {})[2]]


def _identities(ctx: Context, cfg: TrainConfig, seed: int, out: Path, levels: list[float], kinds: list[str],
                train_fraction: float, policy: str, diverse: dict):
    """(dense finetune identity, importance scores identity, [(kind, level, identity, hash, mask path)])."""
    dense_identity = setup.training_identity(ctx, cfg, seed, ctx.train, train_fraction=train_fraction)
    score_identity = {**dense_identity, "method": "structured", "importance": IMPORTANCE_VERSION}
    found = []
    for kind in kinds:
        for level in levels:
            identity = {**score_identity, "ticket": kind, "sparsity": level, **diverse}
            h = config_hash(identity, IDENTITY_DEFAULTS)
            name = kind if policy == "base" else f"{kind}-{policy}"
            found.append((kind, level, identity, h, out / paths.mask_name(ctx.task.name, name, seed, level, h)))
    return dense_identity, score_identity, found


def compute_scores(ctx: Context, cfg: TrainConfig, seed: int, out: Path, dense_identity: dict, device, force: bool):
    import torch

    from ticketctl.model import units
    from ticketctl.train.importance import importance

    model = setup.load_model(ctx, cfg, seed, device)
    tokenizer = setup.load_tokenizer(ctx, cfg, model)
    lay = units.layout(model)
    enc = setup.encoded(ctx, tokenizer, ctx.train, cfg.max_length)
    state = model.state_dict()
    floats = [k for k, v in state.items() if v.is_floating_point()]
    cached = setup.reuse_dense_weights(ctx, dense_identity, seed, out, force, floats)
    if cached is not None:
        model.load_state_dict({k: torch.from_numpy(cached.tensors[k]) for k in floats}, strict=False)
        ctx.log.info(f"reusing the dense finetune of seed {seed} ({cached.path})")
    else:
        ctx.log.info(f"structured search {ctx.task.name} seed={seed}: dense finetune on {len(ctx.train)} examples, "
                     f"{ctx.model_name}, {device.type}/{cfg.precision}")
        _, curve, seconds = setup.dense_train(ctx, model, tokenizer, cfg, seed, device, f"dense s{seed}", enc=enc)
        ctx.log.info(f"dense finetune in {seconds:.1f}s")
        setup.write_dense_finetune(ctx, model, tokenizer, cfg, seed, out, dense_identity, device,
                                   setup.dense_round_meta(ctx, seed, dense_identity, curve))
    t0 = time.perf_counter()
    with ctx.log.progress("importance", 1) as advance:
        head_raw, ffn = importance(model, enc, ctx.train.labels, device, setup.pad_id(tokenizer), cfg.precision,
                                   on_step=advance)
    ctx.log.info(f"importance of {lay.num_layers * lay.num_heads} heads and {lay.num_layers} FFNs over "
                 f"{len(ctx.train)} training examples in {time.perf_counter() - t0:.1f}s")
    info = {"weights": units.unit_sizes(model), "importance_examples": str(len(ctx.train))}
    return head_raw, ffn, info
