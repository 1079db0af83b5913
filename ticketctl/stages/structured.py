"""``ticketctl search --method structured``: Super Tickets (Liang et al., 2021).

Finetune the dense model (or reuse the dense finetune of the same seed and config), score every attention head and
FFN sublayer by its expected |dL/d gate| over the training set, normalise head scores within each layer, and write
one structured mask per requested sparsity level and ticket kind (winning / random / losing), the scores reshaped by
the diversity policy of ``ticketctl.masks.policies`` (base, perturbed, active). Scores are computed once per seed and
kept in ``OUT/cache``, so more levels or kinds later cost nothing but the selection.

    identity -> finished already? -> setup and loop (importance scores, cached) -> write (one mask per kind, level)
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ticketctl.data.sampling import training_subset
from ticketctl.errors import UsageError
from ticketctl.hparams import DataOptions, RunOptions, TrainConfig
from ticketctl.masks import policies
from ticketctl.masks.structured import TICKETS, check_distinct_levels, normalize_heads, ticket, weights_remaining
from ticketctl.stages import context, inputs, outputs
from ticketctl.stages.context import Context
from ticketctl.store.artifacts import existing, read_artifact, write_artifact
from ticketctl.store.identity import RunIdentity
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


def structured_search(task: str, seed: int = 0, *, levels: list[float], kinds: list[str] = ("winning",),
                      train_fraction: float = 1.0, policy: str = "base", diversity: float | None = None,
                      priors: list[str] = (), train: TrainConfig | None = None, data: DataOptions | None = None,
                      run: RunOptions | None = None) -> list[Path]:
    """Structured tickets of ``task``'s model for ``seed``, one mask per kind and level; returns their paths.
    ``policy`` perturbed / active makes winning tickets deliberately diverse (``ticketctl.masks.policies``)."""
    data, run = data or DataOptions(), run or RunOptions()
    policies.get(policies.STRUCTURED, policy).check(kinds, priors, diversity)
    ctx, cfg, device = context.start(task, train, data, run)
    return structured_context(ctx, cfg, device, seed, run.out, [float(x) for x in levels], list(kinds),
                              force=run.force, train_fraction=float(train_fraction),
                              subset_seed=data.subset_seed, policy=policy, diversity=diversity, priors=list(priors))


def structured_context(ctx: Context, cfg: TrainConfig, device, seed: int, out: Path, levels: list[float],
                       kinds: list[str], force: bool = False, train_fraction: float = 1.0,
                       subset_seed: int | None = None, policy: str = "base", diversity: float | None = None,
                       priors: list[str] = ()) -> list[Path]:
    from ticketctl.model.loading import encoder_shape

    chosen = policies.get(policies.STRUCTURED, policy)
    ctx = ctx.with_train(training_subset(ctx.train, seed, fraction=train_fraction, subset_seed=subset_seed))
    layers, heads_per_layer = encoder_shape(ctx.model_dir)
    check_distinct_levels(levels, layers, heads_per_layer)  # before any training
    prior_arts = [inputs.load_mask(ctx, p) for p in priors]
    for a in prior_arts:
        if a.method != "structured" or a.structured().heads.shape != (layers, heads_per_layer):
            raise UsageError(f"--prior {a.path}: --policy active takes structured masks of this model")
    prior_masks = [a.structured() for a in prior_arts]
    strength = chosen.strength(diversity)
    diverse = chosen.identity(strength, [m.digest() for m in prior_masks])

    # identity -> finished already?
    dense, scores_identity, targets = _identities(ctx, cfg, seed, levels, kinds, train_fraction, policy, diverse)
    paths = [t.paths(out)[0] for t in targets]
    if context.finished(ctx.log, paths, "mask", force):
        return paths

    # setup and loop: the importance scores (cached per seed), after the dense finetune
    scores = _scores(ctx, cfg, device, out, dense, scores_identity, force)
    head_raw = scores.tensors["head_scores_raw"].astype(np.float64)
    ffn = scores.tensors["ffn_scores"].astype(np.float64)
    head = normalize_heads(head_raw)
    chosen_head, chosen_ffn = chosen.apply(head, ffn, strength, seed, prior_masks)

    # write: one mask per kind and level
    for identity, path in zip(targets, paths):
        kind, level = identity.fields["ticket"], identity.sparsity
        rng = np.random.default_rng(derive_seed(seed, f"random-ticket:{level!r}")) if kind == "random" else None
        mask = ticket(chosen_head, chosen_ffn, level, kind, rng)
        _write_ticket(ctx, path, identity, mask, head, head_raw, ffn, scores, prior_arts)
    return paths


def targets(ctx: Context, cfg: TrainConfig, seed: int, out: Path, levels: list[float], kinds=("winning",),
            train_fraction: float = 1.0, subset_seed: int | None = None) -> list[Path]:
    """The paths of the masks :func:`structured_context` writes with ``policy="base"`` (one per kind, then level),
    whether or not they exist, computed without training: ``ctx`` and ``cfg`` as
    :func:`ticketctl.stages.context.start` resolves them."""
    ctx = ctx.with_train(training_subset(ctx.train, seed, fraction=train_fraction, subset_seed=subset_seed))
    found = _identities(ctx, cfg, seed, [float(x) for x in levels], list(kinds), float(train_fraction), "base", {})
    return [t.paths(out)[0] for t in found[2]]


def _identities(ctx: Context, cfg: TrainConfig, seed: int, levels: list[float], kinds: list[str],
                train_fraction: float, policy: str, diverse: dict):
    """(the dense finetune's identity, the importance scores', one per mask: kind, then level)."""
    dense = ctx.identity(cfg, seed, train_fraction=train_fraction)
    scores_identity = dense.importance(IMPORTANCE_VERSION)
    masks = [scores_identity.structured_ticket(kind, level, policy, diverse) for kind in kinds for level in levels]
    return dense, scores_identity, masks


def _scores(ctx: Context, cfg: TrainConfig, device, out: Path, dense: RunIdentity, scores_identity: RunIdentity,
            force: bool):
    """The importance scores artifact of this seed: from the cache, or computed now (and cached)."""
    cache = scores_identity.importance_path(out)
    scores = None if force else existing(cache, "weights")
    if scores is not None:
        ctx.log.info(f"importance scores of seed {dense.seed}: reusing {cache}")
        return scores
    head_raw, ffn, layers_info = compute_scores(ctx, cfg, dense, out, device, force)
    write_artifact(cache, "weights", {"head_scores_raw": head_raw.astype(np.float32),
                                      "ffn_scores": ffn.astype(np.float32)},
                   ctx.meta(seed=str(dense.seed), config=scores_identity.as_dict(), **layers_info))
    return read_artifact(cache, "weights")


def _write_ticket(ctx: Context, path: Path, identity: RunIdentity, mask, head, head_raw, ffn, scores,
                  prior_arts) -> None:
    level, kind = identity.sparsity, identity.fields["ticket"]
    remaining = weights_remaining(mask, scores.meta.get("weights") or {})
    tensors = {"heads_keep": mask.heads.astype(np.uint8), "ffn_keep": mask.ffn.astype(np.uint8),
               "head_scores": head.astype(np.float32), "head_scores_raw": head_raw.astype(np.float32),
               "ffn_scores": ffn.astype(np.float32)}
    meta = ctx.meta(method="structured", seed=str(identity.seed), policy=identity.scheme,
                    sparsity=f"{mask.sparsity:.6f}",
                    target_sparsity=f"{level:.6f}", ffn_sparsity=f"{mask.ffn_sparsity:.6f}",
                    weights_remaining=f"{remaining:.6f}", heads_kept=str(int(mask.heads.sum())),
                    heads_total=str(mask.heads.size), ffn_kept=str(int(mask.ffn.sum())), config=identity.as_dict(),
                    config_hash=identity.hash(), parents=[scores.parent_ref()] + [a.parent_ref() for a in prior_arts],
                    importance_examples=scores.meta.get("importance_examples"))
    write_artifact(path, "mask", tensors, meta)
    ctx.log.info(f"{kind} ticket at {level:.0%}: {int(mask.heads.sum())}/{mask.heads.size} heads, "
                 f"{int(mask.ffn.sum())}/{mask.ffn.size} FFNs, {remaining:.1%} of encoder weights -> {path}")


def compute_scores(ctx: Context, cfg: TrainConfig, dense: RunIdentity, out: Path, device, force: bool):
    import torch

    from ticketctl.model import units
    from ticketctl.model.loading import pad_id
    from ticketctl.train.importance import importance

    seed = dense.seed
    model = inputs.load_model(ctx, cfg, seed, device)
    tokenizer = inputs.load_tokenizer(ctx, cfg, model)
    lay = units.layout(model)
    enc = ctx.encoded(tokenizer, ctx.train, cfg.max_length)
    floats = [k for k, v in model.state_dict().items() if v.is_floating_point()]
    cached = inputs.reuse_dense_weights(dense, out, force, floats)
    if cached is not None:
        model.load_state_dict({k: torch.from_numpy(cached.tensors[k]) for k in floats}, strict=False)
        ctx.log.info(f"reusing the dense finetune of seed {seed} ({cached.path})")
    else:
        ctx.log.info(f"structured search {ctx.task.name} seed={seed}: dense finetune on {len(ctx.train)} examples, "
                     f"{ctx.model_name}, {device.type}/{cfg.precision}")
        _, curve, seconds = context.train_model(ctx, model, tokenizer, cfg, seed, device, f"dense s{seed}", enc=enc)
        ctx.log.info(f"dense finetune in {seconds:.1f}s")
        outputs.write_dense_finetune(ctx, model, tokenizer, cfg, out, dense, device,
                                     outputs.dense_round_meta(ctx, dense, curve))
    t0 = time.perf_counter()
    with ctx.log.progress("importance", 1) as advance:
        head_raw, ffn = importance(model, enc, ctx.train.labels, device, pad_id(tokenizer), cfg.precision,
                                   on_step=advance)
    ctx.log.info(f"importance of {lay.num_layers * lay.num_heads} heads and {lay.num_layers} FFNs over "
                 f"{len(ctx.train)} training examples in {time.perf_counter() - t0:.1f}s")
    info = {"weights": units.unit_sizes(model), "importance_examples": str(len(ctx.train))}
    return head_raw, ffn, info
